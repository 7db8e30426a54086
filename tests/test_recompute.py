"""`model.recompute_trunk`: the trunk's activations recomputed in the backward pass give the
plain step's numbers (loss terms, updated weights, batch-norm statistics) on one and two
replicas and under `fit`, and the traced step really runs the trunk's convolutions twice."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import gscnn_tf
from gscnn_tf.models.backbones import cut_layers
from gscnn_tf.models.recompute import TrunkRecompute, recomputed
from gscnn_tf.training.trainer import Trainer
from conftest import tiny_model_kwargs, tiny_model_overrides
from training_support import mirrored_strategy, tiny_config

# The small backbone's blocks after its first stage: two convolutions each.
SMALL_RECOMPUTED_CONVS = 4 * 2


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic"))


def _conv_ops(concrete) -> int:
    graph = concrete.graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return sum(node.op == "Conv2D" for node in nodes)


def _one_step(root, run_dir, strategy, recompute):
    config = tiny_config(root, run_dir, *tiny_model_overrides(
        f"model.recompute_trunk={str(recompute).lower()}",
        f"model.sync_batch_norm={str(strategy is not None).lower()}"))
    trainer = Trainer(config, strategy=strategy or tf.distribute.get_strategy())
    batch = next(iter(trainer._train_data(0)))
    terms = {k: float(v) for k, v in trainer.train_step(*batch).items()}
    convs = _conv_ops(trainer.train_step.get_concrete_function(*batch))
    return terms, [np.array(w) for w in trainer.model.weights], convs


@pytest.mark.parametrize("replicas", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_recomputed_step_equals_plain_step(data_root, tmp_path, replicas):
    strategy = mirrored_strategy() if replicas == 2 else None
    plain = _one_step(data_root, tmp_path / "plain", strategy, False)
    recomputed = _one_step(data_root, tmp_path / "recompute", strategy, True)
    for key, value in plain[0].items():
        assert recomputed[0][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # Every weight after the update, batch-norm moving statistics included (a second update
    # in the recomputation would move them again).
    for a, b in zip(plain[1], recomputed[1]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert recomputed[2] - plain[2] == SMALL_RECOMPUTED_CONVS * replicas


def test_fit_with_recompute_equals_plain_fit(rng):
    images = rng.uniform(0, 255, (2, 48, 48, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (2, 48, 48)).astype(np.int32)
    targets = {"labels": labels, "edges": np.zeros((2, 48, 48), np.float32)}
    weights = []
    for recompute in (False, True):
        tf.keras.utils.set_random_seed(0)
        model = gscnn_tf.GSCNN(3, **tiny_model_kwargs(), sync_batch_norm=False,
                               recompute_trunk=recompute)
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
    model = gscnn_tf.GSCNN(3, backbone={"name": backbone}, sync_batch_norm=False)
    plan = TrunkRecompute(model, cut_layers(model.model_config.backbone,
                                            [layer.name for layer in model.layers]))
    assert len(plan.blocks) == blocks


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
    with pytest.raises(ValueError, match="does not pass through 'small_stage3_conv_relu'"):
        TrunkRecompute(model, [stages[2], stages[1]])
    # stage 2 feeds the decoder and the gates: it must be a cut
    with pytest.raises(ValueError, match="feed the heads from inside a trunk block"):
        TrunkRecompute(model, [stages[0], stages[2], stages[4]])
