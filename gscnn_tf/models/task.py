"""The task half of `gscnn_tf.GSCNN` (keras-hub's task shape): `GSCNNTask`, its base class,
with the paper's training recipe behind `compile()`, the steps of `fit`, and the mean-IoU
metric.

    model.compile()                      # SGD 0.9, lr 0.01 poly decay, L2 1e-4 on kernels,
                                         # GSCNNLoss(model.loss_config), mean IoU
    model.fit(train, steps_per_epoch=100, epochs=4, validation_data=val)
"""

from __future__ import annotations

import dataclasses
import inspect

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
    from gscnn_tf.training.optimizers import SGD, learning_rate_schedule

    recipe = TrainConfig()
    pending = None
    if optimizer is None:
        if steps is not None and int(steps) < 1:
            raise ValueError(f"GSCNN.compile: steps {steps}: expected >= 1")
        schedule = learning_rate_schedule(dataclasses.replace(
            recipe, steps=int(steps or 1), warmup_steps=0))
        pending = None if steps else schedule
        optimizer = SGD(schedule, momentum=recipe.momentum)
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


class GSCNNTask(keras.Model):
    """The task half of `GSCNN` (keras-hub's `Task` shape): `compile()` with the paper's
    recipe by default, `fit` on the pipeline's batches, the four-term loss and its
    trackers, and the compile config that `keras.saving.load_model` restores. A subclass
    builds its functional graph and calls `super().__init__(inputs, outputs)`; it provides
    `num_classes`, `ignore_label` and `loss_config`, and sets `self._task = None`.
    """

    def compile(self, optimizer=None, loss=None, metrics=None, *, steps=None,
                weight_decay=None, seed=0, **kwargs):
        """The paper's recipe by default; every piece can be replaced.

        Args:
            optimizer: default SGD, momentum 0.9, lr 0.01 with polynomial decay (power 1)
                to 0 over `steps` (or over the steps of the first `fit`). Any Keras
                optimizer (or its name) otherwise.
            loss: a `gscnn_tf.losses.GSCNNLoss` (default: one from `loss_config` and
                `ignore_label`) or any callable with its contract (`(targets, outputs,
                seed) -> {"seg", "edge", "att", "dual", "total"}`). Keras losses do not fit
                the two-output targets and are refused.
            metrics: default `[SegmentationMeanIoU(num_classes, ignore_label)]` ("miou");
                metrics get `(targets dict, outputs dict)`.
            steps: total training steps of the default learning-rate schedule.
            weight_decay: the L2 term `weight_decay / 2 * sum(kernel ** 2)` added to the loss
                (kernels only). Default 1e-4, or 0 when the optimizer decays weights itself
                (e.g. AdamW).
            seed: seed of the dual loss's Gumbel noise (with the optimizer's step).
            **kwargs: the rest of `keras.Model.compile` (`steps_per_execution`,
                `jit_compile`, `run_eagerly`, ...).
        """
        for key in ("loss_weights", "weighted_metrics"):
            if kwargs.get(key) is not None:
                raise ValueError(f"GSCNN.compile: '{key}' is not supported; the loss terms "
                                 "are weighted by loss_config (lambda_seg, lambda_edge, ...)")
        with self.distribute_strategy.scope():
            self._task = make_task(self, optimizer, loss, metrics, steps, weight_decay, seed)
            super().compile(optimizer=self._task.optimizer, **kwargs)
            self.optimizer.build(self.trainable_variables)

    def fit(self, *args, **kwargs):
        """`keras.Model.fit` on the pipeline's `(images, {"labels", "edges"})` batches
        (`gscnn_tf.data.pipeline.build_dataset`). `sample_weight` and `class_weight` are
        refused (the loss weights pixels itself: `loss_config.class_weighting`). The default
        schedule decays over `(epochs - initial_epoch) * steps_per_epoch` steps unless
        `compile(steps=...)` fixed them."""
        bound = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs)
        if isinstance(bound.arguments.get("x"), tf.data.Dataset):
            bound.arguments.setdefault("shuffle", False)  # it shuffles itself; Keras warns
        bound.apply_defaults()
        arguments = {k: v for k, v in bound.arguments.items() if k != "self"}
        reject_sample_weights(arguments["sample_weight"], arguments["class_weight"])
        if self._task is not None and self._task.pending_schedule is not None:
            self._task.pending_schedule.total_steps = fit_steps(arguments)
            self._task.pending_schedule = None
            self.train_function = None
        return super().fit(**arguments)

    def make_train_function(self, force=False):
        if self._task is not None and self._task.pending_schedule is not None:
            raise ValueError("GSCNN: the default learning-rate schedule decays over the "
                             "training steps, unknown here: pass compile(steps=N) or train "
                             "with fit(..., steps_per_epoch=S, epochs=E)")
        return super().make_train_function(force)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The loss `evaluate` reports and a user's own train step can differentiate
        (`gscnn_tf.losses.training_loss`): GSCNNLoss plus the kernel L2 term, this replica's
        share of the global-batch value under `tf.distribute`, differentiable in full.
        Tracks each term. `fit`'s `train_step` computes the same value but adds the L2
        gradient after backpropagation, so it does not call this method: a subclass that
        changes the loss overrides `train_step` too."""
        return self._tracked_loss(y, y_pred, sample_weight, training, l2_gradient=True)

    def train_step(self, data):
        """Keras's train step, with the L2 term's gradient added after backpropagation
        (`gscnn_tf.training.optimizers.add_l2_gradients`: the same gradient as
        differentiating `compute_loss`, without holding `weight_decay * w` for every kernel
        through the backward pass)."""
        from gscnn_tf.losses import replicas_in_sync
        from gscnn_tf.training.optimizers import add_l2_gradients

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self._tracked_loss(y, y_pred, sample_weight, True, l2_gradient=False)
            self._loss_tracker.update_state(loss * replicas_in_sync(),
                                            sample_weight=tf.shape(keras.tree.flatten(x)[0])[0])
            loss = self.optimizer.scale_loss(loss)
        variables = self.trainable_weights
        grads = add_l2_gradients(
            tape.gradient(loss, variables), variables,
            self.optimizer.scale_loss(self._require_task().weight_decay / replicas_in_sync()))
        self.optimizer.apply_gradients(zip(grads, variables))
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _tracked_loss(self, y, y_pred, sample_weight, training, l2_gradient):
        from gscnn_tf.losses import replicas_in_sync, training_loss

        task = self._require_task()
        reject_sample_weights(sample_weight)
        seed = None
        if training:
            seed = tf.stack([tf.constant(task.seed, tf.int64),
                             tf.cast(self.optimizer.iterations, tf.int64)])
        terms = training_loss(task.loss, y, y_pred, self.trainable_variables,
                              task.weight_decay, seed, l2_gradient=l2_gradient)
        for tracker in task.terms:
            tracker.update_state(terms[tracker.name] * replicas_in_sync())
        return terms["total"]

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        for metric in self._require_task().metrics:
            metric.update_state(y, y_pred)
        return self.get_metrics_result()

    @property
    def metrics(self):
        metrics = list(super().metrics)
        if getattr(self, "_task", None) is not None:
            metrics += [m for m in self._task.terms + self._task.metrics
                        if all(m is not n for n in metrics)]
        return metrics

    def get_compile_config(self):
        """What `keras.saving.load_model` needs to compile the loaded model as this one
        (optimizer with its schedule, loss config, metrics, weight decay, seed), so training
        goes on with the saved optimizer state. None when uncompiled, or compiled with a
        loss other than a `GSCNNLoss` or a schedule still waiting for `fit`'s steps (the
        loaded model is then uncompiled: call `compile()`)."""
        task = getattr(self, "_task", None)
        return None if task is None else compile_config(task)

    def compile_from_config(self, config):
        self.compile(**compile_arguments(self, config))

    def _require_task(self):
        if getattr(self, "_task", None) is None:
            raise RuntimeError("GSCNN: call model.compile() (the paper's recipe by default) "
                               "before fit / evaluate / train_on_batch")
        return self._task
