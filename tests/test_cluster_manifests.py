"""The cluster manifests of docs/cluster/ give every worker a TF_CONFIG that
`gscnn_tf.training.strategy` reads as the intended cluster: N tasks (`cluster_size`), task i
of them each, exactly one chief (`is_chief`), addresses that the Kubernetes Service resolves;
and the same `gscnn-tf train` command everywhere, one that parses and whose config loads."""

import argparse
import json
import os
import stat
import subprocess
import types
from pathlib import Path

import tensorflow as tf
import yaml

from gscnn_tf.config import load_config
from gscnn_tf.training import cli as train_cli
from gscnn_tf.training.strategy import cluster_size, is_chief

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "docs" / "cluster"


def _train_args(argv):
    """`gscnn-tf train` arguments as its parser reads them; the config loads with them."""
    assert argv[:2] == ["gscnn-tf", "train"], argv
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    args = parser.parse_args(argv[2:])
    config = load_config(ROOT / args.config, args.set)
    return args, config


def _read_as_strategy(tf_config, monkeypatch):
    """(cluster_size, task type, task index, is_chief, addresses) as the trainer sees them."""
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    strategy = types.SimpleNamespace(cluster_resolver=resolver)
    spec = resolver.cluster_spec().as_dict()
    return (cluster_size(), resolver.task_type, resolver.task_id, is_chief(strategy),
            [a for job in ("chief", "worker") for a in spec.get(job, [])])


def _kubernetes():
    docs = {d["kind"]: d for d in yaml.safe_load_all((CLUSTER / "kubernetes.yaml").read_text())}
    return docs["Service"], docs["Job"]


def _run_worker_command(container, index, tmp_path):
    """Runs the container's command for JOB_COMPLETION_INDEX=index with a `gscnn-tf` stub
    on PATH that records its TF_CONFIG and arguments."""
    stub = tmp_path / "bin" / "gscnn-tf"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$TF_CONFIG" > "$OUT"\n'
                    'for a in "$@"; do printf "%s\\n" "$a"; done >> "$OUT"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / f"worker{index}.txt"
    env = {e["name"]: e["value"] for e in container["env"]}
    env.update(PATH=f"{stub.parent}{os.pathsep}{os.environ['PATH']}", OUT=str(out),
               JOB_COMPLETION_INDEX=str(index))
    subprocess.run([*container["command"], *container["args"]], env=env, check=True,
                   timeout=30)
    lines = out.read_text().splitlines()
    return json.loads(lines[0]), ["gscnn-tf", *lines[1:]]


def test_kubernetes_workers_get_one_tf_config_each(tmp_path, monkeypatch):
    service, job = _kubernetes()
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    n = int(env["WORKERS"])
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == n >= 2
    # The addresses resolve: pod hostnames <job>-<i> in the headless Service's subdomain.
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    assert pod["subdomain"] == service["metadata"]["name"]
    port = int(env["PORT"])
    assert service["spec"]["ports"][0]["port"] == port
    assert container["ports"][0]["containerPort"] == port
    assert pod["restartPolicy"] == "OnFailure"
    expected = [f"{job['metadata']['name']}-{i}.{pod['subdomain']}:{port}" for i in range(n)]
    commands = []
    for index in range(n):
        tf_config, argv = _run_worker_command(container, index, tmp_path)
        size, task_type, task_id, chief, addresses = _read_as_strategy(tf_config, monkeypatch)
        assert (size, task_type, task_id, chief) == (n, "worker", index, index == 0)
        assert addresses == expected
        commands.append(argv)
    assert all(c == commands[0] for c in commands)      # the same command on every worker
    args, config = _train_args(commands[0])
    assert args.resume                                   # a restarted worker continues
    assert config.train.strategy == "multi_worker"
    assert config.train.run_dir.startswith("gs://")


def test_vertex_ai_pools_run_one_command_with_the_tf_config_vertex_sets(monkeypatch):
    """Vertex AI gives worker pool 0 the cluster key "chief" and pool 1 "worker", one
    TF_CONFIG per replica; the strategy must see N tasks and one chief."""
    job = yaml.safe_load((CLUSTER / "vertex_ai.yaml").read_text())
    pools = job["workerPoolSpecs"]
    assert len(pools) == 2 and pools[0]["replicaCount"] == 1
    assert pools[0]["containerSpec"] == pools[1]["containerSpec"]
    assert pools[0]["machineSpec"] == pools[1]["machineSpec"]
    n = sum(p["replicaCount"] for p in pools)
    cluster = {"chief": ["chief-0:2222"],
               "worker": [f"workerpool1-{i}:2222" for i in range(pools[1]["replicaCount"])]}
    seen = []
    for task_type, count in (("chief", 1), ("worker", pools[1]["replicaCount"])):
        for index in range(count):
            tf_config = {"cluster": cluster, "task": {"type": task_type, "index": index}}
            size, kind, task_id, chief, _ = _read_as_strategy(tf_config, monkeypatch)
            assert (size, kind, task_id) == (n, task_type, index)
            seen.append(chief)
    assert seen.count(True) == 1 and seen[0]
    container = pools[0]["containerSpec"]
    args, config = _train_args([*container["command"], *container["args"]])
    assert args.resume and config.train.strategy == "multi_worker"
    assert config.train.run_dir.startswith("gs://") and config.data.root.startswith("gs://")
    assert job["scheduling"]["restartJobOnWorkerRestart"] is True

