"""Where a training step's time goes (forward, each loss term, backward, optimizer) for GSCNN
and the DeepLab v3+ baseline (`model.shape_stream=false`, segmentation loss only) on the same
backbone, timed round-robin in one process. Cases: `synthetic` (configs/synthetic.yaml),
`synthetic-s1` (its shape stream at stride 1), `resnet50` (512x512, batch 2). Goal: GSCNN step
/ baseline step at most 1.3x GSCNN forward / baseline forward.
Run: python -m benchmarks.train_step [--cases synthetic synthetic-s1 resnet50] [--reps 3]
"""

from __future__ import annotations

import os

import tensorflow as tf

from benchmarks import ROOT, argument_parser
from gscnn_tf import build_model
from gscnn_tf.benchmark import (command_line, labelled_batch, machine_info, markdown_report,
                                markdown_table, time_interleaved, time_once, training_step,
                                write_results)
from gscnn_tf.config import load_config
from gscnn_tf.data.edges import label_edges
from gscnn_tf.data.pipeline import dataset_info
from gscnn_tf.losses import (GSCNNLoss, attention_loss, dual_task_loss, edge_loss,
                             segmentation_loss, training_loss)
from gscnn_tf.precision import policy_scope, training_policy
from gscnn_tf.training.optimizers import add_l2_gradients, l2_coefficient
BASELINE = ["model.shape_stream=false", "loss.lambda_edge=0", "loss.lambda_att=0",
            "loss.lambda_dual=0"]
CASES = {
    # name: (config, overrides, batch, (H, W), classes)
    "synthetic": ("configs/synthetic.yaml", [], 8, (128, 128), None),
    "synthetic-s1": ("configs/synthetic.yaml", ["model.shape_stream_stride=1"], 8,
                     (128, 128), None),
    "resnet50": ("configs/cityscapes_resnet50.yaml", ["model.backbone.weights="], 2,
                 (512, 512), 19),
}


def batch(num_classes, size, n):
    """labelled_batch in 16-px blocks with an ignored band of 4 rows, as tensors: images
    float32 [n, H, W, 3] and {"labels", "edges"}."""
    images, labels = labelled_batch(n, *size, num_classes, block=16)
    labels[:, :4] = 255
    return tf.constant(images), {"labels": tf.constant(labels),
                                 "edges": label_edges(tf.constant(labels))}


def model_items(config, num_classes, images, targets, tag):
    """{item: blocking call} for one model, each a tf.function: `forward` (training mode),
    `loss.<term>` (the term and its gradient with respect to fixed outputs), `loss` (all of
    GSCNNLoss, the same way), `grad` (forward + training loss + every variable's gradient),
    `step` (`gscnn-tf train`'s step: + the optimizer). backward = grad - forward - loss,
    optimizer = step - grad."""
    tf.keras.utils.set_random_seed(0)
    with policy_scope(training_policy(config.train)):
        model = build_model(config.model, num_classes)
    loss_fn = GSCNNLoss(config.loss)
    c, lc = config.train, config.loss
    variables = model.trainable_variables
    seed = tf.constant([c.seed, 1], tf.int64)
    forward = tf.function(lambda: model(images, training=True))
    outputs = {k: tf.constant(v) for k, v in forward().items()}
    labels, edges = targets["labels"], targets["edges"]

    def with_grad(term):
        def fn():
            seg, edge = tf.identity(outputs["seg_logits"]), tf.identity(outputs["edge_logits"])
            with tf.GradientTape() as tape:
                tape.watch([seg, edge])
                value = term(seg, edge)
            grads = tape.gradient(value, [seg, edge], unconnected_gradients="zero")
            return value + tf.reduce_sum(grads[0]) + tf.reduce_sum(grads[1])
        return tf.function(fn)

    terms = {
        "seg": lambda s, e: segmentation_loss(s, labels, lc.class_weighting, lc.class_weights),
        "edge": lambda s, e: edge_loss(e, edges),
        "att": lambda s, e: attention_loss(s, e, labels, lc.attention_threshold,
                                           lc.class_weighting, lc.class_weights),
        "dual": lambda s, e: dual_task_loss(s, labels, lc.dual_tau, lc.dual_sigma, seed,
                                            recompute=lc.recompute_dual),
        "": lambda s, e: loss_fn(targets, {"seg_logits": s, "edge_logits": e}, seed)["total"],
    }

    @tf.function
    def grad():
        with tf.GradientTape() as tape:
            out = model(images, training=True)
            loss = training_loss(loss_fn, targets, out, variables, l2_coefficient(c),
                                 seed, l2_gradient=False)["total"]
        # As the training step does it: the L2 gradient added after backpropagation.
        grads = add_l2_gradients(tape.gradient(loss, variables), variables, l2_coefficient(c))
        return tf.add_n([tf.reduce_sum(g) for g in grads if g is not None])

    step = training_step(config, model)
    items = {f"{tag}.forward": lambda: forward()["seg_logits"].numpy()}
    for name, term in terms.items():
        fn = with_grad(term)
        items[f"{tag}.loss" + (f".{name}" if name else "")] = lambda fn=fn: fn().numpy()
    items[f"{tag}.grad"] = lambda: grad().numpy()
    items[f"{tag}.step"] = lambda: step(images, targets)["total"].numpy()
    return items


