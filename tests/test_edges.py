"""label_edges against a scipy Euclidean-distance-transform reference of the same definition."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from gscnn_tf.data.edges import label_edges


def reference_edges(labels: np.ndarray, radius: int) -> np.ndarray:
    """Edge iff a pixel of another value lies within `radius`: for each value v, the
    distance from each v-pixel to the nearest non-v pixel of the image (edt ignores the
    outside, so borders are not edges)."""
    out = np.zeros(labels.shape, bool)
    for value in np.unique(labels):
        mask = labels == value
        if mask.all():
            continue
        out |= mask & (ndimage.distance_transform_edt(mask) <= radius)
    return out.astype(np.float32)


def random_map(rng, shape, classes=4, with_ignore=True):
    labels = rng.integers(0, classes, shape)
    if with_ignore:
        labels[rng.random(shape) < 0.1] = 255
    return labels


def structured_map(rng, height, width):
    """Blocks, a disc, a thin line, single pixels and an ignore stripe."""
    labels = np.zeros((height, width), np.int64)
    labels[: height // 2, width // 3:] = 1
    yy, xx = np.mgrid[:height, :width]
    labels[(yy - height * 0.6) ** 2 + (xx - width * 0.3) ** 2 < (min(height, width) / 4) ** 2] = 2
    labels[:, width - 3] = 3
    labels[height - 5: height - 2, :] = 255
    for _ in range(5):
        labels[rng.integers(height), rng.integers(width)] = 7
    return labels


@pytest.mark.parametrize("radius", [1, 2, 3, 4])
def test_random_maps_match_distance_transform(rng, radius):
    for shape, classes in [((33, 47), 2), ((40, 29), 5), ((1, 17), 3), ((16, 1), 3)]:
        labels = random_map(rng, shape, classes)
        got = label_edges(tf.constant(labels, tf.int32), radius).numpy()
        np.testing.assert_array_equal(got, reference_edges(labels, radius))


@pytest.mark.parametrize("radius", [1, 2, 3, 4])
def test_structured_batch_matches_distance_transform(rng, radius):
    labels = np.stack([structured_map(rng, 48, 64), structured_map(rng, 48, 64)[::-1, ::-1]])
    sparse = (np.cumsum(rng.random((48, 64)) < 0.02, axis=1) % 3)
    labels = np.concatenate([labels, sparse[None]])
    got = label_edges(tf.constant(labels, tf.int64), radius)
    assert got.shape == labels.shape and got.dtype == tf.float32
    expected = np.stack([reference_edges(m, radius) for m in labels])
    np.testing.assert_array_equal(got.numpy(), expected)
    assert 0 < expected.mean() < 1


def test_known_band_and_borders():
    labels = np.zeros((10, 12), np.uint8)
    labels[:, 6:] = 1
    got = label_edges(tf.constant(labels), 2).numpy()
    expected = np.zeros((10, 12), np.float32)
    expected[:, 4:8] = 1
    np.testing.assert_array_equal(got, expected)
    assert not label_edges(tf.fill([6, 7], 255), 3).numpy().any()


def test_uint8_labels_and_ignore_counts_as_a_value():
    labels = np.full((9, 9), 255, np.uint8)
    labels[4, 4] = 0
    got = label_edges(tf.constant(labels), 1).numpy()
    np.testing.assert_array_equal(got, reference_edges(labels, 1))
    assert got.sum() == 5


def test_runs_in_tf_data_with_unknown_shape(rng):
    maps = [random_map(rng, (20, 30)), random_map(rng, (25, 18))]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(maps), output_signature=tf.TensorSpec([None, None], tf.int32))
    for labels, got in zip(maps, dataset.map(lambda l: label_edges(l, 2))):
        np.testing.assert_array_equal(got.numpy(), reference_edges(labels, 2))


@pytest.mark.parametrize("labels, radius, message", [
    (np.zeros((4, 4), np.float32), 2, "integer"),
    (np.zeros((1, 4, 4, 1), np.int32), 2, "expected \\[H, W\\]"),
    (np.zeros((4, 4), np.int32), 0, "positive int"),
    (np.zeros((4, 4), np.int32), 1.5, "positive int"),
])
def test_bad_input_is_named(labels, radius, message):
    with pytest.raises(ValueError, match=message):
        label_edges(tf.constant(labels), radius)
