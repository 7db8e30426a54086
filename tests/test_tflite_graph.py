"""Lean TFLite freezing (gscnn_tf.export.tflite): the frozen GraphDef computes what the
function computes, holds no variables, falls back to TensorFlow's freezing for non-read uses,
and the converted flatbuffer gets a signature whose names map to the right tensors."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from gscnn_tf.export import tflite


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(3)
    image = keras.Input([8, 8, 3])
    x = keras.layers.Conv2D(4, 3, padding="same")(image)
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(image, {"map": keras.layers.ReLU()(x),
                                "score": keras.layers.Dense(2)(keras.layers.Flatten()(x))})
    # Non-trivial BatchNorm statistics, so a frozen constant in the wrong place shows.
    bn = model.layers[2]
    bn.moving_mean.assign(np.linspace(-1, 1, 4).astype(np.float32))
    bn.moving_variance.assign(np.linspace(0.5, 2, 4).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32, name="pixels")])
    def predict(pixels):
        out = model(pixels, training=False)
        return {"score": out["score"], "map": out["map"]}

    return model, predict.get_concrete_function()


def _run_graph_def(graph_def, inputs, outputs, value):
    run = tf.compat.v1.wrap_function(
        lambda: tf.graph_util.import_graph_def(graph_def, name=""), [])
    prune = run.prune(run.graph.get_tensor_by_name(f"{inputs[0]}:0"),
                      [run.graph.get_tensor_by_name(f"{o}:0") for o in outputs])
    return [t.numpy() for t in prune(tf.constant(value))]


def test_frozen_graph_def_equals_function_without_variables(tiny, monkeypatch):
    from tensorflow.python.framework import convert_to_constants

    def unexpected(*args, **kwargs):
        raise AssertionError("a graph of variable reads took the fallback freezing")

    monkeypatch.setattr(convert_to_constants, "convert_variables_to_constants_v2_as_graph",
                        unexpected)
    model, function = tiny
    graph_def = tflite.frozen_graph_def(function)
    ops = {node.op for node in graph_def.node}
    assert not ops & {"ReadVariableOp", "VarHandleOp", "ResourceGather"}
    assert all(node.attr["dtype"].type != tf.resource.as_datatype_enum
               for node in graph_def.node if node.op == "Placeholder")
    consts = sum(node.op == "Const" and node.attr["value"].tensor.tensor_content != b""
                 for node in graph_def.node)
    assert consts >= len(model.weights)
    inputs, outputs, in_names, out_names = tflite.io_names(function)
    assert in_names == ["pixels"] and out_names == ["map", "score"]
    value = np.random.default_rng(0).normal(size=[1, 8, 8, 3]).astype(np.float32)
    got = _run_graph_def(graph_def, inputs, outputs, value)
    want = function(tf.constant(value))
    np.testing.assert_allclose(got[0], want["map"].numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[1], want["score"].numpy(), rtol=1e-6, atol=1e-6)


def test_non_read_use_falls_back_to_tensorflow_freezing():
    table = tf.Variable(np.arange(12, dtype=np.float32).reshape(6, 2))

    @tf.function(input_signature=[tf.TensorSpec([3], tf.int32, name="ids")])
    def lookup(ids):
        return {"rows": tf.nn.embedding_lookup(table, ids)}  # ResourceGather, not a read

    function = lookup.get_concrete_function()
    assert "ResourceGather" in {n.op for n in function.graph.as_graph_def().node}
    graph_def = tflite.frozen_graph_def(function)
    assert not {n.op for n in graph_def.node} & {"ResourceGather", "VarHandleOp"}
    inputs, outputs, _, _ = tflite.io_names(function)
    got = _run_graph_def(graph_def, inputs, outputs, np.array([5, 0, 2], np.int32))
    np.testing.assert_array_equal(got[0], [[10, 11], [0, 1], [4, 5]])


def test_converted_signature_maps_names_to_tensors(tiny):
    _, function = tiny
    converter, in_names, out_names = tflite.graph_converter(function)
    plain = converter.convert()
    assert Interpreter(model_content=plain).get_signature_list() == {}
    content = tflite.add_signature(plain, in_names, out_names)
    interpreter = Interpreter(model_content=content)
    assert interpreter.get_signature_list() == {
        "serving_default": {"inputs": ["pixels"], "outputs": ["map", "score"]}}
    value = np.random.default_rng(1).normal(size=[1, 8, 8, 3]).astype(np.float32)
    got = interpreter.get_signature_runner("serving_default")(pixels=value)
    want = function(tf.constant(value))
    assert got["map"].shape == (1, 8, 8, 4) and got["score"].shape == (1, 2)
    np.testing.assert_allclose(got["map"], want["map"].numpy(), atol=1e-5)
    np.testing.assert_allclose(got["score"], want["score"].numpy(), atol=1e-5)


def test_signature_names_must_match_the_model(tiny):
    _, function = tiny
    converter, in_names, _ = tflite.graph_converter(function)
    with pytest.raises(ValueError, match=r"do not match the model's 1 inputs and 2 outputs"):
        tflite.add_signature(converter.convert(), in_names, ["map"])