def run_case(name, reps):
    path, overrides, n, size, classes = CASES[name]
    config = load_config(os.path.join(ROOT, path), overrides)
    classes = classes or dataset_info(config).num_classes
    images, targets = batch(classes, size, n)
    items = {}
    for tag, extra in (("gscnn", []), ("baseline", BASELINE)):
        items.update(model_items(load_config(os.path.join(ROOT, path), overrides + extra),
                                 classes, images, targets, tag))
    timing, wall_s = time_once(lambda: time_interleaved(items, warmup=1, reps=reps))
    ms = {k: 1000.0 * v["median_s"] for k, v in timing.items()}
    parts = {}
    for tag in ("gscnn", "baseline"):
        parts[tag] = {"forward": ms[f"{tag}.forward"], "loss": ms[f"{tag}.loss"],
                      "backward": ms[f"{tag}.grad"] - ms[f"{tag}.forward"] - ms[f"{tag}.loss"],
                      "optimizer": ms[f"{tag}.step"] - ms[f"{tag}.grad"],
                      "step": ms[f"{tag}.step"]}
    forward_ratio = ms["gscnn.forward"] / ms["baseline.forward"]
    step_ratio = ms["gscnn.step"] / ms["baseline.step"]
    mins = {k: v["min_s"] for k, v in timing.items()}
    return {"case": name, "config": path, "overrides": overrides, "batch": n,
            "size": list(size), "classes": classes, "timing": timing, "ms": ms,
            "parts": parts, "forward_ratio": forward_ratio, "step_ratio": step_ratio,
            "step_over_forward": step_ratio / forward_ratio,
            "step_over_forward_min": (mins["gscnn.step"] / mins["baseline.step"])
            / (mins["gscnn.forward"] / mins["baseline.forward"]),
            "wall_s": wall_s}


def markdown(record):
    lines = [f"Command: `{record['command']}`. Medians of {record['reps']} round-robin runs "
             "(GSCNN and baseline items interleaved in one process), ms. backward = grad - "
             "forward - loss; optimizer = step - grad. Goal: step ratio <= 1.3x forward "
             "ratio.", ""]
    for r in record["cases"]:
        ms = r["ms"]
        lines += [f"## {r['case']}: {r['config']} {' '.join(r['overrides'])}, batch "
                  f"{r['batch']} at {r['size'][0]}x{r['size'][1]}, {r['classes']} classes", ""]
        rows = []
        for item in ("forward", "loss.seg", "loss.edge", "loss.att", "loss.dual", "loss",
                     "backward", "optimizer", "step"):
            row = [item]
            for tag in ("gscnn", "baseline"):
                key = f"{tag}.{item}"
                value = ms.get(key, r["parts"][tag].get(item))
                row.append(f"{value:.0f}")
            rows.append(row)
        lines += [markdown_table(["item", "GSCNN", "baseline"], rows), "",
                  f"Forward ratio {r['forward_ratio']:.2f}, step ratio {r['step_ratio']:.2f}: "
                  f"step / forward ratio **{r['step_over_forward']:.2f}** (of the fastest "
                  f"runs {r['step_over_forward_min']:.2f}).", ""]
    return markdown_report("Training step breakdown", record["machine"], "\n".join(lines))


def main(argv=None) -> int:
    parser = argument_parser(__doc__, "train_step")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    record = {"machine": machine_info(), "reps": args.reps,
              "command": command_line("benchmarks.train_step", argv),
              "cases": [run_case(name, args.reps) for name in args.cases]}
    write_results(args.out, args.name, record, markdown(record), echo=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
