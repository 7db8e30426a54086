"""bfloat16 inference: `with_precision` rebuilds the model under the mixed_bfloat16 policy with
the same weights (Canny and the logits stay float32) and its labels agree with float32;
`--precision bf16` on predict and export, and the one-line error for a SavedModel."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf

import gscnn_tf
from conftest import tiny_model_config
from gscnn_tf.errors import UsageError
from gscnn_tf.precision import with_precision


@pytest.fixture(scope="module")
def model():
    tf.keras.utils.set_random_seed(3)
    built = gscnn_tf.build_model(tiny_model_config(), 5)
    # class logits far from ties, so the labels say something (random weights give ~0)
    classifier = built.get_layer("decoder_classifier")
    classifier.set_weights([w * 8.0 for w in classifier.get_weights()])
    return built


def _scene(height=96, width=128):
    rng = np.random.default_rng(5)
    image = np.zeros((height, width, 3), np.uint8)
    for _ in range(12):
        y, x = rng.integers(0, height - 8), rng.integers(0, width - 8)
        image[y:y + rng.integers(8, 40), x:x + rng.integers(8, 50)] = rng.integers(0, 256, 3)
    return cv2.GaussianBlur(image, (3, 3), 1.0)


def test_bf16_model_same_weights_float32_canny_and_logits(model):
    bf16 = with_precision(model, "bf16")
    assert bf16 is not model and with_precision(bf16, "bf16") is bf16
    assert with_precision(model, "fp32") is model
    conv = bf16.get_layer("decoder_classifier")
    assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"
    assert bf16.get_layer("canny").compute_dtype == "float32"
    for a, b in zip(model.get_weights(), bf16.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = tf.constant(_scene()[None], tf.float32)
    ref, out = model(x, training=False), bf16(x, training=False)
    assert out["seg_logits"].dtype == tf.float32 and out["edge_logits"].dtype == tf.float32
    np.testing.assert_array_equal(bf16.get_layer("canny")(x), model.get_layer("canny")(x))
    ref_labels = np.argmax(ref["seg_logits"], -1)
    agreement = np.mean(np.argmax(out["seg_logits"], -1) == ref_labels)
    assert len(np.unique(ref_labels)) > 1 and agreement >= 0.99
    # bfloat16 keeps 8 bits of mantissa: logits within a few per cent of their range
    scale = float(np.abs(ref["seg_logits"]).max())
    assert float(np.abs(out["seg_logits"] - ref["seg_logits"]).max()) < 0.05 * scale
    with pytest.raises(UsageError, match="--precision fp16"):
        with_precision(model, "fp16")


def test_predict_with_bf16_and_the_savedmodel_error(model, tmp_path):
    from gscnn_tf.cli import main

    model.save(str(tmp_path / "model.keras"))
    cv2.imwrite(str(tmp_path / "x.png"), _scene()[..., ::-1])
    assert main(["predict", str(tmp_path / "model.keras"), str(tmp_path / "x.png"), "-o",
                 str(tmp_path / "out"), "--precision", "bf16"]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["x_edges.png", "x_labels.png",
                                                     "x_overlay.png"]
    # a SavedModel keeps its precision: one line naming it, exit 2, no traceback
    saved = tmp_path / "saved"
    serve = tf.function(lambda images: {"labels": tf.zeros(tf.shape(images)[:3], tf.int32)},
                        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    tf.saved_model.save(tf.Module(), str(saved), signatures={"serving_default": serve})
    result = subprocess.run([sys.executable, "-m", "gscnn_tf.cli", "predict", str(saved),
                             str(tmp_path / "x.png"), "--precision", "bf16"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"{saved} is a SavedModel" in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_export_bf16_savedmodel(model, tmp_path):
    """`gscnn-tf export --precision bf16`: the SavedModel computes in bfloat16 and its labels
    agree with the bfloat16 Keras model's (op fusion differs, so rounding can differ)."""
    from gscnn_tf.cli import main

    model.save(str(tmp_path / "model.keras"))
    assert main(["export", str(tmp_path / "model.keras"), "-o", str(tmp_path / "exports"),
                 "--precision", "bf16"]) == 0
    signature = tf.saved_model.load(str(tmp_path / "exports" / "gscnn" / "1")).signatures[
        "serving_default"]
    assert "DT_BFLOAT16" in str(signature.graph.as_graph_def())
    labels = signature(images=tf.constant(_scene()[None]))["labels"].numpy()
    bf16 = with_precision(model, "bf16")
    expected = np.argmax(bf16(tf.constant(_scene()[None], tf.float32))["seg_logits"], -1)
    assert np.mean(labels == expected) >= 0.99
