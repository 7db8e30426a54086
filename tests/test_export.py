"""SavedModel export for TF Serving: layout, signatures, fresh-process load without gscnn_tf,
equality with the Keras model, bad-request errors and the CLI."""

import json
import os
import re
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from gscnn_tf import cli, export, save_config
from export_support import keras_outputs, setup  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def saved(setup, tmp_path_factory):
    config, model, _ = setup
    root = tmp_path_factory.mktemp("exports")
    path = export.export_saved_model(model, str(root), "gscnn", 3,
                                     export.class_metadata(config, 10))
    return path, tf.saved_model.load(path)


def test_layout_assets_and_no_overwrite(setup, saved):
    config, model, _ = setup
    path, _ = saved
    parent = os.path.dirname(path)
    assert os.path.basename(path) == "3" and os.path.basename(parent) == "gscnn"
    assert sorted(os.listdir(parent)) == ["3"]  # no temporary folder left behind
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    with open(os.path.join(path, "assets", export.CLASSES_ASSET)) as f:
        classes = json.load(f)
    assert classes["class_names"][:3] == ["road", "sidewalk", "building"]
    assert np.array(classes["palette"]).shape == (10, 3)
    assert classes["palette"][0] == [128, 64, 128] and classes["ignore_label"] == 255
    stamp = os.path.getmtime(os.path.join(path, "saved_model.pb"))
    with pytest.raises(export.ExportError, match="exists; pass --overwrite"):
        export.export_saved_model(model, os.path.dirname(parent), "gscnn", 3, classes)
    assert os.path.getmtime(os.path.join(path, "saved_model.pb")) == stamp
    assert sorted(os.listdir(parent)) == ["3"]


@pytest.fixture(scope="module")
def plain_model():
    """Two convolutions with the GSCNN's outputs: it saves in seconds, for the tests of how
    an export is written rather than what it computes."""
    image = keras.Input([None, None, 3], name="image")
    x = keras.layers.Rescaling(1 / 255)(image)
    return keras.Model(image, {
        "seg_logits": keras.layers.Conv2D(10, 3, padding="same", name="seg")(x),
        "edge_logits": keras.layers.Conv2D(1, 3, padding="same", name="edge")(x)})


def test_overwrite_replaces_the_version(plain_model, tmp_path):
    model, meta = plain_model, export.class_metadata(None, 10)
    first = export.export_saved_model(model, str(tmp_path), "m", 1, meta)
    open(os.path.join(first, "marker"), "w").close()
    again = export.export_saved_model(model, str(tmp_path), "m", 1, meta, overwrite=True)
    assert again == first and not os.path.exists(os.path.join(first, "marker"))
    assert sorted(os.listdir(tmp_path / "m")) == ["1"]
    with pytest.raises(export.ExportError, match="version 0"):
        export.export_saved_model(model, str(tmp_path), "m", 0, meta)


@pytest.mark.parametrize("step", ["save", "rename"])
def test_failed_export_keeps_the_old_version(plain_model, tmp_path, monkeypatch, step):
    """An export that fails midway (writing the SavedModel, or renaming it into place) leaves
    no partial or temporary folder and keeps the version already there, even with
    overwrite; a first export that fails leaves no version folder at all."""
    model, meta = plain_model, export.class_metadata(None, 10)
    images = np.random.default_rng(0).integers(0, 256, [2, 16, 24, 3], dtype=np.uint8)
    kept = export.export_saved_model(model, str(tmp_path), "m", 1, meta)
    files = sorted(os.path.relpath(os.path.join(d, f), kept)
                   for d, _, names in os.walk(kept) for f in names)
    real_save, real_rename = tf.saved_model.save, os.rename

    def failing_save(module, path, signatures):
        real_save(module, path, signatures=signatures)  # fully written, then ...
        with open(os.path.join(path, "saved_model.pb"), "r+b") as f:
            f.truncate(100)  # ... half of it gone, as if the disk filled up
        raise OSError("No space left on device")

    def failing_rename(source, target):
        if os.path.basename(source) == "saved_model":  # the staged export, not the backup
            raise OSError("rename failed")
        real_rename(source, target)

    if step == "save":
        monkeypatch.setattr(tf.saved_model, "save", failing_save)
    else:
        monkeypatch.setattr(os, "rename", failing_rename)
    for version in (1, 2):
        with pytest.raises(OSError):
            export.export_saved_model(model, str(tmp_path), "m", version, meta, overwrite=True)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / "m")) == ["1"]
    assert sorted(os.path.relpath(os.path.join(d, f), kept)
                  for d, _, names in os.walk(kept) for f in names) == files
    out = tf.saved_model.load(kept).signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_array_equal(out["labels"].numpy(), keras_outputs(model, images)[0])


