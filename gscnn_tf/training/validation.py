"""Periodic validation during training: mIoU over one confusion matrix of the whole split and
the mean boundary F-score at every `eval.tolerances` entry (docs/evaluation.md), computed
by `gscnn_tf.evaluation.metrics` (the evaluator's implementation)."""

from __future__ import annotations

import tensorflow as tf

from gscnn_tf.errors import DataError
from gscnn_tf.evaluation import metrics
from gscnn_tf.models.postprocess import postprocess


def pixel_tolerances(eval_config, height: int) -> list[int]:
    """`eval.tolerances` (pixels at `eval.reference_height` rows) scaled to an image of
    `height` rows, each at least 1."""
    return [metrics.scaled_tolerance(t, height, eval_config.reference_height)
            for t in eval_config.tolerances]


def validate(model, dataset, num_classes: int, eval_config, ignore_label: int = 255) -> dict:
    """One pass over `dataset` ((image, targets) batches) in inference mode.

    Returns {"miou", "iou": per-class list (NaN where a class is absent from both maps),
    "boundary_f": the mean F at the first tolerance, "tolerance_px": that tolerance scaled to
    the images, "tolerance_label": its name in reports ('F@3px@1024rows = 1 px at 128
    rows'), "boundary_f_by_tolerance": {tolerance (reference pixels): mean F}}.
    """

    @tf.function
    def predict(images):
        return postprocess(model(images, training=False))["labels"]

    confusion, boundary, radii, height = None, None, None, None
    for images, targets in dataset:
        pred, labels = predict(images).numpy(), targets["labels"].numpy()
        confusion = metrics.confusion_matrix(pred, labels, num_classes, ignore_label, confusion)
        if boundary is None:
            height = labels.shape[1]
            radii = pixel_tolerances(eval_config, height)
            boundary = metrics.BoundaryFAccumulator(num_classes, eval_config.tolerances,
                                                    ignore_label)
        boundary.update(pred, labels, radii)
    if confusion is None:
        raise DataError("validation split is empty: no batches to validate on")
    iou, miou = metrics.iou_from_confusion(confusion)
    by_tolerance = boundary.summary()["f"]
    return {"miou": miou, "iou": [float(v) for v in iou],
            "boundary_f": by_tolerance[boundary.tolerances[0]], "tolerance_px": radii[0],
            "tolerance_label": metrics.tolerance_label(boundary.tolerances[0],
                                                       eval_config.reference_height, height),
            "boundary_f_by_tolerance": by_tolerance}
