"""Building blocks of the Gated-SCNN graph: normalisation, resizing, the gated convolutional
layer (GCL), ASPP with its edge branch, and conv+BN+ReLU helpers.

Custom layers hold no weights of their own (weights live in standard Keras layers wired
functionally around them), so every named tap of the paper's figure is a layer a user can
look up, and `.keras` saving needs nothing beyond each layer's `get_config`.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from gscnn_tf.errors import ConfigError

_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


@keras.saving.register_keras_serializable(package="gscnn_tf")
class Normalize(layers.Layer):
    """RGB 0..255 `[B, H, W, 3]` -> the input range a backbone was trained on.

    mode "torch": (x / 255 - ImageNet mean) / std, RGB; "caffe": BGR minus the ImageNet mean
    in 0..255 (keras.applications ResNet); "tf": x / 127.5 - 1 (MobileNetV2).
    """

    MODES = ("torch", "caffe", "tf")

    def __init__(self, mode="torch", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"Normalize mode '{mode}': expected one of {self.MODES}")
        self.mode = mode

    def call(self, x):
        x = tf.cast(x, self.compute_dtype)
        if self.mode == "torch":
            return (x / 255.0 - tf.cast(_MEAN, x.dtype)) / tf.cast(_STD, x.dtype)
        if self.mode == "caffe":
            # RGB -> BGR by split and concat, not a reversing slice: the TFLite GPU delegate
            # has no kernel for a negative stride.
            r, g, b = tf.split(x, 3, axis=-1)
            return tf.concat([b, g, r], axis=-1) - tf.cast(_CAFFE_MEAN_BGR, x.dtype)
        return x / 127.5 - 1.0

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="gscnn_tf")
class ResizeLike(layers.Layer):
    """Bilinear resize of `x` [B, h, w, C] to the spatial size of `reference` [B, H, W, *]
    divided by `stride` (rounded up), so dynamic and odd sizes work: `call([x, reference])`.

    align_corners: False samples at half-pixel centres (`tf.image.resize`, PyTorch's
    `align_corners=False`); True maps corner to corner, output pixel i reading input
    i * (h - 1) / (H - 1) (PyTorch's `align_corners=True`; TFLite RESIZE_BILINEAR has it).
    """

    def __init__(self, stride=1, align_corners=False, **kwargs):
        super().__init__(**kwargs)
        self.stride = int(stride)
        self.align_corners = bool(align_corners)

    def call(self, inputs):
        x, reference = inputs
        size = tf.shape(reference)[1:3]
        if self.stride > 1:
            size = (size + self.stride - 1) // self.stride
        if self.align_corners:
            out = tf.raw_ops.ResizeBilinear(images=x, size=size, align_corners=True,
                                            half_pixel_centers=False)
        else:
            out = tf.image.resize(x, size, method="bilinear")
        return tf.cast(out, x.dtype)

    def compute_output_shape(self, input_shapes):
        x_shape, ref_shape = input_shapes
        return (x_shape[0], None, None, x_shape[-1])

    def get_config(self):
        return {**super().get_config(), "stride": self.stride,
                "align_corners": self.align_corners}


@keras.saving.register_keras_serializable(package="gscnn_tf")
class ZerosMap(layers.Layer):
    """A constant zero map `[B, H, W, 1]` shaped like the input: the stand-in for image
    gradients (`model.image_gradients: none`) and for the baseline's `edge_logits`."""

    def call(self, x):
        return tf.zeros_like(x[..., :1], dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (1,)


@keras.saving.register_keras_serializable(package="gscnn_tf")
class GateMultiply(layers.Layer):
    """The GCL's gating: features `[B, H, W, C]` times (1 + alpha), alpha `[B, H, W, 1]` in
    [0, 1] broadcast over channels: `call([features, alpha])`."""

    def call(self, inputs):
        features, alpha = inputs
        return features * (1.0 + tf.cast(alpha, features.dtype))

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]


def batch_norm(x, name, bn_kwargs):
    """The one BatchNormalization of every model and backbone: channels last, named `name`.

    `bn_kwargs` carries `synchronized`, `epsilon` and `momentum` (see `models.compat` and each
    backbone's defaults); the layer's name is the weight name checkpoints and converters use.
    """
    return layers.BatchNormalization(name=name, **bn_kwargs)(x)


def conv_bn_relu(x, filters, kernel_size, name, bn_kwargs, dilation=1):
    """Conv (no bias) -> BN -> ReLU, 'same' padding at stride 1."""
    x = layers.Conv2D(filters, kernel_size, padding="same", dilation_rate=dilation,
                      use_bias=False, name=f"{name}_conv")(x)
    x = batch_norm(x, f"{name}_bn", bn_kwargs)
    return layers.ReLU(name=f"{name}_relu")(x)


def basic_block(x, name, bn_kwargs):
    """ResNet basic block at constant width: two 3x3 conv+BN, identity shortcut, ReLU."""
    filters = x.shape[-1]
    y = conv_bn_relu(x, filters, 3, f"{name}_1", bn_kwargs)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    y = batch_norm(y, f"{name}_2_bn", bn_kwargs)
    y = layers.Add(name=f"{name}_add")([x, y])
    return layers.ReLU(name=f"{name}_out")(y)


def gated_conv(features, regular, name, form, bn_kwargs):
    """Gated convolutional layer (GCL) of the shape stream.

    Args:
        features: shape-stream features f `[B, H, W, C]`.
        regular: 1-channel regular-stream map r `[B, H, W, 1]` at the same resolution.
        name: prefix; the gate activation is the layer `{name}_alpha`.
        form: "reference" (BN -> 1x1 C+1 -> ReLU -> 1x1 -> 1 -> BN -> sigmoid, the reference
            code's normalised gate) or "paper" (sigmoid(BN(1x1(f || r)))).

    Returns:
        (output `[B, H, W, C]` = 1x1 conv without bias of f * (1 + alpha), alpha `[B,H,W,1]`).
    """
    channels = features.shape[-1]
    x = layers.Concatenate(name=f"{name}_concat")([features, regular])
    if form == "reference":
        x = batch_norm(x, f"{name}_bn_in", bn_kwargs)
        x = layers.Conv2D(channels + 1, 1, name=f"{name}_conv1")(x)
        x = layers.ReLU(name=f"{name}_relu")(x)
        x = layers.Conv2D(1, 1, name=f"{name}_conv2")(x)
        x = batch_norm(x, f"{name}_bn_out", bn_kwargs)
    elif form == "paper":
        x = layers.Conv2D(1, 1, use_bias=False, name=f"{name}_conv")(x)
        x = batch_norm(x, f"{name}_bn", bn_kwargs)
    else:
        raise ConfigError(f"model.gate '{form}': expected 'reference' or 'paper'")
    alpha = layers.Activation("sigmoid", name=f"{name}_alpha")(x)
    x = GateMultiply(name=f"{name}_gating")([features, alpha])
    x = layers.Conv2D(channels, 1, use_bias=False, name=f"{name}_weight")(x)
    return x, alpha


def aspp(x, edge, channels, rates, output_stride, bn_kwargs, align_corners=False):
    """Atrous spatial pyramid pooling with the Gated-SCNN edge branch.

    Args:
        x: the regular stream's last tap `[B, h, w, Cin]`.
        edge: fused boundary map `[B, H, W, 1]` in [0, 1] at any resolution, or None for the
            DeepLab v3+ baseline (no edge branch).
        rates: atrous rates at output stride 16; doubled at output stride 8.
        align_corners: how the image-pool and edge branches are resized (`ResizeLike`).

    Returns:
        `[B, h, w, channels * (5 or 6)]`: image pooling, edge, 1x1 and three atrous branches.
    """
    scale = 16 // output_stride
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(x)
    pooled = conv_bn_relu(pooled, channels, 1, "aspp_image", bn_kwargs)
    branches = [ResizeLike(align_corners=align_corners, name="aspp_image_resize")([pooled, x])]
    if edge is not None:
        edge = ResizeLike(align_corners=align_corners, name="aspp_edge_resize")([edge, x])
        branches.append(conv_bn_relu(edge, channels, 1, "aspp_edge", bn_kwargs))
    branches.append(conv_bn_relu(x, channels, 1, "aspp_1x1", bn_kwargs))
    for i, rate in enumerate(rates, start=1):
        branches.append(
            conv_bn_relu(x, channels, 3, f"aspp_atrous{i}", bn_kwargs, dilation=rate * scale))
    return layers.Concatenate(name="aspp_concat")(branches)
