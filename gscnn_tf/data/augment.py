"""Training augmentation of one example with stateless random ops
(docs/method.md#data-and-training-recipe).

Every random draw comes from a `seed` int32 [2] tensor, so an example's augmentation is a
function of (seed, image, labels) alone. Scale and crop are fused: the crop window is sampled
straight from the source image, with the arithmetic of `tf.image.resize` (half-pixel centres,
bilinear for the image, nearest for labels), so a 720x720 crop of a 2x upscaled 2048x1024
image never materialises the 4096x2048 image. Rows and columns outside the scaled image are
padding: image `PAD_VALUE`, labels `ignore_label`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from gscnn_tf.errors import ConfigError
from gscnn_tf.ops.filters import gaussian_blur

PAD_VALUE = 0.0
BLUR_LEVELS = 8  # random blur sigmas are rounded to this many levels (static kernels)


def _nearest(offset, out_size, in_size, scaled_size):
    """(source index, inside) of output positions offset..offset+out_size-1 along an axis of
    `in_size` pixels resized to `scaled_size` by tf.image.resize's nearest (half-pixel)."""
    scale = tf.cast(in_size, tf.float32) / tf.cast(scaled_size, tf.float32)
    pos = offset + tf.range(out_size)
    inside = tf.logical_and(pos >= 0, pos < scaled_size)
    index = tf.cast(tf.floor((tf.cast(pos, tf.float32) + 0.5) * scale), tf.int32)
    return tf.clip_by_value(index, 0, in_size - 1), inside


def scaled_crop(image, labels, scaled_hw, offset, crop_hw, ignore_label=255):
    """The window at `offset` (y, x; may be negative) of size `crop_hw` (static ints) of the
    image resized to `scaled_hw`, padded where the window leaves it.

    image: [H, W, 3] any real dtype; labels: int32 [H, W]. Returns (float32 [h, w, 3],
    int32 [h, w]), equal to resizing the whole image (bilinear, half-pixel centres, edge
    clamped / nearest), padding with PAD_VALUE / ignore_label and slicing. The image goes
    through ScaleAndTranslate (the kernel behind tf.image.resize's antialias path; with a
    triangle kernel and no antialiasing it is bilinear), which reads only the source pixels
    the window needs.
    """
    h, w = crop_hw
    size = tf.shape(labels)
    scaled = tf.cast(scaled_hw, tf.float32)
    out_image = tf.raw_ops.ScaleAndTranslate(
        images=image[None], size=tf.constant([h, w]), scale=scaled / tf.cast(size, tf.float32),
        translation=-tf.cast(offset, tf.float32), kernel_type="triangle", antialias=False)[0]
    rows, row_inside = _nearest(offset[0], h, size[0], scaled_hw[0])
    cols, col_inside = _nearest(offset[1], w, size[1], scaled_hw[1])
    out_labels = tf.gather(tf.gather(labels, rows, axis=0), cols, axis=1)
    inside = tf.logical_and(row_inside[:, None], col_inside[None, :])
    out_image = tf.where(inside[:, :, None], tf.clip_by_value(out_image, 0.0, 255.0), PAD_VALUE)
    out_labels = tf.where(inside, out_labels, ignore_label)
    return tf.ensure_shape(out_image, [h, w, 3]), tf.ensure_shape(out_labels, [h, w])


def _uniform(seed, low=0.0, high=1.0):
    return tf.random.stateless_uniform([], seed, low, high)


