"""Canny edge detection in pure TensorFlow, equal to OpenCV's `cv2.Canny(img, low, high)`
(aperture 3, L1 gradient), pixel for pixel.

The rules that make it exact are listed in `docs/canny.md`: OpenCV 5's fixed-point
grayscale, replicate-border 3x3 Sobel, L1 magnitude, non-maximum suppression with the Q15
tan(22.5 deg) sector tests and OpenCV's asymmetric comparisons (zero magnitude outside the
image), strict thresholds and 8-connected hysteresis run to convergence in a `tf.while_loop`.
Everything is TF ops with dynamic height and width, so it runs inside `tf.function`, a Keras
functional model (through the `Canny` layer), SavedModel and TFLite (builtin ops only).

Step form "fused" (`canny_fused`) is the fastest on CPUs and GPUs: the whole detector in one
XLA-compiled function (Sobel by shifted adds, which XLA fuses with the rest; the bit-packed
hysteresis loop compiled into one kernel per growth step instead of ~18 TF ops);
benchmarks/results/canny.md has the per-stage profile.

Step form "mask" (`gscnn_tf.ops.canny_masks`) is the same computation written for the TFLite
GPU delegate; the rules all forms share live in `gscnn_tf.ops.canny_rules`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from gscnn_tf.errors import ConfigError
from gscnn_tf.ops.canny_masks import canny_masks
from gscnn_tf.ops.canny_rules import (Q15, TG22_Q15, grow, neighbours, rgb_to_gray,
                                      to_uint8_values)
from gscnn_tf.ops.filters import sobel

STEP_FORMS = ("bool", "pool", "bits", "mask", "fused")
CHANNEL_MODES = ("gray", "max")


def _sobel_shifts(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`filters.sobel(x, "replicate")` as shifted adds of a replicate-padded copy: the same
    integer values (float32 `[B, H, W, C]` in, two of the same shape out) in elementwise ops
    that XLA fuses with their consumers (XLA's CPU depthwise convolution is slow)."""
    p = tf.concat([x[:, :1], x, x[:, -1:]], 1)
    p = tf.concat([p[:, :, :1], p, p[:, :, -1:]], 2)
    cols = p[:, :, 2:] - p[:, :, :-2]
    rows = p[:, 2:] - p[:, :-2]
    dx = cols[:, :-2] + 2.0 * cols[:, 1:-1] + cols[:, 2:]
    dy = rows[:, :, :-2] + 2.0 * rows[:, :, 1:-1] + rows[:, :, 2:]
    return dx, dy


