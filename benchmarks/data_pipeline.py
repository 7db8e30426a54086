"""Input pipeline throughput: training crops (default 720x720) from 2048x1024 images with
edges, on this machine, against the consumption of the model's training step.

    python benchmarks/data_pipeline.py                    # writes benchmarks/results/
    python benchmarks/data_pipeline.py --images 8 --batches 10 --no-model

The images are synthetic scenes rendered at 2048x1024 and stored as PNG in the folder format
(decode cost is what matters; real Cityscapes PNGs are of the same size). Reported: the
training pipeline (decode, label lookup, scale 0.5-2.0, crop, flip, jitter, blur, edges),
the evaluation pipeline (decode, labels, edges at full size), decoding alone, and, when the
model and losses are importable, one SGD step of `gscnn_tf.build_model` + `GSCNNLoss` on a
batch of the same crops.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from gscnn_tf.benchmark import machine_info  # noqa: E402
from gscnn_tf.config import load_config  # noqa: E402
from gscnn_tf.data import pipeline, synthetic  # noqa: E402


def make_dataset(root: str, count: int) -> str:
    """`count` 2048x1024 scenes in the folder format under `root` (reused when present)."""
    config = load_config(None, [f"data.root={root}", f"data.synthetic.num_train={count}",
                                "data.synthetic.num_val=0", "data.synthetic.height=1024",
                                "data.synthetic.width=2048"])
    return synthetic.ensure_synthetic(config)


def rate(iterator, batches: int, batch_size: int, warmup: int = 2) -> float:
    """Examples per second over `batches` batches, after `warmup` batches."""
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def decode_rate(config, count: int) -> float:
    pairs = pipeline.list_examples(config, "train")[:count]
    files = tf.data.Dataset.from_tensor_slices(tuple(map(list, zip(*pairs)))).repeat()
    decoded = files.map(lambda i, m: (tf.io.decode_png(tf.io.read_file(i), channels=3),
                                      tf.io.decode_png(tf.io.read_file(m), channels=1)),
                        num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return rate(iter(decoded), 3 * count, 1)


def model_step_rate(config, batch_size: int, steps: int):
    """Examples per second of forward + backward + SGD update, or None without a model."""
    try:
        import keras

        import gscnn_tf.models.gscnn  # noqa: F401  (build_model imports it lazily)
        from gscnn_tf import build_model
        from gscnn_tf.losses import GSCNNLoss
    except ImportError as e:
        print(f"model step not measured: {e}")
        return None
    info = pipeline.dataset_info(config)
    model = build_model(config.model, info.num_classes)
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

    def steps_iter():
        while True:
            yield step(image, targets).numpy()

    return rate(steps_iter(), steps, batch_size, warmup=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--crop", type=int, default=720)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--model-steps", type=int, default=3)
    parser.add_argument("--no-model", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the model step, e.g. "
                             "model.backbone.name=resnet50")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(),
                                                       "gscnn_bench_2048x1024"))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)

    start = time.perf_counter()
    root = make_dataset(args.data, args.images)
    print(f"dataset: {args.images} 2048x1024 PNG pairs in {root} "
          f"({time.perf_counter() - start:.1f} s)")
    config = load_config(None, ["data.dataset=folder", f"data.root={root}",
                                f"data.crop_size=[{args.crop}, {args.crop}]", *args.set])
    results = {"machine": machine_info(), "crop": args.crop, "batch_size": args.batch,
               "source_size": [1024, 2048]}
    iterator = iter(pipeline.build_dataset(config, "train", True, args.batch))
    results["train_examples_per_s"] = rate(iterator, args.batches, args.batch)
    eval_iter = iter(pipeline.build_dataset(config, "train", False, 1).repeat())
    results["eval_examples_per_s"] = rate(eval_iter, 2 * args.images, 1)
    results["decode_only_examples_per_s"] = decode_rate(config, args.images)
    results["model_step_examples_per_s"] = (None if args.no_model else
                                            model_step_rate(config, args.batch,
                                                            args.model_steps))
    if results["model_step_examples_per_s"]:
        results["pipeline_over_step"] = (results["train_examples_per_s"]
                                         / results["model_step_examples_per_s"])
    for key, value in results.items():
        print(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "data_pipeline.json"), "w") as f:
        json.dump(results, f, indent=2)
    rows = [("training crops (decode, scale, crop, flip, jitter, blur, edges)",
             results["train_examples_per_s"]),
            ("evaluation, full 2048x1024 (decode, labels, edges)",
             results["eval_examples_per_s"]),
            ("PNG decode only (image + label)", results["decode_only_examples_per_s"]),
            (f"model training step ({config.model.backbone.name} backbone)",
             results["model_step_examples_per_s"])]
    m = results["machine"]
    lines = [f"# Input pipeline throughput ({args.crop}x{args.crop} crops from 2048x1024)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['gpus']} GPU, TensorFlow "
             f"{m['tensorflow']}, Python {m['python']}. Batch {args.batch}. Load average "
             f"before the run: {m['load_average_1min']:.2f} (other processes share the "
             "cores: figures are lower bounds).", "",
             "| stage | examples/s |", "| --- | --- |"]
    lines += [f"| {name} | {value:.2f} |" if value else f"| {name} | not measured |"
              for name, value in rows]
    if results.get("pipeline_over_step"):
        lines += ["", f"Pipeline / training step: {results['pipeline_over_step']:.1f}x "
                      "(goal: at least 4x on the same cores)."]
    with open(os.path.join(args.out, "data_pipeline.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
