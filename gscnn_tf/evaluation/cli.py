"""`gscnn-tf evaluate`: a trained model over a split with the paper's protocol; writes
metrics.json, metrics.md, crop_factor.png and TensorBoard scalars to `--output`.

    gscnn-tf evaluate runs/x --split val --flip --scales 0.75 1 1.25
    gscnn-tf evaluate model.keras --config configs/cityscapes_resnet50.yaml \\
        --window 1024 1024 --save-predictions preds/ --format cityscapes
"""

from __future__ import annotations

import argparse
import os

from gscnn_tf.cli.arguments import add_checkpoint_argument, add_config_arguments
from gscnn_tf.precision import add_precision_argument, apply_precision


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=".keras file, run directory / checkpoint, or SavedModel")
    add_config_arguments(parser, "config YAML (default: the run's config.yaml)",
                         "eval.tolerances=[3,5]")
    add_checkpoint_argument(parser)
    parser.add_argument("--split", default="", help="split (default: data.val_split)")
    parser.add_argument("--output", "-o", default="",
                        help="report folder (default: <run dir>/eval_<split> or eval_<split>)")
    parser.add_argument("--flip", action="store_true", help="average with the flipped image")
    parser.add_argument("--scales", type=float, nargs="+", help="multi-scale inference")
    parser.add_argument("--window", type=int, nargs=2, metavar=("H", "W"),
                        help="sliding-window inference with windows of H x W pixels")
    parser.add_argument("--overlap", type=float, help="window overlap fraction")
    parser.add_argument("--limit", type=int, default=0, help="only the first N images")
    parser.add_argument("--save-predictions", default="", metavar="DIR",
                        help="write the predicted label PNGs to DIR")
    parser.add_argument("--format", default="trainids", choices=("trainids", "cityscapes"),
                        help="prediction PNGs: train ids, or Cityscapes labelIds named for "
                             "the official evaluation")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes for the boundary F-score beside inference")
    parser.add_argument("--step", type=int, default=0, help="TensorBoard step")
    add_precision_argument(parser)


def run(args) -> int:
    import gscnn_tf
    from gscnn_tf.evaluation.evaluator import Evaluator
    from gscnn_tf.evaluation.report import tolerance_labels, write_reports
    from gscnn_tf.inference import Predictor, find_run_config

    config_path = args.config or find_run_config(args.model)
    config = gscnn_tf.load_config(config_path, args.set)
    if args.flip:
        config.eval.flip = True
    if args.scales:
        config.eval.scales = list(args.scales)
    if args.window:
        config.eval.window = list(args.window)
    if args.overlap is not None:
        config.eval.window_overlap = args.overlap
    split = args.split or config.data.val_split
    output = args.output or os.path.join(
        os.path.dirname(config_path) if config_path and not args.config else ".",
        f"eval_{split}")
    predictor = apply_precision(Predictor(args.model, config, checkpoint=args.checkpoint),
                                args.precision)
    evaluator = Evaluator(predictor, config, args.workers)
    results = evaluator.run(split, args.save_predictions or None, args.format, args.limit)
    paths = write_reports(results, output, args.step)
    labels = tolerance_labels(results, with_pixels=True)
    f_text = ", ".join(f"{labels[t]}: {100 * f:.2f}" for t, f in results["boundary_f"].items())
    print(f"{results['images']} images: mIoU {100 * results['miou']:.2f}, {f_text}")
    print(f"wrote {', '.join(paths.values())}")
    return 0
