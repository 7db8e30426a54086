"""The four Gated-SCNN loss terms and their weighted sum (docs/method.md#losses).

Shapes: `seg_logits` [B, H, W, C] and `edge_logits` [B, H, W, 1] are logits (any float dtype;
everything is computed in float32), `labels` int [B, H, W] with ignore label 255, `edges`
float [B, H, W] in {0, 1}.

Every term is a ratio: a sum over this call's pixels divided by a count. The counts pass
through `global_sum` (identity by default). Under `tf.distribute`, `GSCNNLoss` passes the
cross-replica sum, so each replica returns its local sums divided by GLOBAL counts: the
replica values (and their gradients) add up exactly to the single-device loss of the global
batch, with no further division by the number of replicas.

One module past 300 lines on purpose: it is one idea, the training loss, whose four terms
share the input checks, the pixel weighting (seg, att) and the global-count contract that
`GSCNNLoss` and `training_loss` state once for all of them.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import tensorflow as tf

from gscnn_tf.errors import ConfigError
from gscnn_tf.ops.filters import gaussian_blur, sobel

IGNORE_LABEL = 255
WEIGHTINGS = ("none", "image", "fixed")
# A boundary potential counts as non-zero above this. Potentials peak at O(1) (a one-hot step
# smoothed with sigma 1 gives 1.8); float32 convolutions leave up to ~1e-6 of rounding noise in
# constant regions, and how much depends on the backend (oneDNN and XLA differ). The smallest
# genuine values of a one-hot map's potential are 2e-5 at sigma 1 (5e-6 at sigma 2): entries
# dropped by the threshold differ by less than it.
NONZERO_POTENTIAL = 1e-5


def _identity(x: tf.Tensor) -> tf.Tensor:
    return x


def replicas_in_sync() -> int:
    """Replicas in sync in the current replica context (1 outside `strategy.run`)."""
    context = tf.distribute.get_replica_context()
    return context.num_replicas_in_sync if context is not None else 1


def cross_replica_sum(x: tf.Tensor) -> tf.Tensor:
    """Sum of `x` over the replicas of the current replica context (identity outside
    `strategy.run` or with one replica). Counts carry no gradient."""
    x = tf.stop_gradient(x)
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return x
    return context.all_reduce(tf.distribute.ReduceOp.SUM, x)


def _float32(x) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    return x if x.dtype == tf.float32 else tf.cast(x, tf.float32)


def _num_classes(seg_logits: tf.Tensor) -> int:
    if seg_logits.shape.rank != 4 or seg_logits.shape[-1] is None:
        raise ValueError(f"seg_logits shape {seg_logits.shape}: expected [B, H, W, C] with a "
                         "static class count C")
    return int(seg_logits.shape[-1])


def _check_labels(labels, seg_logits: tf.Tensor) -> tf.Tensor:
    labels = tf.convert_to_tensor(labels)
    if not labels.dtype.is_integer or labels.shape.rank != 3:
        raise ValueError(f"labels {labels.dtype.name} {labels.shape}: expected int [B, H, W]")
    if not labels.shape.is_compatible_with(seg_logits.shape[:3]):
        raise ValueError(f"labels shape {labels.shape} does not match seg_logits "
                         f"{seg_logits.shape} (expected [B, H, W] and [B, H, W, C])")
    return tf.cast(labels, tf.int32)


def pixel_weights(labels: tf.Tensor, valid: tf.Tensor, num_classes: int,
                  weighting: str = "none", class_weights=()) -> tf.Tensor:
    """Per-pixel class weights, float32 [B, H, W], 0 where `valid` is false.

    weighting: `none` (1), `fixed` (`class_weights[label]`, one per class) or `image` (the
    reference's per-image weights: w_c = 2 - f_c for classes present in the image, f_c their
    frequency among the image's valid pixels, 1 for absent classes).
    """
    safe = tf.where(valid, labels, 0)
    mask = tf.cast(valid, tf.float32)
    if weighting == "none":
        return mask
    if weighting == "fixed":
        if len(class_weights) != num_classes:
            raise ConfigError(f"loss.class_weights has {len(class_weights)} values: expected "
                              f"one per class ({num_classes}) for class_weighting 'fixed'")
        return tf.gather(tf.constant(class_weights, tf.float32), safe) * mask
    if weighting == "image":
        batch = tf.shape(labels)[0]
        flat = tf.reshape(tf.where(valid, labels, num_classes), [batch, -1])
        counts = tf.cast(tf.math.bincount(flat, minlength=num_classes + 1,
                                          maxlength=num_classes + 1, axis=-1), tf.float32)
        counts = counts[:, :num_classes]
        freq = tf.math.divide_no_nan(counts, tf.reduce_sum(counts, -1, keepdims=True))
        weights = tf.where(counts > 0, 2.0 - freq, 1.0)
        return tf.gather(weights, safe, batch_dims=1) * mask
    raise ConfigError(f"loss.class_weighting '{weighting}': expected one of {WEIGHTINGS}")


def _pixel_cross_entropy(seg_logits, labels, ignore_label):
    """Softmax cross-entropy [B, H, W] (label 0 at ignore pixels) and the valid mask."""
    valid = labels != ignore_label
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.where(valid, labels, 0),
                                                        logits=seg_logits)
    return ce, valid


def _weighted_mean(ce, labels, valid, num_classes, weighting, class_weights, global_sum):
    weights = tf.stop_gradient(pixel_weights(labels, valid, num_classes, weighting,
                                             class_weights))
    return tf.math.divide_no_nan(tf.reduce_sum(weights * ce),
                                 global_sum(tf.reduce_sum(weights)))


def _edge_map(edge_logits) -> tf.Tensor:
    edge_logits = _float32(edge_logits)
    if edge_logits.shape.rank == 4 and edge_logits.shape[-1] == 1:
        return edge_logits[..., 0]
    raise ValueError(f"edge_logits shape {edge_logits.shape}: expected [B, H, W, 1]")


def _attention_mask(edge_logits, threshold: float, labels: tf.Tensor) -> tf.Tensor:
    """[B, H, W] bool: sigmoid(edge_logits) > threshold, carrying no gradient."""
    logits = _edge_map(edge_logits)
    if not logits.shape.is_compatible_with(labels.shape):
        raise ValueError(f"edge_logits shape {edge_logits.shape} does not match labels "
                         f"{labels.shape} (expected [B, H, W, 1] and [B, H, W])")
    return tf.stop_gradient(tf.sigmoid(logits) > threshold)


def segmentation_loss(seg_logits, labels, class_weighting: str = "none", class_weights=(),
                      ignore_label: int = IGNORE_LABEL,
                      global_sum: Callable = _identity) -> tf.Tensor:
    """Weighted softmax cross-entropy: sum(w * CE) / sum(w) over the non-ignore pixels of
    the batch (w from `pixel_weights`; the reference instead adds up per-image means). Labels
    other than `ignore_label` must lie in [0, C). Scalar float32, 0 when no pixel counts."""
    seg_logits = _float32(seg_logits)
    num_classes = _num_classes(seg_logits)
    labels = _check_labels(labels, seg_logits)
    ce, valid = _pixel_cross_entropy(seg_logits, labels, ignore_label)
    return _weighted_mean(ce, labels, valid, num_classes, class_weighting, class_weights,
                          global_sum)


def attention_loss(seg_logits, edge_logits, labels, threshold: float = 0.8,
                   class_weighting: str = "none", class_weights=(),
                   ignore_label: int = IGNORE_LABEL,
                   global_sum: Callable = _identity) -> tf.Tensor:
    """`segmentation_loss` restricted to the pixels where sigmoid(edge_logits) > threshold
    (as in the reference, `image` weights come from the restricted labels). The mask carries
    no gradient, so only `seg_logits` receive one. 0 when no pixel passes."""
    seg_logits = _float32(seg_logits)
    labels = _check_labels(labels, seg_logits)
    masked = tf.where(_attention_mask(edge_logits, threshold, labels), labels, ignore_label)
    return segmentation_loss(seg_logits, masked, class_weighting, class_weights, ignore_label,
                             global_sum)


def edge_loss(edge_logits, edges, global_sum: Callable = _identity) -> tf.Tensor:
    """Class-balanced binary cross-entropy on logits (one sigmoid):
    (1/N) * sum_p w_p * BCE_p with w = N_neg / N on edge pixels and N_pos / N on the others,
    N, N_pos, N_neg counted over the (global) batch. Finite (0) for an all-edge or no-edge
    batch, whose weights vanish on the present class."""
    logits = _edge_map(edge_logits)
    edges = _float32(edges)
    if not edges.shape.is_compatible_with(logits.shape):
        raise ValueError(f"edges shape {edges.shape} does not match edge_logits "
                         f"{logits.shape} + [1]")
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=edges, logits=logits)
    positive = tf.cast(edges > 0.5, tf.float32)
    counts = global_sum(tf.stack([tf.reduce_sum(positive), tf.cast(tf.size(edges), tf.float32)]))
    n_pos, n = counts[0], counts[1]
    w_pos = tf.math.divide_no_nan(n - n_pos, n)
    w_neg = tf.math.divide_no_nan(n_pos, n)
    total = w_pos * tf.reduce_sum(positive * bce) + w_neg * tf.reduce_sum((1.0 - positive) * bce)
    return tf.math.divide_no_nan(total, n)


def gumbel_softmax(logits, tau: float = 1.0, seed=None, example_offset=0) -> tf.Tensor:
    """softmax((logits + g) / tau) over the last axis of [B, H, W, C] logits.

    seed None: deterministic, g = 0. seed: int [2] stateless seed; g is Gumbel(0, 1) noise
    drawn per example from fold_in(seed, example_offset + b), so a global batch split over
    replicas (offset = index of the replica's first example) gets the same noise as on one
    device.
    """
    logits = _float32(logits)
    if seed is None:
        return tf.nn.softmax(logits / tau, axis=-1)
    seed = tf.cast(seed, tf.int64)
    offset = tf.cast(example_offset, tf.int64)
    tiny = float(np.finfo(np.float32).tiny)

    def noise(index):
        example_seed = tf.random.experimental.stateless_fold_in(seed, offset + index)
        uniform = tf.random.stateless_uniform(tf.shape(logits)[1:], example_seed,
                                              minval=tiny, maxval=1.0)
        return -tf.math.log(-tf.math.log(uniform))

    batch = logits.shape[0]
    if batch is not None:  # a static batch: one draw per example, no while loop
        gumbel = tf.stack([noise(tf.constant(b, tf.int64)) for b in range(batch)])
    else:
        gumbel = tf.map_fn(noise, tf.range(tf.shape(logits, out_type=tf.int64)[0]),
                           fn_output_signature=tf.float32)
    return tf.nn.softmax((logits + gumbel) / tau, axis=-1)


def boundary_potential(maps: tf.Tensor, sigma: float = 1.0) -> tf.Tensor:
    """zeta = |Sobel(G_sigma * maps)| / sqrt(2) per channel of [B, H, W, K] float32 maps
    (replicate padding, so image borders make no boundary). 0 (up to float32 rounding) where
    the smoothed map is locally constant; the square root has a zero, not NaN, gradient at 0."""
    dx, dy = sobel(gaussian_blur(maps, sigma))
    squared = dx * dx + dy * dy
    nonzero = squared > 0
    magnitude = tf.where(nonzero, tf.sqrt(tf.where(nonzero, squared, 1.0)), 0.0)
    return magnitude * (1.0 / math.sqrt(2.0))


def dual_task_loss(seg_logits, labels, tau: float = 1.0, sigma: float = 1.0, seed=None,
                   example_offset=0, ignore_label: int = IGNORE_LABEL,
                   global_sum: Callable = _identity, recompute: bool = False) -> tf.Tensor:
    """The paper's dual-task loss: mean |zeta - zeta_hat| over p+.

    zeta: `boundary_potential` of the Gumbel-softmax relaxation of the prediction
    (`gumbel_softmax`; seed None = deterministic), zeta_hat: that of the one-hot labels.
    Ignore pixels are excluded from both maps (zero vectors), so predictions there change
    nothing. p+ is the set of (pixel, class) entries where zeta or zeta_hat is non-zero, i.e.
    above `NONZERO_POTENTIAL` (float32 rounding noise stays below it). 0 when p+ is empty.

    `recompute`: the per-class maps (about ten `[B, H, W, C]` float32 tensors) are not kept
    for the backward pass but computed again from `seg_logits` there (`tf.recompute_grad`;
    the noise is stateless, so the same numbers).
    """
    seg_logits = _float32(seg_logits)
    num_classes = _num_classes(seg_logits)
    labels = _check_labels(labels, seg_logits)

    def sums(logits):
        """(sum of |zeta - zeta_hat| over p+, size of p+), per replica."""
        valid = labels != ignore_label
        mask = tf.cast(valid, tf.float32)[..., None]
        probs = gumbel_softmax(logits, tau, seed, example_offset) * mask
        onehot = tf.one_hot(tf.where(valid, labels, 0), num_classes, dtype=tf.float32) * mask
        zeta = boundary_potential(probs, sigma)
        zeta_hat = tf.stop_gradient(boundary_potential(onehot, sigma))
        support = tf.stop_gradient(tf.cast(tf.maximum(zeta, zeta_hat) > NONZERO_POTENTIAL,
                                           tf.float32))
        return tf.reduce_sum(support * tf.abs(zeta - zeta_hat)), tf.reduce_sum(support)

    total, count = (tf.recompute_grad(sums) if recompute else sums)(seg_logits)
    return tf.math.divide_no_nan(total, global_sum(tf.stop_gradient(count)))


class GSCNNLoss:
    """lambda_edge * edge + lambda_seg * seg + lambda_att * att + lambda_dual * dual.

    Call as `loss_fn(targets, outputs, seed=None)` with targets {"labels": int [B, H, W],
    "edges": float [B, H, W]} and outputs {"seg_logits": [B, H, W, C], "edge_logits":
    [B, H, W, 1]}; returns {"seg", "edge", "att", "dual", "total"} float32 scalars. `seed`
    (int [2], e.g. [train.seed, step]) turns on the Gumbel noise of the dual term (training);
    None is the deterministic relaxation (evaluation, tests).

    Distribution: inside `strategy.run` every count is summed over replicas, so a replica's
    value is its share of the global-batch loss; differentiate it and let the optimizer SUM
    the replica gradients (the `tf.distribute` default); do not divide by the replica count.
    The seeded noise assumes the global batch is split into equal consecutive per-replica
    batches (replica k holds examples k*b .. k*b + b - 1), as `tf.distribute` does.
    For `keras.Model.fit`, override `Model.compute_loss` to return `loss_fn(y, y_pred)["total"]`
    unchanged; do not wrap this in a `keras.losses.Loss`, whose `__call__` multiplies by
    1 / num_replicas_in_sync (Keras' `unscale_loss_for_distribution` on the logged value then
    shows the global loss).
    """

    def __init__(self, config=None, ignore_label: int = IGNORE_LABEL):
        if config is None:
            from gscnn_tf.config import LossConfig

            config = LossConfig()
        if config.class_weighting not in WEIGHTINGS:
            raise ConfigError(f"loss.class_weighting '{config.class_weighting}': expected one "
                              f"of {WEIGHTINGS}")
        if config.class_weighting == "fixed" and not config.class_weights:
            raise ConfigError("loss.class_weights is empty: class_weighting 'fixed' needs one "
                              "weight per class")
        if config.dual_tau <= 0 or config.dual_sigma <= 0:
            raise ConfigError(f"loss.dual_tau {config.dual_tau} and loss.dual_sigma "
                              f"{config.dual_sigma}: expected positive values")
        if not 0.0 < config.attention_threshold < 1.0:
            raise ConfigError(f"loss.attention_threshold {config.attention_threshold}: "
                              "expected a probability in (0, 1)")
        self.config = config
        self.ignore_label = ignore_label

    def __call__(self, targets: dict, outputs: dict, seed=None) -> dict[str, tf.Tensor]:
        c = self.config
        labels, edges = _get(targets, "targets", "labels"), _get(targets, "targets", "edges")
        seg_logits = _float32(_get(outputs, "outputs", "seg_logits"))
        edge_logits = _get(outputs, "outputs", "edge_logits")
        num_classes = _num_classes(seg_logits)
        labels = _check_labels(labels, seg_logits)
        context = tf.distribute.get_replica_context()
        offset = 0
        if seed is not None and context is not None and context.num_replicas_in_sync > 1:
            offset = context.replica_id_in_sync_group * tf.shape(labels)[0]

        weights = {"seg": c.lambda_seg, "edge": c.lambda_edge, "att": c.lambda_att,
                   "dual": c.lambda_dual}

        def logits(name, x):
            # A term weighted 0 is still reported, but no gradient is built through it.
            return tf.stop_gradient(x) if weights[name] == 0.0 else x

        ce, valid = _pixel_cross_entropy(seg_logits, labels, self.ignore_label)
        attended = valid & _attention_mask(edge_logits, c.attention_threshold, labels)
        weighted = (c.class_weighting, c.class_weights, cross_replica_sum)
        terms = {
            "seg": _weighted_mean(logits("seg", ce), labels, valid, num_classes, *weighted),
            "edge": edge_loss(logits("edge", edge_logits), edges, cross_replica_sum),
            "att": _weighted_mean(logits("att", ce), labels, attended, num_classes,
                                  *weighted),
            "dual": dual_task_loss(logits("dual", seg_logits), labels, c.dual_tau,
                                   c.dual_sigma, seed, offset, self.ignore_label,
                                   cross_replica_sum, c.recompute_dual),
        }
        total = tf.constant(0.0)
        for name, weight in weights.items():  # seg, edge, att, dual: the same sum as ever
            if weight != 0.0:
                total = total + weight * terms[name]
        terms["total"] = total
        return terms


def _get(values: dict, name: str, key: str):
    if not isinstance(values, dict) or key not in values:
        keys = sorted(values) if isinstance(values, dict) else type(values).__name__
        raise ValueError(f"GSCNNLoss: {name} has no '{key}' (got {keys})")
    return values[key]


def training_loss(loss_fn, targets: dict, outputs: dict, variables, weight_decay: float,
                  seed=None, l2_gradient: bool = True) -> dict[str, tf.Tensor]:
    """The loss that training differentiates, for `GSCNN.fit` and the custom loop alike:
    `loss_fn(targets, outputs, seed)` (a `GSCNNLoss`) plus the kernel L2 term
    `weight_decay / 2 * sum(kernel ** 2)` over `variables`. With `l2_gradient=False` the L2
    term's value is in "l2" and "total" but passes no gradient: the training steps add it
    after backpropagation (`gscnn_tf.training.optimizers.add_l2_gradients`, the same
    gradient without holding it through the backward pass).

    Distribution rules: `loss_fn` already returns this replica's share of the global-batch
    loss; the L2 term, computed identically on every replica, is divided by the number of
    replicas; the optimizer SUMS replica gradients, so nothing else is divided.

    Returns {"seg", "edge", "att", "dual", "l2", "total"} float32 scalars (this replica's
    shares; "total" includes "l2").
    """
    from gscnn_tf.training.optimizers import l2_loss

    terms = dict(loss_fn(targets, outputs, seed=seed))
    terms["l2"] = l2_loss(variables, weight_decay) / replicas_in_sync()
    if not l2_gradient:
        terms["l2"] = tf.stop_gradient(terms["l2"])
    terms["total"] = terms["total"] + terms["l2"]
    return terms

