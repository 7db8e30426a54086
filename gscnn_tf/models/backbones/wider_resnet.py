"""WideResNet-38-A2, the reference Gated-SCNN trunk (docs/method.md#regular-stream-taps),
dilated.

Pre-activation (identity mapping) residual blocks: BN+ReLU first; the first block of a module
projects the pre-activated input with a bias-free 1x1 conv (`proj`), the others add the raw
input. Plain blocks are two 3x3 convs (`conv1`, `conv2`); mod6 and mod7 are bottlenecks
(1x1 `conv1`, 3x3 `conv2`, 1x1 `conv3`). No conv has a bias and no BN follows mod7.

    module  blocks  widths            stride (OS 8 / 16)   dilation (OS 8 / 16)
    mod1    conv    64                1                    1
    pool2   max 3x3/2                 2
    mod2    3       128, 128          2                    1
    pool3   max 3x3/2                 4
    mod3    3       256, 256          4                    1
    mod4    6       512, 512          8 (first block /2)   1
    mod5    3       512, 1024         8 / 16               2 / 1
    mod6    1       512, 1024, 2048   8 / 16               4 / 2    SpatialDropout2D 0.3
    mod7    1       1024, 2048, 4096  8 / 16               4 / 2    SpatialDropout2D 0.5

Strided convs and pools pad symmetrically as PyTorch does (zero padding 1, then "valid"; the
max-pool takes a stride-1 "same" window, which ignores the border, then keeps every other
pixel), so every map has spatial size ceil(n / stride) and converted weights see the same
windows as in the reference.

Taps: stem = mod1 (64, s1), skip = mod2 (128, s2), gate1 = mod3 (256, s4),
gate2 = mod4 (512, s8), gate3 = out = mod7 (4096, s8 / s16).

Layer names follow the reference checkpoint keys: `modM.blockB.bn1.0.*` -> `modM_blockB_bn1`,
`modM.blockB.convs.convK.weight` -> `modM_blockB_convK`, `modM.blockB.convs.bnK.0.*` ->
`modM_blockB_bnK`, `modM.blockB.proj_conv.weight` -> `modM_blockB_proj`,
`mod1.conv1.weight` -> `mod1_conv1`.
"""

from __future__ import annotations


import keras
from keras import layers

from gscnn_tf import files
from gscnn_tf.errors import ConfigError
from gscnn_tf.models.layers import Conv2D, batch_norm

PREPROCESSING = "torch"

# (module, blocks, widths, dropout rate) of mod2..mod7.
_MODULES = ((2, 3, (128, 128), 0.0), (3, 3, (256, 256), 0.0), (4, 6, (512, 512), 0.0),
            (5, 3, (512, 1024), 0.0), (6, 1, (512, 1024, 2048), 0.3),
            (7, 1, (1024, 2048, 4096), 0.5))


def module_layout(output_stride: int) -> dict[int, tuple[int, int]]:
    """(stride of the first block, dilation) of mod2..mod7 for output stride 8 or 16."""
    if output_stride == 8:
        return {2: (1, 1), 3: (1, 1), 4: (2, 1), 5: (1, 2), 6: (1, 4), 7: (1, 4)}
    if output_stride == 16:
        return {2: (1, 1), 3: (1, 1), 4: (2, 1), 5: (2, 1), 6: (1, 2), 7: (1, 2)}
    raise ConfigError(f"model.backbone.output_stride {output_stride}: expected 8 or 16")


def _bn_relu(x, name, bn_kwargs):
    x = batch_norm(x, name, bn_kwargs)
    return layers.ReLU(name=f"{name}_relu")(x)


def _conv(x, filters, kernel_size, stride, dilation, name):
    """Bias-free conv; strided ones pad (kernel_size // 2) * dilation on every side first."""
    if stride > 1 and kernel_size > 1:
        x = layers.ZeroPadding2D(kernel_size // 2 * dilation, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return Conv2D(filters, kernel_size, strides=stride, padding=padding,
                  dilation_rate=dilation, use_bias=False, name=name)(x)


