"""Shared pieces of the export and serving tests (no tests here): a tiny small-backbone
Gated-SCNN trained for a few dozen steps on a synthetic dataset the tests generate, cached
for the whole session so test_export*.py and test_serving*.py train it once."""

import functools

import numpy as np
import pytest
import tensorflow as tf

import gscnn_tf
from gscnn_tf.config import load_config
from gscnn_tf.data.pipeline import build_dataset, dataset_info

SIZE = 64


def tiny_config(root):
    """Synthetic data at 64x64 (24 train, 4 val images) under `root`; a narrow model."""
    return load_config(None, [
        f"data.root={root}", "data.synthetic.num_train=24", "data.synthetic.num_val=4",
        f"data.synthetic.height={SIZE}", f"data.synthetic.width={SIZE}",
        f"data.crop_size=[{SIZE},{SIZE}]", "data.deterministic=true",
        "model.backbone.base_width=8", "model.aspp_channels=16",
        "model.decoder_channels=16", "model.skip_channels=8",
        "model.sync_batch_norm=false", "export.representative_images=8"])


def train(config, steps=60, batch_size=4):
    """The simplest loop: Adam on masked cross-entropy + boundary BCE."""
    tf.keras.utils.set_random_seed(0)
    num_classes = dataset_info(config).num_classes
    model = gscnn_tf.build_model(config.model, num_classes)
    optimizer = tf.keras.optimizers.Adam(3e-3)
    dataset = build_dataset(config, "train", training=True, batch_size=batch_size)

    @tf.function
    def step(images, targets):
        with tf.GradientTape() as tape:
            out = model(images, training=True)
            labels = targets["labels"]
            valid = labels != config.data.ignore_label
            seg = tf.keras.losses.sparse_categorical_crossentropy(
                tf.where(valid, labels, 0), out["seg_logits"], from_logits=True)
            seg = tf.reduce_sum(tf.where(valid, seg, 0.0)) / tf.maximum(
                tf.reduce_sum(tf.cast(valid, tf.float32)), 1.0)
            edge = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
                targets["edges"][..., None], out["edge_logits"]))
            loss = seg + edge
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return seg

    for images, targets in dataset.take(steps):
        seg = step(images, targets)
    return model, float(seg)


@functools.cache
def trained(root):
    """(config, trained model, final seg loss), once per session and root."""
    config = tiny_config(root)
    model, loss = train(config)
    return config, model, loss


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(config, trained model, held-out uint8 images) shared by the export test modules."""
    config, model, _ = trained(str(tmp_path_factory.getbasetemp() / "export_data"))
    return config, model, heldout(config)


def heldout(config):
    """uint8 [4, 64, 64, 3] validation images."""
    from gscnn_tf.export import heldout_images

    return heldout_images(config, SIZE, SIZE, 4)


def keras_outputs(model, images):
    """(labels int32 [N, H, W], edge_prob float32 [N, H, W, 1]) of the Keras model."""
    out = model(tf.constant(np.asarray(images, np.float32)), training=False)
    return (tf.argmax(out["seg_logits"], -1, output_type=tf.int32).numpy(),
            tf.sigmoid(out["edge_logits"]).numpy())
