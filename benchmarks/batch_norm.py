"""Batch normalisation in training: Keras's graph (batch moments from reductions and
elementwise ops) against TensorFlow's fused kernel, which `gscnn_tf.models.layers.
BatchNormalization` runs. WRN-38 GSCNN's batch-norm shapes at 512x512 batch 2 one by one
(forward and backward, float32, and bfloat16 where the CPU has it), round-robin in one
process; then the whole training step with each, in child processes of their own,
alternating (in bfloat16 too where the CPU has it).
Run: python -m benchmarks.batch_norm [--reps 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks import ROOT, argument_parser  # noqa: E402
from benchmarks.reference import (child_train, has_bf16, step_rounds,  # noqa: E402
                                  step_rounds_blocks, train_steps)
from gscnn_tf.benchmark import (command_line, machine_info, markdown_report,  # noqa: E402
                                markdown_table, time_interleaved, time_once, write_results)
from gscnn_tf.cli.arguments import add_config_arguments, parse_size  # noqa: E402

# name: [batch, height, width, channels] at 512x512 crops, batch 2 (output stride 8).
SHAPES = {
    "shape stream (32), 512x512": (2, 512, 512, 32),
    "mod2 (128), 256x256": (2, 256, 256, 128),
    "mod3 (256), 128x128": (2, 128, 128, 256),
    "mod4 (512), 64x64": (2, 64, 64, 512),
    "mod5 (1024), 64x64": (2, 64, 64, 1024),
    "mod7 (4096), 64x64": (2, 64, 64, 4096),
}


def shapes(reps, dtypes):
    """{name: {dtype: {"keras_s", "fused_s", "max_rel_diff"}}}: one training pass (outputs,
    and the gradients of a weighted sum to the input, gamma and beta) each way."""
    import keras
    import numpy as np
    import tensorflow as tf

    from gscnn_tf.models.layers import BatchNormalization

    rng = np.random.default_rng(0)
    out = {}
    for name, shape in SHAPES.items():
        row = {}
        for dtype in dtypes:
            x = tf.constant(rng.standard_normal(shape, np.float32) * 2 + 0.5, dtype)
            weights = tf.constant(rng.standard_normal(shape, np.float32), dtype)
            policy = "mixed_bfloat16" if dtype == "bfloat16" else "float32"
            layers = {"keras": keras.layers.BatchNormalization(dtype=policy),
                      "fused": BatchNormalization(dtype=policy)}

            def train(layer):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    loss = tf.reduce_sum(tf.cast(layer(x, training=True) * weights,
                                                 tf.float32))
                return tape.gradient(loss, [x, *layer.trainable_weights])

            fns = {k: tf.function(lambda layer=layer: train(layer)) for k, layer in
                   layers.items()}
            a, b = ([np.asarray(tf.cast(g, tf.float32)) for g in fns[k]()] for k in layers)
            diff = max(float(np.abs(u - v).max() / np.abs(u).max()) for u, v in zip(a, b))
            timing = time_interleaved({k: lambda f=f: [g.numpy() for g in f()]
                                       for k, f in fns.items()}, warmup=1, reps=reps)
            row[dtype] = {"keras_s": timing["keras"]["median_s"],
                          "fused_s": timing["fused"]["median_s"], "max_rel_diff": diff}
        out[name] = row
    return out


def steps(size, n, rounds, config, overrides, per_child, bf16):
    """Rounds of our training step, Keras's batch norm and the fused one each in its own
    child process, alternating; with `bf16`, the same under train.mixed_precision=bf16."""
    precisions = {"": [], ", bf16": ["train.mixed_precision=bf16"]} if bf16 else {"": []}
    runs = {f"{who}{tag}": (who, extra) for tag, extra in precisions.items()
            for who in ("keras", "fused")}
    return step_rounds("benchmarks.batch_norm", runs, size, n, rounds, config, overrides,
                       per_child)


def markdown(r):
    blocks = [f"Command: `{r['command']}`."]
    if "shapes" in r:
        dtypes = [d for d in ("float32", "bfloat16") if d in next(iter(r["shapes"].values()))]
        rows = [[name, *[cell for d in dtypes for cell in (
                    f"{row[d]['keras_s'] * 1e3:.1f}", f"{row[d]['fused_s'] * 1e3:.1f}",
                    f"{row[d]['keras_s'] / row[d]['fused_s']:.2f}")]]
                for name, row in r["shapes"].items()]
        headers = ["shape", *[f"{d} {h}" for d in dtypes
                              for h in ("Keras ms", "fused ms", "speed-up")]]
        blocks += ["## Forward and backward, shape by shape",
                   f"Medians of {r['reps']} round-robin runs in one process. Largest difference "
                   "of an output or gradient from Keras's, relative to its largest value: "
                   f"{max(v[d]['max_rel_diff'] for v in r['shapes'].values() for d in dtypes):.1e}"
                   " (bfloat16 included: its rounding).",
                   markdown_table(headers, rows)]
    if "steps" in r:
        blocks += step_rounds_blocks(r["steps"], "batch norm")
    return markdown_report("Batch normalisation: Keras's graph against the fused kernel",
                           r["machine"], *blocks)


def main(argv=None) -> int:
    parser = argument_parser(__doc__, "batch_norm")
    add_config_arguments(parser, "the training step's YAML config (default "
                         "configs/cityscapes_wrn38.yaml)")
    parser.set_defaults(config=os.path.join(ROOT, "configs", "cityscapes_wrn38.yaml"))
    parser.add_argument("--parts", nargs="+", default=["shapes", "steps"],
                        choices=("shapes", "steps"))
    parser.add_argument("--reps", type=int, default=5, help="round-robin runs per shape")
    parser.add_argument("--rounds", type=int, default=2, help="training-step rounds")
    parser.add_argument("--train-size", type=lambda t: tuple(parse_size(t)), default=(512, 512))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--train-steps", type=train_steps, default=4,
                        help="training steps per child process (>= 2; the first untimed)")
    parser.add_argument("--child", choices=("keras", "fused"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        from gscnn_tf.models.layers import BatchNormalization

        BatchNormalization.fused = args.child == "fused"
        child_train("ours", *args.train_size, args.batch, args.config, args.set,
                    args.train_steps)
        return 0
    record = {"machine": machine_info(), "reps": args.reps,
              "command": command_line("benchmarks.batch_norm", argv)}
    dtypes = ["float32", *(["bfloat16"] if has_bf16(record["machine"]) else [])]
    run = {"shapes": lambda: shapes(args.reps, dtypes),
           "steps": lambda: steps(args.train_size, args.batch, args.rounds, args.config,
                                  args.set, args.train_steps, len(dtypes) > 1)}
    for part in args.parts:
        record[part], _ = time_once(run[part])
        write_results(args.out, args.name, record, markdown(record))
    write_results(args.out, args.name, record, markdown(record), echo=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
