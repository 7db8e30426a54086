"""Augmentation: fused scale+crop equals resize-pad-slice, image/label alignment, padding is
ignore, class-uniform crops, jitter and blur against formulas."""

import cv2
import numpy as np
import pytest
import tensorflow as tf

from gscnn_tf.config import DataConfig
from gscnn_tf.data import augment
from gscnn_tf.ops.filters import gaussian_blur


def reference_scaled_crop(image, labels, scaled_hw, offset, crop_hw, ignore=255):
    """Resize the whole image (OpenCV bilinear, half-pixel centres; nearest by the formula
    floor((i + 0.5) * in / out)), pad everywhere with PAD_VALUE / ignore, then slice."""
    (hs, ws), (ch, cw) = scaled_hw, crop_hw
    big = cv2.resize(image.astype(np.float32), (ws, hs), interpolation=cv2.INTER_LINEAR)
    rows = np.minimum(np.floor((np.arange(hs) + 0.5) * labels.shape[0] / hs).astype(int),
                      labels.shape[0] - 1)
    cols = np.minimum(np.floor((np.arange(ws) + 0.5) * labels.shape[1] / ws).astype(int),
                      labels.shape[1] - 1)
    small = labels[rows][:, cols]
    pad = max(ch, cw) + abs(offset[0]) + abs(offset[1])
    big = np.pad(big, [(pad, pad), (pad, pad), (0, 0)], constant_values=augment.PAD_VALUE)
    small = np.pad(small, pad, constant_values=ignore)
    y, x = offset[0] + pad, offset[1] + pad
    return big[y:y + ch, x:x + cw], small[y:y + ch, x:x + cw]


@pytest.mark.parametrize("scaled, offset", [
    ((40, 60), (5, 7)),     # upscale, inside
    ((13, 17), (-3, -6)),   # downscale, padding above and left
    ((20, 30), (10, 20)),   # same size, padding below and right
    ((57, 23), (30, 0)),
])
def test_scaled_crop_equals_resize_pad_slice(scaled, offset, rng):
    image = rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)
    labels = rng.integers(0, 5, (20, 30)).astype(np.int32)
    out_image, out_labels = augment.scaled_crop(tf.constant(image), tf.constant(labels),
                                                tf.constant(scaled), tf.constant(offset),
                                                (16, 24))
    ref_image, ref_labels = reference_scaled_crop(image, labels, scaled, offset, (16, 24))
    np.testing.assert_allclose(out_image.numpy(), ref_image, atol=0.02)
    np.testing.assert_array_equal(out_labels.numpy(), ref_labels)


