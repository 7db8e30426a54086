"""`gscnn-tf train` (and `python train.py`): train a config with the custom loop.

    gscnn-tf train                                   # configs/synthetic.yaml defaults
    gscnn-tf train --config configs/cityscapes_resnet50.yaml --set train.batch_size=8
    gscnn-tf train --resume                          # continue the run in train.run_dir
    gscnn-tf train --cpu-replicas 2                  # MirroredStrategy over 2 CPU devices
"""

from __future__ import annotations

import os

from gscnn_tf.config import load_config

DEFAULT_CONFIG = "configs/synthetic.yaml"


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=None,
                        help=f"YAML config (default: {DEFAULT_CONFIG} when present, else the "
                             "built-in defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. train.steps=100 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in train.run_dir")
    parser.add_argument("--strategy", default=None,
                        help="auto | one_device | mirrored | multi_worker (train.strategy)")
    parser.add_argument("--cpu-replicas", type=int, default=None,
                        help="split the CPU into N logical devices (train.cpu_replicas)")


def run(args) -> int:
    path = args.config or (DEFAULT_CONFIG if os.path.isfile(DEFAULT_CONFIG) else None)
    overrides = list(args.set)
    if args.strategy:
        overrides.append(f"train.strategy={args.strategy}")
    if args.cpu_replicas is not None:
        overrides.append(f"train.cpu_replicas={args.cpu_replicas}")
    config = load_config(path, overrides)
    from gscnn_tf.training.strategy import configure_cpu_replicas

    configure_cpu_replicas(config.train.cpu_replicas)
    if config.data.dataset == "synthetic":
        from gscnn_tf.data.synthetic import ensure_synthetic

        ensure_synthetic(config)
    from gscnn_tf.training.trainer import Trainer

    trainer = Trainer(config)
    result = trainer.train(resume=args.resume)
    val = result["val"]
    print(f"done: step {result['step']}, validation mIoU {100 * val['miou']:.2f}, boundary F "
          f"@{val['tolerance_px']}px {100 * val['boundary_f']:.2f} (run dir "
          f"{config.train.run_dir})")
    return 0
