"""Recomputing the trunk's activations in the backward pass (`model.recompute_trunk: true`).

A training step keeps every activation of the regular stream's trunk from the forward pass
until the backward pass has used it: at 512x512 and batch 2 that is most of WRN-38's memory.
With `recompute_trunk` the trunk runs block by block, each block under `tf.recompute_grad`:
the forward pass keeps only the block's output, and the backward pass runs the block again
from its input to get the activations its gradients need. The price is one more forward pass
of the trunk per step; the loss, the gradients and the updated weights are those of the plain
step (to float32 rounding: the recomputed activations are the same numbers).

Two kinds of layer would see the recomputation:
- BatchNormalization in training mode updates its moving statistics. The recomputation runs
  it with momentum 1.0 (`moving * 1.0 + batch * 0.0`, the value it already has), so the
  statistics are updated once per step, as without recomputation; the normalisation itself
  uses the batch's statistics both times, so the activations are the same.
- A layer that draws random numbers (dropout: WRN-38's mod6 and mod7) draws them from its
  Keras seed generator, whose state moves on at every draw. The first run records each
  generator's state before the block; the recomputation sets it back to that state, so it
  draws the same mask, and leaves it where the first run left it.

The plan is functional views of the model's own layers (no second copy of a weight):
`prefix` (image -> first cut), one view per block (cut -> next cut), and `head` (image and
every cut -> the model's outputs: shape stream, ASPP, decoder). The cuts are the layers whose
outputs carry the whole trunk (each backbone's `cut_layers`).
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf


class TrunkRecompute:
    """The recomputing training forward of a functional `model` whose trunk passes through
    the layers named `cut_names` (in order).

    Calling it with images float32 `[B, H, W, 3]` returns what `model(images, training=True)`
    returns, computed block by block (see the module docstring).
    """

    def __init__(self, model: keras.Model, cut_names):
        cuts = [model.get_layer(name).output for name in cut_names]
        self.prefix = keras.Model(model.input, cuts[0], name=f"{model.name}_trunk_prefix")
        self.blocks = []
        for index, (start, end) in enumerate(zip(cuts, cuts[1:])):
            try:
                block = keras.Model(start, end, name=f"{model.name}_trunk_block{index}")
            except ValueError as e:
                raise ValueError(f"recompute_trunk: the trunk of '{model.name}' does not pass "
                                 f"through '{cut_names[index]}' alone on its way to "
                                 f"'{cut_names[index + 1]}': {e}") from e
            self.blocks.append(block)
        self.head = keras.Model([model.input, *cuts], model.output, name=f"{model.name}_head")
        trunk = {layer.name for block in self.blocks for layer in block.layers
                 if not isinstance(layer, keras.layers.InputLayer)}
        repeated = sorted(trunk & {layer.name for layer in self.head.layers})
        if repeated:
            raise ValueError(f"recompute_trunk: layers {repeated[:3]} of '{model.name}' feed "
                             "the heads from inside a trunk block, not through a cut")

    def __call__(self, images):
        x = self.prefix(images, training=True)
        cuts = [x]
        for block in self.blocks:
            x = recomputed(block)(x)
            cuts.append(x)
        return self.head([images, *cuts], training=True)


def recomputed(block: keras.Model):
    """`block` in training mode under tf.recompute_grad; its second run (the backward
    pass's) leaves the batch-norm moving statistics as the first run set them and draws the
    first run's random numbers. A new wrapper for every call of the block."""
    generators = [layer.seed_generator for layer in block.layers
                  if getattr(layer, "seed_generator", None) is not None]
    first_run = []     # the seed states before the first run, once it has run

    def forward(x):
        if first_run:
            context = _replayed(block, generators, first_run[0])
        else:
            first_run.append([tf.identity(g.state.value) for g in generators])
            context = contextlib.nullcontext()
        with context:
            return block(x, training=True)

    return tf.recompute_grad(forward)


@contextlib.contextmanager
def _replayed(block: keras.Model, generators, states):
    """The recomputation's run: batch-norm statistics frozen, every seed generator back at
    the state it had before the first run."""
    for generator, state in zip(generators, states):
        generator.state.assign(state)
    with _frozen_statistics(block):
        yield


@contextlib.contextmanager
def _frozen_statistics(block: keras.Model):
    norms = [layer for layer in block.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 1.0
    try:
        yield
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum
