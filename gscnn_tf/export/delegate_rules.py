"""The TFLite GPU delegate's rules, restated from its source: which builtin ops it has a
parser for and up to which version (`GPU_DELEGATE_OPS`), and the per-op constraints on
tensor types, counts, shapes and options (`rejection`). `gscnn_tf.export.gpu_audit` applies them
to a file. TensorFlow's own `tf.lite.experimental.Analyzer.analyze(..., gpu_compatibility=True)`
is no guide: on TF 2.21.0 it calls our default export, ARG_MAX, a CAST from uint8 and
LOGICAL_AND included, "compatible with GPU delegate".
"""

from __future__ import annotations

import numpy as np

from gscnn_tf.export.flatbuffer import Op

# Highest op version each delegate parser accepts (None: the parser checks no version).
# Source: TensorFlow's GPU delegate, tensorflow/lite/delegates/gpu/common/model_builder.cc
# (NewOperationParser: the builtin ops that have a parser at all, and each parser's
# CheckMaxSupportedOpVersion; the comparison -> CAST pairing of ElementwiseOperationParser
# and CastOperationParser; GetOpsToReplace's tensor-type rules) and
# tensorflow/lite/tools/versioning/gpu_compatibility.cc (CheckGpuDelegateCompatibility: the
# per-op constraints restated in `rejection`), both read from the tensorflow/tensorflow
# repository at a recent revision (one that routes every parser's IsSupported through
# gpu_compatibility.cc; the files at the v2.21.0 tag this project pins were not at hand to
# compare line by line, so a version limit there may differ in detail). An op missing here
# (ARG_MAX, WHILE, ROUND, SELECT, LOGICAL_AND/OR/NOT, CEIL, GATHER, SPACE_TO_BATCH_ND, ...) has
# no parser and always stays on the CPU.
GPU_DELEGATE_OPS: dict[str, int | None] = {
    "ABS": 2, "ADD": 2, "AVERAGE_POOL_2D": 2, "BATCH_MATMUL": None, "CAST": None,
    "CONCATENATION": 2, "CONV_2D": 6, "COS": 2, "CUMSUM": 1, "DENSIFY": 1,
    "DEPTHWISE_CONV_2D": 6, "DEPTH_TO_SPACE": None, "DEQUANTIZE": 3, "DIV": 2, "ELU": 2,
    "EQUAL": 2, "EXP": 2, "FLOOR": 2, "FLOOR_DIV": 2, "FLOOR_MOD": 2,
    "FULLY_CONNECTED": 9, "GREATER": 2, "GREATER_EQUAL": 2, "HARD_SWISH": None, "LEAKY_RELU": 2,
    "LESS": 2, "LESS_EQUAL": 2, "LOG": 2, "LOGISTIC": 2, "LSTM": 4, "MAXIMUM": 2,
    "MAX_POOL_2D": 2, "MEAN": None, "MINIMUM": 2, "MIRROR_PAD": 2, "MUL": 3, "NEG": 2,
    "NOT_EQUAL": 2, "ONE_HOT": 1, "PACK": None, "PAD": 2, "POW": 2, "PRELU": 1,
    "QUANTIZE": 2, "REDUCE_MAX": None, "REDUCE_MIN": None, "REDUCE_PROD": None, "RELU": 2,
    "RELU6": 2, "RELU_N1_TO_1": None, "RESHAPE": 1, "RESIZE_BILINEAR": 3,
    "RESIZE_NEAREST_NEIGHBOR": 3, "RSQRT": 2, "SELECT_V2": 1, "SIN": 2, "SLICE": 2,
    "SOFTMAX": 2, "SPACE_TO_DEPTH": 2, "SPLIT": None, "SPLIT_V": None, "SQRT": 2,
    "SQUARE": 2, "SQUARED_DIFFERENCE": 2, "STRIDED_SLICE": 2, "SUB": 2, "SUM": None,
    "TANH": 2, "TILE": None, "TRANSPOSE": 2, "TRANSPOSE_CONV": 3,
}
# Custom ops with a delegate parser.
GPU_DELEGATE_CUSTOM_OPS = ("Convolution2DTransposeBias", "MaxPoolingWithArgmax2D",
                           "MaxUnpooling2D", "Resampler")
