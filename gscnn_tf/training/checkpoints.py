"""Run checkpoints: the latest N (model, optimizer, step, optionally the data iterator) and
the best model by validation mIoU, kept apart.

Writes are atomic in the sense that matters: `tf.train.CheckpointManager.save` first writes
the new `ckpt-<step>` files (through a `_temp` folder merged into place), and only then
rewrites the small `checkpoint` state file, itself through a temporary file and a rename.
A crash at any point leaves `checkpoint` naming the last complete checkpoint, which is what
`restore_latest` reads; stray files of an unfinished save are never consulted and get
overwritten by the next save of the same step.

Under MultiWorkerMirroredStrategy every worker must take part in a save; only the chief writes
to `<run_dir>/checkpoints`, the others to a scratch folder that is deleted afterwards.
"""

from __future__ import annotations

import json
import os
import shutil

import tensorflow as tf


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
        self._scratch = None if chief else os.path.join(run_dir, f".worker{task_id}")
        root = run_dir if chief else self._scratch
        self.manager = tf.train.CheckpointManager(self.checkpoint,
                                                  os.path.join(root, "checkpoints"), keep)
        best = {k: v for k, v in objects.items() if k in ("model", "step")}
        self.best_checkpoint = tf.train.Checkpoint(**best)
        self.best_manager = tf.train.CheckpointManager(self.best_checkpoint,
                                                       os.path.join(root, "best"), 1)
        self._best_file = os.path.join(run_dir, "best", "best.json")

    @property
    def latest(self) -> str | None:
        return tf.train.latest_checkpoint(os.path.join(self.run_dir, "checkpoints"))

    def restore_latest(self) -> int | None:
        """Restores the latest checkpoint of the run; returns its step, or None if none."""
        path = self.latest
        if path is None:
            return None
        self.checkpoint.restore(path).assert_existing_objects_matched()
        return int(self.checkpoint.step.numpy())

    def save(self, step: int) -> str:
        path = self.manager.save(checkpoint_number=step)
        self._clean_scratch()
        return path

    @property
    def best_miou(self) -> float:
        if not os.path.isfile(self._best_file):
            return float("-inf")
        with open(self._best_file, encoding="utf-8") as f:
            return float(json.load(f)["miou"])

    def save_best(self, step: int, miou: float) -> bool:
        """Saves the model as the best one when `miou` beats the recorded best."""
        if not miou > self.best_miou:
            return False
        self.best_manager.save(checkpoint_number=step)
        self._clean_scratch()
        if self.chief:
            tmp = f"{self._best_file}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"step": int(step), "miou": float(miou)}, f)
            os.replace(tmp, self._best_file)
        return True

    def _clean_scratch(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
