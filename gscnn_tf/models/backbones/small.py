"""A small backbone that trains in minutes on 2 CPU cores (the synthetic default and tests).

Five stages of conv+BN+ReLU pairs, widths `base_width` x (1, 2, 4, 8, 8); strides 2, 2, 2 then
dilation for output stride 8 (or a fourth stride 2 for 16). Taps (channels, stride):
    stem  = stage1 (w,   2)     skip = gate1 = stage2 (2w, 4)
    gate2 = stage3 (4w,  8)     gate3 = out  = stage5 (8w, 8 / 16)
"""

from __future__ import annotations

from keras import layers

from gscnn_tf.errors import ConfigError
from gscnn_tf.models.layers import Conv2D, batch_norm, conv_bn_relu

PREPROCESSING = "torch"


def build(config, x, bn_kwargs):
    """Builds the small backbone on the normalised image `x` [B, H, W, 3]; returns its taps."""
    if config.weights:
        raise ConfigError(f"model.backbone.weights '{config.weights}': the small backbone has "
                          "no pretrained weights; leave it empty")
    w = config.base_width
    stage4_stride, dilation = (1, 2) if config.output_stride == 8 else (2, 1)
    plan = [(w, 2, 1), (2 * w, 2, 1), (4 * w, 2, 1), (8 * w, stage4_stride, 1),
            (8 * w, 1, dilation)]
    stages = []
    for i, (filters, stride, rate) in enumerate(plan, start=1):
        x = Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                   dilation_rate=rate if stride == 1 else 1,
                   name=f"small_stage{i}_down_conv")(x)
        x = batch_norm(x, f"small_stage{i}_down_bn", bn_kwargs)
        x = layers.ReLU(name=f"small_stage{i}_down_relu")(x)
        x = conv_bn_relu(x, filters, 3, f"small_stage{i}_conv", bn_kwargs,
                         dilation=max(rate, 1))
        stages.append(x)
    return {"stem": stages[0], "skip": stages[1], "gate1": stages[1], "gate2": stages[2],
            "gate3": stages[4], "out": stages[4]}


def cut_layers(config, layer_names) -> list[str]:
    """The layers whose outputs carry the whole trunk, in order: each stage's last ReLU
    (`gscnn_tf.models.recompute`)."""
    return [f"small_stage{i}_conv_relu" for i in range(1, 6)]
