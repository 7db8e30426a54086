"""`gscnn-tf import-reference`: convert the reference PyTorch checkpoint
(gscnn_tf.reference_import)."""

from __future__ import annotations

import argparse

from gscnn_tf.reference_import import import_reference


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="reference .pth file (state dict, keys module.*)")
    parser.add_argument("--out", required=True, help="Keras model file to write (.keras)")
    parser.add_argument("--preset", default="",
                        help="preset folder to write too (default: --out without .keras)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out and preset folder")
    parser.add_argument("--image-gradients", choices=("canny", "none"), default="canny",
                        help="the reference's Canny input, or zeros (model.image_gradients)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="unpickle non-tensor objects in the checkpoint (trusted files)")


def run(args) -> int:
    report = import_reference(args.checkpoint, args.out, args.overwrite,
                              args.image_gradients, args.trust_pickle, args.preset)
    print(f"wrote {report.out}: {report.mapped} weights set, {report.num_classes} classes, "
          f"{report.parameters:,} parameters, {report.seconds:.1f} s")
    if report.preset:
        print(f"wrote the preset {report.preset} (gscnn_tf.GSCNN.from_preset, or any "
              "gscnn-tf command that takes a model)")
    if report.skipped:
        print(f"skipped (unused by the reference forward pass): {', '.join(report.skipped)}")
    return 0
