"""bfloat16 inference on this CPU against float32, per backbone at 512x1024, batch 1: the
Keras model under `mixed_bfloat16` (`--precision bf16`) and the bf16 SavedModel, timed
round-robin with float32; label agreement on synthetic scenes (--model: also a trained
model's); with --profile, TensorFlow's op profile (where bfloat16 does not help).
Run: python -m benchmarks.bf16 [--backbones wrn38 resnet50 small] [--profile] [--model RUN]
"""

from __future__ import annotations

import collections
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import argument_parser  # noqa: E402
from gscnn_tf import build_model, load_config  # noqa: E402
from gscnn_tf.benchmark import (command_line, machine_info, markdown_report,  # noqa: E402
                                markdown_table, time_interleaved, time_once, write_results)
from gscnn_tf.cli.arguments import parse_size  # noqa: E402
from gscnn_tf.export import class_metadata, export_saved_model  # noqa: E402
from gscnn_tf.precision import with_precision  # noqa: E402

# Profiler events that are not TensorFlow ops (executor phases).
NOT_OPS = {"Process", "Start", "Execute", "ExecuteAsyncOnStream"}


def images(height, width, count=2):
    """uint8 [count, H, W, 3] scenes from the synthetic dataset's generator."""
    from gscnn_tf.data import synthetic

    return np.stack([synthetic.render(0, "val", i, height, width)[0] for i in range(count)])


def op_profile(fn, steps=1):
    """{op type: ms} of `fn()` from TensorFlow's profiler (host ops, self time)."""
    logdir = tempfile.mkdtemp(prefix="bf16_profile_")
    tf.profiler.experimental.start(logdir)
    for _ in range(steps):
        fn()
    tf.profiler.experimental.stop()
    return _parse_trace(logdir)


