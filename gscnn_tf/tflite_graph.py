"""TFLite conversion that holds the weights about once: a concrete function is frozen into a
GraphDef by replacing each captured variable with a constant of its value, converted by the
GraphDef converter, and given its `serving_default` signature (input / output names) back.

Why (the 137 M-parameter WideResNet-38 GSCNN, 549 MB of float32 weights, 64x64 input, 2-core
EPYC, TF 2.21): `convert_variables_to_constants_v2` and the concrete-function converter copy
the weights some ten times (wrapped functions registered in the eager context, GraphDef <->
graph round trips, a temporary SavedModel written and loaded again): freezing alone took 48 s
and left 7.1 GB resident, and the converter then ran out of memory past 12-18 GB. Here freezing
takes 3 s and adds 0.13 GB, and the whole export peaks at 7.1 GB (2.2 GB of it the Keras
model itself).
"""

from __future__ import annotations

import numpy as np


def frozen_graph_def(function):
    """GraphDef of a concrete function with its variables as constants (one copy of each).

    Every captured variable's placeholder becomes a `Const` and every `ReadVariableOp` on it
    an `Identity`. A graph that uses a variable any other way (passes it into a nested
    function, gathers from it, assigns it) is frozen by TensorFlow's
    `convert_variables_to_constants_v2_as_graph` instead, which inlines nested functions at
    the cost of several more copies of the weights.
    """
    import tensorflow as tf

    graph_def = function.graph.as_graph_def()
    variables = {id(v.handle): v for v in function.graph.variables}
    handles = {internal.op.name: variables.get(id(external))
               for external, internal in function.graph.captures
               if internal.dtype == tf.resource}
    readers = [node for node in graph_def.node
               if any(name.split(":")[0] in handles for name in node.input
                      if not name.startswith("^"))]
    if any(v is None for v in handles.values()) or any(node.op != "ReadVariableOp" for node in readers):
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2_as_graph)

        return convert_variables_to_constants_v2_as_graph(function,
                                                          lower_control_flow=False)[1]
    for node in graph_def.node:
        if node.name in handles:
            variable = handles[node.name]
            node.op = "Const"
            node.ClearField("input")
            node.ClearField("attr")
            node.attr["dtype"].type = variable.dtype.as_datatype_enum
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(variable.numpy()))
    for node in readers:
        dtype = node.attr["dtype"].type
        node.op = "Identity"
        node.ClearField("attr")
        node.attr["T"].type = dtype
    return graph_def


def io_names(function) -> tuple[list[str], list[str], list[str], list[str]]:
    """(input node names, output node names, signature input names, signature output names)
    of a concrete function: inputs are its non-resource placeholders (named as its
    TensorSpecs or arguments), outputs its flattened outputs, named by their keys when it
    returns a dict (flattened in sorted key order) and `output_<i>` otherwise."""
    import tensorflow as tf

    inputs = [t.op.name for t in function.inputs if t.dtype != tf.resource]
    outputs = [t.op.name for t in function.outputs]
    structure = function.structured_outputs
    keys = (sorted(structure) if isinstance(structure, dict)
            else [f"output_{i}" for i in range(len(outputs))])
    return inputs, outputs, list(inputs), keys


def add_signature(content: bytes, inputs: list[str], outputs: list[str],
                  key: str = "serving_default") -> bytes:
    """`content` (a single-subgraph TFLite flatbuffer) with a SignatureDef `key` naming the
    subgraph's inputs and outputs in order (the tensors are renamed to match)."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    subgraph = model.subgraphs[0]
    if (len(inputs), len(outputs)) != (len(subgraph.inputs), len(subgraph.outputs)):
        raise ValueError(f"signature names {inputs} -> {outputs} do not match the model's "
                         f"{len(subgraph.inputs)} inputs and {len(subgraph.outputs)} outputs")

    def tensor_maps(names, indices):
        maps = []
        for name, index in zip(names, np.asarray(indices).tolist()):
            subgraph.tensors[index].name = name
            entry = schema.TensorMapT()
            entry.name, entry.tensorIndex = name, index
            maps.append(entry)
        return maps

    signature = schema.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = key, 0
    signature.inputs = tensor_maps(inputs, subgraph.inputs)
    signature.outputs = tensor_maps(outputs, subgraph.outputs)
    model.signatureDefs = [signature]
    builder = flatbuffers.Builder(len(content) + 2**20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def graph_converter(function):
    """A `TFLiteConverter` (the GraphDef converter) for `function` frozen by
    `frozen_graph_def`, and the signature names for `add_signature` after `convert()`:
    `(converter, input_names, output_names)`. Set ops, optimizations and a representative
    dataset on the converter as usual."""
    import tensorflow as tf

    inputs, outputs, input_names, output_names = io_names(function)
    shapes = [(name, t.shape.as_list()) for name, t in
              zip(inputs, [t for t in function.inputs if t.dtype != tf.resource])]
    converter = tf.compat.v1.lite.TFLiteConverter(
        frozen_graph_def(function), None, None, input_arrays_with_shape=shapes,
        output_arrays=outputs)
    return converter, input_names, output_names
