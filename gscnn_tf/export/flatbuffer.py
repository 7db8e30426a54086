"""Reading a TFLite file without an interpreter: the ops (builtin name or custom code,
version, tensor indices, options) and tensors (name, dtype, shape, constant data) of its main
subgraph, with the flatbuffer schema TensorFlow ships
(`tensorflow.lite.python.schema_py_generated`). The op lists of `gscnn_tf.export.litert` and
the GPU delegate audit (`gscnn_tf.export.gpu_audit`) read files through `read_model`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gscnn_tf.errors import ExportError


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


def read_model(content: bytes, path: str = "<bytes>") -> tuple[list, list, list, int]:
    """(ops, tensors, graph input indices, number of other subgraphs) of the main subgraph
    of a TFLite flatbuffer: `Op`s in execution order, `Tensor`s by index; `path` names the
    file in the ExportError for bytes that are not a TFLite file."""
    from tensorflow.lite.python import schema_py_generated as schema

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

