"""`gscnn_tf.ops.conv`: the convolution whose filter gradient is one matmul per tap, against
TensorFlow's own convolution and its gradients; the layer every model uses; one training step
of the tiny model in both forms."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gscnn_tf.models.layers import Conv2D
from gscnn_tf.ops import conv
from conftest import op_count
from training_support import first_step, mirrored_strategy

# (input [B, H, W, Cin], kernel [kh, kw, Cin, Cout], strides, padding, dilations)
CASES = [
    ((2, 9, 11, 16), (3, 3, 16, 8), (1, 1), "SAME", (1, 1)),
    ((2, 9, 11, 16), (3, 3, 16, 8), (2, 2), "SAME", (1, 1)),    # odd size, stride 2
    ((2, 10, 12, 16), (3, 3, 16, 8), (2, 1), "SAME", (1, 1)),   # even size, one stride
    ((2, 9, 11, 16), (3, 3, 16, 8), (2, 2), "VALID", (1, 1)),
    ((2, 12, 12, 16), (4, 4, 16, 8), (2, 2), "SAME", (1, 1)),   # even kernel: uneven padding
    ((2, 9, 11, 16), (2, 4, 16, 8), (1, 1), "SAME", (1, 1)),
    ((2, 9, 11, 16), (1, 1, 16, 8), (1, 1), "VALID", (1, 1)),   # one product, no copy
    ((2, 9, 11, 16), (1, 1, 16, 8), (2, 2), "SAME", (1, 1)),
    ((2, 9, 11, 16), (3, 3, 16, 8), (1, 1), "SAME", (2, 2)),    # space to batch
    ((2, 9, 11, 16), (3, 3, 16, 8), (1, 1), "SAME", (4, 3)),
    ((2, 17, 11, 16), (3, 3, 16, 8), (1, 1), "VALID", (2, 2)),
    ((1, 9, 11, 3), (7, 7, 3, 8), (2, 2), "VALID", (1, 1)),
]


@pytest.fixture
def cpu_only(monkeypatch):
    """"auto" as on a host without a GPU, whatever this host has."""
    monkeypatch.setattr(conv, "gpu_visible", lambda: False)


def _values_and_gradients(fn, x, kernel):
    """fn(x, kernel), and the gradients of a non-linear loss of it to x and kernel."""
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        y = fn(x, kernel)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.sin(tf.cast(y, tf.float32)))
    return [y, *tape.gradient(loss, [x, kernel])]


def _close(actual, expected, rel):
    """Equal to `rel` of expected's largest magnitude (the sums run in another order)."""
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rel * np.abs(expected).max())


@pytest.mark.parametrize("x_shape, k_shape, strides, padding, dilations", CASES)
def test_values_and_gradients_equal_tensorflows(rng, x_shape, k_shape, strides, padding,
                                                dilations):
    x = tf.constant(rng.standard_normal(x_shape), tf.float32)
    kernel = tf.constant(rng.standard_normal(k_shape), tf.float32)
    native = _values_and_gradients(
        lambda x, k: tf.nn.convolution(x, k, strides, padding, dilations=dilations), x, kernel)
    with conv.filter_gradient("matmul"):
        ours = tf.function(lambda x, k: _values_and_gradients(
            lambda x, k: conv.conv2d(x, k, strides, padding.lower(), dilations), x, k))
        ours = ours(x, kernel)
    np.testing.assert_array_equal(ours[0], native[0])  # TensorFlow's forward kernel
    np.testing.assert_array_equal(ours[1], native[1])  # and its input gradient
    _close(ours[2], native[2], 1e-6)


