"""The custom training loop: one loop for one device, MirroredStrategy and
MultiWorkerMirroredStrategy (see `strategy.py`).

    trainer = Trainer(load_config("configs/synthetic.yaml"))
    summary = trainer.train(resume=True)     # {"step", "train": {...}, "val": {...}}

The run directory (`train.run_dir`) holds config.yaml, checkpoints/ (the latest
`train.keep_checkpoints`), best/ (the best model by validation mIoU: its checkpoint, and
model.keras and preset/ for `keras.saving.load_model` / `GSCNN.from_preset`), events/
(TensorBoard) and metrics.json (every validation, the last training terms).
"""

from __future__ import annotations

import json
import math
import re
import time

import keras
import numpy as np
import tensorflow as tf

from gscnn_tf import files
from gscnn_tf.config import save_config
from gscnn_tf.data.pipeline import build_dataset, dataset_info, list_examples
from gscnn_tf.errors import NonFiniteLossError, WorkerLostError
from gscnn_tf.losses import GSCNNLoss
from gscnn_tf.models.postprocess import postprocess
from gscnn_tf.precision import policy_scope, training_policy
from gscnn_tf.training.checkpoints import RunCheckpoints, check_new_run_dir
from gscnn_tf.training.optimizers import build_optimizer, learning_rate_schedule
from gscnn_tf.training.preemption import Preempted, PreemptionWatch
from gscnn_tf.training.progress import Progress
from gscnn_tf.training.step import TERMS, make_train_step
from gscnn_tf.training.strategy import is_chief, make_strategy
from gscnn_tf.training.summaries import Summaries, image_panels
from gscnn_tf.training.validation import validate


def _default_builder(model_config, num_classes):
    from gscnn_tf import build_model

    return build_model(model_config, num_classes)


def _gates(model, images) -> dict:
    """{"gate1".."gate3": [B, h, w, 1] alpha in [0, 1]} of `model` on `images`; {} for a
    model without a shape stream (the DeepLab v3+ baseline)."""
    from gscnn_tf.models.gscnn import GATE_ALPHAS, gate_model

    if not all(name in {layer.name for layer in model.layers} for name in GATE_ALPHAS):
        return {}
    return dict(gate_model(model)(images, training=False))


# What a collective raises under MultiWorkerMirroredStrategy when a peer is gone: the
# coordination service's "tasks are unhealthy (stopped sending heartbeats)" (Unavailable,
# or Aborted on the task told by the service) and CommunicationOptions' timeout.
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError,
               tf.errors.DeadlineExceededError)


def _worker_lost_text(step: int, error, timeout: float, latest: str | None) -> str:
    message = " ".join(str(getattr(error, "message", None) or error).split())
    dead = re.search(r"stopped sending heartbeats\)?:?\s*(/job:[^\s;,]+)", message)
    # gRPC's words for a peer gone: "Socket closed", "Connection reset by peer",
    # "Connection refused", "failed to connect", each naming the peer as the remote target.
    closed = re.search(r"(?:Socket closed|Connection reset|Connection refused|failed to "
                       r"connect).*?remote target (/job:[^\s;,]+)|remote target "
                       r"(/job:[^\s;,]+).*?(?:Socket closed|Connection reset|Connection "
                       r"refused|failed to connect)", message)
    gone = "its process died or its machine is unreachable"
    if dead:
        reason = f"worker {dead[1]} stopped sending heartbeats ({gone})"
    elif closed:
        reason = f"worker {closed[1] or closed[2]} closed its connection ({gone})"
    elif isinstance(error, tf.errors.DeadlineExceededError):
        reason = (f"the other workers did not reach a collective within train.worker_timeout="
                  f"{timeout:g} s")
    else:
        reason = message.split("aborted by: ")[-1].split(" The error could be")[0][:300]
    resume = f"continue from {latest}" if latest else "start again (no checkpoint yet)"
    return (f"multi-worker training stopped at step {step}: {reason}; restart every worker "
            f"with --resume to {resume}")


