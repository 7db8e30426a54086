"""`gscnn-tf` command line: one subcommand per task, each owned by the module that does it.

Each module named below provides `add_arguments(parser)` and `run(args) -> int`. Modules
are imported only for the command that runs, so `gscnn-tf --help` starts instantly.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": ("gscnn_tf.training.cli", "train a model (custom loop, any tf.distribute scale)"),
    "evaluate": ("gscnn_tf.evaluation.cli", "mIoU, boundary F and crop factors over a split"),
    "predict": ("gscnn_tf.inference", "label maps, overlays and edges for images or folders"),
    "export": ("gscnn_tf.export", "SavedModel for TF Serving or TFLite"),
    "make-synthetic": ("gscnn_tf.data.synthetic", "write the synthetic dataset"),
    "summary": ("gscnn_tf.models.summary", "parameter counts and FLOPs of a config's model"),
    "benchmark": ("gscnn_tf.benchmark", "speed figures on this machine"),
    "import-reference": ("gscnn_tf.reference_import", "convert the reference PyTorch checkpoint"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<18}{help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: gscnn-tf COMMAND [options]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\ngscnn-tf: unknown command '{argv[0]}'", file=sys.stderr)
            return 2
        return 0
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"gscnn-tf {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())
