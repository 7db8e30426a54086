"""Static audit of a TFLite file against the TFLite GPU delegate: every op of the main
subgraph with its version, whether the delegate would take it (and why not), and the
partitions the delegate would cut the graph into. `gscnn-tf audit-tflite FILE` prints it.

An op the delegate rejects in the middle of the graph splits the graph between GPU and CPU;
the delegate then takes only its largest partition (`max_delegated_partitions` = 1 by
default), so most of a network can end up on the CPU. TensorFlow's own
`tf.lite.experimental.Analyzer.analyze(..., gpu_compatibility=True)` is no guide: on TF 2.21.0
it calls our default export, ARG_MAX, a CAST from uint8 and LOGICAL_AND included, "compatible
with GPU delegate". So the delegate's rules are restated here from its source.

The file is read with the flatbuffer schema TensorFlow ships
(`tensorflow.lite.python.schema_py_generated`); no interpreter is built.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Highest op version each delegate parser accepts (None: the parser checks no version).
# Source: TensorFlow's GPU delegate, tensorflow/lite/delegates/gpu/common/model_builder.cc
# (NewOperationParser: the builtin ops that have a parser at all, and each parser's
# CheckMaxSupportedOpVersion; the comparison -> CAST pairing of ElementwiseOperationParser
# and CastOperationParser; GetOpsToReplace's tensor-type rules) and
# tensorflow/lite/tools/versioning/gpu_compatibility.cc (CheckGpuDelegateCompatibility: the
# per-op constraints restated in `_constraint`), both read from the tensorflow/tensorflow
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


@dataclasses.dataclass
class Tensor:
    index: int
    name: str
    dtype: str
    shape: tuple
    constant: bool
    data: np.ndarray | None  # raw bytes (uint8) of a constant


@dataclasses.dataclass
class Op:
    index: int
    name: str  # builtin op name (e.g. "CONV_2D") or the custom op's name
    version: int
    inputs: list  # tensor indices, -1 for an omitted optional input
    outputs: list
    options: object  # the schema's *OptionsT object, or None
    custom: bool = False


@dataclasses.dataclass
class OpAudit:
    index: int
    name: str
    version: int
    max_version: int | None
    supported: bool
    reason: str  # why not ("" when supported); a note for a supported op ("fp16 weights")
    partition: int | None = None  # index of the delegated partition it falls in


@dataclasses.dataclass
class AuditReport:
    path: str
    ops: list
    partitions: list  # lists of op indices, one per partition the delegate would take
    other_subgraphs: int

    @property
    def unsupported(self) -> list:
        return [op for op in self.ops if not op.supported]

    @property
    def clean(self) -> bool:
        """Every op on the delegate, in one partition."""
        return not self.unsupported and len(self.partitions) == 1

    def summary(self) -> str:
        """One line: partitions, ops on the GPU / CPU, the unsupported ops by kind."""
        largest = max((len(p) for p in self.partitions), default=0)
        if self.clean:
            return (f"GPU delegate audit: clean, all {len(self.ops)} ops in one partition")
        kinds: dict[str, int] = {}
        for op in self.unsupported:
            key = f"{op.name} ({op.reason})"
            kinds[key] = kinds.get(key, 0) + 1
        listed = "; ".join(f"{k} x{n}" for k, n in kinds.items())
        return (f"GPU delegate audit: {len(self.partitions)} partition(s); the delegate takes "
                f"the largest ({largest} of {len(self.ops)} ops), the rest run on the CPU; "
                f"unsupported: {listed}")

    def text(self) -> str:
        """The op table (index, op, version, the delegate's highest version, verdict,
        partition) and the summary line."""
        rows = [f"{'#':>4}  {'op':<24}{'version':>8}{'max':>6}  {'partition':<10}verdict"]
        for op in self.ops:
            verdict = "GPU" if op.supported else f"CPU: {op.reason}"
            if op.supported and op.reason:
                verdict += f" ({op.reason})"
            partition = "-" if op.partition is None else str(op.partition)
            max_version = "any" if op.max_version is None else str(op.max_version)
            if op.name not in GPU_DELEGATE_OPS and op.name not in GPU_DELEGATE_CUSTOM_OPS:
                max_version = "-"
            rows.append(f"{op.index:>4}  {op.name:<24}{op.version:>8}{max_version:>6}  "
                        f"{partition:<10}{verdict}")
        notes = []
        if self.other_subgraphs:
            notes.append(f"{self.other_subgraphs} further subgraph(s) (bodies of control-flow "
                         "ops) are not delegated")
        return "\n".join([f"{self.path}: {len(self.ops)} ops", *rows, *notes, self.summary()])


def read_model(content: bytes, path: str = "<bytes>") -> tuple[list, list, list, int]:
    """(ops, tensors, graph input indices, number of other subgraphs) of the main subgraph
    of a TFLite flatbuffer."""
    from tensorflow.lite.python import schema_py_generated as schema

    from gscnn_tf.export import ExportError

    buf = bytearray(content)
    if len(buf) < 8 or not schema.Model.ModelBufferHasIdentifier(buf, 0):
        raise ExportError(f"{path}: not a TFLite file (expected the flatbuffer identifier "
                          "'TFL3' at byte 4)")
    model = schema.Model.GetRootAs(buf, 0)
    if model.SubgraphsLength() < 1:
        raise ExportError(f"{path}: the TFLite file has no subgraph")
    builtin_names = {v: k for k, v in vars(schema.BuiltinOperator).items()
                     if not k.startswith("_")}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    subgraph = model.Subgraphs(0)
    graph_inputs = [int(i) for i in subgraph.InputsAsNumpy()] if subgraph.InputsLength() else []
    tensors = []
    for i in range(subgraph.TensorsLength()):
        t = subgraph.Tensors(i)
        data = None
        if t.Buffer() > 0 and i not in graph_inputs and not t.IsVariable():
            buffer = model.Buffers(t.Buffer())
            if buffer.DataLength() > 0:
                data = buffer.DataAsNumpy()
            elif buffer.Size() > 0:  # stored past the flatbuffer (files over 2 GB)
                data = np.frombuffer(content, np.uint8, int(buffer.Size()), int(buffer.Offset()))
        tensors.append(Tensor(i, (t.Name() or b"").decode("utf-8", "replace"),
                              type_names.get(t.Type(), str(t.Type())),
                              tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else (),
                              data is not None, data))
    ops = []
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = builtin_names.get(builtin, f"BUILTIN_{builtin}")
        custom = name == "CUSTOM"
        if custom:
            name = (code.CustomCode() or b"CUSTOM").decode("utf-8", "replace")
        options = schema.OperatorT.InitFromObj(op).builtinOptions
        ops.append(Op(i, name, int(code.Version()),
                      [int(x) for x in op.InputsAsNumpy()] if op.InputsLength() else [],
                      [int(x) for x in op.OutputsAsNumpy()] if op.OutputsLength() else [],
                      options, custom))
    # fp16 weights: the delegate (FP16GraphPartitionHelper) reads a DEQUANTIZE of a constant
    # float16 tensor as that constant, so its output counts as a constant input.
    for op in ops:
        if op.name == "DEQUANTIZE" and op.inputs and tensors[op.inputs[0]].constant and \
                tensors[op.inputs[0]].dtype == "FLOAT16":
            for t in op.outputs:
                tensors[t].constant = True
    return ops, tensors, graph_inputs, model.SubgraphsLength() - 1


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


def _constraint(op: Op, tensors: list, consumers: dict, producers: dict) -> str:
    """Why the delegate rejects `op` ("" when it takes it), beyond the op table and version."""
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


def _partitions(ops: list, supported: list, tensors: list, graph_inputs: list) -> list:
    """The delegated partitions, by the walk of TFLite's PartitionGraphIntoIndependentNodeSubsets
    (graph_info.cc): each round, the first node (in execution order) whose inputs are ready
    sets the round's kind, supported or not, and every node of that kind that becomes ready
    joins it, until none does. Returns the supported rounds, each a list of op indices."""
    ready = {t.index for t in tensors if t.constant} | set(graph_inputs)
    left = list(range(len(ops)))
    subsets = []
    while left:
        def is_ready(i):
            return all(t < 0 or t in ready for t in ops[i].inputs)

        first = next((i for i in left if is_ready(i)), None)
        if first is None:  # a cycle or an input nothing produces: no more partitions
            break
        kind, taken, grew = supported[first], [], True
        while grew:
            grew = False
            for i in list(left):
                if supported[i] == kind and is_ready(i):
                    taken.append(i)
                    left.remove(i)
                    ready.update(ops[i].outputs)
                    grew = True
        if kind:
            subsets.append(sorted(taken))
    return subsets


def audit(content: bytes, path: str = "<bytes>") -> AuditReport:
    """Audits a TFLite flatbuffer (`content`) against the GPU delegate; `path` names it in
    messages. The report lists every op of the main subgraph with its version and verdict
    and the partitions the delegate would make (`report.clean`: one partition, nothing
    unsupported)."""
    ops, tensors, graph_inputs, others = read_model(content, path)
    producers, consumers = {}, {}
    for op in ops:
        for t in op.outputs:
            producers[t] = op
        for t in op.inputs:
            if t >= 0:
                consumers.setdefault(t, []).append(op)
    audits = []
    for op in ops:
        max_version = GPU_DELEGATE_OPS.get(op.name)
        note = ""
        if op.custom:
            known = op.name in GPU_DELEGATE_CUSTOM_OPS
            reason = "" if known else "custom op without a GPU delegate parser"
        elif op.name not in GPU_DELEGATE_OPS:
            reason = "no GPU delegate parser for this op"
        elif max_version is not None and op.version > max_version:
            reason = f"version {op.version} above the delegate's {max_version}"
        else:
            reason = _constraint(op, tensors, consumers, producers)
            source = tensors[op.inputs[0]] if op.inputs else None
            if not reason and op.name == "DEQUANTIZE" and source.constant and \
                    source.dtype == "FLOAT16":
                note = "fp16 weights, dequantized once by the delegate"
        audits.append(OpAudit(op.index, op.name, op.version, max_version, not reason,
                              reason or note))
    parts = _partitions(ops, [a.supported for a in audits], tensors, graph_inputs)
    for number, part in enumerate(sorted(parts, key=len, reverse=True)):
        for i in part:
            audits[i].partition = number
    return AuditReport(path, audits, sorted(parts, key=len, reverse=True), others)


def audit_file(path: str) -> AuditReport:
    """`audit` of a .tflite file."""
    from gscnn_tf.export import ExportError

    from gscnn_tf import files

    if not files.isfile(path):
        raise ExportError(f"{path}: no such TFLite file")
    return audit(files.read_bytes(path), path)
