"""What every Canny step form (`gscnn_tf.ops.canny`, `gscnn_tf.ops.canny_masks`) computes the
same way to equal OpenCV's `cv2.Canny` pixel for pixel (docs/canny.md): uint8 rounding, the
fixed-point grayscale, the Q15 tan(22.5 deg) constant of the sector tests, the 8 neighbours
non-maximum suppression compares with, and hysteresis growth until nothing changes.
"""

from __future__ import annotations

import tensorflow as tf

# OpenCV 5 RGB -> gray in Q15: (9798 R + 19235 G + 3735 B + 2^14) >> 15.
_GRAY_WEIGHTS = (9798.0, 19235.0, 3735.0)
Q15 = 32768.0
TG22_Q15 = 13573.0  # round(tan(22.5 deg) * 2^15)


def to_uint8_values(image: tf.Tensor) -> tf.Tensor:
    """uint8 or float `[B, H, W, C]` -> float32 holding integers 0..255. Floats are rounded
    half to even (OpenCV's `saturate_cast<uchar>`) and clipped to 0..255."""
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32)
    if not image.dtype.is_floating:
        raise ValueError(f"canny image dtype {image.dtype.name}: expected uint8 or float")
    return tf.clip_by_value(tf.round(tf.cast(image, tf.float32)), 0.0, 255.0)


def rgb_to_gray(image: tf.Tensor) -> tf.Tensor:
    """RGB `[B, H, W, 3]` float32 integer values 0..255 -> `[B, H, W, 1]` gray exactly as
    OpenCV 5's `COLOR_RGB2GRAY` rounds it (every intermediate is an integer below 2^24, so
    float32 is exact)."""
    r, g, b = tf.split(image, 3, axis=-1)
    wr, wg, wb = _GRAY_WEIGHTS
    q = wr * r + wg * g + wb * b + Q15 / 2.0
    return tf.floor(q / Q15)


def neighbours(padded: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """The 8 neighbours of every pixel of a map padded by one pixel on each side of H and W
    (`[B, H + 2, W + 2]` or `[B, H + 2, W + 2, C]`, any dtype): (up, down, left, right,
    up_left, up_right, down_left, down_right), each `[B, H, W]` (or `[B, H, W, C]`)."""
    p = padded
    return (p[:, :-2, 1:-1], p[:, 2:, 1:-1], p[:, 1:-1, :-2], p[:, 1:-1, 2:],
            p[:, :-2, :-2], p[:, :-2, 2:], p[:, 2:, :-2], p[:, 2:, 2:])


def grow(edges: tf.Tensor, step, max_steps: int, check_every: int) -> tf.Tensor:
    """Hysteresis: applies `step` (one 8-connected growth of `edges` through the candidate
    pixels; same shape and dtype in and out) `max_steps` times unrolled, or with max_steps 0
    in a `tf.while_loop` until a round of `check_every` steps changes nothing (exact)."""
    if max_steps > 0:
        for _ in range(max_steps):
            edges = step(edges)
        return edges

    def body(e, _):
        prev = e
        for _ in range(check_every):
            e = step(e)
        return e, tf.reduce_any(tf.not_equal(e, prev))

    edges, _ = tf.while_loop(lambda e, grew: grew, body, (edges, tf.constant(True)),
                             parallel_iterations=1)
    return edges
