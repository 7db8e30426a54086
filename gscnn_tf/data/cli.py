"""`gscnn-tf make-synthetic`: write the synthetic dataset (gscnn_tf.data.synthetic)."""

from __future__ import annotations

import time

from gscnn_tf.cli.arguments import add_config_arguments
from gscnn_tf.config import SyntheticConfig, load_config
from gscnn_tf.data.synthetic import DEFAULT_ROOT, generate


def add_arguments(parser) -> None:
    defaults = SyntheticConfig()
    parser.add_argument("--out", default=DEFAULT_ROOT, help="output folder (default %(default)s)")
    add_config_arguments(parser, "YAML config whose data.synthetic section to use",
                         "data.synthetic.height=256")
    for name in ("num_train", "num_val", "height", "width", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                            help=f"default {getattr(defaults, name)}")


def run(args) -> int:
    synthetic = load_config(args.config, args.set).data.synthetic
    for name in ("num_train", "num_val", "height", "width", "seed"):
        if getattr(args, name) is not None:
            setattr(synthetic, name, getattr(args, name))
    start = time.perf_counter()
    generate(args.out, synthetic)
    print(f"wrote {synthetic.num_train} train + {synthetic.num_val} val images "
          f"({synthetic.height}x{synthetic.width}, seed {synthetic.seed}) to {args.out} in "
          f"{time.perf_counter() - start:.1f} s")
    return 0
