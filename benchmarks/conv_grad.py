"""The convolution filter gradient as matrix products (`gscnn_tf.ops.conv`) against
TensorFlow's CPU `Conv2DBackpropFilter`: WRN-38 GSCNN's convolution shapes at 512x512 batch 2
one by one (float32, and bfloat16 where the CPU has it), round-robin in one process, with the
form `auto` picks for each; then the whole training step in both forms, each in child processes
of its own, alternating (in bfloat16 too where the CPU has it).
Run: python -m benchmarks.conv_grad [--reps 5] [--rounds 2]
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.reference import step_rounds_blocks, variants_main  # noqa: E402
from gscnn_tf.benchmark import markdown_report, markdown_table, time_interleaved  # noqa: E402

# name: (batch, height, width, Cin, Cout, kernel, stride), at 512x512 crops, batch 2: WRN-38's
# wide layers (the dilated ones as the space-to-batch form runs them: rate x rate images),
# ASPP's taps product, the decoder, and narrow layers of the trunk and the shape stream.
SHAPES = {
    "mod7 1x1 (2048 -> 4096), 64x64": (2, 64, 64, 2048, 4096, 1, 1),
    "mod7 3x3 rate 4 (1024 -> 2048), 16 x 16x16": (32, 16, 16, 1024, 2048, 3, 1),
    "mod5 3x3 rate 2 (512 -> 1024), 8 x 32x32": (8, 32, 32, 512, 1024, 3, 1),
    "mod4 3x3 (512 -> 512), 64x64": (2, 64, 64, 512, 512, 3, 1),
    "ASPP taps product 1x1 (4096 -> 9 x 256), 64x64": (2, 64, 64, 4096, 2304, 1, 1),
    "decoder 3x3 (304 -> 256), 256x256": (2, 256, 256, 304, 256, 3, 1),
    "mod3 3x3 (256 -> 256), 128x128": (2, 128, 128, 256, 256, 3, 1),
    "mod2 3x3 (128 -> 128), 256x256": (2, 256, 256, 128, 128, 3, 1),
    "mod3 3x3 / 2 (128 -> 256), 256x256": (2, 256, 256, 128, 256, 3, 2),
    "shape stream 3x3 (32 -> 32), 512x512": (2, 512, 512, 32, 32, 3, 1),
    "gate 1x1 (64 -> 1), 512x512": (2, 512, 512, 64, 1, 1, 1),
}


def shapes(reps, dtypes):
    """{name: {dtype: {"native_s", "matmul_s", "max_rel_diff"}, "gflop", "auto"}}."""
    import numpy as np
    import tensorflow as tf

    from gscnn_tf.ops import conv

    rng = np.random.default_rng(0)
    out = {}
    for name, (b, h, w, cin, cout, k, s) in SHAPES.items():
        kernel_shape, strides = (k, k, cin, cout), (s, s)
        row = {"gflop": 2e-9 * b * -(-h // s) * -(-w // s) * cin * cout * k * k,
               "auto": conv.filter_gradient_form(kernel_shape, strides)}
        for dtype in dtypes:
            x = tf.constant(rng.random((b, h, w, cin), np.float32), dtype)
            dy = tf.constant(rng.random((b, -(-h // s), -(-w // s), cout), np.float32), dtype)
            native = tf.function(lambda x=x, dy=dy: tf.raw_ops.Conv2DBackpropFilter(
                input=x, filter_sizes=kernel_shape, out_backprop=dy, strides=[1, s, s, 1],
                padding="SAME"))
            matmul = tf.function(lambda x=x, dy=dy: conv.filter_gradient_matmul(
                x, dy, kernel_shape, strides, "SAME"))
            a = native().numpy().astype(np.float32)
            diff = float(np.abs(matmul().numpy().astype(np.float32) - a).max() / np.abs(a).max())
            timing = time_interleaved({"native": lambda f=native: f().numpy(),
                                       "matmul": lambda f=matmul: f().numpy()},
                                      warmup=1, reps=reps)
            row[dtype] = {"native_s": timing["native"]["median_s"],
                          "matmul_s": timing["matmul"]["median_s"], "max_rel_diff": diff}
        out[name] = row
    return out


def markdown(r):
    blocks = [f"Command: `{r['command']}`."]
    if "shapes" in r:
        dtypes = [d for d in ("float32", "bfloat16") if d in next(iter(r["shapes"].values()))]
        rows = []
        for name, row in r["shapes"].items():
            cells = [name, f"{row['gflop']:.1f}", row["auto"]]
            for d in dtypes:
                v = row[d]
                cells += [f"{v['native_s'] * 1e3:.0f}", f"{v['matmul_s'] * 1e3:.0f}",
                          f"{v['native_s'] / v['matmul_s']:.2f}"]
            rows.append(cells)
        headers = ["shape", "GFLOP", "auto picks"]
        for d in dtypes:
            headers += [f"{d} native ms", f"{d} matmul ms", f"{d} speed-up"]
        blocks += ["## The filter gradient, shape by shape",
                   f"Medians of {r['reps']} round-robin runs in one process. Largest difference "
                   "from the native kernel, relative to its largest value: "
                   f"{max(v[d]['max_rel_diff'] for v in r['shapes'].values() for d in dtypes):.1e}"
                   " (bfloat16 included: its rounding).",
                   markdown_table(headers, rows)]
    if "steps" in r:
        blocks += step_rounds_blocks(r["steps"], "filter gradient")
    return markdown_report("The filter gradient as matrix products", r["machine"], *blocks)


def _form(child):
    from gscnn_tf.ops import conv

    return conv.filter_gradient("auto" if child == "matmul" else "native")


def main(argv=None) -> int:
    return variants_main(argv, __doc__, "benchmarks.conv_grad",
                         {"native": "native", "matmul (auto)": "matmul"}, _form, shapes,
                         markdown)


if __name__ == "__main__":
    raise SystemExit(main())