def test_version_written_meanwhile_is_kept(plain_model, tmp_path, monkeypatch):
    """Without overwrite, a version another export writes while this one runs stays: the
    rename into place fails instead of replacing it."""
    real_save = tf.saved_model.save

    def racing_save(module, path, signatures):
        real_save(module, path, signatures=signatures)
        os.makedirs(tmp_path / "m" / "1")
        (tmp_path / "m" / "1" / "saved_model.pb").write_text("the other export")

    monkeypatch.setattr(tf.saved_model, "save", racing_save)
    with pytest.raises(OSError):
        export.export_saved_model(plain_model, str(tmp_path), "m", 1,
                                  export.class_metadata(None, 10))
    assert os.listdir(tmp_path / "m") == ["1"]
    assert (tmp_path / "m" / "1" / "saved_model.pb").read_text() == "the other export"


def test_signatures_and_dtypes(saved):
    _, loaded = saved
    assert sorted(loaded.signatures) == sorted(export.SIGNATURES)
    expected = {
        "serving_default": ({"images": tf.uint8}, {"labels": tf.int32, "edge_prob": tf.float32}),
        "probabilities": ({"images": tf.uint8},
                          {"probabilities": tf.float32, "edge_prob": tf.float32}),
        "serve_bytes": ({"image_bytes": tf.string},
                        {"labels": tf.int32, "edge_prob": tf.float32}),
    }
    for name, (inputs, outputs) in expected.items():
        fn = loaded.signatures[name]
        specs = fn.structured_input_signature[1]
        assert {k: v.dtype for k, v in specs.items()} == inputs
        assert {k: v.dtype for k, v in fn.structured_outputs.items()} == outputs


