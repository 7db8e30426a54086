"""`gscnn-tf export`: a SavedModel for TF Serving or a TFLite file (gscnn_tf.export)."""

from __future__ import annotations

import argparse
import json
import os

from gscnn_tf.cli.arguments import add_checkpoint_argument, add_config_arguments, parse_size
from gscnn_tf.errors import ExportError
from gscnn_tf.export import (
    CLASSES_ASSET, FORMATS, QUANTIZE, SIGNATURES, class_metadata, export_saved_model,
    export_tflite, heldout_images, verify_tflite, write_file)
from gscnn_tf.inference import Predictor
from gscnn_tf.precision import add_precision_argument, apply_precision


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=".keras file, preset folder or run directory / "
                                      "checkpoint")
    parser.add_argument("--format", choices=FORMATS, default="saved_model")
    parser.add_argument("--output", "-o", default="exports", help="export folder")
    add_config_arguments(parser, "training config YAML (default: the run's)")
    add_checkpoint_argument(parser)
    parser.add_argument("--model-name", help="TF Serving model name (export.model_name)")
    parser.add_argument("--version", type=int, help="TF Serving version (export.version)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing SavedModel version or TFLite file")
    parser.add_argument("--size", help="TFLite input HEIGHTxWIDTH (export.tflite_size)")
    parser.add_argument("--quantize", choices=QUANTIZE, help="TFLite (export.quantize)")
    parser.add_argument("--canny-max-steps", type=int,
                        help="TFLite hysteresis steps, 0 = WHILE loop "
                             "(export.tflite_canny_max_steps)")
    parser.add_argument("--canny-step-form", choices=("bool", "pool", "bits", "mask"),
                        help="TFLite hysteresis step form (export.tflite_canny_step_form)")
    parser.add_argument("--target", choices=("cpu", "gpu"), default="cpu",
                        help="TFLite: cpu = uint8 in, labels out, any interpreter (GPU "
                             "delegates take part of it); gpu = float32 in, probabilities "
                             "out, every op on the TFLite GPU delegate (gscnn_tf.export.gpu)")
    add_precision_argument(parser)
    parser.add_argument("--verify", type=int, default=0, metavar="N",
                        help="TFLite: report label agreement with the Keras model on N "
                             "validation images")


def run(args) -> int:
    predictor = Predictor(args.model, args.config, args.set, args.checkpoint)
    if args.precision != "fp32" and args.format != "saved_model":
        raise ExportError(f"--precision {args.precision}: for --format saved_model (TFLite "
                          "exports choose their precision with --quantize)")
    predictor = apply_precision(predictor, args.precision)
    model, config = predictor.model, predictor.config
    if model is None:
        raise ExportError(f"{args.model}: export needs a Keras model (.keras file or a run "
                          "checkpoint), not a SavedModel")
    if config is None:
        if args.format == "tflite" and (args.quantize == "int8" or args.verify):
            raise ExportError(f"{args.model}: int8 calibration and --verify read the "
                              "dataset; pass the training config (--config)")
        from gscnn_tf.config import Config

        config = Config()
    export = config.export
    num_classes = int(model.output["seg_logits"].shape[-1])
    if args.format == "saved_model":
        path = export_saved_model(model, args.output, args.model_name or export.model_name,
                                  args.version or export.version,
                                  class_metadata(predictor.config, num_classes, model),
                                  args.overwrite)
        print(f"wrote SavedModel {path} (signatures: {', '.join(SIGNATURES)})")
        return 0
    height, width = parse_size(args.size) if args.size else export.tflite_size
    quantize = args.quantize or export.quantize
    gpu = args.target == "gpu"
    name = f"{args.model_name or export.model_name}_{height}x{width}_{quantize}" \
        f"{'_gpu' if gpu else ''}.tflite"
    path = os.path.join(args.output, name)
    from gscnn_tf.export import gpu as gpu_target
    from gscnn_tf.export.gpu_audit import audit

    if gpu and args.canny_step_form not in (None, gpu_target.STEP_FORM):
        raise ExportError(f"--canny-step-form {args.canny_step_form} with --target gpu: the "
                          f"GPU target's Canny is step form '{gpu_target.STEP_FORM}'")
    if gpu:
        content = gpu_target.export_tflite_gpu(model, config, path, height, width, quantize,
                                               args.canny_max_steps, args.overwrite)
    else:
        content = export_tflite(model, config, path, height, width, quantize,
                                args.canny_max_steps, args.canny_step_form, args.overwrite)
    classes = json.dumps(class_metadata(predictor.config, num_classes, model), indent=1)
    write_file(os.path.join(args.output, CLASSES_ASSET), classes.encode("utf-8"), True)
    print(f"wrote {path} ({len(content) / 2**20:.2f} MiB, {quantize})")
    print(f"{audit(content, path).summary()} "
          f"(op by op: gscnn-tf audit-tflite {path})")
    if args.verify:
        verify = gpu_target.verify_tflite_gpu if gpu else verify_tflite
        report = verify(content, model, heldout_images(config, height, width, args.verify))
        print(f"label agreement with the Keras model on {report['images']} validation "
              f"images: {100 * report['agreement']:.3f} %")
    return 0
