"""Parameter counts by part and FLOPs at an input size; `gscnn-tf summary` (gscnn_tf.models.cli)
prints them.

Parts are found by layer-name prefix (the model's naming contract, `gscnn_tf.models.parts`):
the shape stream is every `shape_*`, `gate*` and `fusion_*` layer (gate projections of the
regular-stream taps included), fusion/decoder every `aspp_*` and `decoder_*` layer, the
backbone the rest.
FLOPs come from TensorFlow's graph profiler on the traced forward pass at batch 1 (multiply
and add counted separately, so FLOPs = 2 x MACs for convolutions).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from gscnn_tf.models.parts import part_of


def parameter_breakdown(model: keras.Model) -> dict[str, int]:
    """Parameter counts {"total", "backbone", "shape_stream", "fusion_decoder"} of a model
    from `gscnn_tf.build_model` (trainable and BN statistics alike)."""
    parts = {"backbone": 0, "shape_stream": 0, "fusion_decoder": 0}
    for layer in model.layers:
        parts[part_of(layer.name)] += sum(int(tf.size(w)) for w in layer.weights)
    parts["total"] = sum(parts.values())
    return parts


def count_flops(model: keras.Model, height: int, width: int) -> int:
    """Floating-point operations of one forward pass on a `[1, height, width, 3]` image."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2)
    from tensorflow.python.profiler import model_analyzer, option_builder

    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([1, height, width, 3], tf.float32))
    graph = convert_variables_to_constants_v2(concrete).graph
    options = option_builder.ProfileOptionBuilder(
        option_builder.ProfileOptionBuilder.float_operation()).with_empty_output().build()
    return int(model_analyzer.profile(graph, options=options).total_float_ops)