COMPARISONS = ("GREATER", "GREATER_EQUAL", "LESS", "LESS_EQUAL", "EQUAL", "NOT_EQUAL")
ONE_INPUT_ELEMENTWISE = ("ABS", "COS", "ELU", "EXP", "FLOOR", "LOG", "LOGISTIC", "NEG",
                         "RSQRT", "SIN", "SQRT", "SQUARE", "TANH")
TWO_INPUT_ELEMENTWISE = ("ADD", "DIV", "FLOOR_DIV", "FLOOR_MOD", "MAXIMUM", "MINIMUM", "MUL",
                         "POW", "SQUARED_DIFFERENCE", "SUB")
FLOATS = ("FLOAT32", "FLOAT16")
# The delegate's default options enable quantized models, so int8 / uint8 activations are
# allowed tensor types (TFLITE_GPU_EXPERIMENTAL_FLAGS_ENABLE_QUANT).
QUANTIZED = ("INT8", "UINT8")


def _activation_ok(options) -> bool:
    from tensorflow.lite.python import schema_py_generated as schema

    activation = getattr(options, "fusedActivationFunction", 0)
    return activation != schema.ActivationFunctionType.SIGN_BIT


def _broadcast_ok(a: tuple, b: tuple) -> bool:
    """ADD / MUL operand ranks (gpu_compatibility.cc, standard flags): ranks above 1 may
    differ only as [1, h, w, c] with [h, w, c], [1, 1] or [b, c] with [b, h, w, c]."""
    if len(a) <= 1 or len(b) <= 1 or len(a) == len(b):
        return True
    longer, shorter = (a, b) if len(a) > len(b) else (b, a)
    if len(longer) != 4:
        return False
    if len(shorter) == 3 and longer[0] == 1:
        return True
    return len(shorter) == 2 and ((longer[0] == 1 and shorter == (1, 1))
                                  or (longer[0] == shorter[0] and longer[3] == shorter[1]))


