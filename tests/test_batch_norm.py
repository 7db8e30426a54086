"""`gscnn_tf.models.layers.BatchNormalization`: TensorFlow's fused kernel in training,
against keras.layers.BatchNormalization (outputs, gradients, moving statistics), where it
keeps Keras's path, and one training step of the tiny model with and without it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gscnn_tf.models.layers import BatchNormalization
from gscnn_tf.ops import conv
from conftest import op_count
from training_support import first_step, mirrored_strategy

SHAPE = (2, 9, 11, 6)


def _pair(rng, dtype=None, **kwargs):
    """Ours and Keras's layer, built for SHAPE with the same random positive weights."""
    ours, theirs = (cls(dtype=dtype, **kwargs) for cls in
                    (BatchNormalization, keras.layers.BatchNormalization))
    theirs.build(SHAPE)
    ours.build(SHAPE)
    theirs.set_weights([rng.uniform(0.5, 2.0, w.shape).astype(np.float32)
                        for w in theirs.weights])
    ours.set_weights(theirs.get_weights())
    return ours, theirs


def _train_call(layer, x, weights, jit=False):
    """(outputs, gradients of a non-linear loss to x and the layer's trainable weights,
    moving statistics after the call), in one tf.function, and that function."""
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.cast(layer(x, training=True), tf.float32)
            loss = tf.reduce_sum(y * tf.sin(y) * weights)
        return y, tape.gradient(loss, [x, *layer.trainable_weights])

    fn = tf.function(step, jit_compile=jit)
    y, grads = fn()
    return ([y.numpy(), *[np.asarray(tf.cast(g, tf.float32)) for g in grads],
             *[w.numpy() for w in layer.non_trainable_weights]], fn)


def _close(actual, expected, rel):
    for a, b in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=rel * np.abs(b).max())


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("kwargs", [{}, {"epsilon": 1e-5}, {"center": False, "scale": False},
                                    {"momentum": 0.5}])
def test_training_pass_equals_kerass(rng, kwargs, jit):
    """Outputs, the gradients to the input, gamma and beta, and the moving mean and variance
    after one step (Keras keeps the biased batch variance; the kernel's is Bessel-corrected)
    equal Keras's layer's; the graph holds the fused op and no batch moments (on a GPU host,
    Keras's path for an epsilon under cuDNN's minimum)."""
    x = tf.constant(rng.standard_normal(SHAPE) * 3 + 1, tf.float32)
    weights = tf.constant(rng.standard_normal(SHAPE), tf.float32)
    ours, theirs = _pair(rng, **kwargs)
    got, fn = _train_call(ours, x, weights, jit)
    expected, _ = _train_call(theirs, x, weights, jit)
    _close(got, expected, 1e-5)
    fused = kwargs.get("epsilon", 1e-3) >= 1.001e-5 or not conv.gpu_visible()
    concrete = fn.get_concrete_function()
    assert op_count(concrete, "FusedBatchNormV3") == int(fused)
    assert (op_count(concrete, "Mean") == 0) == fused


def test_bfloat16_inputs_go_in_as_they_are(rng):
    """Under a bfloat16 policy the fused op takes the bfloat16 tensor (no cast up and down);
    outputs and gradients within bfloat16's rounding of Keras's, statistics in float32."""
    x = tf.constant(rng.standard_normal(SHAPE) * 3 + 1, tf.bfloat16)
    weights = tf.constant(rng.standard_normal(SHAPE), tf.float32)
    ours, theirs = _pair(rng, dtype="mixed_bfloat16")
    got, fn = _train_call(ours, x, weights)
    expected, _ = _train_call(theirs, x, weights)
    _close(got[:4], expected[:4], 2e-2)
    _close(got[4:], expected[4:], 1e-5)
    (node,) = [n for n in fn.get_concrete_function().graph.as_graph_def().node
               if n.op == "FusedBatchNormV3"]
    assert node.attr["T"].type == tf.bfloat16.as_datatype_enum


def _fused_ops(layer, x):
    return op_count(tf.function(lambda: layer(x, training=True)).get_concrete_function(),
                    "FusedBatchNormV3")


def test_kerass_path_where_the_kernel_cannot_give_its_result(rng, monkeypatch):
    """Renorm, `fused` false, and an epsilon under cuDNN's minimum with a GPU visible take
    Keras's graph; synchronised statistics on one replica and a small epsilon on a CPU host
    take the kernel."""
    x = tf.constant(rng.standard_normal(SHAPE), tf.float32)
    monkeypatch.setattr(conv, "gpu_visible", lambda: True)
    assert _fused_ops(_pair(rng, epsilon=1e-5)[0], x) == 0
    assert _fused_ops(_pair(rng, epsilon=1e-3)[0], x) == 1
    monkeypatch.setattr(conv, "gpu_visible", lambda: False)
    assert _fused_ops(_pair(rng, epsilon=1e-5)[0], x) == 1
    assert _fused_ops(_pair(rng, synchronized=True)[0], x) == 1
    assert _fused_ops(_pair(rng, renorm=True)[0], x) == 0
    layer = _pair(rng)[0]
    layer.fused = False
    assert _fused_ops(layer, x) == 0
    assert BatchNormalization.fused


