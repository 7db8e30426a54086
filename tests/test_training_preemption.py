"""Preemption and worker faults, the way a cluster does them: `gscnn-tf train` gets SIGTERM
mid-run (one process, and one worker of two on loopback), saves a checkpoint at the step it
reached and exits with code 143; `--resume` then ends with the step and weights of an
uninterrupted run. A worker killed with SIGKILL makes the other end with an error within the
configured time, and a restart of both resumes from the last checkpoint."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from gscnn_tf.config import save_config
from gscnn_tf.data.synthetic import ensure_synthetic
from gscnn_tf.training.preemption import PREEMPTED_EXIT_CODE
from gscnn_tf.training.trainer import Trainer
from training_support import free_ports, tiny_config, toy_model

# `gscnn-tf train` with the toy model; argv[1] seconds of sleep after each step (0: none),
# so that a signal can arrive mid-run on a fast machine; STALL="N:S" sleeps S seconds after
# step N (a worker alive but not answering).
SCRIPT = textwrap.dedent("""
    import os, sys, time
    import gscnn_tf.training.trainer as trainer_module
    from training_support import toy_model

    trainer_module._default_builder = toy_model
    delay = float(sys.argv[1])
    stall_step, stall = map(float, os.environ.get("STALL", "0:0").split(":"))
    make_train_step = trainer_module.make_train_step

    def slow_train_step(*args, **kwargs):
        step = make_train_step(*args, **kwargs)
        done = []

        def slow(images, targets):
            out = step(images, targets)
            done.append(1)
            time.sleep(stall if len(done) == stall_step else delay)
            return out
        return slow

    if delay or stall:
        trainer_module.make_train_step = slow_train_step
    from gscnn_tf.cli import main
    sys.exit(main(sys.argv[2:]))
