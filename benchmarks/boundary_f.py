"""Boundary F-score speed: N synthetic 1024x2048 prediction / ground-truth pairs, 19 classes,
tolerances 3/5/9/12 (the paper's protocol), through `BoundaryFAccumulator`; extrapolated to
the 500 images of Cityscapes val. Also times the confusion matrix and crop-factor matrices.

The maps are Cityscapes-like: the argmax of 19 smooth random fields (curvy regions of varied
size), the prediction the argmax of the same fields plus a smaller smooth perturbation (its
boundaries move by a few pixels, regions appear and vanish), ground truth void in a bottom
band (the ego vehicle) and a few blobs.

    python benchmarks/boundary_f.py [--images 4] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor

import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from gscnn_tf.benchmark import machine_info  # noqa: E402
from gscnn_tf.evaluation import metrics  # noqa: E402

H, W, C, TOLERANCES = 1024, 2048, 19, [3, 5, 9, 12]


def smooth_field(rng, scale):
    coarse = rng.standard_normal((H // scale + 2, W // scale + 2, C)).astype(np.float32)
    return cv2.resize(coarse, (W, H), interpolation=cv2.INTER_CUBIC)


def make_pair(seed):
    rng = np.random.default_rng(seed)
    field = smooth_field(rng, 128) + 0.25 * smooth_field(rng, 32)
    label = np.argmax(field, -1).astype(np.uint8)
    pred = np.argmax(field + 0.3 * smooth_field(rng, 8), -1).astype(np.uint8)
    ignore = smooth_field(rng, 128)[..., 0] > 1.2  # a few contiguous void regions
    ignore[int(0.85 * H):] = True  # and the ego vehicle
    label[ignore] = 255
    return pred, label


def score(seed):
    pred, label = make_pair(seed)
    start = time.perf_counter()
    acc = metrics.BoundaryFAccumulator(C, TOLERANCES)
    acc.update(pred, label)
    boundary_s = time.perf_counter() - start
    start = time.perf_counter()
    metrics.confusion_matrix(pred, label, C)
    metrics.crop_confusion_matrices(pred, label, C, [0, 100, 200, 300, 400])
    iou_s = time.perf_counter() - start
    gt_map = np.where(label == 255, metrics.NO_CLASS, label).astype(np.int32)
    boundary_px = sum(len(b) for b in metrics.class_boundaries(gt_map, C))
    return boundary_s, iou_s, boundary_px / (H * W), acc.summary()["f"]


def reference_estimate(pred, label) -> float:
    """Seconds per image of the reference's way (scipy binary_dilation of both boundary maps
    with each disk, per class), timed on one class and multiplied by the 19 classes."""
    from scipy.ndimage import binary_dilation
    from skimage.morphology import disk

    gt_map = np.where(label == 255, metrics.NO_CLASS, label).astype(np.int32)
    coords = metrics.class_boundaries(gt_map, C)[0]
    boundary = np.zeros((H, W), bool)
    boundary[coords[:, 0], coords[:, 1]] = True
    start = time.perf_counter()
    for tolerance in TOLERANCES:
        for _ in range(2):
            binary_dilation(boundary, disk(tolerance))
    return C * (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-reference", action="store_true",
                        help="skip timing the reference's dilations on one image")
    args = parser.parse_args()
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(score, range(args.images)))
    wall = time.perf_counter() - start
    per_image = float(np.mean([r[0] for r in results]))
    iou_per_image = float(np.mean([r[1] for r in results]))
    # wall time includes drawing the synthetic maps; the scoring time alone, parallel:
    cost_500 = 500 * (per_image + iou_per_image) / args.workers
    reference_s = None if args.no_reference else reference_estimate(*make_pair(0))
    record = {
        "benchmark": "boundary_f", "images": args.images, "height": H, "width": W,
        "classes": C, "tolerances": TOLERANCES, "workers": args.workers,
        "boundary_f_s_per_image": round(per_image, 3),
        "confusion_and_crops_s_per_image": round(iou_per_image, 3),
        "extrapolated_500_images_s": round(cost_500, 1),
        "reference_dilation_s_per_image_estimate": reference_s and round(reference_s, 1),
        "wall_s_including_map_generation": round(wall, 1),
        "gt_boundary_pixel_class_pairs_per_pixel": round(float(np.mean([r[2] for r in
                                                                         results])), 4),
        "f_first_image": {str(k): round(v, 4) for k, v in results[0][3].items()},
        "machine": machine_info(),
    }
    print(json.dumps(record, indent=2))
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "boundary_f.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    with open(os.path.join(out_dir, "boundary_f.md"), "w", encoding="utf-8") as f:
        f.write(
            "# Boundary F-score speed\n\n"
            f"{args.images} synthetic {H}x{W} pairs, {C} classes, tolerances {TOLERANCES}, "
            f"{args.workers} worker process(es), {record['machine']['cpu']} "
            f"({record['machine']['cores']} cores, 1-min load average "
            f"{record['machine']['load_average_1min']:.1f} while measured).\n\n"
            "| measure | value |\n|---|---|\n"
            f"| boundary F, all 4 tolerances, per image | {per_image:.3f} s |\n"
            f"| confusion matrix + 5 crop-factor matrices, per image | {iou_per_image:.3f} s |\n"
            f"| extrapolated to 500 images (Cityscapes val) | {cost_500:.0f} s "
            f"({cost_500 / 60:.1f} min) |\n"
            + (f"| the reference's dilations (scipy, one worker), per image, estimated | "
               f"{reference_s:.1f} s |\n" if reference_s else "")
            + "| ground-truth class-boundary pixels (two classes count twice) | "
            f"{100 * record['gt_boundary_pixel_class_pairs_per_pixel']:.2f} % of the image |\n\n"
            "The cost grows with the number of boundary pixels (one k-d tree query each), not "
            "with the tolerances; the reference dilates every class map of every image with "
            "each disk.\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