def test_dynamic_height_and_width_and_bfloat16(rng):
    """One traced graph for any image size (the Predictor's signature), and bfloat16 (the
    mixed-precision training policy) within bfloat16's rounding of TensorFlow's kernel."""
    kernel = tf.constant(rng.standard_normal((3, 3, 16, 8)), tf.float32)
    with conv.filter_gradient("matmul"):
        step = tf.function(
            lambda x, k: _values_and_gradients(lambda x, k: conv.conv2d(x, k), x, k),
            input_signature=[tf.TensorSpec([None, None, None, 16]), tf.TensorSpec([3, 3, 16, 8])])
        for size in [(7, 9), (12, 5)]:
            x = tf.constant(rng.standard_normal((2, *size, 16)), tf.float32)
            native = _values_and_gradients(lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"), x, kernel)
            ours = step(x, kernel)
            _close(ours[2], native[2], 1e-6)
        x = tf.constant(rng.standard_normal((2, 9, 11, 16)), tf.bfloat16)
        kernel16 = tf.cast(kernel, tf.bfloat16)
        native = _values_and_gradients(lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"), x, kernel16)
        ours = tf.function(_values_and_gradients)(lambda x, k: conv.conv2d(x, k), x, kernel16)
    assert ours[2].dtype == tf.bfloat16
    _close(ours[2], native[2], 2e-2)


def _gradient_graph(kernel_shape, strides=(1, 1), form="auto"):
    x = tf.TensorSpec([2, 8, 8, kernel_shape[2]])
    k = tf.TensorSpec(kernel_shape)
    with conv.filter_gradient(form):
        return tf.function(lambda x, k: _values_and_gradients(
            lambda x, k: conv.conv2d(x, k, strides), x, k)).get_concrete_function(x, k)


@pytest.mark.parametrize("kernel_shape, strides, form, matmuls", [
    ((3, 3, 16, 8), (1, 1), "matmul", 9),
    ((3, 3, 16, 8), (1, 1), "native", 0),
    ((1, 1, 64, 1), (1, 1), "auto", 1),     # 1x1 stride 1: always one product
    ((1, 1, 64, 64), (2, 2), "auto", 0),    # strided 1x1: copies, and narrow
    ((3, 3, 64, 64), (1, 1), "auto", 0),    # narrow: the taps would run at memory speed
    ((3, 3, 256, 256), (1, 1), "auto", 9),  # wide: the products pay
])
def test_the_form_each_kernel_takes(cpu_only, kernel_shape, strides, form, matmuls):
    concrete = _gradient_graph(kernel_shape, strides, form)
    assert op_count(concrete, "MatMul") == matmuls
    assert op_count(concrete, "Conv2DBackpropFilter") == (0 if matmuls else 1)
    assert op_count(concrete, "Conv2DBackpropInput") == 1


def test_auto_keeps_the_native_kernel_where_a_gpu_is_visible(monkeypatch):
    monkeypatch.setattr(conv, "gpu_visible", lambda: True)
    assert conv.filter_gradient_form((3, 3, 256, 256)) == "native"
    assert conv.filter_gradient_form((1, 1, 64, 1)) == "native"
    with conv.filter_gradient("matmul"):
        assert conv.filter_gradient_form((1, 1, 64, 1)) == "matmul"
    monkeypatch.setattr(conv, "gpu_visible", lambda: False)
    assert conv.filter_gradient_form((1, 1, 64, 1)) == "matmul"


def test_taps_are_cut_in_the_backward_pass_one_at_a_time():
    """The padded input and each tap's slice wait for the output's gradient (else, with
    static shapes, the executor copies every layer's input during the forward pass and holds
    it to the end: measured 1.3 GiB more on WRN-38 at 512x512), and each slice waits for the
    previous tap's product, so the backward pass holds one copy of the input at a time, not
    nine: the k-th slice has k products before it in the graph."""
    concrete = _gradient_graph((3, 3, 16, 8), form="matmul")
    nodes = {n.name: n for n in concrete.graph.as_graph_def().node}

    def before(name, seen):
        for source in nodes[name].input:
            source = source.lstrip("^").split(":")[0]
            if source not in seen:
                seen.add(source)
                before(source, seen)
        return [nodes[n].op for n in seen]

    (pad,) = [n for n, node in nodes.items() if node.op == "Pad"]
    assert "Cos" in before(pad, set())  # the loss's gradient: sin(y) + y cos(y)
    slices = [n for n, node in nodes.items() if node.op == "StridedSlice"
              and nodes[node.input[0].split(":")[0]].op == "Pad"]
    assert sorted(before(n, set()).count("MatMul") for n in slices) == list(range(9))
    assert all("Cos" in before(n, set()) for n in slices)


def test_a_bad_form_is_refused_in_one_line():
    with pytest.raises(ValueError, match="filter gradient form 'fast': expected one of auto, "
                                         "matmul, native"):
        with conv.filter_gradient("fast"):
            pass


def test_layer_is_kerass_conv2d_outside_training(rng):
    """Same weights and config as keras.layers.Conv2D; the inference graph is Keras's (what
    exports see); training gives Keras's outputs and gradients in the matmul form."""
    kwargs = {"filters": 8, "kernel_size": 3, "padding": "same", "dilation_rate": 2,
              "activation": "relu"}
    ours, theirs = Conv2D(**kwargs), keras.layers.Conv2D(**kwargs)
    x = tf.constant(rng.standard_normal((2, 9, 11, 16)), tf.float32)
    ours.build(x.shape)
    theirs.build(x.shape)
    assert [w.path.split("/")[-1] for w in ours.weights] == ["kernel", "bias"]
    theirs.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in theirs.weights])
    ours.set_weights(theirs.get_weights())
    assert keras.saving.get_registered_name(Conv2D) == "gscnn_tf>Conv2D"
    assert ours.get_config() == {**theirs.get_config(), "name": ours.name}

    def op_types(layer, training):
        concrete = tf.function(lambda x: layer(x, training=training)).get_concrete_function(x)
        return sorted(n.op for n in concrete.graph.as_graph_def().node)

    assert op_types(ours, False) == op_types(theirs, False)
    with conv.filter_gradient("matmul"):
        assert "IdentityN" in op_types(ours, True)  # the custom gradient

    def step(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * tf.cos(y))
        return [y, *tape.gradient(loss, [x, *layer.trainable_weights])]

    with conv.filter_gradient("matmul"):
        got = tf.function(lambda: step(ours))()
    for a, b in zip(got, step(theirs)):
        _close(a, b, 1e-6)


