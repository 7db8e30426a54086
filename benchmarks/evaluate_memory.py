"""Batch-1 full-resolution evaluation cost: peak host memory and time of one 1024x2048 image
through the Evaluator's inference with the ResNet-50 GSCNN of configs/cityscapes_resnet50.yaml
(random weights), whole image against sliding windows, each mode in its own process (the
memory after building the model subtracted).
Run: python -m benchmarks.evaluate_memory [--modes full window] [--size 1024x2048]
"""

from __future__ import annotations

import argparse
import json
import os

from benchmarks import ROOT, argument_parser
from gscnn_tf.benchmark import (machine_info, markdown_report, markdown_table, peak_rss_mb,
                                run_child, time_once, write_results)
from gscnn_tf.cli.arguments import add_config_arguments, parse_size


def child(args) -> dict:
    import numpy as np

    import gscnn_tf
    from gscnn_tf.data.pipeline import dataset_info
    from gscnn_tf.evaluation.evaluator import Evaluator
    from gscnn_tf.inference import Predictor

    height, width = parse_size(args.size)
    config = gscnn_tf.load_config(args.config, ["model.backbone.weights=", *args.set])
    if args.child == "window":
        config.eval.window = [args.window, args.window]
    model = gscnn_tf.build_model(config.model, dataset_info(config).num_classes)
    evaluator = Evaluator(Predictor.from_model(model, config), config)
    image = np.random.default_rng(0).uniform(0, 255, (height, width, 3)).astype(np.float32)
    built = peak_rss_mb()
    labels, seconds = time_once(lambda: evaluator.predict(image))
    assert labels.shape == (height, width)
    return {"mode": args.child, "window": config.eval.window, "seconds": round(seconds, 1),
            "peak_rss_mb": round(peak_rss_mb()), "rss_after_build_mb": round(built),
            "inference_peak_mb": round(peak_rss_mb() - built)}


def markdown(r: dict) -> str:
    return markdown_report(
        "Batch-1 evaluation memory, ResNet-50 Gated-SCNN", r["machine"],
        f"One {r['width']}x{r['height']} image, float32, CPU.", markdown_table(["mode", "window", "time", "peak RSS", "of which inference"],
                           [[m["mode"], m["window"] or "-", f"{m['seconds']} s",
                             f"{m['peak_rss_mb']} MB", f"{m['inference_peak_mb']} MB"]
                            for m in r["rows"]]))


def main(argv=None) -> int:
    parser = argument_parser(__doc__, "evaluate_memory")
    add_config_arguments(parser, "YAML config (default configs/cityscapes_resnet50.yaml)")
    parser.set_defaults(config=os.path.join(ROOT, "configs", "cityscapes_resnet50.yaml"))
    parser.add_argument("--modes", nargs="+", default=["full", "window"],
                        choices=("full", "window"))
    parser.add_argument("--size", default="1024x2048", help="HEIGHTxWIDTH of the image")
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    height, width = parse_size(args.size)
    rows = []
    for mode in args.modes:
        rows.append(run_child(["-m", "benchmarks.evaluate_memory", "--child", mode, "--size",
                               args.size, "--window", str(args.window), "--config",
                               args.config, *[f"--set={s}" for s in args.set]]))
        print(rows[-1])
        if "error" in rows[-1]:
            raise SystemExit(f"{mode}: {rows[-1]['error']}")
    record = {"benchmark": "evaluate_memory", "height": height, "width": width,
              "model": f"{os.path.basename(args.config)} (GSCNN)", "rows": rows,
              "machine": machine_info()}
    write_results(args.out, args.name, record, markdown(record), echo=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
