"""Ground-truth edges and loss cost: `label_edges` on synthetic 720x720 and 1024x2048 street
scene label maps (radius 1-4, graph mode) against scipy's distance-transform definition, and
one forward + backward pass of `GSCNNLoss` on a 720x720 crop with 19 classes.
Run: python -m benchmarks.edges [--repeats 3] [--no-loss]
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from scipy import ndimage

from benchmarks import argument_parser
from gscnn_tf.benchmark import (machine_info, markdown_report, markdown_table, time_call,
                                write_results)
from gscnn_tf.config import LossConfig
from gscnn_tf.data import synthetic
from gscnn_tf.data.edges import label_edges
from gscnn_tf.losses import GSCNNLoss


def median_ms(fn, repeats: int) -> float:
    return 1000.0 * time_call(fn, 1, repeats)["median_s"]


def scipy_edges(labels: np.ndarray, radius: int) -> np.ndarray:
    """The definition with one Euclidean distance transform per label value."""
    out = np.zeros(labels.shape, bool)
    for value in np.unique(labels):
        mask = labels == value
        if not mask.all():
            out |= mask & (ndimage.distance_transform_edt(mask) <= radius)
    return out


def scene_labels(height: int, width: int, count: int) -> np.ndarray:
    return np.stack([synthetic.render(0, "train", i, height, width)[1] for i in range(count)])


def edge_rows(repeats: int) -> list[dict]:
    rows = []
    for (height, width), batch in [((720, 720), 1), ((720, 720), 8), ((1024, 2048), 1)]:
        labels = scene_labels(height, width, batch)
        tensor = tf.constant(labels.astype(np.int32))
        for radius in (1, 2, 3, 4):
            fn = tf.function(lambda t, r=radius: label_edges(t, r))
            ms = median_ms(lambda: fn(tensor).numpy(), repeats)
            rows.append({"size": f"{height}x{width}", "batch": batch, "radius": radius,
                         "tf_ms": ms, "megapixels_per_s": batch * height * width / ms / 1e3})
        ms = median_ms(lambda: [scipy_edges(m, 2) for m in labels], max(1, repeats // 3))
        rows.append({"size": f"{height}x{width}", "batch": batch, "radius": 2,
                     "scipy_ms": ms, "fraction_edges": float(scipy_edges(labels[0], 2).mean())})
        print(rows[-5:])
    return rows


def loss_rows(repeats: int, size: int = 720, classes: int = 19) -> list[dict]:
    rng = np.random.default_rng(0)
    labels = scene_labels(size, size, 1).astype(np.int32) % classes
    targets = {"labels": tf.constant(labels), "edges": label_edges(tf.constant(labels), 2)}
    outputs = {"seg_logits": tf.constant(rng.normal(size=(1, size, size, classes)), tf.float32),
               "edge_logits": tf.constant(rng.normal(size=(1, size, size, 1)), tf.float32)}
    loss_fn = GSCNNLoss(LossConfig(class_weighting="image"))
    rows = []
    for seed in (None, tf.constant([0, 1])):
        @tf.function
        def step(targets, outputs):
            with tf.GradientTape() as tape:
                tape.watch(outputs)
                total = loss_fn(targets, outputs, seed=seed)["total"]
            return total, tape.gradient(total, outputs)

        ms = median_ms(lambda: tf.nest.map_structure(lambda t: t.numpy(),
                                                     step(targets, outputs)), repeats)
        rows.append({"size": f"{size}x{size}", "classes": classes,
                     "gumbel_noise": seed is not None, "forward_backward_ms": ms})
        print(rows[-1])
    return rows


def markdown(r: dict) -> str:
    scipy = {(e["size"], e["batch"]): e["scipy_ms"] for e in r["edges"] if "scipy_ms" in e}
    rows = [[e["size"], e["batch"], e["radius"], f"{e['tf_ms']:.1f}",
             f"{e['megapixels_per_s']:.0f}",
             f"{scipy[e['size'], e['batch']]:.0f}" if e["radius"] == 2 else ""]
            for e in r["edges"] if "tf_ms" in e]
    return markdown_report(
        "Ground-truth edges and loss cost", r["machine"],
        markdown_table(["label map", "batch", "radius", "`label_edges` ms", "Mpixel/s",
                        "scipy EDT ms"], rows),
        r["loss"] and markdown_table(
            ["GSCNNLoss forward + backward", "classes", "Gumbel noise", "ms"],
            [[f"{e['size']}, batch 1", e["classes"], e["gumbel_noise"],
              f"{e['forward_backward_ms']:.0f}"] for e in r["loss"]]),
        versions=f" Figures are upper bounds on time. Medians of {r['repeats']} runs; "
        "synthetic street-scene label maps.")


def main(argv=None) -> int:
    parser = argument_parser(__doc__, "edges")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-loss", action="store_true")
    args = parser.parse_args(argv)
    r = {"machine": machine_info(), "repeats": args.repeats, "edges": edge_rows(args.repeats),
         "loss": [] if args.no_loss else loss_rows(args.repeats)}
    write_results(args.out, args.name, r, markdown(r), echo=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
