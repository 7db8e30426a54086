"""Preemption and worker faults, the way a cluster does them: `gscnn-tf train` gets SIGTERM
mid-run (one process, and one worker of two on loopback), saves a checkpoint at the step it
reached and exits with code 143; `--resume` then ends with the step and weights of an
uninterrupted run. A worker killed with SIGKILL makes the other end with an error within the
configured time, and a restart of both resumes from the last checkpoint."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from gscnn_tf.config import save_config
from gscnn_tf.data.synthetic import ensure_synthetic
from gscnn_tf.training.preemption import PREEMPTED_EXIT_CODE
from gscnn_tf.training.trainer import Trainer
from training_support import tiny_config, toy_model

# `gscnn-tf train` with the toy model; argv[1] seconds of sleep after each step (0: none),
# so that a signal can arrive mid-run on a fast machine.
SCRIPT = textwrap.dedent("""
    import sys, time
    import gscnn_tf.training.trainer as trainer_module
    from training_support import toy_model

    trainer_module._default_builder = toy_model
    delay = float(sys.argv[1])
    make_train_step = trainer_module.make_train_step

    def slow_train_step(*args, **kwargs):
        step = make_train_step(*args, **kwargs)

        def slow(images, targets):
            out = step(images, targets)
            time.sleep(delay)
            return out
        return slow

    if delay:
        trainer_module.make_train_step = slow_train_step
    from gscnn_tf.cli import main
    sys.exit(main(sys.argv[2:]))
""")
HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = 12


def _start(tmp_path, run_dir, delay, *more, tf_config=None, resume=False):
    """`gscnn-tf train --config <tmp_path>/tiny.yaml --set train.run_dir=<run_dir>` (the
    toy model, `delay` seconds after each step) in a fresh process."""
    script = tmp_path / "train_toy.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), HERE]),
               CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    args = ["train", "--config", str(tmp_path / "tiny.yaml"), *(["--resume"] if resume else [])]
    for item in (f"train.run_dir={run_dir}", *more):
        args += ["--set", item]
    return subprocess.Popen([sys.executable, str(script), str(delay), *args], env=env,
                            cwd=str(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(path, proc, timeout=120):
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.05)


def _finish(procs, timeout=300):
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=timeout)[0])
        finally:
            if proc.poll() is None:
                proc.kill()
    return outputs


def _tensors(prefix):
    """{name: value} of every variable in checkpoint `prefix` (weights, batch-norm
    statistics, optimizer slots and iterations, step) but the save counter."""
    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k not in ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")}


def _uninterrupted(root, run_dir):
    Trainer(tiny_config(root, run_dir, f"train.steps={STEPS}"), model_builder=toy_model).train()
    return os.path.join(run_dir, "checkpoints", f"ckpt-{STEPS}")


def _assert_same_weights(prefix_a, prefix_b):
    a, b = _tensors(prefix_a), _tensors(prefix_b)
    assert len(a) >= 20 and a.keys() == b.keys()
    assert int(a["step/.ATTRIBUTES/VARIABLE_VALUE"]) == STEPS
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)


def _preempted_step(output):
    match = re.search(r"training preempted: checkpoint at step (\d+) written", output)
    assert match, output[-3000:]
    return int(match[1])


@pytest.fixture
def data_root(tmp_path):
    """The tiny synthetic dataset and `<tmp_path>/tiny.yaml`, the config every run uses."""
    root = str(tmp_path / "data")
    config = tiny_config(root, str(tmp_path / "unused"), f"train.steps={STEPS}")
    ensure_synthetic(config)
    save_config(config, str(tmp_path / "tiny.yaml"))
    return root


def test_sigterm_saves_then_resume_equals_uninterrupted(data_root, tmp_path):
    run_dir = str(tmp_path / "run")
    proc = _start(tmp_path, run_dir, 0.4)
    _wait_for(os.path.join(run_dir, "checkpoints", "ckpt-2.index"), proc)
    proc.send_signal(signal.SIGTERM)
    (output,) = _finish([proc])
    assert proc.returncode == PREEMPTED_EXIT_CODE, output[-3000:]
    step = _preempted_step(output)
    assert 2 <= step < STEPS
    prefix = os.path.join(run_dir, "checkpoints", f"ckpt-{step}")
    assert tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")) == prefix
    assert int(tf.train.load_checkpoint(prefix).get_tensor(
        "step/.ATTRIBUTES/VARIABLE_VALUE")) == step
    assert not os.path.exists(os.path.join(run_dir, "checkpoints", ".preemption-unused"))

    resumed = Trainer(tiny_config(data_root, run_dir, f"train.steps={STEPS}"),
                      model_builder=toy_model)
    assert resumed.train(resume=True)["step"] == STEPS       # what --resume runs
    _assert_same_weights(os.path.join(run_dir, "checkpoints", f"ckpt-{STEPS}"),
                         _uninterrupted(data_root, str(tmp_path / "straight")))


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _cluster(n):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(n)]
    return [{"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
            for i in range(n)]


def _two_workers(tmp_path, run_dir, delay=0.0, resume=False):
    return [_start(tmp_path, run_dir, delay, "train.strategy=multi_worker", tf_config=t,
                   resume=resume) for t in _cluster(2)]


def _assert_exit(procs, outputs, code):
    for proc, output in zip(procs, outputs):
        assert proc.returncode == code, output[-3000:]


@pytest.mark.slow
def test_sigterm_to_one_of_two_workers_saves_on_both(data_root, tmp_path):
    """SIGTERM to worker 1 (not the chief): both workers save at the same step and exit
    with 143; both restarted with --resume end with the weights of an uninterrupted
    two-worker run."""
    run_dir = str(tmp_path / "run")
    procs = _two_workers(tmp_path, run_dir, delay=0.4)
    _wait_for(os.path.join(run_dir, "checkpoints", "ckpt-2.index"), procs[0])
    procs[1].send_signal(signal.SIGTERM)
    outputs = _finish(procs)
    _assert_exit(procs, outputs, PREEMPTED_EXIT_CODE)
    step = _preempted_step(outputs[0])
    assert _preempted_step(outputs[1]) == step and 2 <= step < STEPS
    assert tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")) == os.path.join(
        run_dir, "checkpoints", f"ckpt-{step}")
    assert not os.path.exists(os.path.join(run_dir, ".worker1"))

    procs = _two_workers(tmp_path, run_dir, resume=True)
    _assert_exit(procs, _finish(procs), 0)
    straight = str(tmp_path / "straight")
    procs = _two_workers(tmp_path, straight)
    _assert_exit(procs, _finish(procs), 0)
    _assert_same_weights(os.path.join(run_dir, "checkpoints", f"ckpt-{STEPS}"),
                         os.path.join(straight, "checkpoints", f"ckpt-{STEPS}"))
