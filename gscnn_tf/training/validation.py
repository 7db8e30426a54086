"""Periodic validation during training: mIoU over one confusion matrix of the whole split and
the mean boundary F-score (REFERENCE.md section 6), from `gscnn_tf.evaluation.metrics`."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

try:
    from gscnn_tf.evaluation import metrics
except ImportError:  # until gscnn_tf.evaluation.metrics lands: mIoU only
    metrics = None


def tolerance_px(eval_config, height: int) -> int:
    """The first `eval.tolerances` entry (pixels at `eval.reference_height`) scaled to an
    image of `height` rows, at least 1."""
    return max(1, int(round(eval_config.tolerances[0] * height / eval_config.reference_height)))


def validate(model, dataset, num_classes: int, eval_config, ignore_label: int = 255) -> dict:
    """One pass over `dataset` ((image, targets) batches): {"miou", "boundary_f",
    "tolerance_px", "iou": per-class list}. The model runs in inference mode."""

    @tf.function
    def predict(images):
        return tf.argmax(model(images, training=False)["seg_logits"], axis=-1,
                         output_type=tf.int32)

    confusion = np.zeros((num_classes, num_classes), np.int64)
    fscores, tolerance = [], None
    for images, targets in dataset:
        pred = predict(images).numpy()
        labels = targets["labels"].numpy()
        valid = labels != ignore_label
        confusion += np.bincount(labels[valid].astype(np.int64) * num_classes + pred[valid],
                                 minlength=num_classes ** 2).reshape(num_classes, num_classes)
        tolerance = tolerance or tolerance_px(eval_config, labels.shape[1])
        for p, g in zip(pred, labels) if metrics is not None else ():
            fscores.append(np.asarray(metrics.boundary_fscore(p, g, num_classes, tolerance,
                                                              ignore_label), np.float64))
    diagonal = np.diag(confusion).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = diagonal / (confusion.sum(0) + confusion.sum(1) - diagonal)
    miou = np.nanmean(iou) if np.isfinite(iou).any() else 0.0
    boundary = float(np.nanmean(np.nanmean(np.stack(fscores), axis=0))) if fscores else 0.0
    return {"miou": float(miou), "boundary_f": boundary, "tolerance_px": tolerance or 0,
            "iou": [float(v) for v in np.asarray(iou)]}
