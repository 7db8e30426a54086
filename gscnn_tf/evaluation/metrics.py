"""Evaluation metrics of the paper's protocol (docs/evaluation.md), in numpy.

- `confusion_matrix` / `iou_from_confusion` / `iou_summary`: one int64 confusion matrix
  accumulated over the whole split (rows ground truth, columns prediction, ignore excluded).
- `boundary_fscore`: the DAVIS-derived boundary F-score of the reference code, per class, and
  `boundary_fscore_present`, the same averaged only over the images where the class occurs.
  `BoundaryFAccumulator` streams a split at several tolerances at once.
- `crop_confusion_matrices` / `crop_factor_miou`: mIoU on centre crops (distance evaluation).

Label maps are integer arrays `[H, W]` or `[N, H, W]` of train ids in `[0, num_classes)`,
`ignore_label` (ground truth only) marking pixels that do not count.

How the boundary F-score is computed fast, yet exactly as the reference: the reference builds,
per class and image, the 1-pixel boundary of the binary mask (`seg2bmap`: XOR with the right,
down and down-right neighbours; the last row looks right only, the last column down only, the
bottom-right pixel is never a boundary), dilates both boundaries with a disk of radius r
(pixels with dy^2 + dx^2 <= r^2) and counts matches. A pixel p is on the boundary of class c
exactly when c is the label of p or of one of those neighbours q and label(p) != label(q), so
all class boundaries come from one pass over the label map (ignore pixels get no class, which
is the reference's zeroing of both masks). "p lies in the dilated boundary B" is "the
Euclidean distance from p to B is <= r", so one nearest-neighbour query per boundary pixel
(scipy's cKDTree) answers every tolerance at once, with no dilation at all.

One module just past 300 lines on purpose: it is one job, the protocol's numbers, whose three
measures share the label-map conventions above.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

NO_CLASS = -1


def _as_batch(array, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: expected an integer label map [H, W] or [N, H, W], "
                         f"got {array.dtype} {array.shape}")
    return array


def _check_pair(pred, label):
    pred, label = _as_batch(pred, "pred"), _as_batch(label, "label")
    if pred.shape != label.shape:
        raise ValueError(f"pred {pred.shape} and label {label.shape} must have the same shape")
    return pred, label


def confusion_matrix(pred, label, num_classes: int, ignore_label: int = 255,
                     matrix: np.ndarray | None = None) -> np.ndarray:
    """Counts `[num_classes, num_classes]` int64, rows ground truth, columns prediction.

    Pixels whose label is `ignore_label` are skipped. Pass `matrix` (an earlier result) to add
    this batch to it in place (streaming over a split); it is also returned.
    """
    pred, label = _check_pair(pred, label)
    valid = label != ignore_label
    gt = label[valid].astype(np.int64)
    pr = pred[valid].astype(np.int64)
    for name, values in (("label", gt), ("pred", pr)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name}: values must lie in [0, {num_classes}) outside ignore "
                             f"({ignore_label}); found {values.min()}..{values.max()}")
    counts = np.bincount(gt * num_classes + pr, minlength=num_classes ** 2)
    counts = counts.reshape(num_classes, num_classes)
    if matrix is None:
        return counts
    if matrix.shape != (num_classes, num_classes):
        raise ValueError(f"matrix: expected shape {(num_classes, num_classes)}, "
                         f"got {matrix.shape}")
    matrix += counts
    return matrix


def iou_from_confusion(matrix) -> tuple[np.ndarray, float]:
    """(per-class IoU float64 `[C]`, NaN for classes absent from both prediction and ground
    truth; mIoU, the mean over the other classes, 0.0 when there are none)."""
    matrix = np.asarray(matrix, np.float64)
    tp = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0
    return iou, miou


def iou_summary(matrix) -> dict:
    """Every confusion-matrix statistic: {"iou": per-class list (NaN where absent), "miou",
    "pixel_accuracy", "mean_class_accuracy" (over classes present in the ground truth),
    "fwiou" (IoU weighted by ground-truth frequency)}."""
    matrix = np.asarray(matrix, np.float64)
    iou, miou = iou_from_confusion(matrix)
    gt_count = matrix.sum(1)
    total = gt_count.sum()
    present = gt_count > 0
    tp = np.diag(matrix)
    return {
        "iou": [float(v) for v in iou],
        "miou": miou,
        "pixel_accuracy": float(tp.sum() / total) if total else 0.0,
        "mean_class_accuracy": float(np.mean(tp[present] / gt_count[present]))
        if present.any() else 0.0,
        "fwiou": float(np.sum(gt_count[present] / total * iou[present])) if total else 0.0,
    }


def _class_map(labels: np.ndarray, valid: np.ndarray, num_classes: int) -> np.ndarray:
    """int32 copy with ignore / out-of-range pixels set to NO_CLASS."""
    out = labels.astype(np.int32)
    out[~valid | (out < 0) | (out >= num_classes)] = NO_CLASS
    return out


def class_boundaries(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """Per class, the `[K, 2]` (row, col) pixels of `seg2bmap(labels == c)`, in no
    particular order.

    labels: int `[H, W]`, NO_CLASS where no class counts. Same result as the reference's
    per-class XOR with the right, down and down-right neighbours (see the module docstring).
    """
    w = labels.shape[1]
    right = labels.copy()
    right[:, :-1] = labels[:, 1:]
    down = labels.copy()
    down[:-1, :] = labels[1:, :]
    diag = labels.copy()
    diag[:-1, :-1] = labels[1:, 1:]
    # each pixel's candidate classes, each listed once: itself if it differs from any
    # neighbour, and every neighbour's class that differs from its own
    own = np.where((right != labels) | (down != labels) | (diag != labels), labels, NO_CLASS)
    right = np.where(right != labels, right, NO_CLASS)
    down = np.where((down != labels) & (down != right), down, NO_CLASS)
    diag = np.where((diag != labels) & (diag != right) & (diag != down), diag, NO_CLASS)
    pixels, classes = [], []
    for candidate in (own, right, down, diag):
        flat = np.flatnonzero(candidate != NO_CLASS)
        pixels.append(flat)
        classes.append(candidate.ravel()[flat].astype(np.uint8 if num_classes <= 256
                                                      else np.int32))
    pixels, classes = np.concatenate(pixels), np.concatenate(classes)
    order = np.argsort(classes, kind="stable")
    pixels, classes = pixels[order], classes[order]
    starts = np.searchsorted(classes, np.arange(num_classes + 1))
    coords = np.stack(np.divmod(pixels, w), axis=1)
    return [coords[starts[c]:starts[c + 1]] for c in range(num_classes)]


def _matched_fraction(points: np.ndarray, targets: np.ndarray, tolerances) -> np.ndarray:
    """For each tolerance r, the fraction of `points` within Euclidean distance r of some
    pixel of `targets` (both non-empty `[K, 2]`)."""
    max_r = float(max(tolerances))
    dist, _ = cKDTree(targets, balanced_tree=False, compact_nodes=False).query(
        points, k=1, distance_upper_bound=max_r + 0.5)
    # squared pixel distances are integers: r^2 vs r^2 + 1 are >= 1/(2r+1) apart after sqrt
    return np.array([np.mean(dist <= r + 1e-3) for r in tolerances])


def image_boundary_scores(pred, label, num_classes: int, tolerances,
                          ignore_label: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """One image `[H, W]`: (F `[len(tolerances), C]` with the reference's conventions, and
    `present` bool `[C]`: the class occurs in the prediction or the ground truth)."""
    pred, label = np.asarray(pred), np.asarray(label)
    valid = label != ignore_label
    pred_map = _class_map(pred, valid, num_classes)
    gt_map = _class_map(label, valid, num_classes)
    present = (np.bincount(pred_map[pred_map >= 0], minlength=num_classes) > 0) | (
        np.bincount(gt_map[gt_map >= 0], minlength=num_classes) > 0)
    pred_b = class_boundaries(pred_map, num_classes)
    gt_b = class_boundaries(gt_map, num_classes)
    scores = np.empty((len(tolerances), num_classes))
    for c in range(num_classes):
        n_fg, n_gt = len(pred_b[c]), len(gt_b[c])
        if n_fg == 0 or n_gt == 0:
            precision = 1.0 if n_fg == 0 else 0.0
            recall = 1.0 if n_gt == 0 else 0.0
            precision, recall = np.full(len(tolerances), precision), np.full(len(tolerances),
                                                                             recall)
        else:
            precision = _matched_fraction(pred_b[c], gt_b[c], tolerances)
            recall = _matched_fraction(gt_b[c], pred_b[c], tolerances)
        total = precision + recall
        with np.errstate(invalid="ignore", divide="ignore"):
            scores[:, c] = np.where(total > 0, 2 * precision * recall / total, 0.0)
    return scores, present


class BoundaryFAccumulator:
    """Streams boundary F-scores over a split at several tolerances (pixels).

        acc = BoundaryFAccumulator(19, [3, 5, 9, 12])
        for pred, label in batches:
            acc.update(pred, label)          # [H, W] or [N, H, W]
        acc.per_class(5)                     # [C], mean over all images (the reference)
        acc.per_class(5, present_only=True)  # mean over images where the class occurs
        acc.summary()                        # plain dict for JSON
    """

    def __init__(self, num_classes: int, tolerances, ignore_label: int = 255):
        self.num_classes = num_classes
        self.tolerances = [int(t) for t in tolerances]
        self.ignore_label = ignore_label
        self.sum_all = np.zeros((len(self.tolerances), num_classes))
        self.sum_present = np.zeros((len(self.tolerances), num_classes))
        self.count_present = np.zeros(num_classes, np.int64)
        self.count = 0

    def update(self, pred, label, pixel_tolerances=None) -> None:
        """Adds images `[H, W]` or `[N, H, W]`. `pixel_tolerances` (one per tolerance): the
        radii to use for these images, recorded under `tolerances` (images smaller than the
        reference resolution get scaled-down radii)."""
        pred, label = _check_pair(pred, label)
        radii = self.tolerances if pixel_tolerances is None else list(pixel_tolerances)
        if len(radii) != len(self.tolerances):
            raise ValueError(f"pixel_tolerances {radii}: expected one per tolerance "
                             f"{self.tolerances}")
        for p, g in zip(pred, label):
            self.add(*image_boundary_scores(p, g, self.num_classes, radii, self.ignore_label))

    def add(self, scores: np.ndarray, present: np.ndarray) -> None:
        """Adds one image's `image_boundary_scores` result (computed elsewhere, e.g. in a
        worker process)."""
        self.sum_all += scores
        self.sum_present += scores * present
        self.count_present += present
        self.count += 1

    def per_class(self, tolerance: int, present_only: bool = False) -> np.ndarray:
        """Per-class F `[C]` at `tolerance`; NaN where no image counts."""
        i = self.tolerances.index(int(tolerance))
        with np.errstate(invalid="ignore", divide="ignore"):
            if present_only:
                return np.where(self.count_present > 0,
                                self.sum_present[i] / self.count_present, np.nan)
            return self.sum_all[i] / self.count if self.count else np.full(self.num_classes,
                                                                           np.nan)

    def summary(self) -> dict:
        """{"tolerances", "images", "f": {tol: mean}, "f_per_class": {tol: list},
        "f_present": {tol: mean}, "f_present_per_class": {tol: list}}."""
        out = {"tolerances": self.tolerances, "images": self.count, "f": {},
               "f_per_class": {}, "f_present": {}, "f_present_per_class": {}}
        for t in self.tolerances:
            for key, present_only in (("f", False), ("f_present", True)):
                values = self.per_class(t, present_only)
                out[f"{key}_per_class"][t] = [float(v) for v in values]
                out[key][t] = float(np.nanmean(values)) if np.isfinite(values).any() else 0.0
        return out


def boundary_fscore(pred, label, num_classes: int, tolerance_px: int,
                    ignore_label: int = 255) -> np.ndarray:
    """Per-class boundary F `[C]` in [0, 1] at `tolerance_px`, the mean over the images of
    `pred`/`label` (`[H, W]` or `[N, H, W]`), every image counting for every class (the
    reference: an image without the class in either map scores 1)."""
    acc = BoundaryFAccumulator(num_classes, [tolerance_px], ignore_label)
    acc.update(pred, label)
    return acc.per_class(tolerance_px)


def boundary_fscore_present(pred, label, num_classes: int, tolerance_px: int,
                            ignore_label: int = 255) -> np.ndarray:
    """As `boundary_fscore`, but each class averages only the images where it occurs in the
    prediction or the ground truth (NaN for a class occurring nowhere). Not inflated by the
    free F = 1 of absent classes."""
    acc = BoundaryFAccumulator(num_classes, [tolerance_px], ignore_label)
    acc.update(pred, label)
    return acc.per_class(tolerance_px, present_only=True)


def scaled_tolerance(tolerance: int, height: int, reference_height: int = 1024) -> int:
    """A boundary tolerance given in pixels at `reference_height` rows, in pixels of an
    image `height` rows high (rounded, at least 1)."""
    return max(1, int(round(tolerance * height / reference_height)))


def tolerance_label(tolerance: int, reference_height: int = 1024,
                    height: int | None = None) -> str:
    """How every report names a boundary tolerance: 'F@3px@1024rows', followed by
    ' = 1 px at 128 rows' when the images' height is known."""
    label = f"F@{tolerance}px@{reference_height}rows"
    if height is None or height == reference_height:
        return label
    return f"{label} = {scaled_tolerance(tolerance, height, reference_height)} px at " \
           f"{height} rows"


