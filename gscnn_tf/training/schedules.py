"""Learning-rate schedule: linear warm-up, then polynomial decay per iteration
(docs/method.md#data-and-training-recipe: lr 0.01, power 1.0 in the reference)."""

from __future__ import annotations

import keras
import tensorflow as tf

from gscnn_tf.errors import ConfigError


@keras.saving.register_keras_serializable(package="gscnn_tf")
class WarmupPolynomialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step) = base * (step + 1) / warmup for step < warmup, then
    end + (base - end) * (1 - (step - warmup) / (total - warmup)) ** power, clipped at `end`
    for step >= total. `step` is the optimizer's iteration count (0-based)."""

    def __init__(self, base_learning_rate: float, total_steps: int, power: float = 1.0,
                 warmup_steps: int = 0, end_learning_rate: float = 0.0):
        if total_steps <= warmup_steps:
            raise ConfigError(f"train.steps {total_steps} must exceed train.warmup_steps "
                              f"{warmup_steps}")
        self.base_learning_rate = float(base_learning_rate)
        self.total_steps = int(total_steps)
        self.power = float(power)
        self.warmup_steps = int(warmup_steps)
        self.end_learning_rate = float(end_learning_rate)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        base, end = self.base_learning_rate, self.end_learning_rate
        decay_steps = float(self.total_steps - self.warmup_steps)
        progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        decayed = end + (base - end) * tf.pow(1.0 - progress, self.power)
        if self.warmup_steps == 0:
            return decayed
        warm = base * (step + 1.0) / float(self.warmup_steps)
        return tf.where(step < self.warmup_steps, warm, decayed)

    def get_config(self):
        return {"base_learning_rate": self.base_learning_rate, "total_steps": self.total_steps,
                "power": self.power, "warmup_steps": self.warmup_steps,
                "end_learning_rate": self.end_learning_rate}
