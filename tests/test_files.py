"""Storage through TensorFlow's file system layer: the helpers of gscnn_tf.files on the local
disk and on TensorFlow's in-memory `ram://` file system, and a whole run on `ram://` in one
process (synthetic data generated there, a run trained there, its checkpoint restored, a
model exported there)."""

import uuid

import numpy as np
import pytest
import tensorflow as tf

from gscnn_tf import files
from gscnn_tf.config import load_config, save_config


@pytest.fixture(params=["local", "ram"])
def folder(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    return f"ram://{uuid.uuid4().hex}"


def test_helpers(folder, rng):
    target = files.join(folder, "a", "b.txt")
    files.atomic_write_text(target, "first")
    files.atomic_write_text(target, "second")          # replaces
    assert files.read_text(target) == "second"
    assert files.isfile(target) and not files.isdir(target)
    assert files.isdir(files.join(folder, "a")) and not files.isfile(files.join(folder, "a"))
    assert files.listdir(files.join(folder, "a")) == ["b.txt"]   # no .tmp left behind
    files.makedirs(files.join(folder, "a", "sub"))
    assert files.listdir(files.join(folder, "a")) == ["b.txt", "sub"]
    assert files.glob(files.join(folder, "a", "*.txt")) == [target]
    files.atomic_write_text(files.join(folder, "a", "sub", "c.txt"), "c")
    assert sorted(files.join(root, n) for root, _, names in files.walk(files.join(folder, "a"))
                  for n in names) == [target, files.join(folder, "a", "sub", "c.txt")]
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    files.imwrite(files.join(folder, "p.png"), image)
    np.testing.assert_array_equal(files.imread(files.join(folder, "p.png")), image)
    assert files.imread(target) is None                 # not an image, as cv2.imread
    assert not files.exists(files.join(folder, "missing"))


def test_config_round_trip(folder):
    config = load_config(None, ["train.steps=7", "model.backbone.name=small"])
    path = files.join(folder, "run", "config.yaml")
    save_config(config, path)
    assert load_config(path).to_dict() == config.to_dict()
    assert not files.exists(f"{path}.tmp")


def test_join_keeps_urls():
    assert files.join("gs://bucket/runs", "a", "b") == "gs://bucket/runs/a/b"
    assert files.is_local("runs/a") and files.is_local("/x") and not files.is_local("gs://b")


def test_errors_are_os_errors(folder):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        files.read_text(files.join(folder, "missing.txt"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        files.listdir(files.join(folder, "nowhere"))


def test_a_whole_run_on_ram(rng):
    """Synthetic data generated on ram://, the tiny GSCNN trained there (config.yaml,
    checkpoints, events, metrics.json, best model and preset), resumed from its checkpoint,
    loaded back from the run directory and exported as a SavedModel there; the exported
    model gives the trained model's labels."""
    import keras

    import gscnn_tf
    from gscnn_tf import export
    from gscnn_tf.data.synthetic import ensure_synthetic
    from gscnn_tf.training.trainer import Trainer
    from training_support import tiny_config

    base = f"ram://{uuid.uuid4().hex}"
    tiny = ("model.backbone.base_width=8", "model.backbone.dropout=false",
            "model.aspp_channels=16", "model.decoder_channels=16", "model.skip_channels=8",
            "train.steps=2", "train.checkpoint_every=1")
    config = tiny_config(f"{base}/data", f"{base}/run", *tiny)
    ensure_synthetic(config)
    assert len(files.listdir(f"{base}/data/images/train")) == 8
    keras.utils.set_random_seed(0)
    trainer = Trainer(config)
    trainer.train()
    run = f"{base}/run"
    for name in ("config.yaml", "metrics.json", "checkpoints/checkpoint",
                 "checkpoints/ckpt-2.index", "best/model.keras", "best/preset/config.json"):
        assert files.isfile(f"{run}/{name}"), name
    assert files.listdir(f"{run}/events")
    assert not [p for p in files.glob(f"{run}/*.tmp") + files.glob(f"{run}/*/*.tmp")]

    again = Trainer(tiny_config(f"{base}/data", run, *tiny, "train.steps=3"))
    assert again.checkpoints.restore_latest() == 2
    for a, b in zip(trainer.model.weights, again.model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    images = rng.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    expected = np.argmax(trainer.model(images, training=False)["seg_logits"], -1)
    loaded = gscnn_tf.GSCNN.from_preset(run)
    np.testing.assert_array_equal(
        np.argmax(loaded(images, training=False)["seg_logits"], -1), expected)
    path = export.export_saved_model(loaded, f"{base}/exports", "gscnn", 1,
                                     export.class_metadata(config, loaded.num_classes))
    assert path == f"{base}/exports/gscnn/1"
    served = tf.saved_model.load(path)
    labels = served.signatures["serving_default"](images=tf.constant(images))["labels"]
    np.testing.assert_array_equal(labels.numpy(), expected)


def test_local_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    """On a local disk: the new file gets the umask's mode (0644 under 022, not mkstemp's
    0600); a write that fails part way leaves the old content and no temporary file."""
    import os

    target = tmp_path / "out" / "model.bin"
    old = os.umask(0o022)
    try:
        files.atomic_write_bytes(str(target), b"old")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"old" and oct(target.stat().st_mode & 0o777) == "0o644"
    with pytest.raises(TypeError):
        files.atomic_write_bytes(str(target), "not bytes")   # fails inside the write
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.bin"]