def _max_pool(x, name):
    """3x3 / 2 max-pool with PyTorch's padding=1: output size ceil(n / 2)."""
    x = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_window")(x)
    return layers.MaxPooling2D(1, strides=2, name=name)(x)


def _block(x, widths, stride, dilation, dropout, name, bn_kwargs):
    """Pre-activation residual block; `widths` of length 2 (plain) or 3 (bottleneck)."""
    pre = _bn_relu(x, f"{name}_bn1", bn_kwargs)
    if stride != 1 or x.shape[-1] != widths[-1]:
        shortcut = _conv(pre, widths[-1], 1, stride, 1, f"{name}_proj")
    else:
        shortcut = x
    if len(widths) == 2:
        kernels, strides, dilations = (3, 3), (stride, 1), (dilation, dilation)
    else:
        kernels, strides, dilations = (1, 3, 1), (stride, 1, 1), (1, dilation, 1)
    y = pre
    for k, (width, kernel, s, d) in enumerate(zip(widths, kernels, strides, dilations), 1):
        if k > 1:
            y = _bn_relu(y, f"{name}_bn{k}", bn_kwargs)
            if k == len(widths) and dropout:
                y = layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(y)
        y = _conv(y, width, kernel, s, d, f"{name}_conv{k}")
    return layers.Add(name=f"{name}_add")([y, shortcut])


def build(config, x, bn_kwargs):
    """Builds WideResNet-38-A2 on `x` and returns its taps.

    Args:
        config: `BackboneConfig` (output_stride, dropout; weights: "" or a `.keras` model file
            holding this trunk's layers, e.g. the converted reference checkpoint of
            `gscnn-tf import-reference`; there are no keras.applications weights for it).
        x: float [B, H, W, 3], preprocessed in "torch" mode (ImageNet mean / std).
        bn_kwargs: extra BatchNormalization arguments (epsilon 1e-5 and momentum 0.9 reproduce
            PyTorch's BN).

    Returns:
        dict of taps, see the module docstring.
    """
    if config.weights and not (config.weights.endswith(".keras")
                               and files.isfile(config.weights)):
        raise ConfigError(
            f"model.backbone.weights '{config.weights}': wrn38 has no keras.applications "
            "weights; expected '' (random initialisation) or an existing .keras model file "
            "with its layers (gscnn-tf import-reference writes one)")
    inputs = x
    layout = module_layout(config.output_stride)
    x = _conv(x, 64, 3, 1, 1, "mod1_conv1")
    outputs = {1: x}
    for module, blocks, widths, dropout in _MODULES:
        if module in (2, 3):
            x = _max_pool(x, f"pool{module}")
        stride, dilation = layout[module]
        for block in range(1, blocks + 1):
            x = _block(x, widths, stride if block == 1 else 1, dilation,
                       dropout if config.dropout else 0.0, f"mod{module}_block{block}", bn_kwargs)
        outputs[module] = x
    if config.weights:
        _load_trunk(config.weights, inputs, x)
    return {"stem": outputs[1], "skip": outputs[2], "gate1": outputs[3], "gate2": outputs[4],
            "gate3": outputs[7], "out": outputs[7]}


def cut_layers(config, layer_names) -> list[str]:
    """The layers whose outputs carry the whole trunk, in order: mod1's conv and every
    block's residual sum (`gscnn_tf.models.recompute`)."""
    return ["mod1_conv1"] + [f"mod{module}_block{block}_add" for module, blocks, _, _ in _MODULES
                             for block in range(1, blocks + 1)]


def _load_trunk(path, inputs, out):
    """Copies the same-named trunk weights of the `.keras` model at `path` into the layers
    between `inputs` and `out`."""
    from gscnn_tf.models import gscnn  # noqa: F401  (registers the custom layers)
    from gscnn_tf.models.backbones.pretrained import copy_weights_by_name

    try:
        source = keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises ValueError, OSError or TypeError by cause
        raise ConfigError(f"model.backbone.weights '{path}': not a loadable .keras model: "
                          f"{e}") from e
    copy_weights_by_name(source, keras.Model(inputs, out).layers, f"'{path}'")
