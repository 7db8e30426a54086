"""`gscnn-tf summary`: parameter counts by part and FLOPs of a config's or a saved model
(gscnn_tf.models.summary)."""

from __future__ import annotations

from gscnn_tf.cli.arguments import add_config_arguments, parse_size
from gscnn_tf.config import load_config
from gscnn_tf.models.summary import count_flops, parameter_breakdown


def add_arguments(parser):
    parser.add_argument("model", nargs="?", default=None,
                        help="a saved model: preset folder, .keras file or run directory "
                             "(default: build the --config's model)")
    add_config_arguments(parser)
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes of the model (default: those of the config's dataset)")
    parser.add_argument("--size", default="512x1024", help="HxW for the FLOP count")


def run(args) -> int:
    from gscnn_tf import build_model

    height, width = parse_size(args.size)
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
