"""Metrics against brute-force counts, hand-drawn boundary cases and a literal port of the
reference's boundary F-score (seg2bmap + scipy binary_dilation with a skimage disk)."""

import numpy as np
import pytest
from scipy.ndimage import binary_dilation
from skimage.morphology import disk

from gscnn_tf.evaluation import metrics


def random_maps(rng, shape, num_classes, blobs=True):
    """Piecewise-constant label maps (upsampled coarse noise) with a perturbed prediction."""
    n, h, w = shape
    coarse = rng.integers(0, num_classes, (n, h // 4 + 1, w // 4 + 1))
    label = np.repeat(np.repeat(coarse, 4, 1), 4, 2)[:, :h, :w] if blobs else \
        rng.integers(0, num_classes, shape)
    pred = label.copy()
    flip = rng.random(shape) < 0.1
    pred[flip] = rng.integers(0, num_classes, flip.sum())
    pred = np.roll(pred, 1, axis=2)
    label = label.copy()
    label[rng.random(shape) < 0.05] = 255
    return pred, label


# --- the reference, written out literally --------------------------------------------------

def seg2bmap(seg):
    seg = seg.astype(bool)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def reference_f(fg, gt, ignore, bound_pix):
    fg, gt = fg.copy(), gt.copy()
    fg[ignore] = 0
    gt[ignore] = 0
    fg_b, gt_b = seg2bmap(fg), seg2bmap(gt)
    fg_dil = binary_dilation(fg_b, disk(bound_pix))
    gt_dil = binary_dilation(gt_b, disk(bound_pix))
    n_fg, n_gt = fg_b.sum(), gt_b.sum()
    if n_fg == 0 and n_gt > 0:
        p, r = 1, 0
    elif n_fg > 0 and n_gt == 0:
        p, r = 0, 1
    elif n_fg == 0 and n_gt == 0:
        p, r = 1, 1
    else:
        p, r = (fg_b & gt_dil).sum() / n_fg, (gt_b & fg_dil).sum() / n_gt
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def reference_per_class(pred, label, num_classes, tol, ignore_label=255):
    scores = np.zeros((len(pred), num_classes))
    for i, (p, g) in enumerate(zip(pred, label)):
        for c in range(num_classes):
            scores[i, c] = reference_f(p == c, g == c, g == ignore_label, tol)
    return scores


# --- confusion matrix and IoU --------------------------------------------------------------

def test_confusion_matrix_brute_force_and_streaming(rng):
    pred, label = random_maps(rng, (3, 20, 24), 5)
    expected = np.zeros((5, 5), np.int64)
    for p, g in zip(pred.ravel(), label.ravel()):
        if g != 255:
            expected[g, p] += 1
    cm = metrics.confusion_matrix(pred, label, 5)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, expected)
    streamed = metrics.confusion_matrix(pred[0], label[0], 5)
    for i in (1, 2):
        streamed = metrics.confusion_matrix(pred[i], label[i], 5, matrix=streamed)
    np.testing.assert_array_equal(streamed, expected)


def test_confusion_matrix_rejects_bad_values():
    with pytest.raises(ValueError, match="pred"):
        metrics.confusion_matrix(np.full((2, 2), 7), np.zeros((2, 2), int), 5)
    with pytest.raises(ValueError, match="same shape"):
        metrics.confusion_matrix(np.zeros((2, 3), int), np.zeros((2, 2), int), 5)


def test_iou_from_confusion_brute_force(rng):
    pred, label = random_maps(rng, (2, 16, 16), 6)
    label[label == 5] = 0
    pred[pred == 5] = 1  # class 5 absent from both -> NaN, skipped in the mean
    iou, miou = metrics.iou_from_confusion(metrics.confusion_matrix(pred, label, 6))
    valid = label != 255
    expected = []
    for c in range(6):
        tp = np.sum((pred == c) & (label == c) & valid)
        union = np.sum(((pred == c) | (label == c)) & valid)
        expected.append(tp / union if union else np.nan)
    np.testing.assert_allclose(iou, expected)
    assert np.isnan(iou[5])
    assert miou == pytest.approx(np.nanmean(expected))


def test_iou_summary():
    cm = np.array([[3, 1, 0], [0, 2, 2], [0, 0, 0]])
    s = metrics.iou_summary(cm)
    assert s["pixel_accuracy"] == pytest.approx(5 / 8)
    assert s["mean_class_accuracy"] == pytest.approx((3 / 4 + 2 / 4) / 2)
    iou = [3 / 4, 2 / 5, 0.0]
    assert s["iou"] == pytest.approx(iou)
    assert s["miou"] == pytest.approx(np.mean(iou))
    assert s["fwiou"] == pytest.approx(0.5 * 3 / 4 + 0.5 * 2 / 5)


# --- boundary F, hand-drawn cases ----------------------------------------------------------

def square(h=20, w=20, top=5, left=5, size=8):
    m = np.zeros((h, w), np.int32)
    m[top:top + size, left:left + size] = 1
    return m


def test_boundary_f_one_pixel_shift():
    gt = square()
    pred = square(left=6)
    f0 = metrics.boundary_fscore(pred, gt, 2, 0)
    f1 = metrics.boundary_fscore(pred, gt, 2, 1)
    assert np.all(f0 < 0.8)
    np.testing.assert_allclose(f1, 1.0)
    np.testing.assert_allclose(metrics.boundary_fscore(gt, gt, 2, 0), 1.0)


def test_boundary_f_empty_conventions():
    zeros = np.zeros((10, 10), np.int32)
    sq = square(10, 10, 2, 2, 4)
    # class 1 absent from both -> F = 1 (class 0 covers everything: no boundary either)
    np.testing.assert_allclose(metrics.boundary_fscore(zeros, zeros, 2, 2), [1.0, 1.0])
    # prediction empty only (P = 1, R = 0) and ground truth empty only (P = 0, R = 1): F = 0
    np.testing.assert_allclose(metrics.boundary_fscore(zeros, sq, 2, 2), [0.0, 0.0])
    np.testing.assert_allclose(metrics.boundary_fscore(sq, zeros, 2, 2), [0.0, 0.0])
    # present-only variant: class absent from both maps of every image -> NaN
    f = metrics.boundary_fscore_present(zeros, zeros, 2, 2)
    assert f[0] == 1.0 and np.isnan(f[1])


def test_boundary_f_ignore_region():
    gt = square()
    pred = square()
    pred[2:18, 15:19] = 1  # a wrong region ...
    gt[:, 14:] = 255  # ... hidden by ignore: both masks are zeroed there
    np.testing.assert_allclose(metrics.boundary_fscore(pred, gt, 2, 0), 1.0)
    gt[:, 14:] = 0  # visible again: class 1 loses precision at tolerance 0
    assert metrics.boundary_fscore(pred, gt, 2, 0)[1] < 0.8


def test_boundary_f_mean_over_images_then_classes():
    gt = np.stack([square(), square()])
    pred = np.stack([square(), np.zeros((20, 20), np.int32)])
    f = metrics.boundary_fscore(pred, gt, 2, 1)
    np.testing.assert_allclose(f, [0.5, 0.5])


# --- boundary F against the literal reference ----------------------------------------------

@pytest.mark.parametrize("blobs", [True, False])
def test_boundary_f_matches_reference(rng, blobs):
    num_classes, tolerances = 5, [0, 1, 2, 3, 5]
    pred, label = random_maps(rng, (3, 33, 41), num_classes, blobs)
    pred[0, 0, 0] = 7  # out-of-range prediction: belongs to no class
    acc = metrics.BoundaryFAccumulator(num_classes, tolerances)
    acc.update(pred, label)
    for tol in tolerances:
        ref = reference_per_class(pred, label, num_classes, tol)
        np.testing.assert_allclose(acc.per_class(tol), ref.mean(0), atol=1e-12)
        np.testing.assert_allclose(metrics.boundary_fscore(pred, label, num_classes, tol),
                                   ref.mean(0), atol=1e-12)
    s = acc.summary()
    assert s["images"] == 3 and set(s["f"]) == set(tolerances)


def test_boundary_f_present_only_variant(rng):
    pred, label = random_maps(rng, (4, 24, 24), 4)
    pred[:2][pred[:2] == 3] = 0
    label[:2][label[:2] == 3] = 0  # class 3 only in images 2 and 3
    ref = reference_per_class(pred, label, 4, 2)
    got = metrics.boundary_fscore_present(pred, label, 4, 2)
    assert got[3] == pytest.approx(ref[2:, 3].mean())
    np.testing.assert_allclose(got[:3], ref[:, :3].mean(0))


def test_class_boundaries_equal_seg2bmap(rng):
    labels = rng.integers(-1, 3, (9, 11)).astype(np.int32)
    for c, coords in enumerate(metrics.class_boundaries(labels, 3)):
        expected = np.argwhere(seg2bmap(labels == c))
        np.testing.assert_array_equal(coords[np.lexsort(coords.T[::-1])], expected)


# --- crop factors ----------------------------------------------------------------------------

def test_crop_factor_crops(rng):
    pred, label = random_maps(rng, (2, 64, 128), 3)
    matrices = metrics.crop_confusion_matrices(pred, label, 3, [0, 100], 256)
    # 100 px at 256 rows -> 25 px at 64 rows
    assert metrics.crop_margin(64, 100, 256) == 25
    np.testing.assert_array_equal(matrices[0], metrics.confusion_matrix(pred, label, 3))
    np.testing.assert_array_equal(
        matrices[100], metrics.confusion_matrix(pred[:, 25:39, 25:103], label[:, 25:39, 25:103],
                                                3))
    mious = metrics.crop_factor_miou(matrices)
    assert mious[100] == pytest.approx(metrics.iou_from_confusion(matrices[100])[1])
    with pytest.raises(ValueError, match="leaves nothing"):
        metrics.crop_confusion_matrices(pred, label, 3, [200], 256)  # 50 px of 64 rows
