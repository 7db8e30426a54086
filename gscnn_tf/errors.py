"""The errors a user can fix. Each message names the file, key or value at fault and what was
expected; `gscnn-tf` prints it as one line, `gscnn-tf <command>: error: <message>`, and exits
with code 2 (`--debug` or GSCNN_TF_DEBUG=1 shows the traceback instead).

Every class derives from `GSCNNError` and from the built-in error it refines, so
`except ValueError` and the like keep working:

    GSCNNError
      ConfigError          a config file, key or value (ValueError)
      DataError            a dataset file or folder, a split without valid examples (ValueError)
      CheckpointError      a missing or damaged checkpoint or model file (ValueError)
      RunDirError          a run directory that already holds checkpoints (FileExistsError)
      ExportError          an export that cannot be done as asked (RuntimeError)
      ReferenceImportError a PyTorch checkpoint that does not fit the reference model
      StrategyError        a tf.distribute set-up that cannot be made (RuntimeError)
      UsageError           options the chosen model cannot serve (ValueError)
      NonFiniteLossError   training reached a NaN / infinite loss (FloatingPointError)
      WorkerLostError      a worker of a multi-worker run died or stopped answering (RuntimeError)

Anything else that escapes a command is a defect and keeps its traceback.
"""

from __future__ import annotations


class GSCNNError(Exception):
    """Base of the errors a user can fix; the message is complete on one line."""


class ConfigError(GSCNNError, ValueError):
    """A configuration file or override that cannot be applied."""


class DataError(GSCNNError, ValueError):
    """A dataset that cannot be used as it is: the message names the file or folder."""


class CheckpointError(GSCNNError, ValueError):
    """A checkpoint or saved model file that is missing or damaged (the message names the bad
    files and, for a run, the intact checkpoints)."""


class RunDirError(GSCNNError, FileExistsError):
    """A run directory that already holds checkpoints of another run."""


class ExportError(GSCNNError, RuntimeError):
    """An export that cannot be done as asked (existing version, non-builtin op, ...)."""


class ReferenceImportError(GSCNNError, ValueError):
    """A checkpoint that does not fit the reference WideResNet-38 GSCNN (the message lists
    every offending tensor), or an output that cannot be written."""


class StrategyError(GSCNNError, RuntimeError):
    """A tf.distribute strategy that cannot be set up as configured."""


class UsageError(GSCNNError, ValueError):
    """Options the chosen model cannot serve (the gates or probabilities of a SavedModel)."""


class NonFiniteLossError(GSCNNError, FloatingPointError):
    """Training produced a NaN or infinite loss; no checkpoint was written after it."""


class WorkerLostError(GSCNNError, RuntimeError):
    """Another worker of a multi-worker run died (no heartbeat) or did not reach a collective
    within `train.worker_timeout`; every worker restarted with --resume continues from the
    last checkpoint."""
