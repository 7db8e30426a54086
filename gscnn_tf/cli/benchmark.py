"""`gscnn-tf benchmark`: speed figures of a config's model on this machine
(gscnn_tf.benchmark's timing helpers)."""

from __future__ import annotations

import json

from gscnn_tf import files
from gscnn_tf.benchmark import machine_info, peak_rss_mb, time_call
from gscnn_tf.cli.arguments import add_config_arguments, parse_size


def add_arguments(parser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--size", default="512x1024", help="input HEIGHTxWIDTH")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", default="", help="also write the figures to this file")


def run(args) -> int:
    import numpy as np
    import tensorflow as tf

    from gscnn_tf import build_model
    from gscnn_tf.config import load_config
    from gscnn_tf.models.summary import count_flops

    height, width = parse_size(args.size)  # UsageError naming the size: one error line
    config = load_config(args.config, args.set)
    model = build_model(config.model, args.num_classes)
    image = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, height, width, 3)),
                        tf.float32)
    forward = tf.function(lambda x: model(x, training=False))
    timing = time_call(lambda: {k: v.numpy() for k, v in forward(image).items()},
                       args.warmup, args.reps)
    flops = count_flops(model, height, width)
    record = {"model": model.name, "size": [height, width], **timing, "flops": flops,
              "gflops_per_s": flops / timing["median_s"] / 1e9, "peak_rss_mb": peak_rss_mb(),
              "machine": machine_info()}
    m = record["machine"]
    print(f"{model.name} at {height}x{width}, batch 1: median {timing['median_s']:.3f} s "
          f"over {args.reps} runs after {args.warmup} warm-up "
          f"(min {timing['min_s']:.3f} s, load average {timing['load_average_1min']:.2f})")
    print(f"  {flops / 1e9:.1f} GFLOP per image, {record['gflops_per_s']:.1f} GFLOP/s, "
          f"peak RSS {record['peak_rss_mb']:.0f} MiB")
    print(f"  {m['cpu']}, {m['cores']} cores, {m['gpus']} GPU, TensorFlow {m['tensorflow']}, "
          f"Keras {m['keras']}")
    if args.json:
        files.atomic_write_text(args.json, json.dumps(record, indent=2))
    return 0
