"""Dilated MobileNetV2 with a width multiplier, for edge deployment; same layer names and weight
shapes as `keras.applications.MobileNetV2(alpha=width_multiplier)` so its ImageNet weights load
(keras.applications offers them for alpha 0.35, 0.5, 0.75, 1.0, 1.3 and 1.4).

Output stride 8 or 16 comes from dilation (the DeepLab recipe): once the output stride is
reached, a block that would stride 2 keeps stride 1 and its depthwise conv keeps the current
rate (it was trained on the finer grid), and every later depthwise conv dilates by twice that.
Stride-2 depthwise convs use "same" padding, which is what keras.applications' explicit padding
amounts to for every input whose size it knows; every tap has spatial size ceil(n / stride).
The last 1x1 conv of the classifier (`Conv_1`, 1280 channels) is not built: ASPP reads the
320-channel features of the last inverted residual block, as DeepLab does.

Taps (channels at width multiplier a, stride) at OS 8 / 16:
    stem  = Conv1_relu           (div8(32 a),  2)
    skip  = gate1 = block 2      (div8(24 a),  4)
    gate2 = block 5              (div8(32 a),  8)
    gate3 = out = block 16       (div8(320 a), 8 / 16)
"""

from __future__ import annotations

import keras
from keras import layers

from gscnn_tf.errors import ConfigError
from gscnn_tf.models.backbones.pretrained import load_pretrained
from gscnn_tf.models.layers import Conv2D, batch_norm

PREPROCESSING = "tf"

# (output filters at width 1, stride, expansion) of the inverted residual blocks 0..16.
_BLOCKS = ((16, 1, 1), (24, 2, 6), (24, 1, 6), (32, 2, 6), (32, 1, 6), (32, 1, 6),
           (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6), (96, 1, 6), (96, 1, 6), (96, 1, 6),
           (160, 2, 6), (160, 1, 6), (160, 1, 6), (320, 1, 6))
_TAP_BLOCKS = {"skip": 2, "gate1": 2, "gate2": 5, "gate3": 16, "out": 16}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Channel rounding of keras.applications' MobileNetV2: nearest multiple of `divisor`,
    at least `divisor`, never more than 10 % below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def block_layout(output_stride: int) -> list[tuple[int, int]]:
    """(stride, dilation) of the depthwise conv of blocks 0..16 for output stride 8 or 16."""
    if output_stride not in (8, 16):
        raise ConfigError(f"model.backbone.output_stride {output_stride}: expected 8 or 16")
    current, rate, layout = 2, 1, []
    for _, stride, _ in _BLOCKS:
        if stride == 2 and current == output_stride:
            layout.append((1, rate))
            rate *= 2
        else:
            layout.append((stride, rate))
            current *= stride
    return layout


def _inverted_residual(x, block_id, filters, stride, dilation, expansion, trained_stride, alpha,
                       bn_kwargs):
    """keras.applications' `_inverted_res_block` with a dilated depthwise conv."""
    in_channels = x.shape[-1]
    out_channels = make_divisible(int(filters * alpha))
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    inputs = x
    if block_id:
        x = Conv2D(expansion * in_channels, 1, use_bias=False, name=f"{prefix}expand")(x)
        x = batch_norm(x, f"{prefix}expand_BN", bn_kwargs)
        x = layers.ReLU(6.0, name=f"{prefix}expand_relu")(x)
    x = layers.DepthwiseConv2D(3, strides=stride, padding="same", dilation_rate=dilation,
                               use_bias=False, name=f"{prefix}depthwise")(x)
    x = batch_norm(x, f"{prefix}depthwise_BN", bn_kwargs)
    x = layers.ReLU(6.0, name=f"{prefix}depthwise_relu")(x)
    x = Conv2D(out_channels, 1, use_bias=False, name=f"{prefix}project")(x)
    x = batch_norm(x, f"{prefix}project_BN", bn_kwargs)
    if in_channels == out_channels and trained_stride == 1:
        x = layers.Add(name=f"{prefix}add")([inputs, x])
    return x


def build(config, x, bn_kwargs):
    """Builds the dilated MobileNetV2 on `x` and returns its taps.

    Args:
        config: `BackboneConfig` (output_stride, width_multiplier, weights).
        x: float [B, H, W, 3], already preprocessed in "tf" mode (x / 127.5 - 1).
        bn_kwargs: extra BatchNormalization arguments (defaults epsilon 1e-3, momentum 0.999
            as in Keras).

    Returns:
        dict of taps, see the module docstring.
    """
    alpha = config.width_multiplier
    if not alpha > 0:
        raise ConfigError(f"model.backbone.width_multiplier {alpha}: expected a number > 0")
    bn_kwargs = {"epsilon": 1e-3, "momentum": 0.999, **bn_kwargs}
    inputs = x
    x = Conv2D(make_divisible(32 * alpha), 3, strides=2, padding="same", use_bias=False,
               name="Conv1")(x)
    x = batch_norm(x, "bn_Conv1", bn_kwargs)
    taps = {"stem": layers.ReLU(6.0, name="Conv1_relu")(x)}
    x = taps["stem"]
    for block_id, ((filters, trained_stride, expansion), (stride, dilation)) in enumerate(
            zip(_BLOCKS, block_layout(config.output_stride))):
        x = _inverted_residual(x, block_id, filters, stride, dilation, expansion,
                               trained_stride, alpha, bn_kwargs)
        taps.update({tap: x for tap, tap_block in _TAP_BLOCKS.items() if tap_block == block_id})
    load_pretrained(
        config, inputs, taps,
        lambda weights: keras.applications.MobileNetV2(
            include_top=False, weights=weights, alpha=alpha, input_shape=(224, 224, 3)),
        f"keras.applications.MobileNetV2(alpha={alpha})")
    return taps


def cut_layers(config, layer_names) -> list[str]:
    """The layers whose outputs carry the whole trunk, in order: the stem's ReLU and every
    inverted residual block's output (its residual sum where it has one, else its projection's
    batch norm; `gscnn_tf.models.recompute`)."""
    names = set(layer_names)
    prefixes = ["expanded_conv_"] + [f"block_{i}_" for i in range(1, len(_BLOCKS))]
    return ["Conv1_relu"] + [f"{p}add" if f"{p}add" in names else f"{p}project_BN"
                             for p in prefixes]