def _block_pattern(rng, h=48, w=64, block=8, num_classes=6):
    """Labels constant on 8x8 blocks, image colour = a distinct colour per class."""
    blocks = rng.integers(0, num_classes, (h // block, w // block))
    labels = np.kron(blocks, np.ones((block, block), int)).astype(np.int32)
    colours = (np.arange(num_classes)[:, None] * np.array([40, 25, 10]) + 20).astype(np.uint8)
    return colours[labels], labels, colours


def test_augmentation_keeps_image_and_labels_aligned(rng):
    image, labels, colours = _block_pattern(rng)
    config = DataConfig(crop_size=[32, 40], scale_range=[0.5, 2.0], color_jitter=0.0,
                        blur_prob=0.0, hflip=True)
    for k in range(12):
        out_image, out_labels = augment.augment(tf.constant(image), tf.constant(labels),
                                                tf.constant([3, k]), config, 6)
        out_image, out_labels = out_image.numpy(), out_labels.numpy()
        padded = np.pad(out_labels, 1, constant_values=-1)
        # pixels whose 3x3 label neighbourhood (in the crop) is uniform can't mix colours
        uniform = np.all([padded[1 + dy:1 + dy + 32, 1 + dx:1 + dx + 40] == out_labels
                          for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
        inside = uniform & (out_labels != 255)  # a one-sided flip would break this too
        assert inside.sum() > 100
        np.testing.assert_allclose(out_image[inside], colours[out_labels[inside]], atol=1e-3)


def test_flip_mirrors_image_and_labels_together():
    image = np.arange(4 * 6 * 3, dtype=np.float32).reshape(4, 6, 3)
    labels = np.arange(24, dtype=np.int32).reshape(4, 6)
    outcomes = set()
    for k in range(16):
        out_image, out_labels = augment.random_hflip(tf.constant(image), tf.constant(labels),
                                                     tf.constant([0, k]))
        mirrored = np.array_equal(out_labels.numpy(), labels[:, ::-1])
        assert mirrored or np.array_equal(out_labels.numpy(), labels)
        np.testing.assert_array_equal(out_image.numpy(), image[:, ::-1] if mirrored else image)
        outcomes.add(mirrored)
    assert outcomes == {True, False}


def test_padding_in_image_is_always_ignore_in_labels():
    image = np.full((20, 24, 3), 255, np.uint8)
    labels = np.ones((20, 24), np.int32)
    for k in range(20):
        out_image, out_labels = augment.random_scaled_crop(
            tf.constant(image), tf.constant(labels), tf.constant([1, k]), (40, 40), (0.5, 1.5))
        pad = (out_image.numpy() == augment.PAD_VALUE).all(-1)
        assert pad.any()  # the scaled image is always smaller than the crop here
        np.testing.assert_array_equal(pad, out_labels.numpy() == 255)
        np.testing.assert_allclose(out_image.numpy()[~pad], 255.0, atol=1e-3)


def test_class_uniform_crops_contain_the_rare_class(rng):
    labels = np.zeros((64, 64), np.int32)
    labels[50, 9] = 3  # one pixel of a rare class
    image = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    hits = []
    for fraction in (1.0, 0.0):
        count = 0
        for k in range(20):
            _, out = augment.random_scaled_crop(
                tf.constant(image), tf.constant(labels), tf.constant([2, k]), (16, 16),
                (1.0, 2.0), class_uniform_fraction=fraction, num_classes=4)
            count += int((out.numpy() == 3).any())
        hits.append(count)
    # the class is drawn uniformly among the two present: about half the crops centre on it
    assert 5 <= hits[0] <= 15 and hits[1] <= 3


def test_class_uniform_respects_configured_classes(rng):
    labels = np.zeros((64, 64), np.int32)
    labels[5, 5], labels[60, 60] = 2, 3
    image = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    for k in range(10):
        _, out = augment.random_scaled_crop(
            tf.constant(image), tf.constant(labels), tf.constant([4, k]), (12, 12), (1.0, 1.0),
            class_uniform_fraction=1.0, class_uniform_classes=(3,), num_classes=4)
        assert (out.numpy() == 3).any() and not (out.numpy() == 2).any()


def test_color_jitter_matches_torchvision_formulas(rng):
    image = rng.uniform(0, 255, (6, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(augment.color_jitter(tf.constant(image), tf.constant([0, 0]),
                                                    0.0).numpy(), image, atol=0.05)
    out = augment.color_jitter(tf.constant(image), tf.constant([5, 1]), 0.25).numpy()
    seeds = tf.random.experimental.stateless_split(tf.constant([5, 1]), 4)
    b, c, s = (float(tf.random.stateless_uniform([], seeds[i], 0.75, 1.25)) for i in range(3))
    hue = float(tf.random.stateless_uniform([], seeds[3], -0.25, 0.25))
    grey = lambda x: x @ np.array([0.299, 0.587, 0.114])[:, None]  # noqa: E731
    x = np.clip(image * b, 0, 255)
    mean = grey(x).mean()
    x = np.clip((x - mean) * c + mean, 0, 255)
    x = np.clip((x - grey(x)) * s + grey(x), 0, 255).astype(np.float32)
    hsv = cv2.cvtColor(x / 255.0, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0] + hue * 360.0) % 360.0
    expected = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
    np.testing.assert_allclose(out, expected, atol=0.1)


def test_random_blur_uses_gaussian_blur_levels(rng):
    image = rng.uniform(0, 255, (12, 12, 3)).astype(np.float32)
    out = augment.random_blur(tf.constant(image), tf.constant([0, 0]), 1.0, (0.8, 0.8))
    expected = gaussian_blur(tf.constant(image)[None], 0.8)[0]
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-4)
    same = augment.random_blur(tf.constant(image), tf.constant([0, 0]), 0.0, (0.8, 0.8))
    np.testing.assert_array_equal(same.numpy(), image)


def test_class_uniform_classes_outside_the_dataset_are_an_error():
    with pytest.raises(ValueError, match=r"class_uniform_classes \[2, 7\]: \[7\] outside"):
        augment.random_scaled_crop(tf.zeros([8, 8, 3]), tf.zeros([8, 8], tf.int32),
                                   tf.constant([0, 0]), (4, 4), (1.0, 1.0),
                                   class_uniform_fraction=0.5, class_uniform_classes=(2, 7),
                                   num_classes=4)
