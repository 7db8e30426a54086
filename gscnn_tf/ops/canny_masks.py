"""Canny step form "mask" (`canny_masks`): the same computation as `gscnn_tf.ops.canny`,
written for the TFLite GPU delegate. Every map is a float32 `[B, H, W, 1]` tensor, boolean
logic is arithmetic on {0, 1} masks (MUL, ADD, SUB, ABS), each comparison feeds exactly one
CAST to float32 (the only way the delegate takes comparison ops), and there is no SELECT,
LOGICAL_*, ROUND or rank-3 tensor. `canny(..., step_form="mask")` calls it.
"""

from __future__ import annotations

import tensorflow as tf

from gscnn_tf.ops.canny_rules import Q15, TG22_Q15, grow, neighbours, rgb_to_gray
from gscnn_tf.ops.filters import sobel

# tan(22.5 deg) in Q15 over 2^15: exact in float32, and `ax * _TG22` is exact for |dx| <= 1020
# (10 + 14 bits), so `ay < ax * _TG22` decides OpenCV's `ay * 2^15 < ax * 13573` without the
# 2^25-sized products.
_TG22 = TG22_Q15 / Q15


def _mask(condition: tf.Tensor) -> tf.Tensor:
    """Boolean -> float32 {0, 1}. Every comparison of `canny_masks` goes through here once:
    the GPU delegate takes a comparison op only when its one consumer is a CAST to float."""
    return tf.cast(condition, tf.float32)


def _round_and_clip_masks(x: tf.Tensor) -> tf.Tensor:
    """float32 -> integers 0..255 rounded half to even, as `to_uint8_values`, with FLOOR and
    masks instead of ROUND (no GPU delegate kernel): x - floor(x) is exact, so the halfway
    test is exact too."""
    whole = tf.floor(x)
    frac = x - whole
    odd = whole - 2.0 * tf.floor(whole * 0.5)
    rounded = whole + _mask(frac > 0.5) + _mask(tf.equal(frac, 0.5)) * odd
    return tf.minimum(tf.maximum(rounded, 0.0), 255.0)


def _choose(take: tf.Tensor, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """`where(take, a, b)` for a {0, 1} float mask: one product is exactly 0, so it is exact."""
    return take * a + (1.0 - take) * b


def _gradients_masks(x: tf.Tensor, channels: str) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`_gradients` on float masks: (dx, dy, L1 magnitude), each `[B, H, W, 1]` float32."""
    if channels == "gray":
        gray = rgb_to_gray(x) if x.shape[-1] == 3 else x
        dx, dy = sobel(gray, padding="replicate")
        return dx, dy, tf.abs(dx) + tf.abs(dy)
    c = x.shape[-1]
    dxs, dys = (tf.split(d, c, axis=-1) for d in sobel(x, padding="replicate"))
    dx, dy = dxs[0], dys[0]
    mag = tf.abs(dx) + tf.abs(dy)
    for k in range(1, c):
        mag_k = tf.abs(dxs[k]) + tf.abs(dys[k])
        take = _mask(mag_k > mag)  # strictly larger: the first channel wins ties
        dx, dy, mag = _choose(take, dxs[k], dx), _choose(take, dys[k], dy), \
            _choose(take, mag_k, mag)
    return dx, dy, mag


def _non_max_suppression_masks(dx: tf.Tensor, dy: tf.Tensor, mag: tf.Tensor) -> tf.Tensor:
    """`_non_max_suppression` on `[B, H, W, 1]` float32 maps -> {0, 1} mask of the same shape."""
    p = tf.pad(mag, [[0, 0], [1, 1], [1, 1], [0, 0]])
    up, down, left, right, up_left, up_right, down_left, down_right = neighbours(p)
    ax, ay = tf.abs(dx), tf.abs(dy)
    tg22x = ax * _TG22
    horizontal = _mask(ay < tg22x)
    vertical = _mask(ay - 2.0 * ax > tg22x)
    same_sign = 1.0 - tf.abs(_mask(dx < 0.0) - _mask(dy < 0.0))
    diag_a = _choose(same_sign, up_left, up_right)
    diag_b = _choose(same_sign, down_right, down_left)
    keep_h = _mask(mag > left) * _mask(mag >= right)
    keep_v = _mask(mag > up) * _mask(mag >= down)
    keep_d = _mask(mag > diag_a) * _mask(mag > diag_b)
    return _choose(horizontal, keep_h, _choose(vertical, keep_v, keep_d))


def canny_masks(image, low: float = 10.0, high: float = 100.0, max_steps: int = 64,
                channels: str = "gray", check_every: int = 4) -> tf.Tensor:
    """`canny(..., step_form="mask")`: the same edges, computed for the TFLite GPU delegate.

    Every intermediate is a float32 `[B, H, W, 1]` (or `[B, H, W, C]`) map; the ops are
    FLOOR, ABS, ADD, SUB, MUL, MAXIMUM, MINIMUM, PAD, STRIDED_SLICE, SPLIT, DEPTHWISE_CONV_2D,
    MAX_POOL_2D and comparisons each followed by one CAST to float32. Values are integers
    below 2^24 throughout, so float32 arithmetic is exact and the result equals the other
    step forms pixel for pixel (on a GPU this needs float32 precision: fp16 cannot hold the
    grey-level sums). max_steps > 0 unrolls that many 3x3 max-pool growth steps (no WHILE
    op); 0 runs them to convergence in a `tf.while_loop` (exact, CPU only).

    Args and result as `canny`: image uint8 or float `[B, H, W, 1 or 3]` 0..255 ->
    float32 `[B, H, W, 1]` in {0, 1}.
    """
    image = tf.convert_to_tensor(image)
    if image.dtype == tf.uint8:
        x = tf.cast(image, tf.float32)
    else:
        x = _round_and_clip_masks(tf.cast(image, tf.float32))
    low, high = sorted((float(low), float(high)))
    dx, dy, mag = _gradients_masks(x, channels)
    local_max = _non_max_suppression_masks(dx, dy, mag)
    candidate = local_max * _mask(mag > low)
    strong = local_max * _mask(mag > high)

    def step(e):
        return tf.nn.max_pool2d(e, ksize=3, strides=1, padding="SAME") * candidate

    return grow(strong, step, max_steps, check_every)
