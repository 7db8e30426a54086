"""The task half of `gscnn_tf.GSCNN` (keras-hub's task shape): the paper's training recipe
behind `compile()`, the steps of `fit`, and the mean-IoU metric.

    model.compile()                      # SGD 0.9, lr 0.01 poly decay, L2 1e-4 on kernels,
                                         # GSCNNLoss(model.loss_config), mean IoU
    model.fit(train, steps_per_epoch=100, epochs=4, validation_data=val)
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

TERMS = ("seg", "edge", "att", "dual", "l2")


@keras.saving.register_keras_serializable(package="gscnn_tf")
class SegmentationMeanIoU(keras.metrics.MeanIoU):
    """Mean IoU of argmax(`seg_logits`) against `labels` over the classes present in either,
    pixels with `ignore_label` left out. `update_state` takes the model's targets and outputs
    (dicts: `labels` int `[B, H, W]`, `seg_logits` `[B, H, W, C]`) or the two tensors."""

    def __init__(self, num_classes, ignore_label=255, name="miou", dtype=None):
        super().__init__(num_classes=num_classes, name=name, ignore_class=ignore_label,
                         sparse_y_true=True, sparse_y_pred=True, dtype=dtype)
        self.ignore_label = ignore_label

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = y_true["labels"] if isinstance(y_true, dict) else y_true
        logits = y_pred["seg_logits"] if isinstance(y_pred, dict) else y_pred
        return super().update_state(labels, tf.argmax(logits, axis=-1), sample_weight)

    def get_config(self):
        return {"num_classes": self.num_classes, "ignore_label": self.ignore_label,
                "name": self.name, "dtype": self.dtype}


@dataclasses.dataclass
class Task:
    """What `compile()` chose. `pending_schedule`: the default schedule while its total steps
    are still unknown (set by the first `fit`)."""

    optimizer: keras.optimizers.Optimizer
    loss: object
    metrics: list
    terms: list
    weight_decay: float
    seed: int
    pending_schedule: object = None


def make_task(model, optimizer, loss, metrics, steps, weight_decay, seed) -> Task:
    """The pieces of `GSCNN.compile` (called inside the model's strategy scope)."""
    from gscnn_tf.config import TrainConfig
    from gscnn_tf.losses import GSCNNLoss
    from gscnn_tf.training.optimizers import learning_rate_schedule

    recipe = TrainConfig()
    pending = None
    if optimizer is None:
        if steps is not None and int(steps) < 1:
            raise ValueError(f"GSCNN.compile: steps {steps}: expected >= 1")
        schedule = learning_rate_schedule(dataclasses.replace(
            recipe, steps=int(steps or 1), warmup_steps=0))
        pending = None if steps else schedule
        optimizer = keras.optimizers.SGD(schedule, momentum=recipe.momentum)
    else:
        optimizer = keras.optimizers.get(optimizer)
    if weight_decay is None:
        weight_decay = 0.0 if getattr(optimizer, "weight_decay", None) else recipe.weight_decay
    if loss is None:
        loss = GSCNNLoss(model.loss_config, model.ignore_label)
    elif isinstance(loss, (str, keras.losses.Loss)) or not callable(loss):
        raise TypeError(f"GSCNN.compile: loss must be a gscnn_tf.losses.GSCNNLoss or a callable "
                        f"with its contract, got {loss!r}")
    if metrics is None:
        metrics = [SegmentationMeanIoU(model.num_classes, model.ignore_label)]
    else:
        metrics = [keras.metrics.get(m) for m in metrics]
    terms = [keras.metrics.Mean(name=name) for name in TERMS]
    return Task(optimizer, loss, metrics, terms, float(weight_decay), int(seed), pending)


def reject_sample_weights(sample_weight=None, class_weight=None) -> None:
    if sample_weight is not None or class_weight is not None:
        raise ValueError("GSCNN: sample_weight and class_weight are not supported: the GSCNN "
                         "loss weights pixels itself (loss_config.class_weighting: none, "
                         "image or fixed with class_weights); give fit (images, targets) "
                         "pairs")


def fit_steps(arguments: dict) -> int:
    """The optimizer steps a `fit` call will take: (epochs - initial_epoch) x steps per
    epoch, the latter given or the length of a finite dataset."""
    steps = arguments["steps_per_epoch"]
    x = arguments["x"]
    if steps is None and isinstance(x, tf.data.Dataset):
        cardinality = int(x.cardinality())
        steps = cardinality if cardinality > 0 else None
    if steps is None:
        raise ValueError("GSCNN.fit: the default learning-rate schedule decays over the "
                         "training steps; pass steps_per_epoch (the training dataset repeats "
                         "or has unknown length), or compile(steps=N)")
    epochs = arguments["epochs"] - arguments["initial_epoch"]
    return max(1, int(steps) * int(epochs))


def compile_config(task: Task) -> dict | None:
    """The serialisable form of `task` (`GSCNN.get_compile_config`), or None."""
    from gscnn_tf.losses import GSCNNLoss

    if task.pending_schedule is not None or type(task.loss) is not GSCNNLoss:
        return None
    return {"optimizer": keras.saving.serialize_keras_object(task.optimizer),
            "loss_config": dataclasses.asdict(task.loss.config),
            "ignore_label": int(task.loss.ignore_label),
            "metrics": [keras.saving.serialize_keras_object(m) for m in task.metrics],
            "weight_decay": task.weight_decay, "seed": task.seed}


def compile_arguments(model, config: dict) -> dict:
    """`GSCNN.compile` keyword arguments from `compile_config`'s output."""
    from gscnn_tf.config import config_from_dict
    from gscnn_tf.losses import GSCNNLoss

    loss_config = config_from_dict({"loss": config["loss_config"]}, "compile config").loss
    return {"optimizer": keras.saving.deserialize_keras_object(config["optimizer"]),
            "loss": GSCNNLoss(loss_config, config["ignore_label"]),
            "metrics": [keras.saving.deserialize_keras_object(m) for m in config["metrics"]],
            "weight_decay": config["weight_decay"], "seed": config["seed"]}

