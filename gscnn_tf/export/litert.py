"""Running and checking TFLite files with LiteRT (`ai-edge-litert`, the `litert` extra):
the interpreter (`tflite_interpreter`), a default export run on images (`run_tflite`), its
labels' agreement with the Keras model (`verify_tflite`, `agreement`), and what a file's ops
are (`tflite_op_list`, `tflite_ops`, `float_ops`: read from the flatbuffer by
`gscnn_tf.export.flatbuffer.read_model`, no interpreter and no LiteRT needed).
"""

from __future__ import annotations

import numpy as np

from gscnn_tf.errors import ExportError
from gscnn_tf.export.flatbuffer import read_model

# Least share of pixels whose TFLite label equals the Keras model's (tests, benchmark).
AGREEMENT_TARGET = {"none": 0.999, "fp16": 0.99, "dynamic": 0.95, "int8": 0.95}


def tflite_interpreter(content: bytes, delegates: bool = True):
    """A LiteRT interpreter of a TFLite flatbuffer, tensors allocated; `delegates=False`
    runs the builtin kernels without the default XNNPACK delegate. Needs the `litert`
    extra; without it, one ExportError saying how to install it."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as e:
        raise ExportError("running a TFLite file needs LiteRT: pip install -e \".[litert]\" "
                          "(ai-edge-litert)") from e

    resolver = OpResolverType.AUTO if delegates else \
        OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(model_content=content, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    return interpreter


def tflite_op_list(content: bytes) -> list[str]:
    """The ops of a TFLite flatbuffer in graph order (e.g. ["CAST", "CONV_2D", ...]), as the
    file has them (builtin names; a custom op by its custom code, e.g. "FlexConv2D")."""
    return [op.name for op in read_model(content)[0]]


def tflite_ops(content: bytes) -> set[str]:
    """The op names in a TFLite flatbuffer (e.g. {"CONV_2D", "WHILE", ...})."""
    return set(tflite_op_list(content))


def float_ops(content: bytes) -> list[str]:
    """Names of the ops of a TFLite file that take float32 tensors (sorted, repeated)."""
    ops, tensors, _, _ = read_model(content)
    return sorted(op.name for op in ops
                  if any(tensors[i].dtype == "FLOAT32" for i in op.inputs if i >= 0))


def run_tflite(content: bytes, images: np.ndarray) -> dict:
    """Runs a TFLite export on uint8 `[N, H, W, 3]` images one at a time; returns
    {"labels": int32 [N, H, W], "edge_prob": float32 [N, H, W, 1]} (empty for N = 0)."""
    runner = tflite_interpreter(content).get_signature_runner("serving_default")
    height, width = (int(v) for v in runner.get_input_details()["images"]["shape"][1:3])
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (height, width, 3):
        raise ValueError(f"images {images.shape}: expected uint8 [N, {height}, {width}, 3], "
                         "the export's input size")
    outs = [runner(images=np.asarray(image[None], np.uint8)) for image in images]
    if not outs:
        return {"labels": np.zeros([0, height, width], np.int32),
                "edge_prob": np.zeros([0, height, width, 1], np.float32)}
    return {key: np.concatenate([o[key] for o in outs]) for key in ("labels", "edge_prob")}


def keras_labels(model, images: np.ndarray) -> np.ndarray:
    """int32 `[N, H, W]` argmax of the Keras model on uint8 images `[N, H, W, 3]`."""
    import tensorflow as tf

    from gscnn_tf.models.postprocess import postprocess

    return np.concatenate([
        postprocess(model(tf.constant(image[None], tf.float32), training=False))["labels"]
        for image in images])


def agreement(content: bytes, labels: np.ndarray, model, images: np.ndarray) -> dict:
    """{"agreement": share of pixels where `labels` (int32 `[N, H, W]`, a TFLite file's on
    `images`) equal the Keras model's on uint8 `images` `[N, H, W, 3]`, "images": N,
    "bytes": the file's size}."""
    return {"agreement": float(np.mean(labels == keras_labels(model, images))),
            "images": int(len(images)), "bytes": len(content)}


def verify_tflite(content: bytes, model, images: np.ndarray) -> dict:
    """Agreement of a TFLite export with the Keras model on uint8 `[N, H, W, 3]` images:
    {"agreement": share of pixels with equal labels, "images": N, "bytes": file size}."""
    return agreement(content, run_tflite(content, images)["labels"], model, images)
