"""Ground-truth boundary maps from label maps (docs/method.md#ground-truth-edges), pure TF.

A pixel is an edge pixel when a pixel with a different label value lies within Euclidean
distance `radius` of it. Every value counts as a label (the ignore label 255 too, so
class/ignore borders are edges); pixels outside the image do not count, so image borders
are not edges.

Method (exact, no distance transform): the in-image pixels of a disk around p form a
4-connected set, so that set holds two different labels iff it holds two 4-adjacent pixels
with different labels. With the pair maps Dh(q) = [l(q) != l(q + (0, 1))] and
Dv(q) = [l(q) != l(q + (1, 0))], p is an edge iff Dh is true somewhere in p + S_h or Dv in
p + S_v, where S_h = {s : s and s + (0, 1) in the disk} (S_v its transpose). S_h is a union of
a few centred rectangles; each is a separable sliding "any" computed by doubling on boolean
maps. This costs O(log radius) boolean passes per rectangle (see benchmarks/edges.py).
"""

from __future__ import annotations

import math

import tensorflow as tf


def _pair_rectangles(radius: int) -> list[tuple[int, int]]:
    """(h, w) rectangles rows |dy| <= h, columns dx in [-w, w - 1] whose union is S_h."""
    half = [math.isqrt(radius * radius - dy * dy) for dy in range(radius + 1)]
    rects = []
    for dy in range(radius + 1):
        if half[dy] == 0:
            break
        if dy == radius or half[dy + 1] < half[dy]:
            rects.append((dy, half[dy]))
    return rects


def _slice(x: tf.Tensor, axis: int, start, size) -> tf.Tensor:
    begin = [0, 0, 0]
    sizes = [-1, -1, -1]
    begin[axis], sizes[axis] = start, size
    return tf.slice(x, begin, sizes)


def _doubling(x: tf.Tensor, axis: int, max_length: int) -> dict[int, tf.Tensor]:
    """{k: any over windows x[i : i + k]} for k = 1, 2, 4, ... <= max_length."""
    tables = {1: x}
    k = 1
    while 2 * k <= max_length:
        n = tf.shape(x)[axis] - k
        x = _slice(x, axis, 0, n) | _slice(x, axis, k, n)
        k *= 2
        tables[k] = x
    return tables


def _window_any(tables: dict[int, tf.Tensor], axis: int, length: int, start: int, size):
    """out[j] = any(x[start + j : start + j + length]) for j < size, from `_doubling`."""
    k = 1 << (length.bit_length() - 1)
    out = _slice(tables[k], axis, start, size)
    if k < length:
        out = out | _slice(tables[k], axis, start + length - k, size)
    return out


def label_edges(labels, radius: int = 2) -> tf.Tensor:
    """Boundary map of an integer label map.

    Args:
        labels: int tensor [H, W] or [B, H, W] (any integer dtype; 255 is an ordinary value).
        radius: positive int, the Euclidean distance within which a different label makes a
            pixel an edge pixel (2 gives bands about 4 px wide).

    Returns:
        float32 tensor of `labels`' shape, 1.0 on edge pixels and 0.0 elsewhere.
    """
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
        raise ValueError(f"label_edges: radius {radius!r}: expected a positive int")
    labels = tf.convert_to_tensor(labels)
    if not labels.dtype.is_integer:
        raise ValueError(f"label_edges: labels dtype {labels.dtype.name}: expected an integer "
                         "label map")
    rank = labels.shape.rank
    if rank not in (2, 3):
        raise ValueError(f"label_edges: labels shape {labels.shape}: expected [H, W] or "
                         "[B, H, W]")
    if rank == 2:
        return label_edges(labels[None], radius)[0]
    height, width = tf.shape(labels)[1], tf.shape(labels)[2]
    r = radius
    horizontal = tf.pad(labels[:, :, 1:] != labels[:, :, :-1], [[0, 0], [r, r], [r, r + 1]])
    vertical = tf.pad(labels[:, 1:, :] != labels[:, :-1, :], [[0, 0], [r, r + 1], [r, r]])
    rects = _pair_rectangles(r)
    longest = 2 * max(w for _, w in rects)
    edges = None
    for pairs, along, across, n_along, n_across in ((horizontal, 2, 1, width, height),
                                                    (vertical, 1, 2, height, width)):
        tables = _doubling(pairs, along, longest)
        for h, w in rects:
            band = _window_any(tables, along, 2 * w, r - w, n_along)
            box = _window_any(_doubling(band, across, 2 * h + 1), across, 2 * h + 1, r - h,
                              n_across)
            edges = box if edges is None else edges | box
    return tf.cast(edges, tf.float32)
