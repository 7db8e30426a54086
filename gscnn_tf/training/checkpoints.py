"""Run checkpoints: the latest N (model, optimizer, step, optionally the data iterator) and
the best model by validation mIoU, kept apart.

Writes are atomic in the sense that matters: `tf.train.CheckpointManager.save` first writes
the new `ckpt-<step>` files (through a `_temp` folder merged into place), and only then
rewrites the small `checkpoint` state file, itself through a temporary file and a rename.
A crash at any point leaves `checkpoint` naming the last complete checkpoint, which is what
`restore_latest` reads; stray files of an unfinished save are never consulted and get
overwritten by the next save of the same step. On an object store (`gs://`: no rename, see
`gscnn_tf.files`) the files of a save appear one by one, and the same order keeps them safe:
the state file names a checkpoint only once all of its files are there.

Under MultiWorkerMirroredStrategy every worker must take part in a save; only the chief writes
to `<run_dir>/checkpoints`, the others to a scratch folder that is deleted afterwards.

A checkpoint damaged after it was written (a truncated `.data` file, zeroed bytes failing the
checksum, an unreadable `.index`) is found when it is restored: `restore_latest` then warns,
naming the bad files, and resumes from the newest intact checkpoint; loading a model for
inference (`find_checkpoint`, `restore_checkpoint`) stops with a `CheckpointError` naming the
bad files and the intact checkpoints, one of which `--checkpoint` picks.
"""

from __future__ import annotations

import json
import os
import re
import sys

import tensorflow as tf

from gscnn_tf import files
from gscnn_tf.errors import CheckpointError, RunDirError

# What restoring or reading a damaged checkpoint raises: IndexError for a truncated file
# ("Read less bytes than requested"), DataLossError / other OpErrors for failed checksums,
# bad index files and missing shards.
READ_ERRORS = (IndexError, tf.errors.OpError)
# What restoring an intact checkpoint into another model raises (other shapes, other layers).
MISMATCH_ERRORS = (ValueError, AssertionError)
CHECKPOINT_FOLDERS = ("checkpoints", "best")


class RunCheckpoints:
    """Checkpoints of one run directory.

        ckpts = RunCheckpoints(run_dir, {"model": model, "optimizer": opt, "step": step}, 3)
        start = ckpts.restore_latest()      # step restored into `step`, or None
        ckpts.save(step)                    # <run_dir>/checkpoints/ckpt-<step>
        ckpts.save_best(step, miou)         # <run_dir>/best/ckpt-<step> when miou improved
    """

    def __init__(self, run_dir: str, objects: dict, keep: int = 3, chief: bool = True,
                 task_id: int = 0):
        self.run_dir = run_dir
        self.chief = chief
        self.checkpoint = tf.train.Checkpoint(**objects)
        self._scratch = None if chief else files.join(run_dir, f".worker{task_id}")
        root = run_dir if chief else self._scratch
        self.manager = tf.train.CheckpointManager(self.checkpoint,
                                                  files.join(root, "checkpoints"), keep)
        best = {k: v for k, v in objects.items() if k in ("model", "step")}
        self.best_checkpoint = tf.train.Checkpoint(**best)
        self.best_manager = tf.train.CheckpointManager(self.best_checkpoint,
                                                       files.join(root, "best"), 1)
        self._best_file = files.join(run_dir, "best", "best.json")

    @property
    def latest(self) -> str | None:
        return tf.train.latest_checkpoint(files.join(self.run_dir, "checkpoints"))

    def restore_latest(self) -> int | None:
        """Restores the newest intact checkpoint of the run; returns its step, or None if the
        run has none. A damaged one is skipped with a warning naming its bad files (the
        steps since the previous checkpoint are trained again); CheckpointError when none
        is intact."""
        folder = files.join(self.run_dir, "checkpoints")
        candidates = listed_checkpoints(folder)

        def restore(prefix):
            return self.checkpoint.restore(prefix).assert_existing_objects_matched()

        for i, path in enumerate(candidates):
            try:
                _restore(path, restore)
            except _DamagedCheckpoint as e:
                print(f"WARNING: checkpoint {path} is damaged: {e}; trying the one before it",
                      file=sys.stderr, flush=True)
                continue
            step = int(self.checkpoint.step.numpy())
            if i:
                print(f"WARNING: resuming from {path} (step {step}), the newest intact "
                      "checkpoint; the damaged files are left as they are and replaced when "
                      "training saves those steps again", file=sys.stderr, flush=True)
            return step
        if candidates:
            raise CheckpointError(f"no intact checkpoint in {folder}: every one of "
                                  f"{', '.join(_names(candidates))} is damaged (see the "
                                  "warnings above); start a new run or restore the files")
        return None

    def save(self, step: int) -> str:
        path = self.manager.save(checkpoint_number=step)
        self._clean_scratch()
        return path

    @property
    def best_miou(self) -> float:
        if not files.isfile(self._best_file):
            return float("-inf")
        return float(json.loads(files.read_text(self._best_file))["miou"])

    def save_best(self, step: int, miou: float) -> bool:
        """Saves the model as the best one when `miou` beats the recorded best."""
        if not miou > self.best_miou:
            return False
        self.best_manager.save(checkpoint_number=step)
        self._clean_scratch()
        if self.chief:
            files.atomic_write_text(self._best_file,
                                    json.dumps({"step": int(step), "miou": float(miou)}))
        return True

    def _clean_scratch(self) -> None:
        if self._scratch is not None:
            try:
                files.rmtree(self._scratch)
            except OSError:
                pass


