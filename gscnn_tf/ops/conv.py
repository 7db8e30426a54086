"""A 2-D convolution whose filter gradient is computed as matrix products, for training on CPUs.

The forward pass and the input gradient are TensorFlow's own kernels. The filter gradient
`dW[i, j] = sum over pixels of x[tap (i, j)]^T dy` is one matmul per kernel tap
(`[B*Ho*Wo, Cin]^T @ [B*Ho*Wo, Cout]`; a 1x1 stride-1 convolution needs no copy at all).
TensorFlow's CPU `Conv2DBackpropFilter` runs at 55-65 % of its forward convolution's rate on
WRN-38's widest layers, and in float32 10x slower than one product for a 1x1 kernel with one
output channel; where the matmul form is used on WRN-38 it is 1.06-1.76x faster in float32 and
bfloat16 (`benchmarks/README.md`, "The filter gradient as matrix products"). Narrow kernels
keep the native kernel (`matmul_pays`, one rule for every dtype), and so do GPUs
(`filter_gradient_form`).

Taps are cut in the backward pass (after the output's gradient exists) and one at a time, each
after the previous tap's product, so TensorFlow's executor holds at most one extra copy of a
layer's input (under XLA, `train.xla`, the compiler schedules them itself).
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

FORMS = ("auto", "matmul", "native")
# A kernel larger than 1x1, or strided, takes the matmul form when it has at least this many
# input and output channels: each tap's product reads the whole input and output gradient, so
# with fewer channels the taps run at memory speed and the native kernel is faster (measured:
# `benchmarks/conv_grad.py`). A 1x1 stride-1 kernel always does: one product, no copy.
MIN_MATMUL_CHANNELS = 256

# Read when a graph is traced (MirroredStrategy traces its replicas in threads of its own).
_form = "auto"


@contextlib.contextmanager
def filter_gradient(form: str):
    """Within the block, graphs traced by `conv2d` take the filter gradient's `form`:
    "matmul" (every convolution), "native" (none) or "auto", the default: matmul where no GPU
    is visible and `matmul_pays`. For comparisons and benchmarks. The form is read when a
    graph is traced: a function traced inside the block keeps it after the block ends, and one
    traced again afterwards takes the form then in force."""
    if form not in FORMS:
        raise ValueError(f"filter gradient form {form!r}: expected one of {', '.join(FORMS)}")
    global _form
    previous, _form = _form, form
    try:
        yield
    finally:
        _form = previous


def filter_gradient_form(kernel_shape, strides=(1, 1)) -> str:
    """"matmul" or "native": the form `conv2d` traces now for this kernel `[kh, kw, Cin,
    Cout]` at these strides."""
    if _form != "auto":
        return _form
    if gpu_visible():
        return "native"
    return "matmul" if matmul_pays(kernel_shape, strides) else "native"


def gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU (then "auto" keeps the native kernels: cuDNN's)."""
    return bool(tf.config.list_logical_devices("GPU"))


def matmul_pays(kernel_shape, strides=(1, 1)) -> bool:
    """Whether the matmul filter gradient beats TensorFlow's CPU kernel for this kernel
    `[kh, kw, Cin, Cout]` at these strides (`MIN_MATMUL_CHANNELS`)."""
    kh, kw, cin, cout = (int(d) for d in kernel_shape)
    if kh == kw == 1 and tuple(strides) == (1, 1):
        return True
    return min(cin, cout) >= MIN_MATMUL_CHANNELS


