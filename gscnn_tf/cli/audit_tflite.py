"""`gscnn-tf audit-tflite`: which ops of a TFLite file the GPU delegate runs
(gscnn_tf.export.gpu_audit)."""

from __future__ import annotations

import argparse

from gscnn_tf.export.gpu_audit import audit_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tflite", nargs="+", help=".tflite file(s)")
    parser.add_argument("--summary", action="store_true",
                        help="only the one-line verdict per file, not the op table")
    parser.add_argument("--require-clean", action="store_true",
                        help="exit with status 1 unless every file runs whole on the GPU "
                             "delegate (one partition, nothing unsupported)")


def run(args) -> int:
    clean = True
    for path in args.tflite:
        report = audit_file(path)
        print(f"{path}: {report.summary()}" if args.summary else report.text())
        clean = clean and report.clean
    return 1 if args.require_clean and not clean else 0