def holds_checkpoints(run_dir: str) -> bool:
    """True when `run_dir` already has a run's checkpoints (its `checkpoints/` index)."""
    return tf.train.latest_checkpoint(files.join(run_dir, "checkpoints")) is not None


def check_new_run_dir(run_dir: str) -> None:
    """RunDirError when `run_dir` already holds a run's checkpoints (a new run there would
    mix with them; `--resume` continues it instead)."""
    if holds_checkpoints(run_dir):
        raise RunDirError(f"{run_dir} already holds checkpoints: pass --resume to continue "
                          "that run, or choose another train.run_dir")


def next_free_run_dir(run_dir: str) -> str:
    """`run_dir` itself when it holds no checkpoints, else the first of `run_dir-2`,
    `run_dir-3`, ... that holds none: a second `python train.py` gets its own folder."""
    candidate, n = run_dir, 1
    while holds_checkpoints(candidate):
        n += 1
        candidate = f"{run_dir.rstrip('/')}-{n}"
    return candidate


def checkpoint_step(prefix: str) -> int | None:
    """N of a `.../ckpt-N` prefix (None for other names)."""
    match = re.search(r"-(\d+)$", prefix)
    return int(match[1]) if match else None


def listed_checkpoints(folder: str) -> list[str]:
    """The checkpoint prefixes of `folder`, newest first: those its `checkpoint` state file
    lists, or, without one, every `<name>.index` file there."""
    state = tf.train.get_checkpoint_state(folder) if files.isdir(folder) else None
    if state is not None and state.all_model_checkpoint_paths:
        # get_checkpoint_state has already joined relative entries to `folder`.
        return list(state.all_model_checkpoint_paths)[::-1]
    paths = [p[: -len(".index")] for p in files.glob(files.join(folder, "*.index"))]
    return sorted(paths, key=lambda p: (checkpoint_step(p) or -1, p), reverse=True)


def damaged_files(prefix: str) -> list[str]:
    """The files of checkpoint `prefix` that cannot be read back (missing, truncated, failing
    their checksum); [] when every tensor reads. Reads the whole checkpoint."""
    index = f"{prefix}.index"
    if not files.isfile(index):
        return [index]
    try:
        reader = tf.train.load_checkpoint(prefix)
    except READ_ERRORS:
        return [index]
    data = files.glob(f"{prefix}.data-*") or [f"{prefix}.data-00000-of-00001"]
    try:
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except READ_ERRORS as e:
        shard = re.search(r"shard (\d+)", str(e))
        named = [f for f in data if shard and f".data-{int(shard[1]):05d}-of-" in f]
        return named or data
    return []


