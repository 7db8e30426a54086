"""The custom loop: sync BN, 1 vs 2 replicas, resume, non-finite loss, atomic checkpoints."""

import hashlib
import json
import os

import numpy as np
import keras
import pytest
import tensorflow as tf
from tensorflow.python.checkpoint import checkpoint_management

from gscnn_tf.config import load_config
from gscnn_tf.losses import GSCNNLoss
from gscnn_tf.training.checkpoints import RunCheckpoints
from gscnn_tf.training.trainer import NonFiniteLossError, Trainer
from training_support import mirrored_strategy, tiny_config, toy_model
from conftest import tiny_model_overrides


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture
def mirrored():
    return mirrored_strategy()


def test_sync_batch_norm_uses_global_batch_statistics(rng, mirrored):
    strategy = mirrored
    x = rng.normal(size=(4, 3, 3, 2)).astype(np.float32)
    x[2:] = 5.0 * x[2:] + 3.0                          # replica 1 sees other statistics
    with strategy.scope():
        bn = keras.layers.BatchNormalization(synchronized=True, momentum=0.5, epsilon=1e-3)
        bn.build((None, 3, 3, 2))
    data = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(x).unbatch()
                                                     .batch(4))
    out = strategy.run(tf.function(lambda b: bn(b, training=True)), args=(next(iter(data)),))
    out = np.concatenate([t.numpy() for t in strategy.experimental_local_results(out)])
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-3), atol=1e-4)
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.5 * mean, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.5 + 0.5 * var, rtol=1e-4)


def _weights(trainer):
    return [v.numpy() for v in trainer.model.weights]


@pytest.mark.parametrize("clip_norm", [0.0, 0.05])
def test_two_replicas_step_equals_one_replica_step(data_root, tmp_path, clip_norm, mirrored):
    results = []
    for name, strategy in (("one", tf.distribute.get_strategy()), ("two", mirrored)):
        config = tiny_config(data_root, tmp_path / name, "train.steps=10",
                             f"train.clip_norm={clip_norm}")
        trainer = Trainer(config, strategy=strategy, model_builder=toy_model)
        before = _weights(trainer)
        iterator = iter(trainer._train_data(0))
        terms = trainer.train_step(*next(iterator))
        results.append((before, _weights(trainer), {k: float(v) for k, v in terms.items()}))
    (b1, w1, t1), (b2, w2, t2) = results
    for a, b in zip(b1, b2):
        np.testing.assert_array_equal(a, b)
    assert any(not np.allclose(a, b) for a, b in zip(b1, w1))
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for k in t1:
        assert t1[k] == pytest.approx(t2[k], rel=1e-5, abs=1e-6), k


def _lr(trainer):
    return float(trainer.schedule(trainer.optimizer.iterations))


