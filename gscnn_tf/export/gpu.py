"""TFLite for a phone GPU: `gscnn-tf export --format tflite --target gpu`, a file meant to run
entirely inside the TFLite GPU delegate, audited op by op before it is written.

What differs from the default TFLite export (`gscnn_tf.export.tflite.export_tflite`):

    input   images         float32 [1, H, W, 3] RGB 0..255 (the app casts its uint8 pixels;
                           the delegate has no CAST from uint8)
    outputs probabilities  float32 [1, H, W, C] softmax over the classes
            edge_prob      float32 [1, H, W, 1] boundary probability 0..1
                           (no ARG_MAX in the graph: the app takes the argmax of
                           `probabilities`, as `run_tflite_gpu` and export/tflite_predict.py do)

Canny runs as step form "mask" (`gscnn_tf.ops.canny.canny_masks`: float masks, comparisons
each cast to float, `export.tflite_canny_max_steps` unrolled max-pool steps), equal pixel for
pixel to the default export's Canny at the same step count. Weights are float32 or float16
(`quantize` "none" / "fp16"). The file is audited with `gscnn_tf.export.gpu_audit` and written
only when every op is on the delegate in one partition. On the device, run the delegate at
float32 precision (LiteRT `GpuOptions(enforce_f32=True)`; the classic delegate's
`is_precision_loss_allowed = 0`): Canny's grey levels and gradients are exact only in float32.
"""

from __future__ import annotations

import numpy as np

from gscnn_tf.errors import ExportError
from gscnn_tf.export.gpu_audit import audit
from gscnn_tf.export.artifacts import refuse_existing, write_file
from gscnn_tf.export.litert import agreement, tflite_interpreter
from gscnn_tf.export.serving import SegmentationModule, with_canny
from gscnn_tf.export.tflite import convert_tflite

QUANTIZE = ("none", "fp16")
# Least share of pixels whose label (argmax of `probabilities`) equals the Keras model's.
AGREEMENT_TARGET = {"none": 0.999, "fp16": 0.995}
STEP_FORM = "mask"


def gpu_function(model, height: int, width: int):
    """Concrete function `images` float32 [1, H, W, 3] RGB 0..255 -> {"probabilities" float32
    [1, H, W, C], "edge_prob" float32 [1, H, W, 1]} of `model` (`SegmentationModule.serve`,
    variables captured)."""
    import tensorflow as tf

    return SegmentationModule(model).fixed_function(height, width, tf.float32,
                                                    probabilities=True)


def convert_gpu(model, height: int, width: int, quantize: str = "none",
                max_steps: int = 64, name: str = "<gpu target>") -> bytes:
    """TFLite flatbuffer of `model` for the GPU delegate (not written anywhere): Canny as
    `max_steps` unrolled "mask" steps; raises ExportError naming the ops and the partitions
    when the audit finds anything the delegate would leave to the CPU."""
    if quantize not in QUANTIZE:
        raise ExportError(f"quantize '{quantize}' with --target gpu: expected one of "
                          f"{', '.join(QUANTIZE)} (the GPU delegate computes in float)")
    if int(max_steps) < 1:
        raise ExportError(f"canny max steps {max_steps} with --target gpu: expected >= 1 (0 "
                          "is a WHILE loop, which the GPU delegate cannot run)")
    graph_model = with_canny(model, int(max_steps), STEP_FORM)
    content = convert_tflite(gpu_function(graph_model, height, width), quantize)
    report = audit(content, name)
    if not report.clean:
        raise ExportError(f"{name}: the GPU-target file would not run whole on the GPU "
                          f"delegate, not written. {report.summary()}")
    return content


def export_tflite_gpu(model, config, path: str, height: int, width: int,
                      quantize: str = "none", max_steps: int | None = None,
                      overwrite: bool = False) -> bytes:
    """`convert_gpu` written to `path` atomically (an existing file is kept unless
    `overwrite`, and always when conversion or audit fails). max_steps defaults to
    `export.tflite_canny_max_steps`."""
    refuse_existing(path, overwrite)
    steps = config.export.tflite_canny_max_steps if max_steps is None else max_steps
    content = convert_gpu(model, height, width, quantize, steps, path)
    write_file(path, content, overwrite)
    return content


def run_tflite_gpu(content: bytes, images: np.ndarray, delegates: bool = True) -> dict:
    """Runs a GPU-target file on uint8 `[N, H, W, 3]` images one at a time, as an app does
    (cast to float32 before, argmax after); returns {"labels": int32 [N, H, W],
    "probabilities": float32 [N, H, W, C], "edge_prob": float32 [N, H, W, 1]}."""
    runner = tflite_interpreter(content, delegates).get_signature_runner("serving_default")
    outs = [runner(images=np.asarray(image[None], np.float32)) for image in images]
    probabilities = np.concatenate([o["probabilities"] for o in outs])
    return {"labels": np.argmax(probabilities, -1).astype(np.int32),
            "probabilities": probabilities,
            "edge_prob": np.concatenate([o["edge_prob"] for o in outs])}


def verify_tflite_gpu(content: bytes, model, images: np.ndarray) -> dict:
    """Agreement of a GPU-target file (on LiteRT's CPU interpreter) with the Keras model on
    uint8 `[N, H, W, 3]` images: {"agreement", "images", "bytes"}."""
    return agreement(content, run_tflite_gpu(content, images)["labels"], model, images)
