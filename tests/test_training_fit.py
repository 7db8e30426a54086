"""Keras fit on gscnn_tf.GSCNN: compile() with no arguments is the paper's recipe, fit trains
on one device and under MirroredStrategy (sync BN), one fit step equals one step of the
custom loop, every piece can be replaced, sample weights are refused."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

import gscnn_tf
from gscnn_tf.config import LossConfig
from gscnn_tf.data.pipeline import build_dataset
from gscnn_tf.losses import GSCNNLoss
from gscnn_tf.training.optimizers import build_optimizer, learning_rate_schedule
from gscnn_tf.training.step import make_train_step
from training_support import mirrored_strategy, tiny_config
from conftest import tiny_model_overrides

TINY_MODEL = tiny_model_overrides("model.backbone.dropout=false")


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return tiny_config(str(tmp_path_factory.mktemp("synthetic")),
                       str(tmp_path_factory.mktemp("run")), "data.hflip=false",
                       "data.scale_range=[1.0,1.0]", "data.color_jitter=0.0",
                       "data.blur_prob=0.0", *TINY_MODEL)


@pytest.fixture(scope="module")
def batch(config):
    images, targets = next(iter(build_dataset(config, "train", True, 4)))
    return images.numpy(), {k: v.numpy() for k, v in targets.items()}


@pytest.mark.parametrize("replicas", [1, 2])
def test_compile_without_arguments_then_fit_lowers_the_loss(config, replicas):
    strategy = mirrored_strategy() if replicas == 2 else tf.distribute.get_strategy()
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = gscnn_tf.GSCNN.from_run_config(config)
    model.compile()                                  # in the model's strategy by itself
    assert model.distribute_strategy.num_replicas_in_sync == replicas
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.momentum == 0.9
    assert float(optimizer.learning_rate) == pytest.approx(0.01)
    history = model.fit(build_dataset(config, "train", True, 4), steps_per_epoch=3,
                        epochs=3, validation_data=build_dataset(config, "val", False, 4),
                        verbose=0).history
    losses = history["loss"]
    assert losses[-1] < 0.85 * losses[0], losses
    # The learning rate decayed linearly to 0 over the 9 steps given to fit.
    assert float(optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)
    assert int(optimizer.iterations.numpy()) == 9
    for key in ("seg", "edge", "att", "dual", "l2", "val_loss", "miou", "val_miou"):
        assert np.isfinite(history[key]).all(), key
    assert 0.0 <= history["val_miou"][-1] <= 1.0
    # loss = the config's weighted sum (lambda_edge 20) + L2 with weight decay 1e-4.
    total = (history["seg"][-1] + 20 * history["edge"][-1] + history["att"][-1]
             + history["dual"][-1] + history["l2"][-1])
    assert losses[-1] == pytest.approx(total, rel=1e-4)
    kernels = sum(float(np.sum(np.square(v.numpy()))) for v in model.trainable_variables
                  if v.name.endswith("kernel"))
    assert model.evaluate(build_dataset(config, "val", False, 4), return_dict=True,
                          verbose=0)["l2"] == pytest.approx(0.5e-4 * kernels, rel=1e-4)


def _twins(config, seed):
    """Two models of `config` with the same random weights, and those weights."""
    keras.utils.set_random_seed(seed)
    model = gscnn_tf.GSCNN.from_run_config(config)
    twin = gscnn_tf.GSCNN.from_config(model.get_config())
    weights = model.get_weights()
    twin.set_weights(weights)
    return model, twin, weights


def test_one_fit_step_equals_one_custom_loop_step(config, batch):
    fitted, looped, before = _twins(config, 1)
    steps = config.train.steps

    fitted.compile(steps=steps, seed=config.train.seed)
    fitted.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)

    strategy = tf.distribute.get_strategy()
    optimizer = build_optimizer(config.train, looped.trainable_variables)
    step_var = tf.Variable(0, dtype=tf.int64)
    train_step = make_train_step(strategy, looped, optimizer,
                                 GSCNNLoss(config.loss, config.data.ignore_label),
                                 learning_rate_schedule(config.train), config.train, step_var)
    images, targets = batch
    train_step(tf.constant(images), {k: tf.constant(v) for k, v in targets.items()})

    moved = 0.0
    for a, b, start in zip(fitted.weights, looped.weights, before):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=a.path)
        moved = max(moved, float(np.max(np.abs(b.numpy() - start))))
    assert moved > 1e-4            # the step changed the weights


def test_fit_step_equals_differentiating_compute_loss(config, batch):
    # fit adds the L2 gradient after backpropagation; a step that differentiates the whole
    # compute_loss (L2 term included, as a user's own train step would) lands on the same
    # weights. A weight decay of 0.5 makes a missing or doubled L2 gradient visible.
    fitted, by_hand, start = _twins(config, 2)
    for model in (fitted, by_hand):
        model.compile(optimizer=keras.optimizers.SGD(0.05), weight_decay=0.5)
    images, targets = batch
    fitted.train_on_batch(images, targets)
    with tf.GradientTape() as tape:
        outputs = by_hand(images, training=True)
        loss = by_hand.compute_loss(y=targets, y_pred=outputs)
    variables = by_hand.trainable_variables
    by_hand.optimizer.apply(tape.gradient(loss, variables), variables)
    decay_step = 0.0
    for a, b, w in zip(fitted.weights, by_hand.weights, start):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-6, err_msg=a.path)
        if a.path.endswith("kernel"):
            decay_step = max(decay_step, float(np.max(np.abs(0.05 * 0.5 * w))))
    assert decay_step > 1e-3        # the L2 gradient's share of the step, well above atol


def test_every_piece_of_compile_can_be_replaced(config, batch):
    model = gscnn_tf.GSCNN.from_run_config(config)
    loss = GSCNNLoss(dataclasses.replace(LossConfig(), lambda_edge=5.0, lambda_dual=0.0))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=[],
                  weight_decay=0.0)
    history = model.fit(tf.data.Dataset.from_tensors(batch).repeat(), steps_per_epoch=2,
                        epochs=1, verbose=0).history
    assert "miou" not in history and history["l2"] == [0.0]
    assert history["loss"][0] == pytest.approx(
        history["seg"][0] + 5 * history["edge"][0] + history["att"][0], rel=1e-5)
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    with pytest.raises(TypeError, match="GSCNNLoss"):
        model.compile(loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="loss_weights"):
        model.compile(loss_weights=[1.0, 2.0])


def test_sample_weights_are_refused_with_a_clear_error(config, batch):
    model = gscnn_tf.GSCNN.from_run_config(config)
    model.compile(steps=4)
    images, targets = batch
    with pytest.raises(ValueError, match="sample_weight and class_weight are not supported"):
        model.fit(images, targets, sample_weight=np.ones(4), verbose=0)
    weighted = tf.data.Dataset.from_tensors((images, targets, np.ones(4, np.float32)))
    with pytest.raises(ValueError, match="sample_weight and class_weight are not supported"):
        model.fit(weighted, epochs=1, verbose=0)


def test_default_schedule_needs_the_number_of_steps(config, batch):
    model = gscnn_tf.GSCNN.from_run_config(config)
    model.compile()
    with pytest.raises(ValueError, match="steps_per_epoch"):
        model.fit(tf.data.Dataset.from_tensors(batch).repeat(), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="compile\\(steps=N\\)"):
        model.train_on_batch(*batch)
    with pytest.raises(ValueError, match="compile"):
        gscnn_tf.GSCNN.from_run_config(config).evaluate(
            tf.data.Dataset.from_tensors(batch), verbose=0)


def test_a_saved_compiled_model_loads_compiled_and_trains_on_alike(config, batch, tmp_path):
    keras.utils.set_random_seed(2)
    model = gscnn_tf.GSCNN.from_run_config(config)
    model.compile(steps=6)
    data = tf.data.Dataset.from_tensors(batch).repeat()
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.compiled and int(loaded.optimizer.iterations.numpy()) == 2
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())      # momentum kept
    for m in (model, loaded):
        m.fit(data, steps_per_epoch=1, epochs=1, verbose=0)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=a.path)
    assert float(loaded.optimizer.learning_rate) == pytest.approx(0.01 * (1 - 3 / 6))
