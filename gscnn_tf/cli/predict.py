"""`gscnn-tf predict`: label maps, overlays and edges for images or folders
(gscnn_tf.inference.Predictor)."""

from __future__ import annotations

import argparse

from gscnn_tf import files
from gscnn_tf.cli.arguments import add_checkpoint_argument, add_config_arguments
from gscnn_tf.inference import Predictor
from gscnn_tf.precision import add_precision_argument, apply_precision


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=".keras file, preset folder, run directory / checkpoint, "
                                      "or SavedModel")
    parser.add_argument("inputs", help="an image file or a folder (searched recursively)")
    parser.add_argument("--output", "-o", default="predictions", help="output folder")
    add_config_arguments(parser, "training config YAML (default: the run's)")
    add_checkpoint_argument(parser)
    parser.add_argument("--gates", action="store_true", help="also write the gate maps")
    parser.add_argument("--label-ids", action="store_true",
                        help="label PNGs in the dataset's label ids (Cityscapes labelIds)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    add_precision_argument(parser)


def run(args) -> int:
    predictor = apply_precision(Predictor(args.model, args.config, args.set, args.checkpoint),
                                args.precision)
    options = {"gates": args.gates, "label_ids": args.label_ids, "alpha": args.alpha}
    if files.isdir(args.inputs):
        written = predictor.predict_folder(args.inputs, args.output, **options)
    elif files.isfile(args.inputs):
        written = predictor.predict_file(args.inputs, args.output, **options)
    else:
        raise FileNotFoundError(f"input not found: {args.inputs}")
    print(f"wrote {len(written)} files under {args.output}")
    return 0