def rejection(op: Op, tensors: list, consumers: dict, producers: dict) -> str:
    """Why the delegate rejects `op` ("" when it takes it), beyond the op table and version.
    `tensors`: the file's `Tensor`s by index; consumers / producers: tensor index -> the `Op`s
    reading it / the `Op` writing it."""
    ins = [tensors[i] for i in op.inputs if i >= 0]
    outs = [tensors[i] for i in op.outputs]
    runtime = [t for t in ins if not t.constant]
    consts = [t for t in ins if t.constant]
    name, o = op.name, op.options
    if any(len(t.shape) > 4 for t in ins + outs):
        return "a tensor of rank 5 or more"
    if name in COMPARISONS:
        if any(t.dtype not in FLOATS + QUANTIZED for t in runtime):
            return f"comparison of {runtime[0].dtype} tensors"
        users = consumers.get(op.outputs[0], [])
        if len(users) == 1 and users[0].name == "CAST" and \
                tensors[users[0].outputs[0]].dtype in FLOATS:
            return ""
        return "a comparison must feed exactly one CAST to float"
    if name == "CAST":
        src, dst = ins[0].dtype, outs[0].dtype
        if len(runtime) != 1 or len(outs) != 1:
            return "CAST needs one runtime input and one output"
        if src == "BOOL":
            producer = producers.get(op.inputs[0])
            if producer is None or producer.name not in COMPARISONS or \
                    len(consumers.get(op.inputs[0], [])) != 1:
                return "CAST from BOOL only of a comparison's result"
        if (src == "BOOL" and dst in FLOATS) or (src in ("FLOAT32", "INT32") and
                                                  dst in ("FLOAT32", "INT32")):
            return ""
        return f"CAST {src} -> {dst} is not a supported case"
    allowed_in = FLOATS + QUANTIZED + (("INT32",) if name == "ONE_HOT" else ())
    for t in runtime:
        if t.dtype not in allowed_in:
            return f"runtime input {t.dtype}"
    for t in outs:
        if t.dtype not in FLOATS + QUANTIZED:
            return f"output {t.dtype}"
    if name in ONE_INPUT_ELEMENTWISE:
        return "" if (len(runtime), len(consts), len(outs)) == (1, 0, 1) else \
            f"{name} needs one runtime input"
    if name in TWO_INPUT_ELEMENTWISE:
        if (len(runtime), len(consts)) not in ((2, 0), (1, 1)) or len(outs) != 1:
            return f"{name} needs two inputs, at most one constant"
        a, b = ins[0].shape, ins[1].shape
        if name in ("ADD", "MUL") and not _broadcast_ok(a, b):
            return f"broadcast of {list(a)} with {list(b)}"
        if name == "MUL" and len(a) == len(b) and \
                any(x < y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b)):
            return f"MUL of {list(a)} with {list(b)}: neither covers the other"
        return "" if _activation_ok(o) else "fused SIGN_BIT activation"
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV"):
        if len(runtime) > 2 or len(outs) != 1:
            return f"{name} needs one or two runtime inputs and one output"
        if o is not None and (min(o.strideH, o.strideW) <= 0 or
                              min(getattr(o, "dilationHFactor", 1),
                                  getattr(o, "dilationWFactor", 1)) <= 0):
            return "non-positive stride or dilation"
        if name == "DEPTHWISE_CONV_2D" and o.depthMultiplier != 1 and ins[0].shape[-1] != 1:
            return "depth multiplier != 1 on more than one input channel"
        return "" if _activation_ok(o) else "fused SIGN_BIT activation"
    if name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        if len(runtime) != 1 or len(outs) != 1:
            return "pooling needs one runtime input"
        if min(o.filterHeight, o.filterWidth, o.strideH, o.strideW) <= 0:
            return "non-positive kernel or stride"
        return "" if _activation_ok(o) else "fused SIGN_BIT activation"
    if name in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD"):
        if len(runtime) != 1 or len(outs) != 1:
            return f"{name} needs one runtime input"
        axes = ins[1] if len(ins) > 1 else None
        if axes is None or not axes.constant or axes.dtype != "INT32":
            return f"{name} needs constant int32 axes"
        return ""
    if name in ("PAD", "PADV2", "MIRROR_PAD"):
        if len(runtime) != 1 or len(outs) != 1:
            return f"{name} needs one runtime input"
        paddings = ins[1].shape if len(ins) > 1 else ()
        if len(paddings) != 2 or paddings[0] not in (3, 4) or paddings[1] != 2:
            return f"paddings of shape {list(paddings)}: expected 4x2 or 3x2"
        if name == "MIRROR_PAD" and o.mode != 0:
            return "MIRROR_PAD other than REFLECT"
        return ""
    if name in ("RESHAPE", "TILE", "TRANSPOSE", "SPACE_TO_DEPTH", "DEPTH_TO_SPACE",
                "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"):
        if len(runtime) != 1 or len(outs) != 1:
            return f"{name} needs one runtime input"
        if name == "RESIZE_BILINEAR" and o.alignCorners and o.halfPixelCenters:
            return "align_corners together with half_pixel_centers"
        if name in ("SPACE_TO_DEPTH", "DEPTH_TO_SPACE") and o.blockSize <= 1:
            return "block size <= 1"
        return ""
    if name == "SOFTMAX":
        return "" if o.beta == 1.0 else "softmax beta != 1"
    if name in ("STRIDED_SLICE", "SLICE"):
        if len(ins[0].shape) not in (3, 4):
            return f"{name} of a rank-{len(ins[0].shape)} tensor (3 or 4 only)"
        if name == "SLICE":
            return "" if len(ins) >= 3 else "SLICE needs 3 inputs"
        if len(ins) < 4:
            return "STRIDED_SLICE needs 4 inputs"
        if o.ellipsisMask or o.newAxisMask or o.shrinkAxisMask:
            return "STRIDED_SLICE with an ellipsis, new-axis or shrink-axis mask"
        strides = ins[3]
        if strides.constant and np.any(strides.data.view(np.int32) <= 0):
            return "STRIDED_SLICE with a reversing stride"
        return ""
    if name == "SELECT_V2":
        if len(ins) != 3 or len(outs) != 1:
            return "SELECT_V2 needs 3 inputs"
        if ins[0].dtype not in ("BOOL",) + FLOATS or ins[1].dtype not in FLOATS or \
                ins[2].dtype not in FLOATS:
            return "SELECT_V2 needs a bool or float condition and float values"
        return ""
    if name == "FULLY_CONNECTED":
        if o.weightsFormat != 0 or len(runtime) > 2 or ins[0].constant:
            return "FULLY_CONNECTED weights format or inputs"
        return ""
    return ""