def test_saved_model_cli_lists_the_signatures(saved):
    path, _ = saved
    # The venv's own tool, found beside this interpreter: PATH holds it only when the venv
    # is activated, which `pytest` run as `venv/bin/pytest` does not need.
    tool = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run([tool, "show", "--dir", path, "--all"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    text = result.stdout
    # Exactly the three signatures (and TF's own init op), each a Predict method, and no
    # other functions (no Keras internals) among the callable ones.
    assert sorted(re.findall(r"signature_def\['(\w+)'\]", text)) == sorted(
        ["__saved_model_init_op", *export.SIGNATURES])
    assert text.count("Method name is: tensorflow/serving/predict") == len(export.SIGNATURES)
    assert sorted(re.findall(r"Function Name: '(\w+)'", text)) == sorted(export.SIGNATURES)
    for line in ("inputs['images'] tensor_info:", "dtype: DT_UINT8", "dtype: DT_STRING",
                 "outputs['labels'] tensor_info:", "dtype: DT_INT32",
                 "outputs['probabilities'] tensor_info:"):
        assert line in text


def test_outputs_equal_the_keras_model(setup, saved):
    _, model, images = setup
    _, loaded = saved
    labels, edge_prob = keras_outputs(model, images)
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_array_equal(out["labels"].numpy(), labels)
    np.testing.assert_allclose(out["edge_prob"].numpy(), edge_prob, atol=1e-5)
    logits = model(tf.constant(images, tf.float32), training=False)["seg_logits"]
    probs = loaded.signatures["probabilities"](images=tf.constant(images))["probabilities"]
    np.testing.assert_allclose(probs.numpy(), tf.nn.softmax(logits).numpy(), atol=1e-5)
    assert probs.shape == images.shape[:3] + (10,)
    # serve_bytes: lossless PNGs give the same labels; a JPEG decodes and runs.
    pngs = [cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes()
            for im in images]
    out = loaded.signatures["serve_bytes"](image_bytes=tf.constant(pngs))
    np.testing.assert_array_equal(out["labels"].numpy(), labels)
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(images[0], cv2.COLOR_RGB2BGR))[1].tobytes()
    out = loaded.signatures["serve_bytes"](image_bytes=tf.constant([jpeg]))
    assert out["labels"].shape == (1,) + images.shape[1:3]
    assert out["edge_prob"].shape == (1,) + images.shape[1:3] + (1,)


def test_any_image_size(setup, saved):
    _, model, images = setup
    _, loaded = saved
    odd = np.ascontiguousarray(images[:2, :37, :50])
    out = loaded.signatures["serving_default"](images=tf.constant(odd))
    np.testing.assert_array_equal(out["labels"].numpy(), keras_outputs(model, odd)[0])


_PNG = cv2.imencode(".png", np.zeros([8, 8, 3], np.uint8))[1].tobytes()
_RULE = "{}: `images` must be uint8 \\[batch, height, width, 3\\] RGB"
_BYTES_RULE = "serve_bytes: `image_bytes` must be a string vector \\[batch\\]"
_NOT_IMAGES = "serve_bytes: `image_bytes` elements must be PNG, JPEG, BMP or GIF files"


@pytest.mark.parametrize("signature, value, message", [
    *[case for name in ("serving_default", "probabilities") for case in [
        (name, np.zeros([8, 8, 3], np.uint8), _RULE.format(name)),              # rank 3
        (name, np.zeros([1, 1, 8, 8, 3], np.uint8), _RULE.format(name)),        # rank 5
        (name, np.zeros([1, 8, 8, 4], np.uint8), _RULE.format(name)),           # RGBA
        (name, np.zeros([1, 8, 8, 1], np.uint8), _RULE.format(name)),           # grey
        (name, np.zeros([1, 0, 8, 3], np.uint8), f"{name}: `images` height and width"),
        (name, np.zeros([1, 8, 8, 3], np.float32), "expected to be a uint8 tensor"),
    ]],
    ("serve_bytes", np.array(_PNG), _BYTES_RULE),                               # rank 0
    ("serve_bytes", np.array([[_PNG]]), _BYTES_RULE),                           # rank 2
    ("serve_bytes", np.array([], bytes), "serve_bytes: `image_bytes` must hold at least one"),
    ("serve_bytes", np.array([b"not an image"]), _NOT_IMAGES + ".*\\[0\\]"),
    ("serve_bytes", np.array([_PNG, b"", _PNG, b"GIF?"]), _NOT_IMAGES + ".*\\[1 3\\]"),
    ("serve_bytes", np.zeros([1, 8, 8, 3], np.uint8), "expected to be a string tensor"),
])
def test_bad_requests_fail_clearly(saved, signature, value, message):
    """Every signature answers a wrong dtype, rank, channel count, empty image or non-image
    string with an InvalidArgumentError naming the signature's rule."""
    _, loaded = saved
    key = "image_bytes" if signature == "serve_bytes" else "images"
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures[signature](**{key: tf.constant(value)})


def test_grey_and_rgba_files_are_served_as_rgb(setup, saved):
    _, model, images = setup
    _, loaded = saved
    grey = cv2.cvtColor(images[0], cv2.COLOR_RGB2GRAY)
    rgba = cv2.cvtColor(images[1], cv2.COLOR_RGB2BGRA)
    files = [cv2.imencode(".png", im)[1].tobytes() for im in (grey, rgba)]
    expected = keras_outputs(model, np.stack([np.repeat(grey[..., None], 3, -1),
                                              images[1]]))[0]
    for data, labels in zip(files, expected):
        out = loaded.signatures["serve_bytes"](image_bytes=tf.constant([data]))
        np.testing.assert_array_equal(out["labels"].numpy()[0], labels)


def test_mixed_sizes(saved):
    _, loaded = saved
    small, large = (cv2.imencode(".png", np.zeros([h, h, 3], np.uint8))[1].tobytes()
                    for h in (8, 16))
    with pytest.raises(tf.errors.InvalidArgumentError, match="same size"):
        loaded.signatures["serve_bytes"](image_bytes=tf.constant([small, large]))


# Run with `python -I -S`: no PYTHONPATH, no current folder and no site-packages .pth files,
# so the editable install's finder is not loaded; site-packages itself is added back by hand.
_FRESH = r"""
import importlib.util, json, sys
sys.path += json.loads(sys.argv[4])
assert importlib.util.find_spec("gscnn_tf") is None, "gscnn_tf is importable"
import numpy as np
import tensorflow as tf

loaded = tf.saved_model.load(sys.argv[1])
images = np.load(sys.argv[2])
out = loaded.signatures["serving_default"](images=tf.constant(images))
np.save(sys.argv[3], out["labels"].numpy())
assert not [m for m in sys.modules if m.startswith("gscnn_tf")]
print(json.dumps(sorted(loaded.signatures)))
"""


def test_loads_in_a_fresh_process_without_the_package(setup, saved, tmp_path):
    _, model, images = setup
    path, _ = saved
    np.save(tmp_path / "images.npy", images)
    packages = sorted({os.path.dirname(os.path.dirname(tf.__file__)),
                       os.path.dirname(os.path.dirname(np.__file__))})
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _FRESH, path, str(tmp_path / "images.npy"),
         str(tmp_path / "labels.npy"), json.dumps(packages)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == sorted(export.SIGNATURES)
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"),
                                  keras_outputs(model, images)[0])


