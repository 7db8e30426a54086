"""Recomputing activations in the backward pass (`model.recompute_trunk`,
`model.recompute_heads`).

A training step keeps every activation of the forward pass until the backward pass has used
it. At 512x512 and batch 2 most of WRN-38's memory is the trunk's activations, and the
full-resolution shape stream's come next (about 1.9 GiB). A recomputed segment of the model
runs under `tf.recompute_grad`: the forward pass keeps only the segment's inputs and output,
and the backward pass runs the segment again from its inputs to get the activations its
gradients need. The price is one more forward pass of each recomputed segment per step; the
loss, the gradients and the updated weights are those of the plain step (to float32
rounding: the recomputed activations are the same numbers).

The segments are the trunk's blocks (`recompute_trunk`; each backbone's `cut_layers` name the
layers whose outputs carry the whole trunk) and the heads (`recompute_heads`;
`gscnn_tf.models.gscnn.head_segments`): the shape stream's residual blocks (in halves) and
gated convolutions, ASPP and the decoder. A segment that is not recomputed runs plainly, so
the trunk's blocks are segments either way.

Two kinds of layer would see the recomputation:
- BatchNormalization in training mode updates its moving statistics. The recomputation runs
  it with momentum 1.0 (`moving * 1.0 + batch * 0.0`, the value it already has), so the
  statistics are updated once per step, as without recomputation; the normalisation itself
  uses the batch's statistics both times, so the activations are the same.
- A layer that draws random numbers (dropout: WRN-38's mod6 and mod7) draws them from its
  Keras seed generator, whose state moves on at every draw. The first run records each
  generator's state before the segment; the recomputation sets it back to that state, so it
  draws the same mask, and leaves it where the first run left it.

The plan is functional views of the model's own layers (no second copy of a weight): one
view per segment (its input tensors -> its output), before each segment a glue view (every
tensor known so far -> the segment's inputs not yet known: the image's normalisation, the
shape stream's gate maps, the fusion of the boundary map with Canny), and the head (every
known tensor -> the model's outputs). A layer with weights or a seed generator runs in
exactly one view.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import keras
import tensorflow as tf


class Segment(NamedTuple):
    """A part of a functional model between symbolic tensors of its graph: `inputs` (a
    list of KerasTensors) -> `output` (one KerasTensor); `recompute` runs it under
    `recomputed`, else plainly. `name` appears in errors."""

    inputs: list
    output: object
    recompute: bool
    name: str


def trunk_segments(model: keras.Model, cut_names, recompute: bool) -> list[Segment]:
    """The trunk's blocks of `model` between consecutive layers of `cut_names` (in order)."""
    cuts = [model.get_layer(name).output for name in cut_names]
    return [Segment([start], end, recompute, f"the trunk from '{cut_names[i]}' to "
                    f"'{cut_names[i + 1]}'")
            for i, (start, end) in enumerate(zip(cuts, cuts[1:]))]


def _seed_generator(layer):
    """The layer's Keras seed generator (dropout and other random layers), else None."""
    return getattr(layer, "seed_generator", None)


def _stateful_layers(view: keras.Model) -> set:
    """The layers of `view` that must run once per step: those with weights (a second run
    would update batch-norm statistics again) or a seed generator (another dropout mask)."""
    return {layer.name for layer in view.layers
            if layer.weights or _seed_generator(layer) is not None}


class Recompute:
    """The recomputing training forward of a functional `model` through `segments` (in an
    order in which each segment's inputs can be computed from the image and the earlier
    segments' outputs).

    Calling it with images float32 `[B, H, W, 3]` returns what `model(images, training=True)`
    returns, computed segment by segment (see the module docstring). Raises ValueError, naming
    the segment, when a segment's output does not depend on its inputs alone, when its inputs
    cannot be computed, or when a layer with weights or a seed generator would run in two
    views.
    """

    def __init__(self, model: keras.Model, segments: list[Segment]):
        known = [model.input]           # symbolic tensors computed so far, in order
        position = {id(model.input): 0}  # id of a known tensor -> its index in `known`
        self.steps = []                 # (glue view or None, input indices, view, recompute)
        owner = {}                      # stateful layer name -> the view that runs it

        def add(tensors):
            for tensor in tensors:
                position[id(tensor)] = len(known)
                known.append(tensor)

        for index, segment in enumerate(segments):
            missing = [t for t in segment.inputs if id(t) not in position]
            glue = None
            if missing:
                try:
                    glue = keras.Model(list(known), missing, name=f"{model.name}_glue{index}")
                except ValueError as e:
                    raise ValueError(f"recompute: the inputs of {segment.name} of "
                                     f"'{model.name}' cannot be computed from the image and "
                                     f"the earlier segments' outputs: {e}") from e
                self._claim(owner, glue, f"the inputs of {segment.name}")
                add(missing)
            try:
                view = keras.Model(list(segment.inputs), segment.output,
                                   name=f"{model.name}_segment{index}")
            except ValueError as e:
                raise ValueError(f"recompute: {segment.name} of '{model.name}' does not "
                                 f"depend on its inputs alone: {e}") from e
            self._claim(owner, view, segment.name)
            self.steps.append((glue, [position[id(t)] for t in segment.inputs], view,
                               segment.recompute))
            add([segment.output])
        self.head = keras.Model(list(known), model.output, name=f"{model.name}_head")
        self._claim(owner, self.head, "the heads")
        self.segments = [view for _, _, view, _ in self.steps]

    @staticmethod
    def _claim(owner: dict, view: keras.Model, what: str) -> None:
        for name in sorted(_stateful_layers(view)):
            if name in owner:
                raise ValueError(f"recompute: layer '{name}' would run in {owner[name]} and "
                                 f"in {what}: {what} must reach it through a segment's "
                                 "output")
            owner[name] = what

    def __call__(self, images):
        values = [images]
        for glue, positions, view, recompute in self.steps:
            if glue is not None:
                out = glue(values, training=True)
                values += out if isinstance(out, (list, tuple)) else [out]
            inputs = [values[i] for i in positions]
            if recompute:
                values.append(recomputed(view)(*inputs))
            else:
                values.append(view(inputs if len(inputs) > 1 else inputs[0], training=True))
        return self.head(values, training=True)


def recomputed(block: keras.Model):
    """`block` (called with one tensor per input) in training mode under
    tf.recompute_grad; its second run (the backward pass's) leaves the batch-norm moving
    statistics as the first run set them and draws the first run's random numbers. A new
    wrapper for every call of the block."""
    generators = [g for g in map(_seed_generator, block.layers) if g is not None]
    first_run = []     # the seed states before the first run, once it has run

    def forward(*x):
        if first_run:
            context = _replayed(block, generators, first_run[0])
        else:
            first_run.append([tf.identity(g.state.value) for g in generators])
            context = contextlib.nullcontext()
        with context:
            return block(list(x) if len(x) > 1 else x[0], training=True)

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