def conv2d(x, kernel, strides=(1, 1), padding="SAME", dilations=(1, 1)):
    """`tf.nn.convolution(x, kernel, strides, padding, dilations)`, NHWC, with the filter
    gradient as matmuls where `filter_gradient_form` says so.

    Args:
        x: `[B, H, W, Cin]` float (float32, bfloat16 or float16); H and W may be dynamic.
        kernel: `[kh, kw, Cin, Cout]`, x's dtype.
        strides, dilations: (along H, along W); TensorFlow allows one of them above 1.
        padding: "SAME" or "VALID" (any case).

    Returns:
        `[B, Ho, Wo, Cout]` in x's dtype: the same values as `tf.nn.convolution`; gradients
        equal to float rounding (the filter gradient sums in another order).
    """
    padding = padding.upper()
    strides, dilations = tuple(strides), tuple(dilations)
    if filter_gradient_form(kernel.shape, strides) == "native":
        return tf.nn.convolution(x, kernel, strides, padding, dilations=dilations)
    if dilations == (1, 1):
        return _conv2d(x, kernel, strides, padding)
    if strides != (1, 1):
        raise ValueError(f"conv2d: strides {strides} with dilations {dilations}: expected "
                         "one of them (1, 1)")
    # Dilated: the space-to-batch form tf.nn.convolution uses, around a plain convolution.
    return tf.nn.with_space_to_batch(
        x, dilations, padding, lambda inputs, _, pad: _conv2d(inputs, kernel, (1, 1), pad),
        filter_shape=kernel.shape[:2])


def _conv2d(x, kernel, strides, padding):
    @tf.custom_gradient
    def convolve(x, kernel):
        def grad(dy):
            dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=kernel,
                                                out_backprop=dy, strides=[1, *strides, 1],
                                                padding=padding)
            return dx, filter_gradient_matmul(x, dy, kernel.shape, strides, padding)

        return tf.nn.conv2d(x, kernel, strides, padding), grad

    return convolve(x, tf.convert_to_tensor(kernel))


def filter_gradient_matmul(x, dy, kernel_shape, strides=(1, 1), padding="SAME"):
    """The gradient of a convolution's loss with respect to its filter, one matmul per tap.

    Args:
        x: the convolution's input `[B, H, W, Cin]`.
        dy: the gradient at its output `[B, Ho, Wo, Cout]`, x's dtype.
        kernel_shape: `[kh, kw, Cin, Cout]` (static).
        strides: (along H, along W); padding: "SAME" or "VALID", any case (TensorFlow's
            rules).

    Returns:
        `[kh, kw, Cin, Cout]` in x's dtype: `tf.raw_ops.Conv2DBackpropFilter(...)` to float
        rounding.
    """
    kh, kw, cin, cout = (int(d) for d in kernel_shape)
    sh, sw = strides
    padding = padding.upper()
    out_h, out_w = tf.shape(dy)[1], tf.shape(dy)[2]
    rows = tf.reshape(dy, [-1, cout])
    if kh == kw == sh == sw == 1:
        return tf.reshape(tf.matmul(tf.reshape(x, [-1, cin]), rows, transpose_a=True),
                          [1, 1, cin, cout])
    if padding == "SAME":
        height, width = tf.shape(x)[1], tf.shape(x)[2]
        pad_h = tf.maximum((out_h - 1) * sh + kh - height, 0)
        pad_w = tf.maximum((out_w - 1) * sw + kw - width, 0)
        # Padding and taps wait for dy: with static shapes nothing else orders them, and the
        # executor would copy every layer's input in the forward pass and hold it to the end.
        with tf.control_dependencies([dy]):
            x = tf.pad(x, [[0, 0], [pad_h // 2, pad_h - pad_h // 2],
                           [pad_w // 2, pad_w - pad_w // 2], [0, 0]])
    taps, previous = [], [dy]
    for i in range(kh):
        for j in range(kw):
            with tf.control_dependencies(previous):
                tap = x[:, i:i + (out_h - 1) * sh + 1:sh, j:j + (out_w - 1) * sw + 1:sw, :]
            product = tf.matmul(tf.reshape(tap, [-1, cin]), rows, transpose_a=True)
            taps.append(product)
            previous = [product]
    return tf.reshape(tf.stack(taps), [kh, kw, cin, cout])