def test_interrupted_then_resumed_equals_uninterrupted(data_root, tmp_path, monkeypatch):
    straight = Trainer(tiny_config(data_root, tmp_path / "a"), model_builder=toy_model)
    straight.train()

    config = tiny_config(data_root, tmp_path / "b")
    crashing = Trainer(config, model_builder=toy_model)
    save = crashing.checkpoints.save

    def save_then_crash(step):
        save(step)
        if step == 4:
            raise KeyboardInterrupt("simulated crash after the step-4 checkpoint")

    monkeypatch.setattr(crashing.checkpoints, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    with pytest.raises(FileExistsError):
        Trainer(config, model_builder=toy_model).train()
    resumed = Trainer(config, model_builder=toy_model)
    assert resumed.checkpoints.restore_latest() == 4
    assert _lr(resumed) == pytest.approx(0.01 * (1 - 4 / 6))
    resumed.train(resume=True)
    assert int(resumed.step.numpy()) == int(straight.step.numpy()) == 6
    assert int(resumed.optimizer.iterations.numpy()) == 6
    assert _lr(resumed) == _lr(straight)
    for a, b in zip(_weights(straight), _weights(resumed)):
        np.testing.assert_allclose(a, b, atol=1e-6)


class _NaNAfter:
    """GSCNNLoss whose seg term (and total) turns NaN from the 0-based step `first` on."""

    def __init__(self, first):
        self.loss, self.first = GSCNNLoss(), first

    def __call__(self, targets, outputs, seed=None):
        terms = dict(self.loss(targets, outputs, seed=seed))
        nan = tf.where(seed[1] >= self.first, np.float32(np.nan), np.float32(0.0))
        terms["seg"] = terms["seg"] + nan
        terms["total"] = terms["total"] + nan
        return terms


def _digest(folder):
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            digest.update(name.encode() + f.read())
    return digest.hexdigest()


def test_non_finite_loss_stops_and_keeps_last_checkpoint(data_root, tmp_path):
    config = tiny_config(data_root, tmp_path / "run", "train.steps=8")
    trainer = Trainer(config, model_builder=toy_model, loss_fn=_NaNAfter(4))
    with pytest.raises(NonFiniteLossError, match=r"step 5: seg=nan, edge=[0-9.]+, att="):
        trainer.train()
    folder = os.path.join(config.train.run_dir, "checkpoints")
    assert trainer.checkpoints.latest.endswith("ckpt-4")
    before = _digest(folder)
    fresh = Trainer(config, model_builder=toy_model)
    assert fresh.checkpoints.restore_latest() == 4
    assert all(np.isfinite(w).all() for w in _weights(fresh))
    assert _digest(folder) == before


def test_crash_during_save_leaves_latest_checkpoint_usable(tmp_path, monkeypatch):
    value = tf.Variable([1.0, 2.0])
    step = tf.Variable(1, dtype=tf.int64)
    ckpts = RunCheckpoints(str(tmp_path), {"value": value, "step": step}, keep=2)
    ckpts.save(1)

    def crash(*args, **kwargs):
        raise OSError("simulated crash before the checkpoint state file is replaced")

    value.assign([7.0, 7.0])
    step.assign(2)
    monkeypatch.setattr(checkpoint_management, "update_checkpoint_state_internal", crash)
    with pytest.raises(OSError):
        ckpts.save(2)
    monkeypatch.undo()
    prefix = tmp_path / "checkpoints" / "ckpt-3"        # a save killed mid-write
    (tmp_path / "checkpoints" / "ckpt-3.index").write_bytes(b"\x00partial")
    (tmp_path / "checkpoints" / "ckpt-3.data-00000-of-00001").write_bytes(b"")
    assert os.path.basename(ckpts.latest) == "ckpt-1" and not prefix.exists()
    assert RunCheckpoints(str(tmp_path), {"value": value, "step": step}).restore_latest() == 1
    np.testing.assert_array_equal(value.numpy(), [1.0, 2.0])


def _event_tags(folder):
    tags = set()
    for name in os.listdir(folder):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_run_directory_contents(data_root, tmp_path):
    config = tiny_config(data_root, tmp_path / "run", "train.steps=2", "train.val_every=1")
    result = Trainer(config, model_builder=toy_model).train()
    run_dir = config.train.run_dir
    assert load_config(os.path.join(run_dir, "config.yaml")) == config
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    assert [h["step"] for h in metrics["history"]] == [1, 2]
    assert metrics["last"]["val"]["miou"] == pytest.approx(result["val"]["miou"])
    assert 0.0 <= result["val"]["miou"] <= 1.0
    best = metrics["best"]["step"]
    assert os.path.isfile(os.path.join(run_dir, "best", f"ckpt-{best}.index"))
    tags = _event_tags(os.path.join(run_dir, "events"))
    expected = {f"train/{k}" for k in ("seg", "edge", "att", "dual", "l2", "total", "lr",
                                       "images_per_second")} | {"val/miou", "val/boundary_f"}
    assert expected <= tags


@pytest.mark.parametrize("overrides", [["train.mixed_precision=true"], ["train.xla=true"],
                                       ["train.mixed_precision=bf16"],
                                       ["train.optimizer=adamw", "train.warmup_steps=2"]])
def test_options_train_finite(data_root, tmp_path, overrides):
    config = tiny_config(data_root, tmp_path / "run", "train.steps=3", *overrides)
    trainer = Trainer(config, model_builder=toy_model)
    before = _weights(trainer)
    result = trainer.train()
    assert np.isfinite(result["train"]["total"]) and result["step"] == 3
    assert any(not np.allclose(a, b) for a, b in zip(before, _weights(trainer)))
    half = {True: "float16", "bf16": "bfloat16"}.get(config.train.mixed_precision, "float32")
    assert trainer.model.get_layer("conv").compute_dtype == half
    assert all(v.dtype == "float32" for v in trainer.model.weights)
    # Only float16 needs loss scaling; bfloat16 has float32's exponent range.
    scaled = isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (half == "float16")
    assert keras.mixed_precision.dtype_policy().name == "float32"   # restored after the build


def test_bf16_training_follows_float32(data_root, tmp_path):
    """One step of the tiny GSCNN from the same weights in float32 and bfloat16 (the shape
    stream, its gates, Canny and all four loss terms under the policy): the loss terms agree
    to bfloat16's precision (8 bits of mantissa), the update points the same way (cosine
    0.992 with float32's; small gradients such as batch norm's scales, sums of many terms
    that nearly cancel, differ most).
    (Later steps drift apart as any two precisions do: the tiny model's edge loss is
    steep, so three steps at lr 0.01 already differ by 10 %.)"""
    runs = {}
    for precision in ("false", "bf16"):
        config = tiny_config(data_root, tmp_path / precision, "train.steps=1",
                             f"train.mixed_precision={precision}",
                             *tiny_model_overrides("model.backbone.dropout=false"))
        trainer = Trainer(config)
        before = _weights(trainer)
        terms = trainer.train_step(*next(iter(trainer._train_data(0))))
        moved = [a - b for a, b in zip(_weights(trainer), before)]
        runs[precision] = [float(terms[k]) for k in ("seg", "edge", "att", "dual", "total")], moved
    (loss32, moved32), (loss16, moved16) = runs["false"], runs["bf16"]
    np.testing.assert_allclose(loss16, loss32, rtol=5e-3)
    assert loss16 != loss32                       # bfloat16 did compute
    flat32 = np.concatenate([m.ravel() for m in moved32])
    flat16 = np.concatenate([m.ravel() for m in moved16])
    cosine = flat32 @ flat16 / (np.linalg.norm(flat32) * np.linalg.norm(flat16))
    assert cosine > 0.98


def test_cli_trains_resumes_and_reports(data_root, tmp_path, monkeypatch, capsys):
    import argparse

    from gscnn_tf.training import cli, trainer

    monkeypatch.setattr(trainer, "_default_builder", toy_model)
    config = tiny_config(data_root, tmp_path / "run", "train.steps=2")
    path = tmp_path / "tiny.yaml"
    path.write_text(config.to_yaml())

    def run(*argv):
        parser = argparse.ArgumentParser()
        cli.add_arguments(parser)
        return cli.run(parser.parse_args(["--config", str(path), *argv]))

    assert run() == 0
    assert "done: step 2, validation mIoU" in capsys.readouterr().out
    assert run("--resume", "--set", "train.steps=3", "--strategy", "one_device") == 0
    out = capsys.readouterr().out
    assert "done: step 3" in out and "boundary F@3px@1024rows = 1 px at 32 rows" in out
    assert "next:\n  gscnn-tf evaluate " in out
    assert sorted(os.listdir(tmp_path / "run" / "pictures")) == [f"val_{i}.png" for i in range(4)]

    # The same command again: the config's run dir is a default, so a new folder is chosen.
    assert run() == 0
    out = capsys.readouterr().out
    second = f"{tmp_path / 'run'}-2"
    assert f"{tmp_path / 'run'} already holds a run; this one writes to {second}" in out
    assert f"(run dir {second})" in out and os.path.isdir(os.path.join(second, "checkpoints"))
    # A run dir named on the command line is used as given: an error before any work.
    from gscnn_tf.errors import RunDirError

    with pytest.raises(RunDirError, match=f"{second} already holds checkpoints: pass --resume"):
        run("--set", f"train.run_dir={second}")


def test_real_model_trains_with_image_summaries(data_root, tmp_path, mirrored):
    pytest.importorskip("gscnn_tf.models.gscnn")
    config = tiny_config(data_root, tmp_path / "run", "train.steps=2", "train.image_every=2",
                         *tiny_model_overrides())
    trainer = Trainer(config, strategy=mirrored)
    result = trainer.train()
    assert result["step"] == 2 and np.isfinite(result["train"]["total"])
    tags = _event_tags(os.path.join(config.train.run_dir, "events"))
    assert {f"images/gate{i}_alpha" for i in (1, 2, 3)} | {"images/prediction_overlay",
                                                           "images/edge_probability"} <= tags
