"""`gscnn-tf summary`: parameter counts by part and FLOPs at an input size.

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

from gscnn_tf.config import load_config
from gscnn_tf.errors import UsageError
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


def add_arguments(parser):
    parser.add_argument("model", nargs="?", default=None,
                        help="a saved model: preset folder, .keras file or run directory "
                             "(default: build the --config's model)")
    parser.add_argument("--config", default=None, help="YAML config (defaults if omitted)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. model.backbone.name=resnet50")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes of the model (default: those of the config's dataset)")
    parser.add_argument("--size", default="512x1024", help="HxW for the FLOP count")


def run(args) -> int:
    from gscnn_tf import build_model

    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size '{args.size}': expected HxW, e.g. 512x1024") from None
    if args.model:
        from gscnn_tf import GSCNN

        model = GSCNN.from_preset(args.model)
        num_classes = int(model.output["seg_logits"].shape[-1])
    else:
        config = load_config(args.config, args.set)
        num_classes = args.num_classes
        if num_classes is None:
            from gscnn_tf.data.pipeline import dataset_info

            num_classes = dataset_info(config).num_classes
        model = build_model(config.model, num_classes)
    parts = parameter_breakdown(model)
    print(f"model {model.name}, {num_classes} classes")
    for key in ("total", "backbone", "shape_stream", "fusion_decoder"):
        print(f"  {key:<15}{parts[key]:>14,d} parameters ({parts[key] / 1e6:.3f} M)")
    flops = count_flops(model, height, width)
    print(f"  FLOPs at {height}x{width}: {flops / 1e9:.2f} GFLOP")
    return 0
