"""`model.recompute_trunk` and `model.recompute_heads`: the trunk's and the heads' (shape
stream, ASPP, decoder) activations recomputed in the backward pass give the plain step's
numbers (loss terms, updated weights, batch-norm statistics) on one and two replicas and
under `fit`, and the traced step really runs their convolutions twice."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import gscnn_tf
from gscnn_tf.models.backbones import cut_layers
from gscnn_tf.models.gscnn import head_segments
from gscnn_tf.models.recompute import Recompute, recomputed, trunk_segments
from conftest import tiny_model_kwargs
from training_support import first_step, mirrored_strategy

# Convolutions run again by the backward pass: the small backbone's blocks after its first
# stage (two each); the shape stream's three residual blocks (two, and the 1x1 reduction) and
# three gated convolutions (the gate's two 1x1s and the output's 1x1), ASPP's six branches
# (image pooling, edge, 1x1, three atrous) and the decoder's five.
RECOMPUTED_CONVS = {"trunk": 4 * 2, "heads": 3 * 3 + 3 * 3 + 6 + 5}
SWITCHES = {"trunk": ["model.recompute_trunk=true"], "heads": ["model.recompute_heads=true"]}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic"))


def _one_step(root, run_dir, strategy, switches):
    return first_step(root, run_dir, switches, strategy, "Conv2D")


@pytest.mark.parametrize("what, replicas", [
    ("trunk", 1), ("heads", 1),
    pytest.param("trunk", 2, marks=pytest.mark.slow),
    pytest.param("heads", 2, marks=pytest.mark.slow)])
def test_recomputed_step_equals_plain_step(data_root, tmp_path, what, replicas):
    strategy = mirrored_strategy() if replicas == 2 else None
    plain = _one_step(data_root, tmp_path / "plain", strategy, [])
    recomputed = _one_step(data_root, tmp_path / "recompute", strategy, SWITCHES[what])
    for key, value in plain[0].items():
        assert recomputed[0][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # Every weight after the update, batch-norm moving statistics included (a second update
    # in the recomputation would move them again).
    for a, b in zip(plain[1], recomputed[1]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert recomputed[2] - plain[2] == RECOMPUTED_CONVS[what] * replicas


def test_fit_with_recompute_equals_plain_fit(rng):
    """Both switches at once under `fit`."""
    images = rng.uniform(0, 255, (2, 48, 48, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (2, 48, 48)).astype(np.int32)
    targets = {"labels": labels, "edges": np.zeros((2, 48, 48), np.float32)}
    weights = []
    for recompute in (False, True):
        tf.keras.utils.set_random_seed(0)
        model = gscnn_tf.GSCNN(3, **tiny_model_kwargs(), sync_batch_norm=False,
                               recompute_trunk=recompute, recompute_heads=recompute)
        if weights:
            model.set_weights(weights[0][0])
        start = [np.array(w) for w in model.weights]
        model.compile(steps=2)
        history = model.fit(images, targets, batch_size=2, epochs=1, verbose=0)
        weights.append((start, [np.array(w) for w in model.weights],
                        history.history["loss"][0]))
    (start, plain, plain_loss), (_, recomputed, loss) = weights
    assert loss == pytest.approx(plain_loss, rel=1e-5)
    assert any(not np.allclose(a, b) for a, b in zip(start, plain))
    for a, b in zip(plain, recomputed):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backbone, blocks", [("resnet50", 16), ("mobilenetv2", 17),
                                              ("wrn38", 17)])
def test_every_backbone_has_a_plan(backbone, blocks):
    """The trunk's blocks and the heads' twelve parts (each shape-stream residual block in
    two halves, each gated convolution, the boundary logits, ASPP, the decoder), every layer
    with weights in exactly one view."""
    model = gscnn_tf.GSCNN(3, backbone={"name": backbone}, sync_batch_norm=False)
    trunk = trunk_segments(model, cut_layers(model.model_config.backbone,
                                             [layer.name for layer in model.layers]), True)
    plan = Recompute(model, trunk + head_segments(model))
    assert len(plan.segments) == blocks + 12
    views = [view for glue, _, view, _ in plan.steps] + [
        glue for glue, _, _, _ in plan.steps if glue is not None] + [plan.head]
    weighted = [layer.name for view in views for layer in view.layers if layer.weights]
    assert sorted(weighted) == sorted(layer.name for layer in model.layers if layer.weights)


@pytest.mark.parametrize("kwargs", [
    {"shape_stream": False}, {"shape_stream_stride": 4}, {"gate": "paper"},
    {"image_gradients": "none"},
    pytest.param({"backbone": {"name": "wrn38", "dropout": False}, "compat": "reference"},
                 marks=pytest.mark.slow),
], ids=["baseline", "stride4", "paper-gate", "no-canny", "wrn38-compat"])
def test_every_variant_of_the_graph_has_a_plan(rng, kwargs):
    """Both switches on any variant of the graph: the plan's training forward returns the
    model's own (batch statistics in both; WRN-38 without dropout, whose masks differ
    between two calls)."""
    arguments = {**tiny_model_kwargs(), **kwargs}
    model = gscnn_tf.GSCNN(3, sync_batch_norm=False, recompute_trunk=True,
                           recompute_heads=True, **arguments)
    x = tf.constant(rng.uniform(0, 255, (2, 32, 32, 3)).astype(np.float32))
    expected = super(gscnn_tf.GSCNN, model).call(x, training=True)   # the plain graph
    again = model(x, training=True)
    assert model._recompute is not None
    for key in ("seg_logits", "edge_logits"):
        np.testing.assert_allclose(again[key].numpy(), expected[key].numpy(), rtol=1e-5,
                                   atol=1e-5, err_msg=key)


def _dropout_block():
    """A block like WRN-38's mod7: convolution, batch norm, channel dropout, convolution."""
    inputs = keras.Input((8, 8, 4))
    y = keras.layers.Conv2D(16, 3, padding="same")(inputs)
    y = keras.layers.BatchNormalization(momentum=0.5)(y)
    y = keras.layers.SpatialDropout2D(0.5, seed=3)(y)
    return keras.Model(inputs, keras.layers.Conv2D(4, 1)(y))


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "tf.function"])
def test_recomputed_dropout_draws_the_first_runs_mask(rng, traced):
    """The backward pass's rerun of a block with dropout uses the forward pass's mask: the
    gradients equal the plain block's from the same seed state, and the seed generator and
    the moving statistics end where one plain run leaves them."""
    keras.utils.set_random_seed(0)
    block = _dropout_block()
    x = tf.constant(rng.normal(size=(2, 8, 8, 4)).astype(np.float32))
    generator = block.layers[3].seed_generator
    start = [np.array(w) for w in block.weights]
    seed = np.array(generator.state.value)

    def gradients(call):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(call(x)))
        return tape.gradient(loss, [x, *block.trainable_variables])

    results = []
    for call in (lambda v: block(v, training=True), lambda v: recomputed(block)(v)):
        for w, value in zip(block.weights, start):
            w.assign(value)
        generator.state.assign(seed)
        run = tf.function(lambda call=call: gradients(call)) if traced else (
            lambda call=call: gradients(call))
        results.append(([np.array(g) for g in run()], np.array(generator.state.value),
                        [np.array(w) for w in block.non_trainable_weights]))
    (plain, plain_seed, plain_stats), (again, again_seed, again_stats) = results
    # Some of the 16 channels were dropped: the last convolution's kernel gets no gradient
    # from them.
    per_channel = np.abs(plain[-2]).sum(axis=(0, 1, 3))
    assert 0 < (per_channel == 0).sum() < 16
    for a, b in zip(plain, again):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(again_seed, plain_seed)
    assert not np.array_equal(plain_seed, seed)                     # one draw moved it
    for a, b in zip(plain_stats, again_stats):
        np.testing.assert_allclose(b, a, rtol=1e-6)


def test_wrong_cuts_are_refused():
    model = gscnn_tf.GSCNN(3, **tiny_model_kwargs(), sync_batch_norm=False)
    stages = [f"small_stage{i}_conv_relu" for i in range(1, 6)]
    with pytest.raises(ValueError, match="'small_stage3_conv_relu' to 'small_stage2_conv_relu'"
                                         " of '.*' does not depend on its inputs alone"):
        Recompute(model, trunk_segments(model, [stages[2], stages[1]], True))
    # stage 2 feeds the decoder and the gates: it must be a cut
    with pytest.raises(ValueError, match=r"layer 'small_stage2_\w+' would run in the trunk "
                                         "from 'small_stage1_conv_relu' to "
                                         "'small_stage3_conv_relu' and in "):
        Recompute(model, trunk_segments(model, [stages[0], stages[2], stages[4]], True))
