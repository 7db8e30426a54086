"""Batch normalisation in training: Keras's graph (batch moments from reductions and
elementwise ops) against TensorFlow's fused kernel, which `gscnn_tf.models.layers.
BatchNormalization` runs. WRN-38 GSCNN's batch-norm shapes at 512x512 batch 2 one by one
(forward and backward, float32, and bfloat16 where the CPU has it), round-robin in one
process; then the whole training step with each, in child processes of their own,
alternating (in bfloat16 too where the CPU has it).
Run: python -m benchmarks.batch_norm [--reps 5] [--rounds 2]
"""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.reference import step_rounds_blocks, variants_main  # noqa: E402
from gscnn_tf.benchmark import markdown_report, markdown_table, time_interleaved  # noqa: E402

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
                   + ", ".join(f"{d} {max(v[d]['max_rel_diff'] for v in r['shapes'].values()):.1e}"
                               for d in dtypes) + ".",
                   markdown_table(headers, rows)]
    if "steps" in r:
        blocks += step_rounds_blocks(r["steps"], "batch norm")
    return markdown_report("Batch normalisation: Keras's graph against the fused kernel",
                           r["machine"], *blocks)


@contextlib.contextmanager
def _path(child):
    from gscnn_tf.models.layers import BatchNormalization

    before, BatchNormalization.fused = BatchNormalization.fused, child == "fused"
    try:
        yield
    finally:
        BatchNormalization.fused = before


def main(argv=None) -> int:
    return variants_main(argv, __doc__, "benchmarks.batch_norm",
                         {"keras": "keras", "fused": "fused"}, _path, shapes, markdown)


if __name__ == "__main__":
    raise SystemExit(main())
