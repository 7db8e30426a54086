"""Dilated ResNet-50 / ResNet-101 (v1, stride on the first 1x1 conv of a stage, as in
`keras.applications`), with the same layer names and weight shapes so its ImageNet weights load.

Output stride 8 or 16 comes from dilation, never from dropping stages: at OS 16 conv5_x keeps
stride 1 and dilates its 3x3 convs by 2; at OS 8 conv4_x does the same with rate 2 and conv5_x
with rate 4. Every block of a dilated stage uses the stage's rate: the removed stride sat on the
block's first 1x1 conv, so each 3x3 conv was trained on the already subsampled grid.

Taps (channels, stride) at OS 8 / 16:
    stem  = conv1_relu        (64,   2)
    skip  = gate1 = conv2_x   (256,  4)
    gate2 = conv3_x           (512,  8)
    gate3 = out = conv5_x     (2048, 8 / 16)
A spatial size n becomes ceil(n / stride) at every tap.
"""

from __future__ import annotations

import keras
from keras import layers

from gscnn_tf.errors import ConfigError
from gscnn_tf.models.backbones.pretrained import load_pretrained
from gscnn_tf.models.layers import Conv2D, batch_norm

PREPROCESSING = "caffe"

_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
_SOURCES = {"resnet50": keras.applications.ResNet50, "resnet101": keras.applications.ResNet101}


def stage_layout(output_stride: int) -> list[tuple[int, int]]:
    """(stride, dilation) of conv2_x .. conv5_x for output stride 8 or 16."""
    if output_stride == 8:
        return [(1, 1), (2, 1), (1, 2), (1, 4)]
    if output_stride == 16:
        return [(1, 1), (2, 1), (2, 1), (1, 2)]
    raise ConfigError(f"model.backbone.output_stride {output_stride}: expected 8 or 16")


def _bottleneck(x, filters, stride, dilation, projection, name, bn_kwargs):
    """keras.applications' `residual_block_v1` with a dilated 3x3 conv: out 4*filters ch."""
    if projection:
        shortcut = Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = batch_norm(shortcut, f"{name}_0_bn", bn_kwargs)
    else:
        shortcut = x
    x = Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = batch_norm(x, f"{name}_1_bn", bn_kwargs)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = Conv2D(filters, 3, padding="same", dilation_rate=dilation, name=f"{name}_2_conv")(x)
    x = batch_norm(x, f"{name}_2_bn", bn_kwargs)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = batch_norm(x, f"{name}_3_bn", bn_kwargs)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def build(config, x, bn_kwargs):
    """Builds the dilated ResNet named `config.name` on `x` and returns its taps.

    Args:
        config: `BackboneConfig` (name resnet50 | resnet101, output_stride, weights).
        x: float [B, H, W, 3], already preprocessed in "caffe" mode (BGR, mean subtracted).
        bn_kwargs: extra BatchNormalization arguments (default epsilon 1.001e-5 as in Keras).

    Returns:
        dict of taps, see the module docstring.
    """
    if config.name not in _BLOCKS:
        raise ConfigError(f"model.backbone.name '{config.name}': expected one of {list(_BLOCKS)}")
    bn_kwargs = {"epsilon": 1.001e-5, **bn_kwargs}
    inputs = x
    x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = Conv2D(64, 7, strides=2, name="conv1_conv")(x)
    x = batch_norm(x, "conv1_bn", bn_kwargs)
    stem = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(stem)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    stages = []
    layout = stage_layout(config.output_stride)
    for index, (blocks, (stride, dilation)) in enumerate(zip(_BLOCKS[config.name], layout)):
        filters = 64 * 2 ** index
        for block in range(1, blocks + 1):
            x = _bottleneck(x, filters, stride if block == 1 else 1, dilation, block == 1,
                            f"conv{index + 2}_block{block}", bn_kwargs)
        stages.append(x)
    taps = {"stem": stem, "skip": stages[0], "gate1": stages[0], "gate2": stages[1],
            "gate3": stages[3], "out": stages[3]}
    source = _SOURCES[config.name]
    load_pretrained(
        config, inputs, taps,
        lambda weights: source(include_top=False, weights=weights, input_shape=(224, 224, 3)),
        f"keras.applications.{source.__name__}")
    return taps


def cut_layers(config, layer_names) -> list[str]:
    """The layers whose outputs carry the whole trunk, in order: the stem's ReLU and every
    block's output (`gscnn_tf.models.recompute`)."""
    return ["conv1_relu"] + [f"conv{stage}_block{block}_out"
                             for stage, blocks in enumerate(_BLOCKS[config.name], 2)
                             for block in range(1, blocks + 1)]
