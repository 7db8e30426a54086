"""Images an export is calibrated and checked on, from the config's dataset: augmented
training crops for int8 calibration (`representative_images`) and validation images, never
trained on, for agreement checks (`heldout_images`). Both uint8 `[N, H, W, 3]` RGB 0..255.
"""

from __future__ import annotations

import copy

import numpy as np


def _to_uint8(images) -> np.ndarray:
    return np.clip(np.round(np.asarray(images, np.float32)), 0, 255).astype(np.uint8)


def representative_images(config, height: int, width: int, count: int) -> np.ndarray:
    """uint8 `[count, H, W, 3]`: augmented training crops of size H x W from the training
    pipeline (`data.crop_size` set to the TFLite size), for int8 calibration."""
    from gscnn_tf.data.pipeline import build_dataset

    config = copy.deepcopy(config)
    config.data.crop_size = [height, width]
    dataset = build_dataset(config, config.data.train_split, training=True, batch_size=1)
    return _to_uint8(np.concatenate([image for image, _ in dataset.take(count)]))


def heldout_images(config, height: int, width: int, count: int) -> np.ndarray:
    """uint8 `[<=count, H, W, 3]`: validation images (never trained on), resized bilinearly
    to H x W when their size differs."""
    import tensorflow as tf

    from gscnn_tf.data.pipeline import build_dataset

    dataset = build_dataset(config, config.data.val_split, training=False, batch_size=1)
    images = [tf.image.resize(image, [height, width]) if image.shape[1:3] != (height, width)
              else image for image, _ in dataset.take(count)]
    return _to_uint8(np.concatenate(images))
