"""The `--target gpu` files (fp32, fp16 weights) on LiteRT's GPU accelerator (float32
precision): `is_fully_accelerated()` must hold and the labels agree with Keras on >= 99.9 % /
99.5 % of the pixels. It runs in a child process importing only LiteRT and numpy; where LiteRT
can create no GPU accelerator the step is skipped with LiteRT's reason (exit status 0).
Run: python -m benchmarks.litert_gpu [runs/synthetic: random weights where absent] [--images 8]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

from benchmarks import ROOT, argument_parser

ACCELERATORS = ("gpu", "cpu")


def run_compiled(model_path: str, images: np.ndarray, accelerator: str = "gpu") -> dict:
    """Runs a GPU-target file with LiteRT's CompiledModel on `accelerator` ("gpu": float32
    precision; "cpu": XNNPACK, for checking this code without a GPU) over uint8 `[N, H, W, 3]`
    images: {"fully_accelerated": bool, "labels": int32 [N, H, W]}. Raises what LiteRT
    raises when the accelerator cannot be created."""
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.gpu_options import GpuOptions
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import Options

    if accelerator == "gpu":
        options = Options(hardware_accelerators=HardwareAccelerator.GPU,
                          gpu_options=GpuOptions(enforce_f32=True))
    else:
        options = Options(hardware_accelerators=HardwareAccelerator.CPU)
    model = CompiledModel.from_file(model_path, options=options)
    key = "serving_default"
    images_in = model.create_input_buffer_by_name(key, "images")
    probabilities = model.create_output_buffer_by_name(key, "probabilities")
    edge_prob = model.create_output_buffer_by_name(key, "edge_prob")
    labels = []
    for image in images:
        images_in.write(np.asarray(image[None], np.float32))
        model.run_by_name(key, {"images": images_in},
                          {"probabilities": probabilities, "edge_prob": edge_prob})
        shape = probabilities.get_tensor_details()["shape"]
        scores = probabilities.read(int(np.prod(shape)), np.float32).reshape(shape)
        labels.append(np.argmax(scores[0], axis=-1).astype(np.int32))
    return {"fully_accelerated": bool(model.is_fully_accelerated()),
            "labels": np.stack(labels)}


def _child(args) -> int:
    images = np.load(args.child[1])
    out = run_compiled(args.child[0], images, args.accelerator)
    np.save(args.child[2], out["labels"])
    print(json.dumps({"fully_accelerated": out["fully_accelerated"]}))
    return 0


def failure_reason(stderr: str) -> str:
    """The line of LiteRT's log that says why no accelerator was created (e.g. "Failed to
    initialize WebGPU environment: INTERNAL: No adapters found"), else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for pattern in (r"Failed to initialize .*", r"No adapters? found.*", r"Couldn't load .*",
                    r"Failed to .*GPU.*", r".*[Nn]o GPU.*"):
        for line in lines:
            match = re.search(pattern, line)
            if match:
                return match.group(0).strip()
    return lines[-1] if lines else "no output"


