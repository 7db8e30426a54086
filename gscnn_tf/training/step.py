"""One distributed training step: forward, the training loss, gradients (optionally
clipped by their global norm, optionally loss-scaled), optimizer update.

The loss is `gscnn_tf.losses.training_loss`, the same function `GSCNN.compute_loss` uses
under `fit`: GSCNNLoss plus the kernel L2 term, each replica's share of the global-batch
loss, so replica gradients are SUMMED by the optimizer. As under `fit`, the L2 term's
gradient is added after backpropagation (`add_l2_gradients`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from gscnn_tf.losses import training_loss
from gscnn_tf.training.optimizers import add_l2_gradients, l2_coefficient

TERMS = ("seg", "edge", "att", "dual", "l2", "total")


def make_train_step(strategy, model, optimizer, loss_fn, schedule, train_config, step_var):
    """A tf.function `(distributed images, distributed targets) -> dict of global terms and
    lr` that trains one step and increments `step_var`."""
    c = train_config
    replicas = strategy.num_replicas_in_sync
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    variables = model.trainable_variables

    def replica_step(images, targets):
        seed = tf.stack([tf.constant(c.seed, tf.int64), tf.cast(step_var, tf.int64)])
        lr = schedule(optimizer.iterations)
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            terms = training_loss(loss_fn, targets, outputs, variables, l2_coefficient(c),
                                  seed, l2_gradient=False)
            loss = optimizer.scale_loss(terms["total"])  # unchanged unless loss-scaled
        grads = add_l2_gradients(tape.gradient(loss, variables), variables,
                                 optimizer.scale_loss(l2_coefficient(c) / replicas))
        if c.clip_norm > 0:
            grads = _clip_global(grads, c.clip_norm * (optimizer.dynamic_scale if scaled
                                                       else 1.0), replicas)
        optimizer.apply(grads, variables)
        return {**{k: terms[k] for k in TERMS}, "lr": lr / replicas}

    if c.xla:
        replica_step = tf.function(replica_step, jit_compile=True)

    @tf.function
    def train_step(images, targets):
        per_replica = strategy.run(replica_step, args=(images, targets))
        step_var.assign_add(1)
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                for k, v in per_replica.items()}

    return train_step


def _clip_global(grads, clip_norm, replicas):
    """Clips the GLOBAL gradient (sum over replicas) to `clip_norm`; returns per-replica
    shares (global / replicas) for the optimizer to sum again."""
    context = tf.distribute.get_replica_context()
    if replicas > 1:
        grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    grads, _ = tf.clip_by_global_norm(grads, clip_norm)
    return [g / replicas for g in grads] if replicas > 1 else grads
