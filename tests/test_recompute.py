"""`model.recompute_trunk`: the trunk's activations recomputed in the backward pass give the
plain step's numbers (loss terms, updated weights, batch-norm statistics) on one and two
replicas and under `fit`, and the traced step really runs the trunk's convolutions twice."""

import numpy as np
import pytest
import tensorflow as tf

import gscnn_tf
from gscnn_tf.models.backbones import cut_layers
from gscnn_tf.models.recompute import TrunkRecompute
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


@pytest.mark.parametrize("backbone, blocks, recomputed", [
    ("resnet50", 16, 16), ("mobilenetv2", 17, 17),
    ("wrn38", 17, 15),  # mod6 and mod7 hold dropout: they run once, with their activations
])
def test_every_backbone_has_a_plan(backbone, blocks, recomputed):
    model = gscnn_tf.GSCNN(3, backbone={"name": backbone}, sync_batch_norm=False)
    plan = TrunkRecompute(model, cut_layers(model.model_config.backbone,
                                            [layer.name for layer in model.layers]))
    assert (len(plan.blocks), plan.recomputed_blocks) == (blocks, recomputed)


def test_wrong_cuts_are_refused():
    model = gscnn_tf.GSCNN(3, **tiny_model_kwargs(), sync_batch_norm=False)
    stages = [f"small_stage{i}_conv_relu" for i in range(1, 6)]
    with pytest.raises(ValueError, match="does not pass through 'small_stage3_conv_relu'"):
        TrunkRecompute(model, [stages[2], stages[1]])
    # stage 2 feeds the decoder and the gates: it must be a cut
    with pytest.raises(ValueError, match="feed the heads from inside a trunk block"):
        TrunkRecompute(model, [stages[0], stages[2], stages[4]])
