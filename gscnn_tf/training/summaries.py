"""TensorBoard summaries of a training run: scalars (every loss term, total, learning rate,
throughput) and image panels (input, ground truth, prediction overlay, edge probability,
ground-truth edges and the three gate alpha maps)."""

from __future__ import annotations


import numpy as np
import tensorflow as tf

from gscnn_tf import files
from gscnn_tf.models.postprocess import postprocess


def colorize(labels: tf.Tensor, palette: np.ndarray) -> tf.Tensor:
    """int labels [B, H, W] -> uint8 RGB [B, H, W, 3]; the ignore label and any id past the
    palette are black."""
    table = tf.constant(np.concatenate([palette, np.zeros((1, 3), np.uint8)]), tf.uint8)
    ids = tf.where((labels >= 0) & (labels < len(palette)), labels, len(palette))
    return tf.gather(table, ids)


def _grey(maps: tf.Tensor, size) -> tf.Tensor:
    """[B, h, w, 1] values in 0..1 -> uint8 [B, H, W, 3] resized to `size`."""
    maps = tf.image.resize(tf.cast(maps, tf.float32), size, "bilinear")
    return tf.image.grayscale_to_rgb(tf.cast(tf.clip_by_value(maps, 0, 1) * 255, tf.uint8))


def image_panels(images, targets, outputs, gates, palette) -> dict[str, tf.Tensor]:
    """uint8 [B, H, W, 3] pictures by name from one batch: images float32 [B, H, W, 3]
    0..255, targets {"labels", "edges"}, outputs {"seg_logits", "edge_logits"} and the three
    gate alpha maps (each [B, h, w, 1] in 0..1)."""
    size = tf.shape(images)[1:3]
    image = tf.cast(tf.clip_by_value(images, 0, 255), tf.uint8)
    predicted = postprocess(outputs)
    prediction = predicted["labels"]
    overlay = 0.5 * tf.cast(image, tf.float32) + 0.5 * tf.cast(colorize(prediction, palette),
                                                               tf.float32)
    panels = {
        "input": image,
        "ground_truth": colorize(targets["labels"], palette),
        "prediction_overlay": tf.cast(overlay, tf.uint8),
        "edge_probability": _grey(predicted["edge_prob"], size),
        "ground_truth_edges": _grey(targets["edges"][..., None], size),
    }
    for i, alpha in enumerate(gates, start=1):
        panels[f"gate{i}_alpha"] = _grey(alpha, size)
    return panels


class Summaries:
    """TensorBoard writer for `<run_dir>/events` (a no-op on workers other than the chief)."""

    def __init__(self, run_dir: str, enabled: bool = True, max_images: int = 2):
        self.max_images = max_images
        self.writer = (tf.summary.create_file_writer(files.join(run_dir, "events"))
                       if enabled else None)

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if self.writer is None:
            return
        with self.writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(f"{prefix}/{name}", float(value))

    def images(self, step: int, panels: dict[str, tf.Tensor]) -> None:
        if self.writer is None:
            return
        with self.writer.as_default(step=step):
            for name, picture in panels.items():
                tf.summary.image(f"images/{name}", picture, max_outputs=self.max_images)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()
