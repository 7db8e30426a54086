"""`gscnn-tf` command line: one subcommand per task, the command line kept apart from the
library code it calls.

Each module named in COMMANDS provides `add_arguments(parser)` and `run(args) -> int`: the
`cli` module of the package that does the work (`gscnn_tf.training.cli`,
`gscnn_tf.evaluation.cli`, `gscnn_tf.models.cli`, `gscnn_tf.data.cli`) or, for the top-level
modules (inference, export, benchmark, ...), a module of this package. Arguments several
commands share live once in `gscnn_tf.cli.arguments`. Modules
are imported only for the command that runs (`gscnn-tf --help` loads none of them, only
TensorFlow and Keras, which `import gscnn_tf` needs to register the model: about 3 s).

An error the user can fix (`gscnn_tf.errors.GSCNNError`, a file that is missing or already
there, a data file TensorFlow cannot decode) ends the command with one line on stderr,
`gscnn-tf <command>: error: <message>`, and exit code 2. `--debug` anywhere on the command
line (or GSCNN_TF_DEBUG=1) shows the full traceback instead. Other exceptions are defects and
keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from gscnn_tf.errors import GSCNNError

COMMANDS = {
    "train": ("gscnn_tf.training.cli", "train a model (custom loop, any tf.distribute scale)"),
    "evaluate": ("gscnn_tf.evaluation.cli", "mIoU, boundary F and crop factors over a split"),
    "predict": ("gscnn_tf.cli.predict", "label maps, overlays and edges for images or folders"),
    "export": ("gscnn_tf.cli.export", "SavedModel for TF Serving or TFLite"),
    "audit-tflite": ("gscnn_tf.cli.audit_tflite",
                     "which ops of a TFLite file the GPU delegate runs"),
    "make-synthetic": ("gscnn_tf.data.cli", "write the synthetic dataset"),
    "summary": ("gscnn_tf.models.cli", "parameter counts and FLOPs of a config's model"),
    "benchmark": ("gscnn_tf.cli.benchmark", "speed figures on this machine"),
    "import-reference": ("gscnn_tf.cli.import_reference",
                         "convert the reference PyTorch checkpoint"),
}
DEBUG_FLAG = "--debug"
DEBUG_ENV = "GSCNN_TF_DEBUG"


def user_error_message(error: BaseException) -> str | None:
    """The one-line message of an error the user can fix, or None for a defect.

    Project errors (`GSCNNError`) and the anticipated built-in ones: OS errors about files
    (missing, existing, unreadable, not writable), YAML syntax errors, and TensorFlow's
    errors for the input pipeline's data checks (a file that cannot be decoded, image and
    label sizes that differ, a split without any valid example)."""
    if isinstance(error, GSCNNError):
        return str(error)
    if isinstance(error, OSError):
        return str(error) if error.filename is None or str(error.filename) in str(error) \
            else f"{error.filename}: {error}"
    yaml = sys.modules.get("yaml")
    if yaml is not None and isinstance(error, yaml.YAMLError):
        return f"not valid YAML: {' '.join(str(error).split())}"
    if "tensorflow" in sys.modules:
        from gscnn_tf.data.decode import data_error_message

        return data_error_message(error)
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<18}{help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: gscnn-tf COMMAND [options] [--debug]\n\ncommands:\n" + "\n".join(lines)
              + f"\n\n{DEBUG_FLAG} (or {DEBUG_ENV}=1): full tracebacks instead of one-line "
              "errors")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\ngscnn-tf: unknown command '{argv[0]}'", file=sys.stderr)
            return 2
        return 0
    name, rest = argv[0], argv[1:]
    try:
        module = importlib.import_module(COMMANDS[name][0])
        parser = argparse.ArgumentParser(prog=f"gscnn-tf {name}",
                                         description=COMMANDS[name][1])
        module.add_arguments(parser)
        parser.add_argument(DEBUG_FLAG, action="store_true",
                            help=f"full tracebacks instead of one-line errors ({DEBUG_ENV}=1)")
        return int(module.run(parser.parse_args(rest)) or 0)
    except Exception as error:  # noqa: BLE001  (only user errors are caught; see below)
        message = None if debug else user_error_message(error)
        if message is None:
            raise
        sys.stdout.flush()
        print(f"gscnn-tf {name}: error: {_one_line(message)}", file=sys.stderr, flush=True)
        return 2

