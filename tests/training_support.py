"""Shared pieces of the training tests: a tiny config on a tiny synthetic dataset and a toy
model with the GSCNN output contract (used until/besides the real small model)."""

import functools
import socket

import keras
import numpy as np
import tensorflow as tf

from gscnn_tf.config import load_config
from conftest import op_count, tiny_model_overrides, two_cpu_strategy


def tiny_config(root, run_dir, *overrides):
    """Synthetic data at 32x32 (8 train, 4 val images) under `root`, deterministic order and
    augmentation, global batch 4; `overrides` are more `a.b=value` strings."""
    return load_config(None, [
        f"data.root={root}", "data.synthetic.num_train=8", "data.synthetic.num_val=4",
        "data.synthetic.height=32", "data.synthetic.width=32", "data.crop_size=[32,32]",
        "data.deterministic=true", "train.batch_size=4", "train.steps=6",
        "train.checkpoint_every=2", "train.val_every=0", "train.log_every=1",
        "train.image_every=0", f"train.run_dir={run_dir}", *overrides])


def first_step(root, run_dir, overrides=(), strategy=None, op_type="Conv2D"):
    """The tiny GSCNN's first custom-loop training step on the tiny data (`overrides`: more
    `--set` strings; synchronised batch norm when `strategy` is given): (loss terms as floats,
    every weight after the update, how many `op_type` nodes the step's graph holds). The ops
    are counted while the trainer lives: a concrete function outliving its variables cannot
    be read."""
    from gscnn_tf.training.trainer import Trainer

    config = tiny_config(root, run_dir, *tiny_model_overrides(
        *overrides, f"model.sync_batch_norm={str(strategy is not None).lower()}"))
    trainer = Trainer(config, strategy=strategy or tf.distribute.get_strategy())
    batch = next(iter(trainer._train_data(0)))
    terms = {k: float(v) for k, v in trainer.train_step(*batch).items()}
    ops = op_count(trainer.train_step.get_concrete_function(*batch), op_type)
    return terms, [np.array(w) for w in trainer.model.weights], ops


def toy_model(model_config, num_classes):
    """conv -> (sync) batch norm -> relu -> 1x1 heads: {"seg_logits", "edge_logits"}."""
    image = keras.Input((None, None, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(image)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(x)
    x = keras.layers.BatchNormalization(synchronized=model_config.sync_batch_norm,
                                        name="bn")(x)
    x = keras.layers.ReLU()(x)
    seg = keras.layers.Conv2D(num_classes, 1, name="seg", dtype="float32")(x)
    edge = keras.layers.Conv2D(1, 1, name="edge", dtype="float32")(x)
    return keras.Model(image, {"seg_logits": seg, "edge_logits": edge})


@functools.cache
def mirrored_strategy():
    """The session's one MirroredStrategy over the 2 logical CPUs (conftest)."""
    return two_cpu_strategy()


def free_ports(n):
    """`n` TCP ports on 127.0.0.1 that were free a moment ago (for loopback workers)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
