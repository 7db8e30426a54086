"""The Keras fit path: GSCNNFitModel trains with compile/fit on one device and under
MirroredStrategy with sync batch norm."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gscnn_tf.data.pipeline import build_dataset, dataset_info
from gscnn_tf.losses import GSCNNLoss
from gscnn_tf.training.fit import GSCNNFitModel
from training_support import mirrored_strategy, tiny_config, toy_model


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return tiny_config(str(tmp_path_factory.mktemp("synthetic")),
                       str(tmp_path_factory.mktemp("run")), "data.hflip=false",
                       "data.scale_range=[1.0,1.0]", "data.color_jitter=0.0",
                       "data.blur_prob=0.0")


@pytest.mark.parametrize("replicas", [1, 2])
def test_fit_loss_decreases(config, replicas):
    strategy = mirrored_strategy() if replicas == 2 else tf.distribute.get_strategy()
    keras.utils.set_random_seed(0)
    with strategy.scope():
        net = toy_model(config.model, dataset_info(config).num_classes)
        model = GSCNNFitModel(net, weight_decay=1e-4)
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                      loss=GSCNNLoss(config.loss))
    assert strategy.num_replicas_in_sync == replicas
    train = build_dataset(config, "train", True, 4)
    val = build_dataset(config, "val", False, 4)
    history = model.fit(train, steps_per_epoch=4, epochs=6, validation_data=val, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses
    for term in ("seg", "edge", "att", "dual", "l2", "val_loss"):
        assert np.isfinite(history.history[term]).all(), term
    terms = history.history
    total = terms["seg"][-1] + 20 * terms["edge"][-1] + terms["att"][-1] + terms["dual"][-1]
    assert losses[-1] == pytest.approx(total + terms["l2"][-1], rel=1e-4)


def test_fit_rejects_other_losses(config):
    model = GSCNNFitModel(toy_model(config.model, 10))
    with pytest.raises(TypeError, match="GSCNNLoss"):
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
