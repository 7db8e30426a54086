"""Shared pieces of the export and serving tests (no tests here): the session's trained tiny
run (conftest.tiny_run) with held-out images, and the Keras model's outputs to compare
exports against."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_SIZE as SIZE

__all__ = ["SIZE", "heldout", "keras_outputs", "setup"]


@pytest.fixture(scope="module")
def setup(tiny_run):
    """(config, trained model, held-out uint8 images) shared by the export test modules."""
    config, model, _ = tiny_run
    return config, model, heldout(config)


def heldout(config):
    """uint8 [4, 64, 64, 3] validation images."""
    from gscnn_tf.export import heldout_images

    return heldout_images(config, SIZE, SIZE, 4)


def keras_outputs(model, images):
    """(labels int32 [N, H, W], edge_prob float32 [N, H, W, 1]) of the Keras model, computed
    here with TensorFlow's argmax and sigmoid (independently of gscnn_tf's postprocess)."""
    out = model(tf.constant(np.asarray(images, np.float32)), training=False)
    return (tf.argmax(out["seg_logits"], -1, output_type=tf.int32).numpy(),
            tf.sigmoid(out["edge_logits"]).numpy())
