"""Batch-1 full-resolution evaluation cost: peak host memory and time of one 1024x2048 image
through the Evaluator's inference (`Predictor.probabilities` + argmax) with the ResNet-50
Gated-SCNN of configs/cityscapes_resnet50.yaml (random weights: memory and time do not depend
on them), whole image vs sliding windows. Each mode runs in its own process, so its peak
resident set size (ru_maxrss) is its own; the figure after building the model is subtracted.

    python benchmarks/evaluate_memory.py [--modes full window] [--height 1024 --width 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def child(mode: str, height: int, width: int, window: int) -> dict:
    import numpy as np

    import gscnn_tf
    from gscnn_tf.benchmark import peak_rss_mb
    from gscnn_tf.data.pipeline import dataset_info
    from gscnn_tf.evaluation.evaluator import Evaluator
    from gscnn_tf.inference import Predictor

    config = gscnn_tf.load_config(os.path.join(ROOT, "configs", "cityscapes_resnet50.yaml"),
                                  ["model.backbone.weights="])
    if mode == "window":
        config.eval.window = [window, window]
    model = gscnn_tf.build_model(config.model, dataset_info(config).num_classes)
    evaluator = Evaluator(Predictor.from_model(model, config), config)
    image = np.random.default_rng(0).uniform(0, 255, (height, width, 3)).astype(np.float32)
    built = peak_rss_mb()
    start = time.perf_counter()
    labels = evaluator.predict(image)
    seconds = time.perf_counter() - start
    assert labels.shape == (height, width)
    return {"mode": mode, "window": config.eval.window, "seconds": round(seconds, 1),
            "peak_rss_mb": round(peak_rss_mb()), "rss_after_build_mb": round(built),
            "inference_peak_mb": round(peak_rss_mb() - built)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", default=["full", "window"])
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--child", default="")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.height, args.width, args.window)))
        return 0
    from gscnn_tf.benchmark import machine_info

    rows = []
    for mode in args.modes:
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--height",
                              str(args.height), "--width", str(args.width), "--window",
                              str(args.window)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1])
    record = {"benchmark": "evaluate_memory", "height": args.height, "width": args.width,
              "model": "cityscapes_resnet50 (GSCNN, ResNet-50 OS8)", "rows": rows,
              "machine": machine_info()}
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "evaluate_memory.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    lines = ["# Batch-1 evaluation memory, ResNet-50 Gated-SCNN", "",
             f"One {args.width}x{args.height} image, float32, CPU ({record['machine']['cpu']}, "
             f"{record['machine']['cores']} cores, TF {record['machine']['tensorflow']}).", "",
             "| mode | window | time | peak RSS | of which inference |", "|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['window'] or '-'} | {r['seconds']} s | "
              f"{r['peak_rss_mb']} MB | {r['inference_peak_mb']} MB |" for r in rows]
    with open(os.path.join(out_dir, "evaluate_memory.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
