"""Every custom layer of gscnn_tf through conftest.run_layer_test: config round trip,
compute_output_shape against call, float32 / float16 / bfloat16 policies."""

import numpy as np
import pytest

from conftest import run_layer_test
from gscnn_tf.models.compat import WrapToUint8
from gscnn_tf.models.layers import GateMultiply, Normalize, ResizeLike, ZerosMap
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