def crop_margin(height: int, crop_factor: int, reference_height: int = 1024) -> int:
    """Pixels removed from each border of an image `height` rows high for `crop_factor`
    (pixels at `reference_height`)."""
    return int(round(crop_factor * height / reference_height))


def center_crop(array: np.ndarray, margin: int) -> np.ndarray:
    """Removes `margin` pixels from every border of the last-but-one two axes `[..., H, W]`."""
    h, w = array.shape[-2:]
    if 2 * margin >= min(h, w):
        raise ValueError(f"crop margin {margin} leaves nothing of a {h}x{w} image")
    return array[..., margin:h - margin, margin:w - margin]


def crop_confusion_matrices(pred, label, num_classes: int, crop_factors,
                            reference_height: int = 1024, ignore_label: int = 255,
                            matrices: dict | None = None) -> dict:
    """{crop_factor: confusion matrix} over centre crops; pass `matrices` to accumulate."""
    pred, label = _check_pair(pred, label)
    matrices = {} if matrices is None else matrices
    for factor in crop_factors:
        margin = crop_margin(label.shape[1], factor, reference_height)
        matrices[factor] = confusion_matrix(center_crop(pred, margin),
                                            center_crop(label, margin), num_classes,
                                            ignore_label, matrices.get(factor))
    return matrices


def crop_factor_miou(matrices: dict) -> dict:
    """{crop_factor: mIoU} from `crop_confusion_matrices`."""
    return {factor: iou_from_confusion(m)[1] for factor, m in matrices.items()}
