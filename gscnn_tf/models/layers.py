"""Building blocks of the Gated-SCNN graph: normalisation, resizing, the gated convolutional
layer (GCL), ASPP with its edge branch, and conv+BN+ReLU helpers.

Custom layers hold no weights of their own (weights live in standard Keras layers wired
functionally around them; `Conv2D` and `AtrousConv2D` are Keras `Conv2D`s, and
`BatchNormalization` Keras's, with their weights, config and inference graph), so every
named tap of the paper's figure is a layer a user can look up, and `.keras` saving needs
nothing beyond each layer's `get_config`.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from gscnn_tf.errors import ConfigError
from gscnn_tf.ops import conv as conv_ops
from gscnn_tf.ops.conv import conv2d

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
    return BatchNormalization(name=name, **bn_kwargs)(x)


@keras.saving.register_keras_serializable(package="gscnn_tf")
class BatchNormalization(layers.BatchNormalization):
    """Keras's `BatchNormalization` (the same weights, config, inference graph and moving
    statistics) whose training pass on `[B, H, W, C]` tensors is TensorFlow's fused kernel:
    one `FusedBatchNormV3` op forward and one gradient op backward, where Keras builds the
    batch moments and the normalisation from a dozen elementwise ops and reductions (on
    WRN-38's shapes 2.1-2.7x faster in float32, 3.1-3.9x in bfloat16). Inputs of any float
    dtype go in as they are: the kernel computes in float32 and rounds its output once, as
    Keras's upcast does, without keeping a float32 copy of a 16-bit input for the backward
    pass.

    Keras's own path stays where the fused kernel cannot give its result: statistics
    synchronised across several replicas, renorm, masks, other ranks or axes, and an epsilon
    below cuDNN's minimum (1.001e-5) when a GPU is visible; and `fused` false (on the class
    or one layer: benchmarks time Keras's path that way).
    """

    fused = True

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and self._fusable(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        scale = (tf.cast(self.gamma, tf.float32) if self.scale
                 else tf.ones([channels], tf.float32))
        offset = (tf.cast(self.beta, tf.float32) if self.center
                  else tf.zeros([channels], tf.float32))
        empty = tf.zeros([0], tf.float32)
        outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=scale, offset=offset, mean=empty, variance=empty,
            epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC",
            is_training=True)
        # The kernel's batch variance is Bessel-corrected (n / (n - 1)); Keras keeps the
        # biased one, which the normalisation used.
        n = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)
        variance = variance * tf.maximum(n - 1.0, 1.0) / n
        self.moving_mean.assign(self.moving_mean * self.momentum
                                + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum
                                    + variance * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)

    def _fusable(self, inputs, mask) -> bool:
        if (not self.fused or mask is not None or self.renorm or len(inputs.shape) != 4
                or self.axis not in (-1, 3) or inputs.shape[-1] is None):
            return False
        if self.synchronized:
            context = tf.distribute.get_replica_context()
            if context is not None and context.num_replicas_in_sync > 1:
                return False
        return self.epsilon >= 1.001e-5 or not conv_ops.gpu_visible()


@keras.saving.register_keras_serializable(package="gscnn_tf")
class Conv2D(layers.Conv2D):
    """Keras's `Conv2D` (the same weights, config and inference graph) whose training pass
    computes the filter gradient as matrix products on CPUs (`gscnn_tf.ops.conv.conv2d`:
    1.06-1.76x faster than TensorFlow's CPU kernel where WRN-38 uses it). Every convolution of
    gscnn_tf's models is one; with `training` false it is Keras's layer unchanged.
    """

    def call(self, inputs, training=None):
        if not training or self.groups != 1 or self.data_format != "channels_last":
            return super().call(inputs)
        return self._bias_and_activation(
            conv2d(inputs, self.kernel, self.strides, self.padding, self.dilation_rate))

    def _bias_and_activation(self, outputs):
        if self.use_bias:
            outputs = outputs + self.bias
        return outputs if self.activation is None else self.activation(outputs)


def conv_bn_relu(x, filters, kernel_size, name, bn_kwargs, dilation=1, conv=Conv2D):
    """Conv (no bias; `conv`: a Conv2D class) -> BN -> ReLU, 'same' padding at stride 1."""
    x = conv(filters, kernel_size, padding="same", dilation_rate=dilation, use_bias=False,
             name=f"{name}_conv")(x)
    x = batch_norm(x, f"{name}_bn", bn_kwargs)
    return layers.ReLU(name=f"{name}_relu")(x)


def basic_block(x, name, bn_kwargs):
    """ResNet basic block at constant width: two 3x3 conv+BN, identity shortcut, ReLU."""
    filters = x.shape[-1]
    y = conv_bn_relu(x, filters, 3, f"{name}_1", bn_kwargs)
    y = Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    y = batch_norm(y, f"{name}_2_bn", bn_kwargs)
    y = layers.Add(name=f"{name}_add")([x, y])
    return layers.ReLU(name=f"{name}_out")(y)


@keras.saving.register_keras_serializable(package="gscnn_tf")
class AtrousConv2D(Conv2D):
    """A stride-1 "same" `Conv2D` with a large dilation rate (ASPP's atrous branches: rates 6
    to 36), the same weights and outputs, computed for training in a form whose backward pass
    runs at the machine's rate.

    Inference (`training` false) is Keras's convolution unchanged: TensorFlow's space-to-batch
    form, which exports see as one dilated CONV_2D. Training computes the same sum as one 1x1
    convolution of the input with every tap's weights side by side (`[1, 1, Cin, kh * kw *
    filters]`), each tap's `filters` channels then shifted by the tap's offset (zeros where it
    reads outside the map) and summed; equal to float32 rounding. The space-to-batch form pads
    the map to a multiple of the rate and folds it into rate x rate small images, on which
    TensorFlow's CPU backward kernels run at a few percent of the machine's rate: one rate-36
    branch of WRN-38 at a 64x64 map (512x512 crops) took 162 s forward and backward, this form
    8 s (`benchmarks/README.md`). At small rates (the trunk's 2 and 4) space-to-batch stays
    faster, so the trunk keeps plain `Conv2D`.
    """

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(filters, kernel_size, **{"padding": "same", **kwargs})
        if self.strides != (1, 1) or self.padding != "same" or self.groups != 1 or (
                self.data_format != "channels_last"):
            raise ValueError(f"AtrousConv2D '{self.name}': expected strides 1, padding 'same', "
                             "groups 1 and channels_last")

    def call(self, inputs, training=None):
        if not training or self.dilation_rate == (1, 1):
            return super().call(inputs, training=training)
        return self._bias_and_activation(
            shifted_taps_conv(inputs, self.kernel, self.dilation_rate))


def shifted_taps_conv(x, kernel, dilation_rate):
    """A stride-1 "same" dilated convolution as a sum of shifted 1x1 products.

    Args:
        x: `[B, H, W, Cin]`, any float dtype, dynamic H and W.
        kernel: `[kh, kw, Cin, Cout]` (odd kh, kw), x's dtype.
        dilation_rate: (rate along H, rate along W).

    Returns:
        `[B, H, W, Cout]`: `tf.nn.convolution(x, kernel, padding="SAME",
        dilations=dilation_rate)` to float rounding.
    """
    kh, kw, cin, cout = kernel.shape
    taps = tf.reshape(tf.transpose(kernel, [2, 0, 1, 3]), [1, 1, cin, kh * kw * cout])
    products = conv2d(x, taps, padding="VALID")
    height, width = tf.shape(x)[1], tf.shape(x)[2]
    out = None
    for ky in range(kh):
        for kx in range(kw):
            dy, dx = (ky - kh // 2) * dilation_rate[0], (kx - kw // 2) * dilation_rate[1]
            tap = ky * kw + kx
            # out[i, j] += products[i + dy, j + dx] where that pixel exists.
            top, bottom = tf.clip_by_value(-dy, 0, height), tf.clip_by_value(height - dy, 0,
                                                                              height)
            left, right = tf.clip_by_value(-dx, 0, width), tf.clip_by_value(width - dx, 0,
                                                                              width)
            part = products[:, top + dy:bottom + dy, left + dx:right + dx,
                            tap * cout:(tap + 1) * cout]
            part = tf.pad(part, [[0, 0], [top, height - bottom], [left, width - right], [0, 0]])
            out = part if out is None else out + part
    return out


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
        x = Conv2D(channels + 1, 1, name=f"{name}_conv1")(x)
        x = layers.ReLU(name=f"{name}_relu")(x)
        x = Conv2D(1, 1, name=f"{name}_conv2")(x)
        x = batch_norm(x, f"{name}_bn_out", bn_kwargs)
    elif form == "paper":
        x = Conv2D(1, 1, use_bias=False, name=f"{name}_conv")(x)
        x = batch_norm(x, f"{name}_bn", bn_kwargs)
    else:
        raise ConfigError(f"model.gate '{form}': expected 'reference' or 'paper'")
    alpha = layers.Activation("sigmoid", name=f"{name}_alpha")(x)
    x = GateMultiply(name=f"{name}_gating")([features, alpha])
    x = Conv2D(channels, 1, use_bias=False, name=f"{name}_weight")(x)
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
            conv_bn_relu(x, channels, 3, f"aspp_atrous{i}", bn_kwargs, dilation=rate * scale,
                         conv=AtrousConv2D))
    return layers.Concatenate(name="aspp_concat")(branches)