def check_on_accelerator(model_path: str, images: np.ndarray, accelerator: str = "gpu",
                         timeout: float = 300.0) -> dict:
    """`run_compiled` in a child process: {"status": "ran", "fully_accelerated", "labels"}
    or {"status": "skipped", "reason"} when the child could not create the accelerator."""
    with tempfile.TemporaryDirectory() as folder:
        images_path = os.path.join(folder, "images.npy")
        labels_path = os.path.join(folder, "labels.npy")
        np.save(images_path, images)
        try:
            child = subprocess.run(
                [sys.executable, "-m", "benchmarks.litert_gpu", "--accelerator", accelerator,
                 "--child", model_path, images_path, labels_path],
                capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return {"status": "skipped", "reason": f"no answer within {timeout:.0f} s"}
        if child.returncode != 0 or not os.path.isfile(labels_path):
            return {"status": "skipped",
                    "reason": f"LiteRT could not run on the {accelerator.upper()}: "
                              f"{failure_reason(child.stderr)}"}
        result = json.loads(child.stdout.strip().splitlines()[-1])
        return {"status": "ran", "fully_accelerated": result["fully_accelerated"],
                "labels": np.load(labels_path)}


def _model_and_images(model_path: str | None, size, count: int):
    """(Keras model, uint8 images, description): the trained model and its held-out images,
    or the synthetic default config's model with random weights and random images."""
    import gscnn_tf

    if model_path and os.path.exists(model_path):
        from benchmarks.export import heldout

        predictor, images = heldout(model_path, size, count)
        return predictor.model, images, f"{model_path}, {len(images)} held-out images"
    from gscnn_tf.config import load_config
    from gscnn_tf.data.pipeline import dataset_info

    config = load_config(os.path.join(ROOT, "configs", "synthetic.yaml"),
                         ["model.sync_batch_norm=false"])
    model = gscnn_tf.build_model(config.model, dataset_info(config).num_classes)
    height, width = size or (128, 128)
    images = np.random.default_rng(0).integers(0, 256, (count, height, width, 3), np.uint8)
    return model, images, f"synthetic default config, random weights, {count} random images"


def _markdown(record: dict) -> str:
    from gscnn_tf.benchmark import markdown_report, markdown_table

    rows = []
    for q, r in record["files"].items():
        if r["status"] == "skipped":
            rows.append([q, f"{r['bytes']:,}", r["audit"], "skipped", "-", "-", r["reason"]])
        else:
            rows.append([q, f"{r['bytes']:,}", r["audit"], "yes" if r["fully_accelerated"]
                         else "**no**", f"{100 * r['agreement']:.3f} %",
                         f"{100 * r['target']:.1f} %", "passed" if r["passed"] else "**failed**"])
    return markdown_report(
        "The GPU target on LiteRT's GPU accelerator", record["machine"],
        f"Model: {record['model']}, {record['size'][0]}x{record['size'][1]}, Canny "
        f"{record['canny_max_steps']} steps (`gscnn-tf export --target gpu`).",
        markdown_table(["weights", "bytes", "static audit", "fully accelerated",
                        "labels agree with Keras", "target", "result"], rows),
        versions=f" ai-edge-litert {record['litert']}; accelerator requested: "
        f"{record['accelerator']}.")


def main(argv=None) -> int:
    parser = argument_parser(__doc__, "litert_gpu")
    parser.add_argument("model", nargs="?", default="runs/synthetic",
                        help="run directory or .keras file (default runs/synthetic; random "
                             "weights when it does not exist)")
    parser.add_argument("--size", help="HEIGHTxWIDTH (default: the validation images' size, "
                                       "or 128x128)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--accelerator", choices=ACCELERATORS, default="gpu",
                        help="gpu (the check); cpu runs the same steps on LiteRT's CPU "
                             "accelerator, where 'fully accelerated' is false, to try the "
                             "script on a machine without a GPU")
    parser.add_argument("--child", nargs=3, metavar=("TFLITE", "IMAGES_NPY", "LABELS_NPY"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)

    import ai_edge_litert

    from benchmarks.export import audit_line
    from gscnn_tf import export
    from gscnn_tf.export import gpu as tflite_gpu
    from gscnn_tf.cli.arguments import parse_size
    from gscnn_tf.benchmark import machine_info, write_results

    size = parse_size(args.size) if args.size else None
    model, images, described = _model_and_images(args.model, size, args.images)
    height, width = images.shape[1:3]
    steps = 64
    labels = export.keras_labels(model, images)
    record = {"machine": machine_info(), "litert": getattr(ai_edge_litert, "__version__", "?"),
              "accelerator": args.accelerator, "model": described, "size": [height, width],
              "canny_max_steps": steps, "files": {}}
    failed = False
    with tempfile.TemporaryDirectory() as folder:
        for quantize in tflite_gpu.QUANTIZE:
            content = tflite_gpu.convert_gpu(model, height, width, quantize, steps)
            path = os.path.join(folder, f"gpu_{quantize}.tflite")
            with open(path, "wb") as f:
                f.write(content)
            result = check_on_accelerator(path, images, args.accelerator)
            entry = {"bytes": len(content), "status": result["status"],
                     "audit": audit_line(content)}
            if result["status"] == "skipped":
                entry["reason"] = result["reason"]
            else:
                agreement = float(np.mean(result["labels"] == labels))
                target = tflite_gpu.AGREEMENT_TARGET[quantize]
                passed = result["fully_accelerated"] and agreement >= target
                entry.update(fully_accelerated=result["fully_accelerated"],
                             agreement=agreement, target=target, passed=passed)
                failed = failed or not passed
            record["files"][quantize] = entry
            print(f"{quantize}: {entry}", flush=True)
    write_results(args.out, args.name, record, _markdown(record), echo=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
