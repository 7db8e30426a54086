"""Input pipeline throughput: training crops (default 720x720) from 2048x1024 images with
edges, on this machine, against the consumption of the model's training step.

    python -m benchmarks.data_pipeline                    # writes benchmarks/results/
    python -m benchmarks.data_pipeline --images 8 --batches 10 --no-model

The images are synthetic scenes rendered at 2048x1024 and stored as PNG in the folder format
(decode cost is what matters; real Cityscapes PNGs are of the same size). Reported: the
training pipeline (decode, label lookup, scale 0.5-2.0, crop, flip, jitter, blur, edges),
the evaluation pipeline (decode, labels, edges at full size), decoding alone, and one SGD step
of `gscnn_tf.build_model` + `GSCNNLoss` on a batch of the same crops.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from gscnn_tf.benchmark import (machine_info, machine_line, markdown_table, time_call,
                                time_once, write_results)
from gscnn_tf.cli.arguments import add_config_arguments

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def make_dataset(root: str, count: int) -> str:
    """`count` 2048x1024 scenes in the folder format under `root` (reused when present)."""
    from gscnn_tf.config import load_config
    from gscnn_tf.data import synthetic

    config = load_config(None, [f"data.root={root}", f"data.synthetic.num_train={count}",
                                "data.synthetic.num_val=0", "data.synthetic.height=1024",
                                "data.synthetic.width=2048"])
    return synthetic.ensure_synthetic(config)


def rate(iterator, batches: int, batch_size: int, warmup: int = 2) -> dict:
    """{"per_s": examples per second over `batches` batches of `iterator` after `warmup`
    batches, "load_average_1min"} (time_call of one `next` per batch)."""
    timing = time_call(lambda: next(iterator), warmup, batches)
    return {"per_s": batches * batch_size / sum(timing["times_s"]),
            "load_average_1min": timing["load_average_1min"]}


def decode_rate(config, count: int) -> float:
    import tensorflow as tf

    from gscnn_tf.data import pipeline

    pairs = pipeline.list_examples(config, "train")[:count]
    files = tf.data.Dataset.from_tensor_slices(tuple(map(list, zip(*pairs)))).repeat()
    decoded = files.map(lambda i, m: (tf.io.decode_png(tf.io.read_file(i), channels=3),
                                      tf.io.decode_png(tf.io.read_file(m), channels=1)),
                        num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return rate(iter(decoded), 3 * count, 1)["per_s"]


def model_step_rate(config, batch_size: int, steps: int) -> float:
    """Examples per second of forward + backward + SGD update."""
    import keras
    import tensorflow as tf

    from gscnn_tf import build_model
    from gscnn_tf.data import pipeline
    from gscnn_tf.losses import GSCNNLoss

    model = build_model(config.model, pipeline.dataset_info(config).num_classes)
    loss_fn = GSCNNLoss(config.loss)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    image, targets = next(iter(pipeline.build_dataset(config, "train", True, batch_size)))

    @tf.function
    def step(image, targets):
        with tf.GradientTape() as tape:
            loss = loss_fn(targets, model(image, training=True))["total"]
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    steps_iter = iter(lambda: step(image, targets).numpy(), None)  # calls step forever
    return rate(steps_iter, steps, batch_size, warmup=1)["per_s"]


def markdown(r: dict, backbone: str) -> str:
    rows = [("training crops (decode, scale, crop, flip, jitter, blur, edges)",
             r["train_examples_per_s"]),
            ("evaluation, full 2048x1024 (decode, labels, edges)", r["eval_examples_per_s"]),
            ("PNG decode only (image + label)", r["decode_only_examples_per_s"]),
            (f"model training step ({backbone} backbone)", r["model_step_examples_per_s"])]
    lines = [f"# Input pipeline throughput ({r['crop']}x{r['crop']} crops from 2048x1024)", "",
             machine_line(r["machine"]) + f" Batch {r['batch_size']}; figures are lower "
             "bounds.", "",
             markdown_table(["stage", "examples/s"],
                            [[name, f"{v:.2f}" if v else "not measured"] for name, v in rows])]
    if r.get("pipeline_over_step"):
        lines += ["", f"Pipeline / training step: {r['pipeline_over_step']:.1f}x "
                      "(goal: at least 4x on the same cores)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_arguments(parser, "YAML config of the model step (defaults if omitted)")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--crop", type=int, default=720)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--model-steps", type=int, default=3)
    parser.add_argument("--no-model", action="store_true")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(),
                                                       "gscnn_bench_2048x1024"))
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    from gscnn_tf.config import load_config
    from gscnn_tf.data import pipeline

    root, seconds = time_once(lambda: make_dataset(args.data, args.images))
    print(f"dataset: {args.images} 2048x1024 PNG pairs in {root} ({seconds:.1f} s)")
    config = load_config(args.config, ["data.dataset=folder", f"data.root={root}",
                                       f"data.crop_size=[{args.crop}, {args.crop}]", *args.set])
    r = {"machine": machine_info(), "crop": args.crop, "batch_size": args.batch,
         "source_size": [1024, 2048]}
    r["train_examples_per_s"] = rate(iter(pipeline.build_dataset(config, "train", True,
                                                                 args.batch)),
                                     args.batches, args.batch)["per_s"]
    r["eval_examples_per_s"] = rate(iter(pipeline.build_dataset(config, "train", False,
                                                                1).repeat()),
                                    2 * args.images, 1)["per_s"]
    r["decode_only_examples_per_s"] = decode_rate(config, args.images)
    r["model_step_examples_per_s"] = (None if args.no_model else
                                      model_step_rate(config, args.batch, args.model_steps))
    if r["model_step_examples_per_s"]:
        r["pipeline_over_step"] = r["train_examples_per_s"] / r["model_step_examples_per_s"]
    write_results(args.out, "data_pipeline", r, markdown(r, config.model.backbone.name),
                  echo=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
