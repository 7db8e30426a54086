"""`gscnn-tf train` (and `python train.py`): train a config with the custom loop.

    gscnn-tf train                                   # configs/synthetic.yaml defaults
    gscnn-tf train --config configs/cityscapes_resnet50.yaml --set train.batch_size=8
    gscnn-tf train --resume                          # continue the run in train.run_dir
    gscnn-tf train --cpu-replicas 2                  # MirroredStrategy over 2 CPU devices

A SIGTERM saves a checkpoint at the step reached and ends with exit code 143
(`gscnn_tf.training.preemption`); `--resume` continues from it.
"""

from __future__ import annotations

from gscnn_tf import files
from gscnn_tf.cli.arguments import add_config_arguments
from gscnn_tf.config import load_config

DEFAULT_CONFIG = "configs/synthetic.yaml"


def add_arguments(parser) -> None:
    add_config_arguments(parser, f"YAML config (default: {DEFAULT_CONFIG} when present, else "
                         "the built-in defaults)", "train.steps=100")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in train.run_dir")
    parser.add_argument("--strategy", default=None,
                        help="auto | one_device | mirrored | multi_worker (train.strategy)")
    parser.add_argument("--cpu-replicas", type=int, default=None,
                        help="split the CPU into N logical devices (train.cpu_replicas)")


def _run_dir_given(overrides) -> bool:
    return any(o.split("=", 1)[0].strip() == "train.run_dir" for o in overrides)


def _choose_run_dir(config, args) -> None:
    """A run directory named by `--set train.run_dir=...` is used as given (with checkpoints
    in it, training needs `--resume`). The config's own run directory is a default: when it
    already holds a run and this is not `--resume`, the run goes to `<run_dir>-2`, `-3`, ...
    and says so. Under multi-worker training every worker must agree on the folder, so
    there the default stays as it is."""
    from gscnn_tf.training.checkpoints import check_new_run_dir, next_free_run_dir
    from gscnn_tf.training.strategy import cluster_size

    if args.resume:
        return
    if _run_dir_given(args.set) or cluster_size() > 1:
        check_new_run_dir(config.train.run_dir)  # before the model is built
        return
    chosen = next_free_run_dir(config.train.run_dir)
    if chosen != config.train.run_dir:
        print(f"{config.train.run_dir} already holds a run; this one writes to {chosen} "
              f"(set train.run_dir to choose, or pass --resume to continue "
              f"{config.train.run_dir})", flush=True)
        config.train.run_dir = chosen


def run(args) -> int:
    path = args.config or (DEFAULT_CONFIG if files.isfile(DEFAULT_CONFIG) else None)
    overrides = list(args.set)
    if args.strategy:
        overrides.append(f"train.strategy={args.strategy}")
    if args.cpu_replicas is not None:
        overrides.append(f"train.cpu_replicas={args.cpu_replicas}")
    config = load_config(path, overrides)
    _choose_run_dir(config, args)
    from gscnn_tf.training.strategy import configure_cpu_replicas

    configure_cpu_replicas(config.train.cpu_replicas)
    if config.data.dataset == "synthetic":
        from gscnn_tf.data.synthetic import ensure_synthetic

        ensure_synthetic(config)
    from gscnn_tf.training.preemption import PREEMPTED_EXIT_CODE, Preempted
    from gscnn_tf.training.trainer import Trainer

    trainer = Trainer(config)
    try:
        result = trainer.train(resume=args.resume)
    except Preempted:
        return PREEMPTED_EXIT_CODE
    val = result["val"]
    run_dir = config.train.run_dir
    print(f"done: step {result['step']}, validation mIoU {100 * val['miou']:.2f}, boundary "
          f"{val['tolerance_label']} {100 * val['boundary_f']:.2f} (run dir {run_dir})")
    pictures = trainer.write_pictures()
    if pictures:
        print(f"pictures of validation images (input, prediction, ground truth, boundary, "
              f"gates): {pictures}/")
        print(next_commands(run_dir))
    return 0


def next_commands(run_dir: str) -> str:
    """What a user runs next on a finished run: evaluate it, predict an image, export it."""
    return "\n".join([
        "next:",
        f"  gscnn-tf evaluate {run_dir}                           # mIoU, boundary F, crops",
        f"  gscnn-tf predict {run_dir} your_image.png -o predictions/",
        f"  gscnn-tf export {run_dir} --format saved_model --output exports",
    ])