def _parse_trace(logdir):
    """Sums the TF op events of a profiler trace (xplane.pb) by op type, in ms."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals = collections.Counter()
    for root, _, files in os.walk(logdir):
        for name in files:
            if not name.endswith(".xplane.pb"):
                continue
            space = xplane_pb2.XSpace()
            with open(os.path.join(root, name), "rb") as f:
                space.ParseFromString(f.read())
            for plane in space.planes:
                metadata = {k: v.name for k, v in plane.event_metadata.items()}
                for line in plane.lines:
                    if "TraceMe" not in line.name and "Executor" not in line.name \
                            and "tf_" not in line.name.lower():
                        continue
                    for event in line.events:
                        label = metadata.get(event.metadata_id, "")
                        op = label.rsplit(":", 1)[1] if ":" in label else ""  # name:OpType
                        if op and op not in NOT_OPS:
                            totals[op] += event.duration_ps / 1e9
    return dict(totals.most_common(12))


def run_backbone(name, size, reps, profile, source=""):
    if source:  # a trained model (run directory, .keras file or preset)
        from gscnn_tf.inference import Predictor

        predictor = Predictor(source)
        model, config = predictor.model, predictor.config or load_config(None)
        name = f"{model.model_config.backbone.name} ({source}, trained)"
    else:
        config = load_config(None, [f"model.backbone.name={name}", "model.backbone.weights="])
        tf.keras.utils.set_random_seed(0)
        model = build_model(config.model, 19)
    classes = int(model.output["seg_logits"].shape[-1])
    bf16 = with_precision(model, "bf16")
    work = tempfile.mkdtemp(prefix="bf16_export_")
    path = export_saved_model(bf16, work, "m", 1, class_metadata(config, classes, bf16))
    serving = tf.saved_model.load(path).signatures["serving_default"]
    pics = images(*size)
    x = tf.constant(pics[:1], tf.float32)
    spec = [tf.TensorSpec([None, None, None, 3], tf.float32)]
    f32 = tf.function(lambda v: model(v, training=False)["seg_logits"], input_signature=spec)
    b16 = tf.function(lambda v: bf16(v, training=False)["seg_logits"], input_signature=spec)
    fns = {"fp32": lambda: f32(x).numpy(), "bf16": lambda: b16(x).numpy(),
           "saved_model_bf16": lambda: serving(images=tf.constant(pics[:1]))["labels"].numpy()}
    agree = {"bf16": [], "saved_model_bf16": []}
    for pic in pics:
        v = tf.constant(pic[None], tf.float32)
        ref = tf.argmax(f32(v), -1).numpy()
        agree["bf16"].append(float(np.mean(tf.argmax(b16(v), -1).numpy() == ref)))
        labels = serving(images=tf.constant(pic[None]))["labels"].numpy()
        agree["saved_model_bf16"].append(float(np.mean(labels == ref)))
    timing = time_interleaved(fns, warmup=1, reps=reps)
    record = {"backbone": name, "size": list(size), "timing": timing,
              "agreement": {k: float(np.mean(v)) for k, v in agree.items()},
              "ratio": {k: timing[k]["median_s"] / timing["fp32"]["median_s"]
                        for k in ("bf16", "saved_model_bf16")},
              "ratio_min": {k: timing[k]["min_s"] / timing["fp32"]["min_s"]
                            for k in ("bf16", "saved_model_bf16")}}
    if profile:
        record["profile_ms"] = {"fp32": op_profile(fns["fp32"]), "bf16": op_profile(fns["bf16"])}
    return record


def markdown(record):
    rows = []
    for r in record["backbones"]:
        t = r["timing"]
        rows.append([r["backbone"], f"{r['size'][0]}x{r['size'][1]}",
                     f"{1000 * t['fp32']['median_s']:.0f}",
                     f"{1000 * t['bf16']['median_s']:.0f}",
                     f"{r['ratio']['bf16']:.2f} (min {r['ratio_min']['bf16']:.2f})",
                     f"{100 * r['agreement']['bf16']:.3f} %",
                     f"{1000 * t['saved_model_bf16']['median_s']:.0f}",
                     f"{r['ratio']['saved_model_bf16']:.2f}",
                     f"{100 * r['agreement']['saved_model_bf16']:.3f} %"])
    lines = [f"Command: `{record['command']}`. Batch 1, random weights and 19 classes "
             f"unless marked trained; medians of {record['reps']} round-robin runs after one "
             "warm-up, ms. Ratio = bfloat16 / float32 latency (goal <= 0.6); agreement = "
             "pixels with the float32 model's "
             "label on synthetic-generator scenes (goal >= 99.5 %).", "",
             markdown_table(["backbone", "size", "fp32 Keras", "bf16 Keras", "ratio",
                             "agreement", "bf16 SavedModel", "ratio", "agreement"], rows)]
    for r in record["backbones"]:
        if "profile_ms" in r:
            lines += ["", f"Op profile, {r['backbone']} (ms of op self time, one run):", ""]
            ops = sorted(set(r["profile_ms"]["fp32"]) | set(r["profile_ms"]["bf16"]),
                         key=lambda o: -r["profile_ms"]["fp32"].get(o, 0))
            lines.append(markdown_table(["op", "fp32", "bf16"], [
                [op, f"{r['profile_ms']['fp32'].get(op, 0):.0f}",
                 f"{r['profile_ms']['bf16'].get(op, 0):.0f}"] for op in ops]))
    return markdown_report("bfloat16 inference (CPU)", record["machine"], "\n".join(lines))


def main(argv=None) -> int:
    parser = argument_parser(__doc__, "bf16")
    parser.add_argument("--backbones", nargs="*", default=["wrn38", "resnet50", "small"])
    parser.add_argument("--size", default="512x1024", help="HEIGHTxWIDTH")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--model", default="", help="also a trained model (run directory, "
                        ".keras or preset): agreement with trained weights")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    sources = [(b, "") for b in args.backbones] + ([("", args.model)] if args.model else [])
    rows, wall_s = time_once(lambda: [run_backbone(b, size, args.reps, args.profile, m)
                                      for b, m in sources])
    record = {"machine": machine_info(), "reps": args.reps,
              "command": command_line("benchmarks.bf16", argv),
              "backbones": rows, "wall_s": wall_s}
    write_results(args.out, args.name, record, markdown(record), echo=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
