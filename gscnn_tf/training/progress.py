"""Console progress: a Keras progress bar (step, ETA, images/s, loss terms) and one summary
line per epoch. Silent on workers other than the chief."""

from __future__ import annotations

import time

import keras


class Progress:
    def __init__(self, steps: int, start: int, global_batch: int, steps_per_epoch: int,
                 enabled: bool = True):
        self.global_batch = global_batch
        self.steps_per_epoch = steps_per_epoch
        self.enabled = enabled
        self.bar = keras.utils.Progbar(steps, stateful_metrics=["images/s", "lr"],
                                       interval=1.0) if enabled else None
        self._time, self._step = time.perf_counter(), start
        self._epoch_time, self._epoch_step, self._epoch_sums = self._time, start, {}

    def update(self, step: int, values: dict) -> float:
        """Records step `step` (1-based) with its loss terms; returns images/s since the
        previous call."""
        now = time.perf_counter()
        rate = self.global_batch * (step - self._step) / max(now - self._time, 1e-9)
        self._time, self._step = now, step
        for k, v in values.items():
            self._epoch_sums[k] = self._epoch_sums.get(k, 0.0) + v
        if self.bar is not None:
            shown = [(k, v) for k, v in values.items() if k != "lr"]
            self.bar.update(step, shown + [("images/s", rate), ("lr", values.get("lr", 0.0))])
        if step % self.steps_per_epoch == 0:
            self._epoch_line(step, now)
        return rate

    def _epoch_line(self, step: int, now: float) -> None:
        n = step - self._epoch_step
        if self.enabled and n > 0:
            means = self._epoch_sums
            terms = " ".join(f"{k} {means[k] / n:.4f}" for k in means if k != "lr")
            rate = self.global_batch * n / max(now - self._epoch_time, 1e-9)
            print(f"\nepoch {step // self.steps_per_epoch} (step {step}): {terms} | "
                  f"{rate:.1f} images/s", flush=True)
        self._epoch_time, self._epoch_step, self._epoch_sums = now, step, {}