def _gradients(image: tf.Tensor, channels: str,
               sobel_fn=None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Returns (dx, dy, L1 magnitude), each `[B, H, W]` float32. `sobel_fn`: the 3x3 Sobel
    on `[B, H, W, C]` (default `filters.sobel` with replicate padding)."""
    sobel_fn = sobel_fn or (lambda v: sobel(v, padding="replicate"))
    c = image.shape[-1]
    if channels == "gray":
        x = rgb_to_gray(image) if c == 3 else image
        dx, dy = sobel_fn(x)
        dx, dy = tf.squeeze(dx, -1), tf.squeeze(dy, -1)
        return dx, dy, tf.abs(dx) + tf.abs(dy)
    # "max": OpenCV's multi-channel rule, per pixel the channel with the largest magnitude,
    # the first (lowest-index) channel winning ties.
    dxs, dys = (tf.unstack(d, axis=-1) for d in sobel_fn(image))
    mags = [tf.abs(a) + tf.abs(b) for a, b in zip(dxs, dys)]
    dx, dy, mag = dxs[0], dys[0], mags[0]
    for k in range(1, c):
        take = mags[k] > mag
        dx = tf.where(take, dxs[k], dx)
        dy = tf.where(take, dys[k], dy)
        mag = tf.where(take, mags[k], mag)
    return dx, dy, mag


def _non_max_suppression(dx: tf.Tensor, dy: tf.Tensor, mag: tf.Tensor) -> tf.Tensor:
    """Boolean `[B, H, W]`: pixels that are local maxima across the gradient direction,
    with OpenCV's sector tests and comparisons; magnitude is 0 outside the image."""
    p = tf.pad(mag, [[0, 0], [1, 1], [1, 1]])
    up, down, left, right, up_left, up_right, down_left, down_right = neighbours(p)
    ax, ay = tf.abs(dx), tf.abs(dy)
    tg22x = ax * TG22_Q15
    horizontal = ay * Q15 < tg22x
    vertical = (ay - 2.0 * ax) * Q15 > tg22x
    same_sign = tf.equal(dx < 0.0, dy < 0.0)
    diag_a = tf.where(same_sign, up_left, up_right)
    diag_b = tf.where(same_sign, down_right, down_left)
    keep_h = tf.logical_and(mag > left, mag >= right)
    keep_v = tf.logical_and(mag > up, mag >= down)
    keep_d = tf.logical_and(mag > diag_a, mag > diag_b)
    return tf.where(horizontal, keep_h, tf.where(vertical, keep_v, keep_d))


def _dilate_bool(e: tf.Tensor) -> tf.Tensor:
    """3x3 (8-connected) binary dilation of a boolean `[B, H, W]` map by shifted slices."""
    p = tf.pad(e, [[0, 0], [1, 1], [1, 1]])
    rows = tf.logical_or(tf.logical_or(p[:, :, :-2], p[:, :, 1:-1]), p[:, :, 2:])
    return tf.logical_or(tf.logical_or(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def _pack_bits(x: tf.Tensor) -> tf.Tensor:
    """Boolean `[B, H, W]` -> uint32 `[B, H, ceil(W / 32)]`, pixel 32 k + j in bit j."""
    shape = tf.shape(x)
    words = (shape[2] + 31) // 32
    x = tf.pad(x, [[0, 0], [0, 0], [0, words * 32 - shape[2]]])
    x = tf.reshape(tf.cast(x, tf.uint32), [shape[0], shape[1], words, 32])
    return tf.reduce_sum(tf.bitwise.left_shift(x, tf.cast(tf.range(32), tf.uint32)), -1)


def _unpack_bits(p: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    shape = tf.shape(p)
    bits = tf.bitwise.right_shift(tf.expand_dims(p, -1), tf.cast(tf.range(32), tf.uint32))
    bits = tf.reshape(tf.bitwise.bitwise_and(bits, 1), [shape[0], shape[1], shape[2] * 32])
    return bits[:, :, :width] > 0


def _dilate_bits(e: tf.Tensor) -> tf.Tensor:
    """8-connected dilation of a bit-packed map (carries cross word boundaries)."""
    one, last = tf.constant(1, tf.uint32), tf.constant(31, tf.uint32)
    bw = tf.bitwise
    p = tf.pad(e, [[0, 0], [1, 1], [1, 1]])
    mid = p[:, :, 1:-1]
    from_left = bw.bitwise_or(bw.left_shift(mid, one), bw.right_shift(p[:, :, :-2], last))
    from_right = bw.bitwise_or(bw.right_shift(mid, one), bw.left_shift(p[:, :, 2:], last))
    rows = bw.bitwise_or(mid, bw.bitwise_or(from_left, from_right))
    return bw.bitwise_or(bw.bitwise_or(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def _hysteresis_step_fn(candidate: tf.Tensor, step_form: str):
    """Returns (initial state from a strong map, step function, state -> bool map)."""
    if step_form == "bits":
        cand, width = _pack_bits(candidate), tf.shape(candidate)[2]
        return (_pack_bits,
                lambda e: tf.bitwise.bitwise_and(_dilate_bits(e), cand),
                lambda e: _unpack_bits(e, width))
    if step_form == "bool":
        return (lambda s: s,
                lambda e: tf.logical_and(_dilate_bool(e), candidate),
                lambda e: e)
    cand = tf.expand_dims(tf.cast(candidate, tf.float32), -1)

    def step(e):
        return tf.nn.max_pool2d(e, ksize=3, strides=1, padding="SAME") * cand

    return (lambda s: tf.expand_dims(tf.cast(s, tf.float32), -1), step,
            lambda e: tf.squeeze(e, -1) > 0.5)


def _hysteresis(strong: tf.Tensor, candidate: tf.Tensor, max_steps: int, step_form: str,
                check_every: int) -> tf.Tensor:
    """Grows `strong` 8-connectedly through `candidate` (both boolean `[B, H, W]`)."""
    init, step, to_bool = _hysteresis_step_fn(candidate, step_form)
    return to_bool(grow(init(strong), step, max_steps, check_every))


def canny(image, low: float = 10.0, high: float = 100.0, max_steps: int = 0,
          step_form: str = "bool", channels: str = "gray", check_every: int = 4) -> tf.Tensor:
    """Canny edges equal to OpenCV's `cv2.Canny` (aperture 3, L1 gradient).

    Args:
      image: uint8 or float `[B, H, W, C]`, C = 1 (gray) or 3 (RGB). Float values are taken
        as 0..255, rounded half to even and clipped to uint8 values first.
      low, high: hysteresis thresholds on the L1 gradient magnitude (strict: a pixel is a
        candidate when magnitude > low and strong when magnitude > high); swapped when
        low > high, as OpenCV does.
      max_steps: 0 runs hysteresis to convergence in a `tf.while_loop` (exact). A positive
        value unrolls exactly that many growth steps and emits no WHILE op (for GPU delegates
        that reject it); edges farther than `max_steps` pixels along a chain from a strong
        pixel are then missed (benchmarks/results/canny.md gives the agreement figures).
      step_form: "bool" (shifted-slice boolean OR), "bits" (the same on 32 pixels packed
        per uint32 word: fastest in TF without XLA, not for TFLite), "fused" (the whole
        detector with the "bits" step compiled by XLA, `canny_fused`: fastest, 6-10x "bits"
        at 1024x2048; needs a TensorFlow with XLA, so SavedModel export stores "bits"),
        "pool" (3x3 float max-pool, fastest in TFLite) or "mask" (the whole detector on
        float masks, `canny_masks`: with max_steps > 0 every op runs in the TFLite GPU
        delegate). All give identical results.
      channels: "gray" = `cv2.Canny` on the grayscale image (OpenCV 5 RGB -> gray rounding,
        C = 3 taken as RGB); "max" = `cv2.Canny` on the C-channel image itself: per pixel the
        channel with the largest magnitude (first channel on ties) supplies dx and dy.
      check_every: growth steps between convergence checks of the while loop.

    Returns:
      float32 `[B, H, W, 1]` in {0, 1}.
    """
    if step_form not in STEP_FORMS:
        raise ConfigError(f"canny step_form '{step_form}': expected one of {STEP_FORMS}")
    if channels not in CHANNEL_MODES:
        raise ValueError(f"canny channels '{channels}': expected one of {CHANNEL_MODES}")
    if max_steps < 0 or check_every < 1:
        raise ConfigError(f"canny max_steps {max_steps} / check_every {check_every}: expected "
                          "max_steps >= 0 and check_every >= 1")
    image = tf.convert_to_tensor(image)
    if image.shape.rank != 4 or image.shape[-1] not in (1, 3):
        raise ValueError(f"canny image shape {image.shape}: expected [B, H, W, 1 or 3]")
    low, high = sorted((float(low), float(high)))
    if step_form == "mask":
        return canny_masks(image, low, high, int(max_steps), channels, int(check_every))
    if step_form == "fused":
        return canny_fused(image, low, high, int(max_steps), channels, int(check_every))
    return _canny_ops(image, low, high, int(max_steps), step_form, channels, int(check_every))


def _canny_ops(image, low, high, max_steps, step_form, channels, check_every, sobel_fn=None):
    """The detector in TF ops with hysteresis step `step_form` ("bool", "bits" or "pool");
    arguments and result as `canny` (thresholds sorted); `sobel_fn` as `_gradients`."""
    x = to_uint8_values(image)
    dx, dy, mag = _gradients(x, channels, sobel_fn)
    local_max = _non_max_suppression(dx, dy, mag)
    candidate = tf.logical_and(local_max, mag > low)
    strong = tf.logical_and(local_max, mag > high)
    edges = _hysteresis(strong, candidate, max_steps, step_form, check_every)
    return tf.expand_dims(tf.cast(edges, tf.float32), -1)


def _canny_bits(image, low, high, max_steps, channels, check_every, sobel_fn=None):
    """`_canny_ops` with the "bits" step: what "fused" compiles."""
    return _canny_ops(image, low, high, max_steps, "bits", channels, check_every, sobel_fn)


@tf.function(jit_compile=True, autograph=False)
def _canny_compiled(image, low, high, max_steps, channels, check_every):
    return _canny_bits(image, low, high, max_steps, channels, check_every, _sobel_shifts)


def canny_fused(image, low: float = 10.0, high: float = 100.0, max_steps: int = 0,
                channels: str = "gray", check_every: int = 4) -> tf.Tensor:
    """`canny(..., step_form="fused")`: the "bits" computation compiled by XLA as one
    function (compiled once per input shape, ~0.5 s; dynamic shapes work). Without XLA
    each of the ~114 growth steps a 1024x2048 photo needs runs ~18 small TF ops, which is
    where "bits" spends two thirds of its time; compiled, each step is one fused loop.

    Args and result as `canny`: image uint8 or float `[B, H, W, 1 or 3]` 0..255 ->
    float32 `[B, H, W, 1]` in {0, 1}; no gradient (the edges are constants for training).
    """
    image = tf.stop_gradient(tf.convert_to_tensor(image))
    low, high = sorted((float(low), float(high)))
    return _canny_compiled(image, low, high, int(max_steps), channels, int(check_every))


@keras.saving.register_keras_serializable(package="gscnn_tf")
class Canny(keras.layers.Layer):
    """Keras layer wrapping `canny` (no weights): `[B, H, W, 1 or 3]` 0..255 ->
    `[B, H, W, 1]` float32 {0, 1}; H and W may be None."""

    def __init__(self, low=10.0, high=100.0, max_steps=0, step_form="bool", channels="gray",
                 **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.low, self.high = float(low), float(high)
        self.max_steps, self.step_form, self.channels = int(max_steps), step_form, channels

    def call(self, image):
        return canny(image, self.low, self.high, self.max_steps, self.step_form, self.channels)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (1,)

    def get_config(self):
        config = super().get_config()
        config.update(low=self.low, high=self.high, max_steps=self.max_steps,
                      step_form=self.step_form, channels=self.channels)
        return config
