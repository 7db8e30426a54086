"""Storage through TensorFlow's file system layer: the helpers of gscnn_tf.files on the local
disk and on TensorFlow's in-memory `ram://` file system, and a whole run on `ram://` in one
process (synthetic data generated there, a run trained there, its checkpoint restored, a
model exported there)."""

import uuid

import numpy as np
import pytest

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