def test_synchronised_statistics_on_two_replicas_stay_kerass(rng):
    """With several replicas in sync the batch moments are all-reduced: Keras's path, the
    same outputs and moving statistics as Keras's synchronised layer."""
    strategy = mirrored_strategy()
    x = rng.standard_normal((4, *SHAPE[1:])).astype(np.float32)
    data = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(x).batch(4))
    results = []
    for cls in (BatchNormalization, keras.layers.BatchNormalization):
        with strategy.scope():
            layer = cls(synchronized=True)
            layer.build(SHAPE)
        run = tf.function(lambda v, layer=layer: strategy.run(
            lambda t: layer(t, training=True), args=(v,)))
        batch = next(iter(data))
        outputs = strategy.experimental_local_results(run(batch))
        results.append([np.concatenate([o.numpy() for o in outputs]),
                        layer.moving_mean.numpy(), layer.moving_variance.numpy()])
        if cls is BatchNormalization:
            assert op_count(run.get_concrete_function(batch), "FusedBatchNormV3") == 0
    _close(results[0], results[1], 1e-6)


def test_inference_graph_config_and_saved_weights_are_kerass(tmp_path, rng):
    """Same config (registered as gscnn_tf>BatchNormalization), the same inference graph (what
    exports see), and weights saved with keras.layers.BatchNormalization load into ours."""
    ours, theirs = _pair(rng)
    assert keras.saving.get_registered_name(BatchNormalization) == "gscnn_tf>BatchNormalization"
    assert ours.get_config() == {**theirs.get_config(), "name": ours.name}
    x = tf.constant(rng.standard_normal(SHAPE), tf.float32)

    def op_types(layer):
        concrete = tf.function(lambda: layer(x, training=False)).get_concrete_function()
        return sorted(n.op for n in concrete.graph.as_graph_def().node)

    assert op_types(ours) == op_types(theirs)
    np.testing.assert_array_equal(ours(x, training=False), theirs(x, training=False))

    def model(cls):
        inputs = keras.Input(SHAPE[1:])
        return keras.Model(inputs, cls(name="bn")(inputs))

    old, new = model(keras.layers.BatchNormalization), model(BatchNormalization)
    old.set_weights([rng.uniform(0.5, 2.0, w.shape).astype(np.float32) for w in old.weights])
    old.save_weights(tmp_path / "old.weights.h5")
    new.load_weights(tmp_path / "old.weights.h5")
    for a, b in zip(old.get_weights(), new.get_weights()):
        np.testing.assert_array_equal(a, b)


# A wrong gradient moves weights by about lr x |gradient| ~ 1e-2. XLA's batch-norm expansion
# rounds otherwise than the kernel (5e-6 on the first convolution's weights; XLA against the
# executor, either path: 2e-4). In bfloat16 (8 significant bits) the two paths round to
# neighbouring values here and there: 2e-4 on a loss term, 2e-3 on the first convolution's
# weights, where bfloat16 itself, either path, lands 2.5e-2 from float32's step.
@pytest.mark.parametrize("options, rel, atol", [
    ((), 1e-5, 1e-6),
    (("train.xla=true",), 1e-5, 2e-5),
    (("train.mixed_precision=bf16",), 1e-3, 1e-2),
])
def test_training_step_with_and_without_the_kernel_is_the_same_step(tmp_path, monkeypatch,
                                                                    options, rel, atol):
    """The tiny GSCNN's first training step with every batch norm fused and with none: the
    same loss terms and the same weights after the update, moving statistics included."""
    root = str(tmp_path / "data")
    monkeypatch.setattr(BatchNormalization, "fused", False)
    keras_path = first_step(root, tmp_path / "keras", options, None, "FusedBatchNormV3")
    monkeypatch.setattr(BatchNormalization, "fused", True)
    fused = first_step(root, tmp_path / "fused", options, None, "FusedBatchNormV3")
    for key, value in keras_path[0].items():
        assert fused[0][key] == pytest.approx(value, rel=rel, abs=rel / 10), key
    for a, b in zip(keras_path[1], fused[1], strict=True):
        np.testing.assert_allclose(b, a, rtol=rel, atol=atol)
    if "train.xla=true" not in options:
        assert keras_path[2] == 0
        assert fused[2] > 10
