"""MultiWorkerMirroredStrategy: two processes on loopback ports train a few steps of the
custom loop and end with identical weights (and the chief's checkpoint holds them)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from gscnn_tf.data.synthetic import ensure_synthetic
from training_support import free_ports, tiny_config

WORKER = textwrap.dedent("""
    import os, sys
    import numpy as np
    from gscnn_tf.training.trainer import Trainer
    from training_support import tiny_config, toy_model

    root, run_dir, out = sys.argv[1:4]
    config = tiny_config(root, run_dir, "train.strategy=multi_worker", "train.steps=3")
    trainer = Trainer(config, model_builder=toy_model)
    assert trainer.strategy.num_replicas_in_sync == 2
    initial = [v.numpy() for v in trainer.model.trainable_weights]
    result = trainer.train()
    changed = [not np.allclose(a, v.numpy())
               for a, v in zip(initial, trainer.model.trainable_weights)]
    np.savez(out, step=result["step"], changed=all(changed),
             *[v.numpy() for v in trainer.model.weights])
""")


def test_two_workers_end_with_identical_weights(tmp_path):
    root, run_dir = str(tmp_path / "data"), str(tmp_path / "run")
    ensure_synthetic(tiny_config(root, run_dir))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(here), here]),
               CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    procs = []
    for index in range(2):
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers},
                                       "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            [sys.executable, str(script), root, run_dir, str(tmp_path / f"w{index}.npz")],
            env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=300)[0])
        finally:
            if proc.poll() is None:
                proc.kill()
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-3000:]
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert int(w0["step"]) == int(w1["step"]) == 3
    assert bool(w0["changed"]) and bool(w1["changed"])     # every trainable weight moved
    names = [k for k in w0.files if k.startswith("arr_")]
    assert len(names) >= 8
    for k in names:
        np.testing.assert_array_equal(w0[k], w1[k])
    assert os.path.isfile(os.path.join(run_dir, "checkpoints", "ckpt-3.index"))
    assert not os.path.exists(os.path.join(run_dir, ".worker1"))
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
        assert json.load(f)["last"]["step"] == 3
