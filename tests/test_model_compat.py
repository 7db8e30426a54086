"""`model.compat: reference`: the reference's conventions, each against an independent
reference (numpy's uint8 cast and OpenCV's 3-channel Canny, the align-corners formula in numpy
and torch), config errors, default models unchanged, and TFLite of the compat ops."""


import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

from gscnn_tf.config import ConfigError, ModelConfig
from gscnn_tf.export import convert_tflite, run_tflite, tflite_ops
from gscnn_tf.models.compat import WrapToUint8, reference_canny
from gscnn_tf.models.gscnn import build_model
from gscnn_tf.models.layers import Normalize, ResizeLike


def _scenes(rng, n, h, w):
    """RGB 0..255 float32 images: ramps, rectangles and noise (many edges after wrapping)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    images = []
    for i in range(n):
        img = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
        for _ in range(4):
            y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
            img[y0:y0 + rng.integers(4, h // 2), x0:x0 + rng.integers(4, w // 2)] = \
                rng.uniform(0, 255, 3)
        img += rng.normal(0, 6 * i, img.shape)
        images.append(np.clip(img, 0, 255))
    return np.stack(images).astype(np.float32)


def _reference_canny_model():
    x = keras.Input((None, None, 3))
    return keras.Model(x, reference_canny(x, ModelConfig()))


def test_wrap_to_uint8_is_numpy_cast():
    values = np.array([-2.1, -1.2, -0.5, -0.0, 0.99, 255.9, 256.5, -256.0, -257.5, 1000.3],
                      np.float32)
    got = WrapToUint8()(values.reshape(1, 1, -1, 1)).numpy().ravel()
    np.testing.assert_array_equal(got, [254, 255, 0, 0, 0, 255, 0, 0, 255, 232])
    x = np.random.default_rng(0).uniform(-600, 600, (1, 16, 16, 3)).astype(np.float32)
    expected = (np.trunc(x).astype(np.int64) % 256).astype(np.float32)
    np.testing.assert_array_equal(WrapToUint8()(x).numpy(), expected)
    np.testing.assert_array_equal(expected, x.astype(np.uint8))  # numpy's cast on this CPU


@pytest.mark.parametrize("source", ["normalised", "wide"])
def test_reference_canny_equals_opencv_3_channel(source, rng):
    images = _scenes(rng, 3, 45, 62)
    if source == "normalised":  # the reference's input: ImageNet-normalised, values ~[-2, 3]
        x = Normalize("torch")(images).numpy()
    else:  # values far outside 0..255 and below 0: every wrap of the modulo
        x = (images - 128.0) * 2.7
    got = _reference_canny_model()(x).numpy()[..., 0]
    expected = np.stack([cv2.Canny(im, 10, 100) for im in x.astype(np.uint8)])
    assert set(np.unique(got)) <= {0.0, 255.0} and expected.sum() > 0
    np.testing.assert_array_equal(got, expected.astype(np.float32))


def _align_corners_numpy(x, out_h, out_w):
    """The reference formula: output pixel i reads input i * (n_in - 1) / (n_out - 1)."""
    def axis(n_in, n_out):
        src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    y0, y1, wy = axis(x.shape[1], out_h)
    x0, x1, wx = axis(x.shape[2], out_w)
    wy, wx = wy[None, :, None, None], wx[None, None, :, None]
    top = x[:, y0][:, :, x0] * (1 - wx) + x[:, y0][:, :, x1] * wx
    bottom = x[:, y1][:, :, x0] * (1 - wx) + x[:, y1][:, :, x1] * wx
    return top * (1 - wy) + bottom * wy


@pytest.mark.parametrize("src,dst", [((5, 7), (9, 13)), ((9, 13), (4, 5)), ((1, 1), (3, 4)),
                                     ((6, 6), (1, 1)), ((8, 8), (64, 64)), ((64, 64), (8, 8))])
def test_align_corners_resize_matches_formula(src, dst, rng):
    x = rng.normal(size=(2, *src, 3)).astype(np.float32)
    ref = np.zeros((1, *dst, 1), np.float32)
    got = ResizeLike(align_corners=True)([x, ref]).numpy()
    np.testing.assert_allclose(got, _align_corners_numpy(x.astype(np.float64), *dst),
                               atol=2e-6)
    torch_out = torch.nn.functional.interpolate(
        torch.from_numpy(x).permute(0, 3, 1, 2), dst, mode="bilinear", align_corners=True)
    np.testing.assert_allclose(got, torch_out.permute(0, 2, 3, 1).numpy(), atol=2e-6)


def test_half_pixel_resize_is_unchanged(rng):
    x = rng.normal(size=(1, 8, 8, 2)).astype(np.float32)
    got = ResizeLike()([x, np.zeros((1, 64, 64, 1))]).numpy()
    torch_out = torch.nn.functional.interpolate(
        torch.from_numpy(x).permute(0, 3, 1, 2), (64, 64), mode="bilinear",
        align_corners=False)
    np.testing.assert_allclose(got, torch_out.permute(0, 2, 3, 1).numpy(), atol=2e-6)


@pytest.mark.parametrize("override,named", [
    ({"compat": "pytorch"}, "model.compat 'pytorch'"),
    ({"compat": "reference"}, "model.backbone.name is 'small' (needs 'wrn38')"),
    ({"compat": "reference", "shape_stream_stride": 2, "gate": "paper"},
     "model.shape_stream_stride is 2 (needs 1); model.gate is 'paper'"),
])
def test_compat_config_errors(override, named):
    config = ModelConfig(**override)
    with pytest.raises(ConfigError) as e:
        build_model(config, 3)
    assert named in str(e.value)
    wrn = ModelConfig(compat="reference")
    wrn.backbone.name, wrn.backbone.output_stride = "wrn38", 16
    with pytest.raises(ConfigError, match="output_stride is 16 .needs 8."):
        build_model(wrn, 3)


def test_default_model_is_unchanged():
    model = build_model(ModelConfig(), 3)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert "WrapToUint8" not in kinds and "Rescaling" not in kinds
    assert not any(layer.align_corners for layer in model.layers
                   if isinstance(layer, ResizeLike))
    assert {layer.epsilon for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization)} == {1e-3}
    assert model.get_layer("canny").channels == "gray"


def test_compat_ops_convert_to_tflite_exactly(rng, tmp_path):
    """The compat-only ops (uint8 wrap, 3-channel Canny, align-corners resize) as TFLite
    builtins, with the same results as in TF."""
    image = keras.Input((None, None, 3))
    x = Normalize("torch")(image)
    # the TFLite exports' step form: the default "fused" is XLA-compiled, which export swaps
    edges = reference_canny(x, ModelConfig(canny_step_form="pool"))
    small = keras.layers.AveragePooling2D(8)(x)
    up = ResizeLike(align_corners=True)([small, image])
    model = keras.Model(image, {"edges": edges, "up": up})
    spec = [tf.TensorSpec([1, 48, 64, 3], tf.uint8, name="images")]

    @tf.function(input_signature=spec)
    def predict(images):
        out = model(tf.cast(images, tf.float32))
        return {"labels": tf.cast(out["edges"][..., 0], tf.int32),
                "edge_prob": out["up"][..., :1]}

    content = convert_tflite(predict.get_concrete_function())
    assert {"RESIZE_BILINEAR", "FLOOR", "CEIL"} <= tflite_ops(content)
    images = _scenes(rng, 2, 48, 64).astype(np.uint8)
    got = run_tflite(content, images)
    want = [predict(tf.constant(im[None])) for im in images]
    np.testing.assert_array_equal(got["labels"], np.concatenate([w["labels"] for w in want]))
    np.testing.assert_allclose(got["edge_prob"],
                               np.concatenate([w["edge_prob"] for w in want]), atol=1e-5)
