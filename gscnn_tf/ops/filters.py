"""Constant-kernel image filters as depthwise convolutions (pure TF, exportable).

All functions take NHWC float tensors and filter every channel independently.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], np.float32)
SOBEL_Y = SOBEL_X.T.copy()


def pad_replicate(x: tf.Tensor, pad: int) -> tf.Tensor:
    """Pads H and W of an NHWC tensor by repeating the edge rows/columns `pad` times
    (OpenCV's BORDER_REPLICATE; TF's `tf.pad` has no such mode)."""
    if pad == 0:
        return x
    top = tf.repeat(x[:, :1], pad, axis=1)
    bottom = tf.repeat(x[:, -1:], pad, axis=1)
    x = tf.concat([top, x, bottom], axis=1)
    left = tf.repeat(x[:, :, :1], pad, axis=2)
    right = tf.repeat(x[:, :, -1:], pad, axis=2)
    return tf.concat([left, x, right], axis=2)


def _pad(x: tf.Tensor, pad: int, mode: str) -> tf.Tensor:
    if mode == "replicate":
        return pad_replicate(x, pad)
    if mode in ("zero", "reflect", "symmetric"):
        tf_mode = {"zero": "CONSTANT", "reflect": "REFLECT", "symmetric": "SYMMETRIC"}[mode]
        return tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode=tf_mode)
    raise ValueError(f"padding mode '{mode}': expected replicate, zero, reflect or symmetric")


def depthwise_filter(x: tf.Tensor, kernel: np.ndarray, padding: str = "replicate") -> tf.Tensor:
    """Correlates every channel of `x` [B, H, W, C] with the odd square 2-D `kernel`;
    output has the input's shape. `padding`: replicate, zero, reflect or symmetric."""
    kernel = np.asarray(kernel, np.float32)
    k = kernel.shape[0]
    if kernel.ndim != 2 or k != kernel.shape[1] or k % 2 == 0:
        raise ValueError(f"kernel shape {kernel.shape}: expected an odd square 2-D kernel")
    channels = x.shape[-1]
    if channels is None:
        raise ValueError("depthwise_filter needs a static channel count")
    w = tf.constant(np.tile(kernel[:, :, None, None], (1, 1, channels, 1)), dtype=x.dtype)
    x = _pad(x, k // 2, padding)
    return tf.nn.depthwise_conv2d(x, w, strides=[1, 1, 1, 1], padding="VALID")


def gaussian_kernel(sigma: float, size: int | None = None) -> np.ndarray:
    """Normalised 2-D Gaussian kernel; `size` defaults to 2 * ceil(3 sigma) + 1."""
    if sigma <= 0:
        raise ValueError(f"sigma {sigma}: expected a positive value")
    if size is None:
        size = 2 * int(math.ceil(3.0 * sigma)) + 1
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(r**2) / (2.0 * sigma**2))
    k = np.outer(g, g)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(x: tf.Tensor, sigma: float, size: int | None = None,
                  padding: str = "replicate") -> tf.Tensor:
    """Gaussian smoothing of every channel of `x` [B, H, W, C]."""
    return depthwise_filter(x, gaussian_kernel(sigma, size), padding)


def sobel(x: tf.Tensor, padding: str = "replicate") -> tuple[tf.Tensor, tf.Tensor]:
    """3x3 Sobel derivatives (dx, dy) of every channel of `x` [B, H, W, C], OpenCV's sign
    convention (dx grows to the right, dy downwards), unnormalised."""
    return depthwise_filter(x, SOBEL_X, padding), depthwise_filter(x, SOBEL_Y, padding)