def test_weights_saved_with_kerass_conv2d_load(tmp_path, rng):
    """Keras keys a weights file by each layer's class name: models saved before every
    convolution became gscnn_tf's Conv2D load into today's, and the other way round."""
    def model(conv_class):
        x = keras.Input((8, 8, 3))
        y = conv_class(4, 3, padding="same", name="a")(x)
        return keras.Model(x, conv_class(2, 1, name="b")(y))

    old, new = model(keras.layers.Conv2D), model(Conv2D)
    old.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in old.weights])
    old.save_weights(tmp_path / "old.weights.h5")
    new.load_weights(tmp_path / "old.weights.h5")
    for a, b in zip(old.get_weights(), new.get_weights()):
        np.testing.assert_array_equal(a, b)


def _one_step(root, run_dir, form, *overrides, strategy=None):
    with conv.filter_gradient(form):
        return first_step(root, run_dir, overrides, strategy, "Conv2DBackpropFilter")


# A wrong filter gradient would move weights by about lr x |gradient| ~ 1e-2; in 16-bit
# precisions the two forms round each gradient differently (bfloat16: ~3e-4 on the weights).
@pytest.mark.parametrize("options, rel, atol", [
    ((), 1e-5, 1e-6),
    (("train.xla=true",), 1e-5, 1e-6),
    (("train.mixed_precision=bf16",), 1e-4, 1e-3),
    pytest.param(("train.mixed_precision=fp16",), 1e-4, 1e-3, marks=pytest.mark.slow),
    pytest.param(("replicas=2",), 1e-5, 1e-6,
                 marks=pytest.mark.slow),
])
def test_training_step_in_both_forms_is_the_same_step(tmp_path, options, rel, atol):
    """The tiny GSCNN's first training step with every filter gradient as matmuls and with
    none: the same loss terms (the forward pass is the same) and the same weights after the
    update, moving statistics too; in float32, under XLA, in bfloat16 and float16, and on two
    replicas."""
    strategy = mirrored_strategy() if "replicas=2" in options else None
    options = [o for o in options if o != "replicas=2"]
    root = str(tmp_path / "data")
    native = _one_step(root, tmp_path / "native", "native", *options, strategy=strategy)
    matmul = _one_step(root, tmp_path / "matmul", "matmul", *options, strategy=strategy)
    for key, value in native[0].items():
        assert matmul[0][key] == pytest.approx(value, rel=rel, abs=rel / 10), key
    for a, b in zip(native[1], matmul[1]):
        np.testing.assert_allclose(b, a, rtol=rel, atol=atol)
    if "train.xla=true" not in options:  # XLA's graph is one compiled call
        assert matmul[2] == 0
        assert native[2] > 30