class _DamagedCheckpoint(Exception):
    """A checkpoint with files that cannot be read; the message names them and the reason."""


def _restore(prefix: str, restore):
    """Returns `restore(prefix)`. A checkpoint that does not fit the model is a
    CheckpointError; one whose files are damaged raises `_DamagedCheckpoint` (caused by the
    read error); a read error that `damaged_files` cannot pin on a file propagates."""
    try:
        return restore(prefix)
    except MISMATCH_ERRORS as e:
        raise CheckpointError(_mismatch_text(prefix, e)) from e
    except READ_ERRORS as e:
        bad = damaged_files(prefix)
        if not bad:
            raise
        raise _DamagedCheckpoint(_damage_text(bad, e)) from e


def _damage_text(bad: list[str], error: BaseException) -> str:
    reason = " ".join(str(getattr(error, "message", None) or error).split())
    reason = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]", "", reason)
    return f"{', '.join(bad)} cannot be read ({reason or type(error).__name__})"


def _mismatch_text(prefix: str, error: BaseException) -> str:
    reason = " ".join(str(error).split())
    reason = reason if len(reason) <= 400 else reason[:400] + " ..."
    return (f"checkpoint {prefix} does not match the model built from the config (was the "
            f"config changed since it was written?): {reason}")


def _names(prefixes) -> list[str]:
    return [os.path.basename(p) for p in prefixes]


def _intact_text(folder: str, skip: str) -> str:
    intact = [p for p in listed_checkpoints(folder) if p != skip and not damaged_files(p)]
    if not intact:
        return f"no intact checkpoint in {folder}"
    return (f"intact: {', '.join(_names(intact))} in {folder} (choose one with --checkpoint, "
            f"e.g. --checkpoint {os.path.basename(intact[0])})")


def find_checkpoint(source: str, choice: str | int | None = None) -> str | None:
    """The checkpoint prefix that a model source names, or None when it names none.

    source: a `ckpt-N` prefix, a checkpoint folder, or a run directory (its `checkpoints/`
    folder, else `best/`): the latest checkpoint there. choice (`--checkpoint`): a step N, a
    name `ckpt-N`, or a prefix path, looked up in those folders; CheckpointError naming the
    available ones when it is not there.
    """
    source = os.fspath(source)
    if files.isfile(f"{source}.index") and choice in (None, ""):
        return source
    folders = [f for f in (source, *(files.join(source, sub) for sub in CHECKPOINT_FOLDERS))
               if files.isdir(f) and listed_checkpoints(f)]
    if files.isfile(f"{source}.index"):
        folders.insert(0, files.dirname(source) or ".")
    if choice in (None, ""):
        return listed_checkpoints(folders[0])[0] if folders else None
    choice = str(choice)
    if files.isfile(f"{choice}.index"):
        return choice
    name = f"ckpt-{choice}" if choice.isdigit() else os.path.basename(choice)
    for folder in folders:
        if files.isfile(files.join(folder, f"{name}.index")):
            return files.join(folder, name)
    available = [f"{folder}: {', '.join(_names(listed_checkpoints(folder)))}"
                 for folder in folders]
    raise CheckpointError(f"--checkpoint {choice}: no checkpoint {name} under {source} "
                          f"(available: {'; '.join(available) or 'none'})")


def restore_checkpoint(checkpoint: "tf.train.Checkpoint", prefix: str):
    """`checkpoint.restore(prefix)` for inference (objects the checkpoint has and
    `checkpoint` lacks, like the optimizer, are ignored). A damaged checkpoint is a
    CheckpointError naming its bad files and the intact checkpoints beside it; so is one
    whose shapes do not fit the model."""
    try:
        return _restore(prefix, lambda p: checkpoint.restore(p).expect_partial())
    except _DamagedCheckpoint as e:
        raise CheckpointError(f"checkpoint {prefix} is damaged: {e}; "
                              f"{_intact_text(files.dirname(prefix) or '.', prefix)}"
                              ) from e.__cause__