class Trainer:
    """Builds the strategy, model, optimizer, datasets and checkpoints of a config.

    `model_builder(model_config, num_classes)` and `loss_fn` default to
    `gscnn_tf.build_model` and `GSCNNLoss(config.loss)`.
    """

    def __init__(self, config, strategy=None, model_builder=None, loss_fn=None):
        self.config = config
        c = config.train
        self.strategy = strategy or make_strategy(c.strategy, c.cpu_replicas,
                                                     c.worker_timeout)
        self.chief = is_chief(self.strategy)
        self.info = dataset_info(config)
        keras.utils.set_random_seed(c.seed)
        with policy_scope(training_policy(c)), self.strategy.scope():
            self.model = (model_builder or _default_builder)(config.model,
                                                              self.info.num_classes)
            self.optimizer = build_optimizer(c, self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.schedule = learning_rate_schedule(c)
        self.loss_fn = loss_fn or GSCNNLoss(config.loss, config.data.ignore_label)
        objects = {"model": self.model, "optimizer": self.optimizer, "step": self.step}
        resolver = getattr(self.strategy, "cluster_resolver", None)
        self.checkpoints = RunCheckpoints(c.run_dir, objects, c.keep_checkpoints, self.chief,
                                          getattr(resolver, "task_id", 0) or 0)
        self.summaries = Summaries(c.run_dir, self.chief)
        self.train_step = make_train_step(self.strategy, self.model, self.optimizer,
                                          self.loss_fn, self.schedule, c, self.step)
        self.history: list[dict] = []

    def train(self, resume: bool = False) -> dict:
        """Trains to `train.steps` (continuing from the latest checkpoint when `resume`);
        returns {"step", "train": last terms, "val": last validation}."""
        c = self.config.train
        restored = self.checkpoints.restore_latest() if resume else None
        if restored is not None:
            self._load_history()
            if self.chief:
                print(f"resuming {c.run_dir} from step {restored}", flush=True)
        else:
            check_new_run_dir(c.run_dir)
        if self.chief:
            save_config(self.config, files.join(c.run_dir, "config.yaml"))
        start = int(self.step.numpy())
        iterator = iter(self._train_data(start))
        num_train = len(list_examples(self.config, self.config.data.train_split))
        steps_per_epoch = max(1, math.ceil(num_train / c.batch_size))
        progress = Progress(c.steps, start, c.batch_size, steps_per_epoch, self.chief)
        values, val = {}, self.history[-1]["val"] if self.history else {}
        watch = PreemptionWatch(self.strategy, self._preemption_save, c.run_dir)
        try:
            for step in range(start + 1, c.steps + 1):
                images, targets = next(iterator)
                values = {k: float(v) for k, v in watch.run(self.train_step, images,
                                                             targets).items()}
                val = self._after_step(step, values, images, targets, progress, val)
        except Preempted as stop:
            self.summaries.flush()
            print(stop, flush=True)
            raise
        except PEER_ERRORS as e:
            if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
                raise
            raise WorkerLostError(_worker_lost_text(step, e, c.worker_timeout,
                                                    self.checkpoints.latest)) from e
        finally:
            watch.close()
        self.summaries.flush()
        return {"step": int(self.step.numpy()), "train": values, "val": val}

    def _after_step(self, step, values, images, targets, progress, val) -> dict:
        """Checks the loss, logs, saves and validates after training step `step`; returns
        the latest validation."""
        c = self.config.train
        if not math.isfinite(values["total"]):
            terms = ", ".join(f"{k}={values[k]:.4g}" for k in TERMS)
            raise NonFiniteLossError(f"non-finite loss at step {step}: {terms}; the last "
                                     f"good checkpoint is {self.checkpoints.latest}")
        rate = progress.update(step, values)
        if step % c.log_every == 0 or step == c.steps:
            self.summaries.scalars(step, {**values, "images_per_second": rate})
        if c.image_every and step % c.image_every == 0:
            self._image_summary(step, images, targets)
        if step % c.checkpoint_every == 0 or step == c.steps:
            self.checkpoints.save(step)
        if (c.val_every and step % c.val_every == 0) or step == c.steps:
            val = self.validate(step, values)
        return val

    def _preemption_save(self) -> tuple[int, str]:
        """Saves the checkpoint of a preempted run at the step reached (every worker calls
        it at the same step; a step the loop has just saved is not saved again); returns the
        step and the run's checkpoint prefix."""
        c, step = self.config.train, int(self.step.numpy())
        if step % c.checkpoint_every != 0:
            self.checkpoints.save(step)
        return step, files.join(c.run_dir, "checkpoints", f"ckpt-{step}")

    def _train_data(self, start: int):
        """The distributed training data; with `data.deterministic`, past the `start` steps
        already trained (each input pipeline feeds its replicas one batch per step each)."""
        config = self.config

        def dataset_fn(ctx):
            dataset = build_dataset(config, config.data.train_split, True,
                                    config.train.batch_size, ctx)
            if not config.data.deterministic or start == 0:
                return dataset
            per_pipeline = ctx.num_replicas_in_sync // ctx.num_input_pipelines
            return dataset.skip(start * per_pipeline)

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def validate(self, step: int, train_values: dict | None = None) -> dict:
        """Validates on `data.val_split`, keeps the best model, appends to metrics.json."""
        dataset = build_dataset(self.config, self.config.data.val_split, False,
                                self.config.train.batch_size)
        result = validate(self.model, dataset, self.info.num_classes, self.config.eval,
                          self.config.data.ignore_label)
        if self.checkpoints.save_best(step, result["miou"]) and self.chief:
            from gscnn_tf.models.presets import save_run_best

            save_run_best(self.model, self.config.train.run_dir, self.config, {
                "step": step, "miou": result["miou"], "boundary_f": result["boundary_f"],
                "boundary_f_tolerance": result.get("tolerance_label")})
        self.summaries.scalars(step, {"miou": result["miou"],
                                      "boundary_f": result["boundary_f"]}, prefix="val")
        self.history.append({"step": step, "train": dict(train_values or {}), "val": result})
        if self.chief:
            print(f"validation at step {step}: mIoU {100 * result['miou']:.2f}, boundary "
                  f"{result['tolerance_label']} {100 * result['boundary_f']:.2f}", flush=True)
            self._write_metrics()
        return result

    def _image_summary(self, step, images, targets):
        if not self.chief:
            return
        local = self.strategy.experimental_local_results
        images, targets = local(images)[0], {k: local(v)[0] for k, v in targets.items()}
        outputs = self.model(images, training=False)
        gates = _gates(self.model, images)
        self.summaries.images(step, image_panels(images, targets, outputs,
                                                 [gates[k] for k in sorted(gates)],
                                                 self.info.palette))

    def write_pictures(self, count: int = 4) -> str | None:
        """Writes `<run_dir>/pictures/val_<i>.png` for the first `count` validation images:
        input, prediction overlay, ground truth, boundary map and the gates side by side.
        Returns the folder (None on workers other than the chief)."""
        if not self.chief or count < 1:
            return None
        from gscnn_tf.viz import prediction_sheet, write_png

        folder = files.join(self.config.train.run_dir, "pictures")
        dataset = build_dataset(self.config, self.config.data.val_split, False, count)
        images, targets = next(iter(dataset.take(1)))
        outputs = self.model(images, training=False)
        gates = _gates(self.model, images)
        predicted = postprocess(outputs)
        prediction, boundary = predicted["labels"].numpy(), predicted["edge_prob"].numpy()
        has_boundary = self.config.model.shape_stream
        for i in range(int(images.shape[0])):
            sheet = prediction_sheet(images[i].numpy(), prediction[i], self.info.palette,
                                     boundary[i] if has_boundary else None,
                                     targets["labels"][i].numpy(),
                                     {k: v[i].numpy() for k, v in gates.items()},
                                     self.config.data.ignore_label)
            write_png(files.join(folder, f"val_{i}.png"), sheet)
        return folder

    def _metrics_path(self) -> str:
        return files.join(self.config.train.run_dir, "metrics.json")

    def _load_history(self) -> None:
        path = self._metrics_path()
        if files.isfile(path):
            step = int(self.step.numpy())
            self.history = [h for h in json.loads(files.read_text(path))["history"]
                            if h["step"] <= step]

    def _write_metrics(self) -> None:
        best = max(self.history, key=lambda h: h["val"]["miou"])
        files.atomic_write_text(self._metrics_path(), json.dumps(
            {"last": self.history[-1], "best": best, "history": self.history}, indent=1,
            default=lambda v: float(np.asarray(v))))
