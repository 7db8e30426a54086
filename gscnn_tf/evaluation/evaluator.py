"""Evaluation of a trained model over a split with the paper's protocol (docs/evaluation.md):
full-resolution, batch-1 inference (single scale, horizontal flip, multi-scale,
sliding window), one confusion matrix for the split, boundary F at `eval.tolerances` (pixels
at `eval.reference_height`, scaled to each image's height), crop-factor mIoU.

    predictor = Predictor("runs/x")
    evaluator = Evaluator(predictor, config)
    results = evaluator.run("val", save_dir=None)      # plain dict, see `Evaluator.results`
    gscnn_tf.evaluation.report.write_reports(results, "runs/x/eval_val")
"""

from __future__ import annotations

import math
import os
import sys

import cv2
import numpy as np

from gscnn_tf.errors import ConfigError, DataError
from gscnn_tf.evaluation import metrics


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets of windows of `window` pixels covering `size` with about `overlap`
    (fraction of the window) shared by neighbours; the last window ends at the border."""
    if window >= size:
        return [0]
    stride = max(1, int(math.ceil(window * (1 - overlap))))
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def sliding_window(forward, image: np.ndarray, window, overlap: float) -> np.ndarray:
    """`forward` (`[1, h, w, 3]` -> `[1, h, w, K]`) over windows of `window` (h, w) pixels,
    overlapping outputs averaged: float32 `[H, W, K]`. A window at least the image's size is
    one forward pass on the whole image."""
    height, width = image.shape[:2]
    wh, ww = min(window[0], height), min(window[1], width)
    total = count = None
    for top in window_starts(height, wh, overlap):
        for left in window_starts(width, ww, overlap):
            out = forward(image[None, top:top + wh, left:left + ww])[0]
            if total is None:
                total = np.zeros((height, width, out.shape[-1]), np.float32)
                count = np.zeros((height, width, 1), np.float32)
            total[top:top + wh, left:left + ww] += out
            count[top:top + wh, left:left + ww] += 1
    return total / count


def augmented_probabilities(forward, image: np.ndarray, scales=(1.0,), flip: bool = False,
                            window=(), overlap: float = 0.33) -> np.ndarray:
    """Mean of `forward`'s outputs `[H, W, K]` over `scales` (bilinear resize of the image,
    outputs resized back) and, with `flip`, the horizontally flipped image (output flipped
    back); each pass is a sliding window when `window` (h, w) is given."""
    height, width = image.shape[:2]
    image = np.asarray(image, np.float32)
    total, passes = None, 0
    for scale in scales:
        size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
        scaled = image if size == (width, height) else cv2.resize(image, size,
                                                                  interpolation=cv2.INTER_LINEAR)
        for flipped in ((False, True) if flip else (False,)):
            x = scaled[:, ::-1] if flipped else scaled
            if window:
                out = sliding_window(forward, np.ascontiguousarray(x), window, overlap)
            else:
                out = forward(np.ascontiguousarray(x)[None])[0]
            out = out[:, ::-1] if flipped else out
            if out.shape[:2] != (height, width):
                out = cv2.resize(np.ascontiguousarray(out), (width, height),
                                 interpolation=cv2.INTER_LINEAR).reshape(height, width, -1)
            total = out if total is None else total + out
            passes += 1
    return total / passes


class Evaluator:
    """Accumulates the protocol's metrics image by image.

    Args:
        predictor: `gscnn_tf.inference.Predictor`.
        config: `Config`; uses `eval` (tolerances, reference_height, crop_factors, flip,
            scales, window, window_overlap) and the dataset of `data`.
        workers: processes computing the boundary F-score beside inference (0: inline);
            worth it when inference is fast (GPU), ~1.2 s per 1024x2048 image otherwise.
    """

    def __init__(self, predictor, config, workers: int = 0):
        from gscnn_tf.data.pipeline import dataset_info

        self.predictor, self.config, self.eval = predictor, config, config.eval
        if self.eval.window and (len(self.eval.window) != 2 or min(self.eval.window) < 1):
            raise ConfigError(f"eval.window {self.eval.window}: expected [height, width] in "
                              "pixels, or [] for whole images")
        if not 0 <= self.eval.window_overlap < 1:
            raise ConfigError(f"eval.window_overlap {self.eval.window_overlap}: expected a "
                              "fraction in [0, 1)")
        info = dataset_info(config)
        self.num_classes, self.class_names = info.num_classes, list(info.class_names)
        self.ignore_label = info.ignore_label
        self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        self.crops: dict = {}
        self.heights: set[int] = set()
        self.boundary = metrics.BoundaryFAccumulator(self.num_classes, self.eval.tolerances,
                                                     self.ignore_label)
        self._pool, self._pending = None, []
        if workers > 0:  # boundary F in spawned processes (no fork of a TF process)
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"))
            self._max_pending = 2 * workers

    @property
    def augmented(self) -> bool:
        return bool(self.eval.flip or self.eval.window or list(self.eval.scales) != [1.0])

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Labels int32 `[H, W]` of one image `[H, W, 3]` with the configured inference."""
        if not self.augmented:
            return self.predictor.predict(image)["labels"][0]
        probs = augmented_probabilities(self.predictor.probabilities, image, self.eval.scales,
                                        self.eval.flip, self.eval.window,
                                        self.eval.window_overlap)
        return np.argmax(probs[..., :-1], axis=-1).astype(np.int32)

    def update(self, pred: np.ndarray, label: np.ndarray) -> None:
        """Adds one image's prediction and ground truth (int `[H, W]`) to every metric."""
        metrics.confusion_matrix(pred, label, self.num_classes, self.ignore_label,
                                 self.confusion)
        metrics.crop_confusion_matrices(pred, label, self.num_classes, self.eval.crop_factors,
                                        self.eval.reference_height, self.ignore_label,
                                        self.crops)
        self.heights.add(int(label.shape[0]))
        pixels = [metrics.scaled_tolerance(t, label.shape[0], self.eval.reference_height)
                  for t in self.eval.tolerances]
        if self._pool is None:
            self.boundary.update(pred, label, pixel_tolerances=pixels)
            return
        self._pending.append(self._pool.submit(metrics.image_boundary_scores, pred, label,
                                               self.num_classes, pixels, self.ignore_label))
        while len(self._pending) > self._max_pending:  # bounded memory
            self.boundary.add(*self._pending.pop(0).result())

    def close(self) -> None:
        """Collects outstanding boundary scores and stops the worker processes."""
        while self._pending:
            self.boundary.add(*self._pending.pop(0).result())
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def run(self, split: str, save_dir: str | None = None, save_format: str = "trainids",
            limit: int = 0, progress: bool = True) -> dict:
        """Evaluates every image of `split` (the first `limit` when > 0); optionally writes
        the predicted label PNGs (see `prediction_path`). Returns `results()`."""
        from gscnn_tf.data.decode import SKIP_WARNING
        from gscnn_tf.data.pipeline import SKIP_WARNINGS, list_examples, load_example
        from gscnn_tf.inference import label_id_table
        from gscnn_tf.viz import write_png

        examples = list_examples(self.config, split)[: limit or None]
        table = label_id_table(self.config) if save_format == "cityscapes" else None
        if save_format == "cityscapes" and table is None:
            raise ConfigError("--format cityscapes needs data.dataset: cityscapes")
        bar = None
        if progress:
            import keras

            bar = keras.utils.Progbar(len(examples), unit_name="image")
        evaluated = skipped = 0
        for i, (image_path, label_path) in enumerate(examples):
            example = load_example(self.config, image_path, label_path,
                                   warn=skipped < SKIP_WARNINGS)
            if example is None:  # data.skip_corrupt: left out (the first ones named)
                skipped += 1
                continue
            image, label = example
            evaluated += 1
            pred = self.predict(np.asarray(image))
            self.update(pred, np.asarray(label))
            if save_dir:
                ids = table[pred] if table is not None else pred.astype(np.uint8)
                write_png(prediction_path(save_dir, image_path, save_format), ids)
            if bar is not None:
                bar.update(i + 1)
        if skipped > SKIP_WARNINGS:
            print(f"{SKIP_WARNING}{skipped - SKIP_WARNINGS} more corrupt or unreadable files of "
                  f"split '{split}' ({skipped} of its {len(examples)} files in all)",
                  file=sys.stderr, flush=True)
        if examples and not evaluated:
            raise DataError(f"data.skip_corrupt: split '{split}' has no valid example: all "
                            f"{len(examples)} files were skipped as corrupt or unreadable (see "
                            "the warnings naming them)")
        return self.results()

    def results(self) -> dict:
        """{"miou", "iou": {class: IoU}, "pixel_accuracy", "mean_class_accuracy", "fwiou",
        "boundary_f": {tol: mean F}, "boundary_f_per_class": {tol: {class: F}},
        "boundary_f_present" / "boundary_f_present_per_class" (classes averaged only over
        images where they occur), "crop_factor_miou": {factor: mIoU}, "images", "settings"}."""
        self.close()
        summary = metrics.iou_summary(self.confusion)
        boundary = self.boundary.summary()
        named = lambda values: dict(zip(self.class_names, values))  # noqa: E731
        return {
            "miou": summary["miou"],
            "iou": named(summary["iou"]),
            "pixel_accuracy": summary["pixel_accuracy"],
            "mean_class_accuracy": summary["mean_class_accuracy"],
            "fwiou": summary["fwiou"],
            "boundary_f": boundary["f"],
            "boundary_f_per_class": {t: named(v) for t, v in boundary["f_per_class"].items()},
            "boundary_f_present": boundary["f_present"],
            "boundary_f_present_per_class": {
                t: named(v) for t, v in boundary["f_present_per_class"].items()},
            "crop_factor_miou": metrics.crop_factor_miou(self.crops),
            "images": boundary["images"],
            "settings": {"scales": list(self.eval.scales), "flip": self.eval.flip,
                         "window": list(self.eval.window),
                         "window_overlap": self.eval.window_overlap,
                         "tolerances_at_height": self.eval.reference_height,
                         "image_heights": sorted(self.heights)},
        }


def prediction_path(save_dir: str, image_path: str, save_format: str) -> str:
    """Where a prediction PNG goes. `cityscapes`: `<dir>/<city>/<name>_leftImg8bit.png` (the
    image's own name, which the official evaluator's search matches); otherwise
    `<dir>/<image name>.png`."""
    if save_format == "cityscapes":
        city = os.path.basename(os.path.dirname(image_path))
        return os.path.join(save_dir, city, os.path.basename(image_path))
    name = os.path.splitext(os.path.basename(image_path))[0]
    return os.path.join(save_dir, f"{name}.png")
