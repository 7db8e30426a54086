"""A trained model's exports against the Keras model on held-out images: the SavedModel's
signatures, each TFLite quantization and the `--target gpu` files (size, conversion time,
label agreement on LiteRT against the targets, LiteRT CPU time, ops left in float32, the GPU
delegate's audit), and the bounded Canny against OpenCV's.
Run: python -m benchmarks.export [runs/synthetic] [--images 20] [--size 128x128]
"""

from __future__ import annotations

import json
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import argument_parser  # noqa: E402
from gscnn_tf import export  # noqa: E402
from gscnn_tf.export import gpu as tflite_gpu, gpu_audit  # noqa: E402
from gscnn_tf.benchmark import (machine_info, markdown_report, markdown_table,  # noqa: E402
                                time_once, write_results)
from gscnn_tf.cli.arguments import add_config_arguments, parse_size  # noqa: E402
from gscnn_tf.inference import Predictor  # noqa: E402


def heldout(model_path: str, size, count: int, config: str | None = None, overrides=()):
    """(the Predictor of a trained model with its training config, uint8 held-out validation
    images [count, H, W, 3] at `size` (None: the validation images' own size))."""
    predictor = Predictor(model_path, config, list(overrides))
    if predictor.model is None or predictor.config is None:
        raise ValueError(f"{model_path}: needs a Keras model and its training config")
    if size is None:
        from gscnn_tf.data.pipeline import build_dataset

        first, _ = next(iter(build_dataset(predictor.config, predictor.config.data.val_split,
                                           training=False, batch_size=1)))
        size = first.shape[1:3]
    return predictor, export.heldout_images(predictor.config, *size, count)


def audit_line(content: bytes) -> str:
    """The GPU delegate's static audit of a TFLite file in one line: partitions, ops, the
    unsupported ops by kind."""
    return gpu_audit.audit(content).summary().removeprefix("GPU delegate audit: ")


def _model_record(predictor, model_path: str) -> dict:
    config = predictor.config
    record = {"path": model_path, "backbone": config.model.backbone.name,
              "parameters": int(predictor.model.count_params()),
              "dataset": config.data.dataset, "train_steps": config.train.steps}
    checkpoint = tf.train.latest_checkpoint(os.path.join(model_path, "checkpoints")) \
        if os.path.isdir(model_path) else None
    if checkpoint:
        record["checkpoint"] = os.path.basename(checkpoint)
    metrics = os.path.join(model_path, "metrics.json")
    if os.path.isfile(metrics):
        with open(metrics, encoding="utf-8") as f:
            last = json.load(f).get("last", {})
        record["val_miou"] = last.get("val", {}).get("miou")
    return record


def saved_model(model, config, images: np.ndarray, labels: np.ndarray) -> dict:
    """SavedModel outputs vs the Keras model's on `images`."""
    out = model(tf.constant(images, tf.float32), training=False)
    num_classes = int(out["seg_logits"].shape[-1])
    with tempfile.TemporaryDirectory() as folder:
        path, seconds = time_once(lambda: export.export_saved_model(
            model, folder, "gscnn", 1, export.class_metadata(config, num_classes)))
        signatures = tf.saved_model.load(path).signatures
        served = signatures["serving_default"](images=tf.constant(images))
        probabilities = signatures["probabilities"](images=tf.constant(images))
        pngs = [cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes()
                for im in images]
        from_bytes = signatures["serve_bytes"](image_bytes=tf.constant(pngs))
        size = sum(os.path.getsize(os.path.join(d, f))
                   for d, _, files in os.walk(path) for f in files)
    return {
        "export_s": round(seconds, 1), "bytes": size,
        "labels_equal": float(np.mean(served["labels"].numpy() == labels)),
        "serve_bytes_labels_equal": float(np.mean(from_bytes["labels"].numpy() == labels)),
        "edge_prob_max_abs_diff": float(np.max(np.abs(
            served["edge_prob"].numpy() - tf.sigmoid(out["edge_logits"]).numpy()))),
        "probabilities_max_abs_diff": float(np.max(np.abs(
            probabilities["probabilities"].numpy() - tf.nn.softmax(out["seg_logits"]).numpy()))),
    }