def test_cli_saved_model(setup, tmp_path, capsys):
    config, model, images = setup
    model.save(tmp_path / "model.keras")
    save_config(config, tmp_path / "config.yaml")
    args = ["export", str(tmp_path / "model.keras"), "--format", "saved_model",
            "--output", str(tmp_path / "exports"), "--model-name", "city", "--version", "2"]
    assert cli.main(args) == 0
    path = tmp_path / "exports" / "city" / "2"
    assert "wrote SavedModel" in capsys.readouterr().out
    out = tf.saved_model.load(str(path)).signatures["serving_default"](
        images=tf.constant(images))
    np.testing.assert_array_equal(out["labels"].numpy(), keras_outputs(model, images)[0])
    assert cli.main(args) == 2  # one error line (tests/test_errors.py), the version kept
    assert f"gscnn-tf export: error: {path} exists" in capsys.readouterr().err
    assert cli.main(args + ["--overwrite"]) == 0


def test_predictor_loads_the_export(setup, saved):
    from gscnn_tf.inference import Predictor

    _, model, images = setup
    path, _ = saved
    labels, edge_prob = keras_outputs(model, images)
    out = Predictor(path).predict(images)
    np.testing.assert_array_equal(out["labels"], labels)
    np.testing.assert_allclose(out["edge_prob"], edge_prob[..., 0], atol=1e-5)


def test_written_files_get_the_umask_mode_not_owner_only(tmp_path):
    """TFLite files and classes.json are read by serving containers running as other users:
    written atomically (a temporary file, then a rename) yet with the mode a plain `open`
    gives, here 0644 under umask 022 (mkstemp alone would leave 0600)."""
    old = os.umask(0o022)
    try:
        path = tmp_path / "model.tflite"
        export.write_file(str(path), b"\x00" * 16)
        plain = tmp_path / "plain"
        plain.write_bytes(b"")
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(plain.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
