"""Boundary F-score speed: synthetic Cityscapes-like 1024x2048 prediction / ground-truth pairs
(19 classes, tolerances 3/5/9/12 px) through `BoundaryFAccumulator`, extrapolated to the 500
images of Cityscapes val, beside the confusion and crop-factor matrices and an estimate of the
reference's per-class dilations.
Run: python -m benchmarks.boundary_f [--images 4] [--workers 1]
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import cv2
import numpy as np

from benchmarks import argument_parser
from gscnn_tf.benchmark import (machine_info, markdown_report, markdown_table, time_once,
                                write_results)
from gscnn_tf.evaluation import metrics

H, W, C, TOLERANCES = 1024, 2048, 19, [3, 5, 9, 12]


def smooth_field(rng, scale):
    coarse = rng.standard_normal((H // scale + 2, W // scale + 2, C)).astype(np.float32)
    return cv2.resize(coarse, (W, H), interpolation=cv2.INTER_CUBIC)


def make_pair(seed):
    """(prediction, ground truth) uint8 [H, W]: the argmax of 19 smooth random fields (curvy
    regions of varied size), the prediction with a smaller smooth perturbation (boundaries
    move a few pixels), ground truth void (255) in a few blobs and a bottom band."""
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

    def boundary_f():
        acc = metrics.BoundaryFAccumulator(C, TOLERANCES)
        acc.update(pred, label)
        return acc

    acc, boundary_s = time_once(boundary_f)
    _, iou_s = time_once(lambda: (metrics.confusion_matrix(pred, label, C),
                                  metrics.crop_confusion_matrices(pred, label, C,
                                                                  [0, 100, 200, 300, 400])))
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
    _, seconds = time_once(lambda: [binary_dilation(boundary, disk(tolerance))
                                    for tolerance in TOLERANCES for _ in range(2)])
    return C * seconds


def markdown(r: dict) -> str:
    per_image, iou, cost = (r["boundary_f_s_per_image"], r["confusion_and_crops_s_per_image"],
                            r["extrapolated_500_images_s"])
    reference = r["reference_dilation_s_per_image_estimate"]
    rows = [["boundary F, all 4 tolerances, per image", f"{per_image:.3f} s"],
            ["confusion matrix + 5 crop-factor matrices, per image", f"{iou:.3f} s"],
            ["extrapolated to 500 images (Cityscapes val)", f"{cost:.0f} s "
             f"({cost / 60:.1f} min)"]]
    if reference:
        rows.append(["the reference's dilations (scipy, one worker), per image, estimated",
                     f"{reference:.1f} s"])
    rows.append(["ground-truth class-boundary pixels (two classes count twice)",
                 f"{100 * r['gt_boundary_pixel_class_pairs_per_pixel']:.2f} % of the image"])
    return markdown_report(
        "Boundary F-score speed", r["machine"],
        f"{r['images']} synthetic {H}x{W} pairs, {C} classes, tolerances {TOLERANCES}, "
        f"{r['workers']} worker process(es).", markdown_table(["measure", "value"], rows),
        "The cost grows with the number of boundary pixels (one k-d tree query each), not "
        "with the tolerances; the reference dilates every class map of every image with "
        "each disk.")


def main(argv=None) -> int:
    parser = argument_parser(__doc__, "boundary_f")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-reference", action="store_true",
                        help="skip timing the reference's dilations on one image")
    args = parser.parse_args(argv)
    with ProcessPoolExecutor(args.workers) as pool:
        results, wall = time_once(lambda: list(pool.map(score, range(args.images))))
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
    write_results(args.out, args.name, record, markdown(record), echo=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
