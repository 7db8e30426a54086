"""TFLite conversion (`export_tflite`, `convert_tflite`): a fixed `[1, H, W, 3]` uint8 input,
outputs `labels` and `edge_prob` (signature `serving_default`), TFLite builtin ops only (a
graph needing Flex / Select TF ops is an `ExportError` naming the ops). Files are written
atomically and an existing one is kept unless `overwrite`.

Quantization: `none` (float32), `fp16` (float16 weights), `dynamic` (int8 weights), `int8`
(full-integer: int8 weights and activations calibrated on images of the training pipeline;
only Canny's grey-level rounding, which has no int8 kernel, stays float). Canny's hysteresis:
`export.tflite_canny_max_steps` N > 0 unrolls N max-pool growth steps (no WHILE op: GPU
delegates and int8 calibration need that; 64 steps find 0.984-1.0 of OpenCV's edge pixels,
never extra, docs/canny.md), 0 keeps the exact WHILE loop (float CPU only).

Freezing holds the weights about once: a concrete function is frozen into a GraphDef by
replacing each captured variable with a constant of its value (`frozen_graph_def`), converted
by the GraphDef converter, and given its `serving_default` signature (input / output names)
back (`add_signature`). Why (the 137 M-parameter WideResNet-38 GSCNN, 549 MB of float32
weights, 64x64 input, 2-core EPYC, TF 2.21): `convert_variables_to_constants_v2` and the
concrete-function converter copy the weights some ten times (wrapped functions registered in
the eager context, GraphDef <-> graph round trips, a temporary SavedModel written and loaded
again): freezing alone took 48 s and left 7.1 GB resident, and the converter then ran out of
memory past 12-18 GB. Here freezing takes 3 s and adds 0.13 GB, and the whole export peaks
at 7.1 GB (2.2 GB of it the Keras model itself).
"""

from __future__ import annotations

import re

import numpy as np

from gscnn_tf.errors import ExportError
from gscnn_tf.export.artifacts import refuse_existing, write_file
from gscnn_tf.export.calibration import representative_images
from gscnn_tf.export.flatbuffer import read_model
from gscnn_tf.export.serving import SegmentationModule, with_canny

QUANTIZE = ("none", "fp16", "dynamic", "int8")


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
    if any(v is None for v in handles.values()) or \
            any(node.op != "ReadVariableOp" for node in readers):
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


def frozen_function(model, height: int, width: int):
    """Concrete function `images` uint8 [1, H, W, 3] -> {"labels" int32 [1, H, W],
    "edge_prob" float32 [1, H, W, 1]} of `model` (`SegmentationModule.serve`, its variables
    captured; `convert_tflite` freezes them into constants). The function holds its variables
    weakly: the caller keeps `model` alive until the function is converted."""
    return SegmentationModule(model).fixed_function(height, width)


def _missing_ops(message: str) -> list[str]:
    """Names of the TF ops a converter error says are not TFLite builtins."""
    found = re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", message)
    for listed in re.findall(r"(?:Custom|Flex) ops: ([\w, ]+)", message):
        found += [op.strip() for op in listed.split(",") if op.strip()]
    return sorted(set(found))


def convert_tflite(function, quantize: str = "none", representative=None) -> bytes:
    """TFLite flatbuffer of a concrete function (variables frozen into constants), builtin
    ops only, with a `serving_default` signature named as the function's inputs and outputs.

    quantize: one of QUANTIZE; `int8` needs `representative`, a callable returning an
    iterable of `[input]` lists (calibration samples).
    """
    import tensorflow as tf

    if quantize not in QUANTIZE:
        raise ExportError(f"quantize '{quantize}': expected one of {', '.join(QUANTIZE)}")
    converter, input_names, output_names = graph_converter(function)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        # Full-integer: every op with an int8 kernel runs in int8 (the converter fails
        # otherwise); ops TFLite has no int8 kernel for (Canny's grey-level rounding) stay
        # float between QUANTIZE / DEQUANTIZE.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if representative is None:
            raise ExportError("int8 quantization needs representative images")
        if _has_while(function):
            raise ExportError("int8 calibration cannot run a graph with a WHILE loop (Canny's "
                              "hysteresis): set export.tflite_canny_max_steps > 0 "
                              "(--canny-max-steps, e.g. 64)")
        converter.representative_dataset = representative
    try:
        content = converter.convert()
    except Exception as e:  # the converter raises ConverterError with the op list in text
        ops = _missing_ops(str(e))
        if ops:
            raise ExportError(f"TFLite conversion needs op(s) that are not TFLite builtins: "
                              f"{', '.join(ops)}; Flex / Select TF ops are not allowed "
                              "(GPU delegates cannot run them)") from e
        raise
    del converter  # its frozen GraphDef: one copy of the weights
    custom = sorted(op.name for op in read_model(content)[0] if op.custom)
    if custom:
        raise ExportError(f"TFLite model contains non-builtin op(s): {', '.join(custom)}")
    return add_signature(content, input_names, output_names)


def _has_while(function) -> bool:
    graph = function.graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return any(node.op in ("While", "StatelessWhile") for node in nodes)


def export_tflite(model, config, path: str, height: int, width: int, quantize: str = "none",
                  max_steps: int | None = None, step_form: str | None = None,
                  overwrite: bool = False) -> bytes:
    """Converts `model` for a fixed `[1, H, W, 3]` input and writes it to `path` (atomically;
    an existing file is kept unless `overwrite`, and always when the conversion fails).

    max_steps / step_form: Canny hysteresis for the TFLite graph (default
    `export.tflite_canny_max_steps` / `export.tflite_canny_step_form`).
    """
    import tensorflow as tf

    refuse_existing(path, overwrite)
    export = config.export
    max_steps = export.tflite_canny_max_steps if max_steps is None else max_steps
    step_form = step_form or export.tflite_canny_step_form
    graph_model = with_canny(model, max_steps, step_form)  # alive until converted
    function = frozen_function(graph_model, height, width)
    representative = None
    if quantize == "int8":
        samples = representative_images(config, height, width, export.representative_images)

        def representative():
            for image in samples:
                yield [tf.constant(image[None])]

    content = convert_tflite(function, quantize, representative)
    write_file(path, content, overwrite)
    return content