def _measure(convert, run, images: np.ndarray, labels: np.ndarray, target: float):
    """One TFLite file: `convert(path)` -> its bytes (timed), `run(content, images)` ->
    {"labels"} on LiteRT (timed after a one-image warm-up), argmax agreement with the Keras
    `labels` against `target`, the GPU delegate's audit. Returns (figures, the file)."""
    with tempfile.TemporaryDirectory() as folder:
        content, seconds = time_once(lambda: convert(os.path.join(folder, "m.tflite")))
    run(content, images[:1])  # interpreter set-up and first run
    out, run_s = time_once(lambda: run(content, images))
    agreement = float(np.mean(out["labels"] == labels))
    return {"bytes": len(content), "convert_s": round(seconds, 1), "agreement": agreement,
            "target": target, "meets_target": agreement >= target,
            "litert_ms_per_image": round(1000 * run_s / len(images), 1),
            "gpu_delegate": audit_line(content)}, content


def tflite(model, config, images: np.ndarray, labels: np.ndarray, quantize: str) -> dict:
    """One TFLite export: size, conversion time, agreement, LiteRT time per image, ops left
    in float32."""
    height, width = images.shape[1:3]
    figures, content = _measure(
        lambda path: export.export_tflite(model, config, path, height, width, quantize),
        export.run_tflite, images, labels, export.AGREEMENT_TARGET[quantize])
    return {**figures, "float32_ops": len(export.float_ops(content)),
            "ops": len(export.tflite_op_list(content))}


def tflite_gpu_target(model, config, images: np.ndarray, labels: np.ndarray,
                      quantize: str) -> dict:
    """One GPU-target file (`--target gpu`): size, conversion time, the audit, agreement of
    the app's argmax with the Keras model, LiteRT CPU time per image."""
    height, width = images.shape[1:3]
    return _measure(lambda path: tflite_gpu.export_tflite_gpu(model, config, path, height,
                                                              width, quantize),
                    tflite_gpu.run_tflite_gpu, images, labels,
                    tflite_gpu.AGREEMENT_TARGET[quantize])[0]


def canny_found_share(images: np.ndarray, config) -> dict:
    """The exported graphs' bounded Canny (`export.tflite_canny_max_steps` steps, step form
    "mask"; the default export's "pool" steps give the same map) against `cv2.Canny` on the
    grey image: share of OpenCV's edge pixels found, extra pixels relative to OpenCV's count."""
    from gscnn_tf.ops.canny import canny

    model_config, steps = config.model, config.export.tflite_canny_max_steps
    ours = canny(images, model_config.canny_low, model_config.canny_high, steps,
                 "mask").numpy()[..., 0] > 0.5
    ref = np.stack([cv2.Canny(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), model_config.canny_low,
                              model_config.canny_high) > 0 for im in images])
    count = max(int(ref.sum()), 1)
    return {"max_steps": steps, "opencv_edge_pixels": int(ref.sum()),
            "found": float((ours & ref).sum()) / count,
            "extra": float((ours & ~ref).sum()) / count}


