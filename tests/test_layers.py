"""Every custom layer of gscnn_tf through conftest.run_layer_test: config round trip,
compute_output_shape against call, float32 / float16 / bfloat16 policies."""

import numpy as np
import pytest

from conftest import run_layer_test
from gscnn_tf.models.compat import WrapToUint8
from gscnn_tf.models.layers import AtrousConv2D, GateMultiply, Normalize, ResizeLike, ZerosMap
from gscnn_tf.ops.canny import Canny

RNG = np.random.default_rng(0)
IMAGE = RNG.uniform(0, 255, (2, 12, 10, 3)).astype(np.float32)


@pytest.mark.parametrize("mode", Normalize.MODES)
def test_normalize(mode):
    run_layer_test(Normalize, {"mode": mode}, IMAGE, (2, 12, 10, 3))


@pytest.mark.parametrize("stride, align_corners, size", [(1, False, (12, 10)),
                                                          (2, True, (6, 5)),
                                                          (4, False, (3, 3))])
def test_resize_like(stride, align_corners, size):
    x = RNG.normal(size=(2, 5, 4, 6)).astype(np.float32)
    run_layer_test(ResizeLike, {"stride": stride, "align_corners": align_corners},
                   [x, IMAGE], (2, *size, 6))


def test_zeros_map():
    run_layer_test(ZerosMap, {}, IMAGE, (2, 12, 10, 1), exact=True)


def test_gate_multiply():
    features = RNG.normal(size=(2, 12, 10, 5)).astype(np.float32)
    alpha = RNG.uniform(size=(2, 12, 10, 1)).astype(np.float32)
    run_layer_test(GateMultiply, {}, [features, alpha], (2, 12, 10, 5))


def test_atrous_conv2d():
    run_layer_test(AtrousConv2D, {"filters": 4, "kernel_size": 3, "dilation_rate": 5,
                                  "kernel_initializer": {"class_name": "GlorotUniform",
                                                         "config": {"seed": 1}}},
                   IMAGE / 255.0, (2, 12, 10, 4))


def test_wrap_to_uint8():
    # integers in [-256, 256]: exact in bfloat16 (8 significant bits), which the mixed
    # policies cast the input to; the model builds this layer with dtype float32
    x = RNG.uniform(-256, 256, (2, 12, 10, 3)).round().astype(np.float32)
    run_layer_test(WrapToUint8, {}, x, (2, 12, 10, 3), output_dtype="float32", exact=True)


@pytest.mark.parametrize("step_form", ["bool", "mask"])
def test_canny(step_form):
    # integer pixels: float16 and bfloat16 hold 0..255 exactly, so the edges are the same
    image = np.round(IMAGE)
    run_layer_test(Canny, {"low": 20.0, "high": 60.0, "step_form": step_form}, image,
                   (2, 12, 10, 1), output_dtype="float32", exact=True)


@pytest.mark.parametrize("size, rate, bias", [
    ((9, 7), 12, False),      # every off-centre tap reads padding only
    ((20, 13), 6, False),     # partly inside, rows and columns differently
    ((16, 16), (2, 5), True),  # a rate per axis, bias and activation
])
def test_atrous_conv2d_training_form_equals_the_dilated_convolution(size, rate, bias):
    """Training's shifted-taps form against TensorFlow's dilated convolution on the same
    weights: outputs and the gradients of a loss to the input and to every weight."""
    import tensorflow as tf

    x = tf.constant(RNG.normal(size=(2, *size, 6)).astype(np.float32))
    layer = AtrousConv2D(5, 3, dilation_rate=rate, use_bias=bias,
                         activation="relu" if bias else None)
    layer.build(x.shape)
    layer.set_weights([RNG.normal(size=w.shape).astype(np.float32) for w in layer.weights])
    weights = tf.constant(RNG.normal(size=(2, *size, 5)).astype(np.float32))
    results = []
    for training in (False, True):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
            loss = tf.reduce_sum(y * weights)
        results.append([y, *tape.gradient(loss, [x, *layer.trainable_weights])])
    plain = tf.nn.convolution(x, layer.kernel, padding="SAME", dilations=layer.dilation_rate)
    if bias:
        plain = tf.nn.relu(plain + layer.bias)
    np.testing.assert_allclose(results[0][0], plain, rtol=1e-5, atol=1e-5)
    for inference, training in zip(*results):
        np.testing.assert_allclose(training, inference, rtol=1e-4, atol=1e-4)
