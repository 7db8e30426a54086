"""SavedModel export for TF Serving: layout, signatures, fresh-process load without gscnn_tf,
equality with the Keras model, bad-request errors and the CLI."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf

from gscnn_tf import cli, export, save_config
from test_export_support import keras_outputs, setup  # noqa: F401 (fixture)


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


def test_overwrite_replaces_the_version(setup, tmp_path):
    config, model, _ = setup
    meta = export.class_metadata(config, 10)
    first = export.export_saved_model(model, str(tmp_path), "m", 1, meta)
    open(os.path.join(first, "marker"), "w").close()
    again = export.export_saved_model(model, str(tmp_path), "m", 1, meta, overwrite=True)
    assert again == first and not os.path.exists(os.path.join(first, "marker"))
    assert sorted(os.listdir(tmp_path / "m")) == ["1"]
    with pytest.raises(export.ExportError, match="version 0"):
        export.export_saved_model(model, str(tmp_path), "m", 0, meta)


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
    result = subprocess.run(["saved_model_cli", "show", "--dir", path, "--all"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    for name in export.SIGNATURES:
        assert f"signature_def['{name}']" in text
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


@pytest.mark.parametrize("signature, value, message", [
    ("serving_default", np.zeros([8, 8, 3], np.uint8), "must be uint8 \\[batch, height"),
    ("serving_default", np.zeros([1, 8, 8, 4], np.uint8), "must be uint8 \\[batch, height"),
    ("probabilities", np.zeros([1, 1, 8, 8, 3], np.uint8), "must be uint8 \\[batch, height"),
    ("serve_bytes", np.array("not a list"), "must be a string vector"),
    ("serve_bytes", np.array([b"not an image"]), "Unknown image file format"),
])
def test_bad_requests_fail_clearly(saved, signature, value, message):
    _, loaded = saved
    key = "image_bytes" if signature == "serve_bytes" else "images"
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures[signature](**{key: tf.constant(value)})


def test_bad_dtype_and_mixed_sizes(saved):
    _, loaded = saved
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a uint8"):
        loaded.signatures["serving_default"](images=tf.zeros([1, 8, 8, 3], tf.float32))
    small, large = (cv2.imencode(".png", np.zeros([h, h, 3], np.uint8))[1].tobytes()
                    for h in (8, 16))
    with pytest.raises(tf.errors.InvalidArgumentError, match="same size"):
        loaded.signatures["serve_bytes"](image_bytes=tf.constant([small, large]))


_FRESH = r"""
import importlib.abc, json, sys
import numpy as np

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "gscnn_tf" or name.startswith("gscnn_tf."):
            raise ImportError("gscnn_tf must not be needed to serve the model")

sys.meta_path.insert(0, Block())
sys.path = [p for p in sys.path if p not in ("", ".") and "work/main" not in p]
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
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", _FRESH, path, str(tmp_path / "images.npy"),
         str(tmp_path / "labels.npy")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
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
    with pytest.raises(export.ExportError, match="exists"):
        cli.main(args)
    assert cli.main(args + ["--overwrite"]) == 0


def test_predictor_loads_the_export(setup, saved):
    from gscnn_tf.inference import Predictor

    _, model, images = setup
    path, _ = saved
    labels, edge_prob = keras_outputs(model, images)
    out = Predictor(path).predict(images)
    np.testing.assert_array_equal(out["labels"], labels)
    np.testing.assert_allclose(out["edge_prob"], edge_prob[..., 0], atol=1e-5)