def _markdown(r: dict) -> str:
    s, model = r["saved_model"], r["model"]
    c = r.get("canny_found")
    canny_line = "" if c is None else (
        f"Bounded Canny ({c['max_steps']} steps, the exported graphs') on the held-out images: "
        f"{100 * c['found']:.2f} % of OpenCV's {c['opencv_edge_pixels']:,} edge pixels found, "
        f"{100 * c['extra']:.2f} % extra.")
    base = r["tflite"]["none"]["bytes"]
    rows = [[q, f"{t['bytes']:,}", f"{t['bytes'] / base:.3f}", f"{100 * t['agreement']:.3f} %",
             f"{100 * t['target']:.1f} %", "yes" if t["meets_target"] else "**no**",
             t["convert_s"], t["litert_ms_per_image"], f"{t['float32_ops']} / {t['ops']}"]
            for q, t in r["tflite"].items()]
    trained = f", {model['checkpoint']} of {model['train_steps']} steps" \
        if "checkpoint" in model else ""
    if model.get("val_miou") is not None:
        trained += f", validation mIoU {100 * model['val_miou']:.1f} %"
    return markdown_report(
        "Export benchmark", r["machine"],
        f"Model: `{model['path']}` ({model['backbone']} backbone, {model['parameters']:,} "
        f"parameters, {model['dataset']} data{trained}); "
        f"{r['images']} held-out validation images at {r['size'][0]}x{r['size'][1]} "
        f"({r['pixels']:,} pixels).",
        "## SavedModel vs Keras",
        markdown_table(
            ["labels equal", "serve_bytes (PNG) labels equal", "max abs diff edge_prob",
             "max abs diff probabilities", "export s", "bytes"],
            [[f"{100 * s['labels_equal']:.3f} %", f"{100 * s['serve_bytes_labels_equal']:.3f} %",
              f"{s['edge_prob_max_abs_diff']:.1e}", f"{s['probabilities_max_abs_diff']:.1e}",
              s["export_s"], f"{s['bytes']:,}"]]),
        "## TFLite vs Keras (argmax agreement on the held-out pixels)",
        markdown_table(["quantize", "bytes", "vs float32", "agreement", "target", "met",
                        "convert s", "LiteRT ms / image", "float32 ops / ops"], rows),
        "GPU delegate audit of each file (`gscnn-tf audit-tflite`): " + "; ".join(
            f"{q}: {t['gpu_delegate']}" for q, t in r["tflite"].items()) + ".",
        "## TFLite GPU target (`--target gpu`) vs Keras",
        markdown_table(["weights", "bytes", "agreement", "target", "met", "GPU delegate audit",
                        "convert s", "LiteRT CPU ms / image"],
                       [[q, f"{t['bytes']:,}", f"{100 * t['agreement']:.3f} %",
                         f"{100 * t['target']:.1f} %", "yes" if t["meets_target"] else "**no**",
                         t["gpu_delegate"], t["convert_s"], t["litert_ms_per_image"]]
                        for q, t in r.get("tflite_gpu", {}).items()]),
        canny_line,
        f"float32 weights alone: {4 * model['parameters']:,} bytes. Conversion times include "
        "freezing and, for int8, calibration on "
        f"{r['representative_images']} training-pipeline crops; LiteRT times are one CPU "
        "interpreter with its default XNNPACK delegate, under the load average above.",
        versions=f" ai-edge-litert {r['litert']}.")


def main(argv=None) -> int:
    parser = argument_parser(__doc__, "export")
    parser.add_argument("model", nargs="?", default="runs/synthetic",
                        help="run directory, checkpoint or .keras file (default runs/synthetic,"
                             " what `python train.py` writes)")
    add_config_arguments(parser, "training config (default: the run's)")
    parser.add_argument("--images", type=int, default=20, help="held-out images")
    parser.add_argument("--size", help="HEIGHTxWIDTH (default: the validation images' size)")
    parser.add_argument("--quantize", nargs="+", default=list(export.QUANTIZE),
                        choices=export.QUANTIZE)
    args = parser.parse_args(argv)
    quantizations = ["none"] + [q for q in args.quantize if q != "none"]  # the size base
    if not os.path.exists(args.model):
        parser.error(f"{args.model} does not exist: train it first (python train.py)")
    try:
        predictor, images = heldout(args.model, args.size and parse_size(args.size),
                                    args.images, args.config, args.set)
    except ValueError as e:
        parser.error(f"{e} (--config)")
    model, config = predictor.model, predictor.config
    height, width = images.shape[1:3]
    labels = export.keras_labels(model, images)
    import ai_edge_litert

    record = {"machine": machine_info(), "litert": getattr(ai_edge_litert, "__version__", "?"),
              "model": _model_record(predictor, args.model), "images": len(images),
              "size": [height, width], "pixels": int(labels.size),
              "representative_images": config.export.representative_images,
              "canny": {"max_steps": config.export.tflite_canny_max_steps,
                        "step_form": config.export.tflite_canny_step_form}}
    record["saved_model"] = saved_model(model, config, images, labels)
    print("SavedModel:", record["saved_model"], flush=True)
    record["tflite"] = {}
    for quantize in quantizations:
        record["tflite"][quantize] = tflite(model, config, images, labels, quantize)
        print(f"TFLite {quantize}:", record["tflite"][quantize], flush=True)
    record["tflite_gpu"] = {}
    for quantize in tflite_gpu.QUANTIZE:
        record["tflite_gpu"][quantize] = tflite_gpu_target(model, config, images, labels,
                                                           quantize)
        print(f"TFLite GPU target {quantize}:", record["tflite_gpu"][quantize], flush=True)
    record["canny_found"] = canny_found_share(images, config)
    print("bounded Canny:", record["canny_found"], flush=True)
    write_results(args.out, args.name, record, _markdown(record), echo=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