def _class_uniform_centre(labels, seed, num_classes, classes):
    """(found, y, x): a pixel of a class drawn uniformly among the candidate classes present
    (all classes, or `classes` when given); found is False when none is present."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    flat = tf.reshape(labels, [-1])
    in_range = tf.logical_and(flat >= 0, flat < num_classes)
    counts = tf.math.bincount(tf.boolean_mask(flat, in_range), minlength=num_classes,
                              maxlength=num_classes)
    allowed = np.zeros([num_classes], bool)
    allowed[list(classes) if classes else slice(None)] = True
    candidates = tf.logical_and(counts > 0, allowed)
    found = tf.reduce_any(candidates)
    logits = tf.where(candidates, 0.0, -np.inf)[None]
    cls = tf.cast(tf.random.stateless_categorical(
        tf.where(found, logits, tf.zeros_like(logits)), 1, seeds[0])[0, 0], tf.int32)
    where = tf.where(tf.equal(flat, cls))[:, 0]
    count = tf.size(where)
    pick = tf.random.stateless_uniform([], seeds[1], 0, tf.maximum(count, 1), dtype=tf.int32)
    padded = tf.concat([where, tf.zeros([1], tf.int64)], 0)  # index 0 when none is found
    index = tf.cast(tf.gather(padded, tf.minimum(pick, count)), tf.int32)
    width = tf.shape(labels)[1]
    return found, index // width, index % width


def random_scaled_crop(image, labels, seed, crop_hw, scale_range, ignore_label=255,
                       class_uniform_fraction=0.0, class_uniform_classes=(), num_classes=0):
    """Random scale in `scale_range`, then a random `crop_hw` window (padding when the scaled
    image is smaller, placed at random). With probability `class_uniform_fraction` the window
    is centred (as far as it fits) on a pixel of a class drawn uniformly among those present
    (`class_uniform_classes` if given), so rare classes are seen more often."""
    seeds = tf.random.experimental.stateless_split(seed, 5)
    size = tf.shape(labels)
    scale = _uniform(seeds[0], scale_range[0], scale_range[1])
    scaled = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32), 1)
    crop = tf.constant(crop_hw, tf.int32)
    low, high = tf.minimum(0, scaled - crop), tf.maximum(0, scaled - crop)
    offset = tf.stack([
        tf.random.stateless_uniform([], seeds[1 + i], low[i], high[i] + 1, dtype=tf.int32)
        for i in range(2)])
    if class_uniform_fraction > 0:
        bad = [c for c in class_uniform_classes if not 0 <= c < num_classes]
        if bad:
            raise ConfigError(f"data.class_uniform_classes {list(class_uniform_classes)}: "
                              f"{bad} outside the dataset's classes 0..{num_classes - 1}")

        def centred():
            found, y, x = _class_uniform_centre(labels, seeds[3], num_classes,
                                                class_uniform_classes)
            centre = tf.cast((tf.cast(tf.stack([y, x]), tf.float32) + 0.5)
                             * tf.cast(scaled, tf.float32) / tf.cast(size, tf.float32), tf.int32)
            return tf.where(found, tf.clip_by_value(centre - crop // 2, low, high), offset)

        offset = tf.cond(_uniform(seeds[4]) < class_uniform_fraction, centred, lambda: offset)
    return scaled_crop(image, labels, scaled, offset, crop_hw, ignore_label)


def random_hflip(image, labels, seed):
    """Mirrors image [H, W, C] and labels [H, W] together with probability 1/2."""
    return tf.cond(_uniform(seed) < 0.5,
                   lambda: (tf.reverse(image, [1]), tf.reverse(labels, [1])),
                   lambda: (image, labels))


def _grey(image):
    """ITU-R 601 luma [H, W, 1] of RGB [H, W, 3] (a matrix product: faster than a reduce)."""
    return tf.tensordot(image, tf.constant([[0.299], [0.587], [0.114]]), 1)


def color_jitter(image, seed, strength):
    """torchvision-style jitter of float32 RGB 0..255 [H, W, 3]: brightness, contrast and
    saturation factors in [1 - s, 1 + s], hue shift in [-s, s] of a turn (s capped at 0.5)."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    image = tf.clip_by_value(image * _uniform(seeds[0], lo, hi), 0.0, 255.0)
    mean = tf.reduce_mean(_grey(image))
    image = tf.clip_by_value((image - mean) * _uniform(seeds[1], lo, hi) + mean, 0.0, 255.0)
    grey = _grey(image)
    image = tf.clip_by_value((image - grey) * _uniform(seeds[2], lo, hi) + grey, 0.0, 255.0)
    hue = min(strength, 0.5)
    image = tf.image.adjust_hue(image / 255.0, _uniform(seeds[3], -hue, hue)) * 255.0
    return tf.clip_by_value(image, 0.0, 255.0)


def random_blur(image, seed, probability, sigma_range):
    """Gaussian blur with `probability`, sigma drawn in `sigma_range` (rounded to one of
    BLUR_LEVELS values so each level is a constant-kernel `gaussian_blur`)."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    sigmas = np.linspace(sigma_range[0], sigma_range[1], BLUR_LEVELS)
    level = tf.random.stateless_uniform([], seeds[1], 0, BLUR_LEVELS, dtype=tf.int32)
    branches = [lambda s=s: tf.clip_by_value(gaussian_blur(image[None], float(s))[0], 0.0, 255.0)
                for s in sigmas]
    return tf.cond(_uniform(seeds[0]) < probability,
                   lambda: tf.switch_case(level, branches), lambda: image)


def augment(image, labels, seed, data_config, num_classes):
    """The training augmentation of `data_config` (a DataConfig): image uint8/float
    [H, W, 3], labels int32 [H, W] -> (float32 [h, w, 3] 0..255, int32 [h, w]) at crop size."""
    cfg = data_config
    seeds = tf.random.experimental.stateless_split(seed, 4)
    image, labels = random_scaled_crop(
        image, labels, seeds[0], tuple(cfg.crop_size), tuple(cfg.scale_range), cfg.ignore_label,
        cfg.class_uniform_fraction, tuple(cfg.class_uniform_classes), num_classes)
    if cfg.hflip:
        image, labels = random_hflip(image, labels, seeds[1])
    if cfg.color_jitter > 0:
        image = color_jitter(image, seeds[2], cfg.color_jitter)
    if cfg.blur_prob > 0:
        image = random_blur(image, seeds[3], cfg.blur_prob, tuple(cfg.blur_sigma))
    return image, labels
