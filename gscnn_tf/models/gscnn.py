"""Gated-SCNN: regular stream + gated shape stream + ASPP fusion + DeepLab v3+ decoder.

    image (RGB 0..255) -> Normalize -> backbone taps
        stem, gate1..3 -> shape stream -> boundary logits (edge_logits, input size)
        image -> Canny ----------------------------.
        sigmoid(edge_logits) -> concat -> 1x1 -> sigmoid = fused boundary map
        out tap + fused boundary map -> ASPP (image pool, edge, 1x1, 3 atrous)
            -> 1x1 -> upsample to skip -> concat(skip 1x1 48) -> 2 x 3x3 -> 1x1 classes
            -> upsample to input size = seg_logits

`model.shape_stream: false` builds the DeepLab v3+ baseline on the same backbone: no shape
stream, no edge branch; its `edge_logits` is a constant zero map (documented stand-in) so every
consumer sees the same output dict. `model.compat: reference` builds the same graph with the
reference implementation's numerics (gscnn_tf.models.compat).
"""

from __future__ import annotations

import keras
from keras import layers

from gscnn_tf.models.backbones import build_backbone, preprocessing_mode
from gscnn_tf.models.compat import batch_norm_kwargs, is_reference, reference_canny
from gscnn_tf.models.layers import (
    Normalize, ResizeLike, ZerosMap, aspp, conv_bn_relu)
from gscnn_tf.models.shape_stream import shape_stream
from gscnn_tf.ops.canny import Canny

GATE_ALPHAS = ("gate1_alpha", "gate2_alpha", "gate3_alpha")
IMAGE_GRADIENTS = ("canny", "none")


def _image_gradients(image, normalized, config):
    """`[B, H, W, 1]` float32: Canny edges in {0, 1} of the raw image ({0, 255} of the
    uint8-wrapped normalised image in compat mode), or zeros."""
    if config.image_gradients == "canny" and is_reference(config):
        return reference_canny(normalized, config)
    if config.image_gradients == "canny":
        return Canny(config.canny_low, config.canny_high, config.canny_max_steps,
                     config.canny_step_form, name="canny", dtype="float32")(image)
    if config.image_gradients == "none":
        return ZerosMap(name="canny", dtype="float32")(image)
    raise ValueError(f"model.image_gradients '{config.image_gradients}': expected one of "
                     f"{IMAGE_GRADIENTS}")


def _fuse_boundary(edge_logits, canny):
    """concat(sigmoid(boundary logits), Canny) -> 1x1 conv (no bias) -> sigmoid."""
    edge_prob = layers.Activation("sigmoid", name="edge_prob")(edge_logits)
    x = layers.Concatenate(name="fusion_concat")([edge_prob, canny])
    x = layers.Conv2D(1, 1, use_bias=False, name="fusion_conv")(x)
    return layers.Activation("sigmoid", name="fusion_boundary")(x)


def _decoder(x, skip, image, num_classes, config, bn_kwargs):
    """DeepLab v3+ decoder: `[B, h, w, 6 x 256]` -> seg logits `[B, H, W, num_classes]`.

    The concat puts the upsampled ASPP features first, the skip second (the reference has
    the opposite order; the converter permutes `decoder_conv1`'s input channels)."""
    x = layers.Conv2D(config.decoder_channels, 1, use_bias=False, name="decoder_aspp_proj")(x)
    low = layers.Conv2D(config.skip_channels, 1, use_bias=False, name="decoder_skip_proj")(skip)
    x = ResizeLike(align_corners=is_reference(config), name="decoder_upsample")([x, low])
    x = layers.Concatenate(name="decoder_concat")([x, low])
    x = conv_bn_relu(x, config.decoder_channels, 3, "decoder_conv1", bn_kwargs)
    x = conv_bn_relu(x, config.decoder_channels, 3, "decoder_conv2", bn_kwargs)
    x = layers.Conv2D(num_classes, 1, use_bias=False, name="decoder_classifier")(x)
    return ResizeLike(name="decoder_output_resize")([x, image])


def build_model(config, num_classes: int) -> keras.Model:
    """Builds Gated-SCNN (or the DeepLab v3+ baseline) as a functional `keras.Model`.

    Args:
        config: `ModelConfig`.
        num_classes: number of segmentation classes.

    Returns:
        Model with input `image` float32 `[B, H, W, 3]` (RGB 0..255, any H, W) and outputs
        `{"seg_logits": [B, H, W, num_classes], "edge_logits": [B, H, W, 1]}`, float32 logits
        even under a mixed-precision policy.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes {num_classes}: expected >= 1")
    align = is_reference(config)
    bn_kwargs = {"synchronized": config.sync_batch_norm, **batch_norm_kwargs(config)}
    image = keras.Input((None, None, 3), name="image")
    x = Normalize(preprocessing_mode(config.backbone), name="normalize")(image)
    taps = build_backbone(config.backbone, x, bn_kwargs)
    if config.shape_stream:
        boundary, _ = shape_stream(image, taps, config, bn_kwargs)
        edge_logits = ResizeLike(align_corners=align, name="shape_output_resize")(
            [boundary, image])
        fused = _fuse_boundary(edge_logits, _image_gradients(image, x, config))
    else:
        edge_logits, fused = ZerosMap(name="edge_stand_in")(image), None
    x = aspp(taps["out"], fused, config.aspp_channels, config.aspp_rates,
             config.backbone.output_stride, bn_kwargs, align)
    seg_logits = _decoder(x, taps["skip"], image, num_classes, config, bn_kwargs)
    outputs = {
        "seg_logits": layers.Activation("linear", dtype="float32", name="seg_logits")(seg_logits),
        "edge_logits": layers.Activation("linear", dtype="float32", name="edge_logits")(
            edge_logits),
    }
    name = "gscnn" if config.shape_stream else "deeplabv3plus"
    return keras.Model(image, outputs, name=f"{name}_{config.backbone.name}")


def gate_model(model: keras.Model) -> keras.Model:
    """A view of `model` returning its three gate activations
    `{"gate1": alpha, "gate2": ..., "gate3": ...}`, each `[B, h, w, 1]` in [0, 1] at the
    shape stream's resolution; shares weights with `model` (no second definition)."""
    try:
        alphas = {name.split("_")[0]: model.get_layer(name).output for name in GATE_ALPHAS}
    except ValueError as e:
        raise ValueError(f"model '{model.name}' has no shape-stream gates (built with "
                         "model.shape_stream: false?)") from e
    return keras.Model(model.input, alphas, name=f"{model.name}_gates")
