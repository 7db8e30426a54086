"""Evaluation reports from `Evaluator.results()`: metrics.json, metrics.md (per-class IoU and
boundary F, summary, crop factors), crop_factor.png (drawn with OpenCV) and TensorBoard
scalars under `events/`."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np

from gscnn_tf import files
from gscnn_tf.evaluation.metrics import tolerance_label


def _pct(value) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def tolerance_labels(results: dict, with_pixels: bool = False) -> dict:
    """{tolerance: 'F@3px@1024rows'} for the tolerances of `results`; `with_pixels` adds
    ' = 1 px at 128 rows' when every image had the same height."""
    settings = results.get("settings", {})
    reference = settings.get("tolerances_at_height", 1024)
    heights = settings.get("image_heights", [])
    height = heights[0] if with_pixels and len(heights) == 1 else None
    return {t: tolerance_label(int(t), reference, height) for t in results["boundary_f"]}


def markdown(results: dict) -> str:
    """The tables of `results` as GitHub markdown (values in percent)."""
    tolerances = list(results["boundary_f"])
    labels = tolerance_labels(results)
    head = "| class | IoU | " + " | ".join(labels[t] for t in tolerances) + " |"
    lines = ["# Evaluation", "", f"{results['images']} images, settings "
             f"`{json.dumps(results['settings'])}`.", "", head,
             "|---" * (2 + len(tolerances)) + "|"]
    for name, iou in results["iou"].items():
        fs = [_pct(results["boundary_f_per_class"][t][name]) for t in tolerances]
        lines.append(f"| {name} | {_pct(iou)} | " + " | ".join(fs) + " |")
    lines.append(f"| **mean** | **{_pct(results['miou'])}** | "
                 + " | ".join(f"**{_pct(results['boundary_f'][t])}**" for t in tolerances)
                 + " |")
    lines.append("| mean, present images only | | "
                 + " | ".join(_pct(results["boundary_f_present"][t]) for t in tolerances)
                 + " |")
    lines += ["", f"Pixel accuracy {_pct(results['pixel_accuracy'])}, mean class accuracy "
              f"{_pct(results['mean_class_accuracy'])}, frequency-weighted IoU "
              f"{_pct(results['fwiou'])}.", "",
              "Boundary tolerances are pixels at "
              f"{results.get('settings', {}).get('tolerances_at_height', 1024)} rows, scaled "
              "to each image: " + "; ".join(tolerance_labels(results, True).values()) + ".",
              "",
              "The boundary F of a class is averaged over all images (an image without the "
              "class in either map scores 100, as in the reference); the 'present' row "
              "averages only over images where the class occurs.", "",
              "| crop factor (px at reference height) | mIoU |", "|---|---|"]
    lines += [f"| {f} | {_pct(m)} |" for f, m in results["crop_factor_miou"].items()]
    return "\n".join(lines) + "\n"


def crop_factor_plot(crop_miou: dict, size=(640, 400)) -> np.ndarray:
    """uint8 RGB `[H, W, 3]` line plot of mIoU (percent) against the crop factor."""
    width, height = size
    canvas = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, width - 30, 40, height - 60
    factors = list(crop_miou)
    values = [100 * crop_miou[f] for f in factors]
    low = math.floor(min(values) / 10) * 10 if values else 0
    high = max(low + 10, math.ceil(max(values) / 10) * 10) if values else 100
    font, black, grey = cv2.FONT_HERSHEY_SIMPLEX, (0, 0, 0), (200, 200, 200)
    span = max(len(factors) - 1, 1)
    xs = [int(left + i * (right - left) / span) for i in range(len(factors))]
    ys = [int(bottom - (v - low) / (high - low) * (bottom - top)) for v in values]
    for tick in np.linspace(low, high, 5):
        y = int(bottom - (tick - low) / (high - low) * (bottom - top))
        cv2.line(canvas, (left, y), (right, y), grey, 1)
        cv2.putText(canvas, f"{tick:.0f}", (left - 40, y + 5), font, 0.45, black, 1)
    cv2.rectangle(canvas, (left, top), (right, bottom), black, 1)
    for x, y, f, v in zip(xs, ys, factors, values):
        cv2.circle(canvas, (x, y), 4, (31, 119, 180), -1)
        cv2.putText(canvas, str(f), (x - 12, bottom + 20), font, 0.45, black, 1)
        cv2.putText(canvas, f"{v:.1f}", (x - 15, y - 10), font, 0.4, black, 1)
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        cv2.line(canvas, (x0, y0), (x1, y1), (31, 119, 180), 2)
    cv2.putText(canvas, "mIoU (%) vs crop factor (px)", (left, 25), font, 0.6, black, 1)
    cv2.putText(canvas, "crop factor", (width // 2 - 40, height - 15), font, 0.5, black, 1)
    return canvas


def tensorboard_scalars(results: dict) -> dict:
    """{tag: value} of the scalars written to TensorBoard."""
    scalars = {"eval/miou": results["miou"], "eval/pixel_accuracy": results["pixel_accuracy"]}
    for t, f in results["boundary_f"].items():
        scalars[f"eval/boundary_f_{t}px"] = f
    for factor, miou in results["crop_factor_miou"].items():
        scalars[f"eval/crop_{factor}_miou"] = miou
    for name, iou in results["iou"].items():
        if math.isfinite(iou):
            scalars[f"eval_iou/{name}"] = iou
    return scalars


def write_reports(results: dict, out_dir: str, step: int = 0) -> dict:
    """Writes metrics.json, metrics.md, crop_factor.png and events/; returns their paths."""
    import tensorflow as tf

    from gscnn_tf.viz import write_png

    files.makedirs(out_dir)
    paths = {name: files.join(out_dir, name)
             for name in ("metrics.json", "metrics.md", "crop_factor.png", "events")}
    files.atomic_write_text(paths["metrics.json"], json.dumps(results, indent=2, allow_nan=True))
    files.atomic_write_text(paths["metrics.md"], markdown(results))
    write_png(paths["crop_factor.png"], crop_factor_plot(results["crop_factor_miou"]))
    writer = tf.summary.create_file_writer(paths["events"])
    with writer.as_default():
        for tag, value in tensorboard_scalars(results).items():
            tf.summary.scalar(tag, value, step=step)
    writer.close()
    return paths