""")
HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = 12


def _start(base, run_dir, delay, *more, tf_config=None, resume=False, stall=None):
    """`gscnn-tf train --config <base>/tiny.yaml --set train.run_dir=<run_dir>` (the toy
    model, `delay` seconds after each step) in a fresh process."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), HERE]),
               CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    if stall:
        env["STALL"] = stall
    args = ["train", "--config", str(base / "tiny.yaml"), *(["--resume"] if resume else [])]
    for item in (f"train.run_dir={run_dir}", *more):
        args += ["--set", item]
    return subprocess.Popen([sys.executable, str(base / "train_toy.py"), str(delay), *args],
                            env=env, cwd=str(base), stdout=subprocess.PIPE,
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


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A folder with the tiny synthetic dataset (data/), the config every run uses
    (tiny.yaml) and the toy-model training script (train_toy.py)."""
    base = tmp_path_factory.mktemp("preemption")
    config = tiny_config(str(base / "data"), str(base / "unused"), f"train.steps={STEPS}")
    ensure_synthetic(config)
    save_config(config, str(base / "tiny.yaml"))
    (base / "train_toy.py").write_text(SCRIPT)
    return base


def test_sigterm_saves_then_resume_equals_uninterrupted(base, tmp_path):
    run_dir = str(tmp_path / "run")
    proc = _start(base, run_dir, 0.4)
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

    config = tiny_config(str(base / "data"), run_dir, f"train.steps={STEPS}")
    resumed = Trainer(config, model_builder=toy_model)
    assert resumed.train(resume=True)["step"] == STEPS       # what --resume runs
    straight = str(tmp_path / "straight")
    Trainer(tiny_config(str(base / "data"), straight, f"train.steps={STEPS}"),
            model_builder=toy_model).train()
    _assert_same_weights(os.path.join(run_dir, "checkpoints", f"ckpt-{STEPS}"),
                         os.path.join(straight, "checkpoints", f"ckpt-{STEPS}"))


@pytest.mark.slow
def test_sigterm_under_mirrored_strategy(base, tmp_path):
    """The same with MirroredStrategy over 2 logical CPUs (the handler's local mode):
    exit 143 at a checkpointed step, then --resume ends where an uninterrupted run ends."""
    run_dir, straight = str(tmp_path / "run"), str(tmp_path / "straight")
    proc = _start(base, run_dir, 0.4, "train.cpu_replicas=2")
    _wait_for(os.path.join(run_dir, "checkpoints", "ckpt-2.index"), proc)
    proc.send_signal(signal.SIGTERM)
    (output,) = _finish([proc])
    assert proc.returncode == PREEMPTED_EXIT_CODE, output[-3000:]
    step = _preempted_step(output)
    assert 2 <= step < STEPS
    procs = [_start(base, run_dir, 0, "train.cpu_replicas=2", resume=True),
             _start(base, straight, 0, "train.cpu_replicas=2")]
    outputs = _finish(procs)
    _assert_exit(procs, outputs, 0)
    assert f"resuming {run_dir} from step {step}" in outputs[0]
    _assert_same_weights(os.path.join(run_dir, "checkpoints", f"ckpt-{STEPS}"),
                         os.path.join(straight, "checkpoints", f"ckpt-{STEPS}"))


def _two_workers(base, run_dir, *more, delay=0.0, resume=False, stall=None):
    """Two `gscnn-tf train` workers on loopback ports (TF_CONFIG each); `stall` for
    worker 1 only."""
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    return [_start(base, run_dir, delay, "train.strategy=multi_worker", *more,
                   tf_config={"cluster": {"worker": workers},
                              "task": {"type": "worker", "index": i}},
                   resume=resume, stall=stall if i == 1 else None) for i in range(2)]


def _assert_exit(procs, outputs, code):
    for proc, output in zip(procs, outputs):
        assert proc.returncode == code, output[-3000:]


@pytest.fixture(scope="module")
def straight_two_workers(base):
    """The last checkpoint of an uninterrupted two-worker run."""
    run_dir = str(base / "straight")
    procs = _two_workers(base, run_dir)
    _assert_exit(procs, _finish(procs), 0)
    return os.path.join(run_dir, "checkpoints", f"ckpt-{STEPS}")


def _resume_two_workers(base, run_dir, from_step, straight):
    """Both workers restarted with --resume: the chief says it resumes from `from_step`,
    and the run ends with the weights of the uninterrupted run."""
    procs = _two_workers(base, run_dir, resume=True)
    outputs = _finish(procs)
    _assert_exit(procs, outputs, 0)
    assert f"resuming {run_dir} from step {from_step}" in outputs[0], outputs[0][-3000:]
    _assert_same_weights(os.path.join(run_dir, "checkpoints", f"ckpt-{STEPS}"), straight)


@pytest.mark.slow
def test_sigterm_to_one_of_two_workers_saves_on_both(base, tmp_path, straight_two_workers):
    """SIGTERM to worker 1 (not the chief): both workers save at the same step and exit
    with 143; both restarted with --resume end with the weights of an uninterrupted
    two-worker run."""
    run_dir = str(tmp_path / "run")
    procs = _two_workers(base, run_dir, delay=0.4)
    _wait_for(os.path.join(run_dir, "checkpoints", "ckpt-2.index"), procs[0])
    procs[1].send_signal(signal.SIGTERM)
    outputs = _finish(procs)
    _assert_exit(procs, outputs, PREEMPTED_EXIT_CODE)
    step = _preempted_step(outputs[0])
    assert _preempted_step(outputs[1]) == step and 2 <= step < STEPS
    assert tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")) == os.path.join(
        run_dir, "checkpoints", f"ckpt-{step}")
    assert not os.path.exists(os.path.join(run_dir, ".worker1"))
    _resume_two_workers(base, run_dir, step, straight_two_workers)


def _read_timed(proc, marker, timeout):
    """(output, when the first line starting with `marker` came, when the process ended);
    the process is killed after `timeout` seconds."""
    lines, marked = [], [float("inf")]

    def read():
        for line in proc.stdout:
            if line.startswith(marker) and marked[0] == float("inf"):
                marked[0] = time.monotonic()
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        ended = time.monotonic()
        reader.join(10)
    return "".join(lines), marked[0], ended


def _last_checkpoint_step(run_dir):
    return int(tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")).split("-")[-1])


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_sigkill_of_a_worker_stops_the_other_then_both_resume(base, tmp_path, victim,
                                                               straight_two_workers):
    """SIGKILL to worker 1, or to the chief (worker 0, which also runs the coordination
    service): the survivor ends within 60 s with one error line naming the lost worker
    and the checkpoint to resume from (exit 2, no hang); both restarted with --resume
    continue from the last checkpoint to the uninterrupted run's weights."""
    run_dir = str(tmp_path / "run")
    procs = _two_workers(base, run_dir, delay=0.4)
    _wait_for(os.path.join(run_dir, "checkpoints", "ckpt-4.index"), procs[0])
    procs[victim].kill()
    killed = time.monotonic()
    survivor = procs[1 - victim]
    output, error_at, exit_at = _read_timed(survivor, "gscnn-tf train: error", 180)
    _finish([procs[victim]])
    assert survivor.returncode == 2, output[-3000:]
    assert error_at - killed < 60, (error_at - killed, output[-3000:])
    assert exit_at - killed < 180
    last = _last_checkpoint_step(run_dir)
    errors = [line for line in output.splitlines() if line.startswith("gscnn-tf train: error")]
    assert len(errors) == 1, output[-3000:]
    assert re.search(rf"worker /job:worker/replica:0/task:{victim} (stopped sending "
                     r"heartbeats|closed its connection) \(its process died", errors[0])
    assert f"--resume to continue from {run_dir}/checkpoints/ckpt-{last}" in errors[0]
    _resume_two_workers(base, run_dir, last, straight_two_workers)


@pytest.mark.slow
def test_a_worker_stalled_past_worker_timeout_stops_the_other(base, tmp_path):
    """Worker 1 alive but stalled 60 s after its 5th step: with train.worker_timeout=5 the
    chief ends within 30 s with one line naming the timeout."""
    run_dir = str(tmp_path / "run")
    procs = _two_workers(base, run_dir, "train.worker_timeout=5", delay=0.1, stall="5:60")
    _wait_for(os.path.join(run_dir, "checkpoints", "ckpt-4.index"), procs[0])
    started = time.monotonic()
    output, error_at, _ = _read_timed(procs[0], "gscnn-tf train: error", 180)
    elapsed = error_at - started
    procs[1].kill()
    _finish([procs[1]])
    assert procs[0].returncode == 2, output[-3000:]
    assert elapsed < 30, elapsed
    assert ("did not reach a collective within train.worker_timeout=5 s; restart every "
            "worker with --resume to continue from") in output, output[-3000:]


@pytest.mark.parametrize("error, reason", [
    (tf.errors.UnavailableError(None, None, "Collective ops is aborted by: Error reported "
                                "from /job:worker/task:1: The following tasks are unhealthy "
                                "(stopped sending heartbeats):\n/job:worker/replica:0/task:1\n"
                                "The tasks have crashed."),
     "worker /job:worker/replica:0/task:1 stopped sending heartbeats (its process died"),
    (tf.errors.UnavailableError(None, None, "Collective ops is aborted by: Socket closed "
                                "Additional GRPC error information from remote target "
                                "/job:worker/replica:0/task:0 while calling /tensorflow."
                                "WorkerService/RecvBuf"),
     "worker /job:worker/replica:0/task:0 closed its connection (its process died"),
    (tf.errors.UnavailableError(None, None, "recvmsg:Connection reset by peer Additional "
                                "GRPC error information from remote target "
                                "/job:worker/replica:0/task:0 while calling x"),
     "worker /job:worker/replica:0/task:0 closed its connection (its process died"),
    (tf.errors.DeadlineExceededError(None, None, "Collective ops timed out"),
     "the other workers did not reach a collective within train.worker_timeout=5 s"),
])
def test_lost_worker_messages(error, reason):
    """The messages TensorFlow gave in the SIGKILL / stall runs above, as one line."""
    from gscnn_tf.training.trainer import _worker_lost_text

    text = _worker_lost_text(7, error, 5, "runs/x/checkpoints/ckpt-6")
    assert text.startswith(f"multi-worker training stopped at step 7: {reason}")
    assert "\n" not in text
    assert text.endswith("restart every worker with --resume to continue from "
                         "runs/x/checkpoints/ckpt-6")
