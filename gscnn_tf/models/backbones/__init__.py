"""Regular-stream backbones. Each builder takes the `BackboneConfig` and the normalised
image tensor [B, H, W, 3] of a functional graph and returns the taps
`{"stem", "skip", "gate1", "gate2", "gate3", "out"}` (docs/method.md#regular-stream-taps)."""

from __future__ import annotations

import importlib

from gscnn_tf.errors import ConfigError

TAPS = ("stem", "skip", "gate1", "gate2", "gate3", "out")

_BUILDERS = {
    "small": "gscnn_tf.models.backbones.small",
    "resnet50": "gscnn_tf.models.backbones.resnet",
    "resnet101": "gscnn_tf.models.backbones.resnet",
    "wrn38": "gscnn_tf.models.backbones.wider_resnet",
    "mobilenetv2": "gscnn_tf.models.backbones.mobilenet",
}


def _module(config):
    if config.name not in _BUILDERS:
        raise ConfigError(
            f"model.backbone.name '{config.name}': expected one of {', '.join(_BUILDERS)}")
    return importlib.import_module(_BUILDERS[config.name])


def preprocessing_mode(config) -> str:
    """How the backbone named by `config.name` expects its input normalised, in the terms of
    `keras.applications.imagenet_utils.preprocess_input`: "caffe" (RGB -> BGR, minus the
    ImageNet mean in 0..255), "tf" (x / 127.5 - 1) or "torch" (x / 255, ImageNet mean / std)."""
    return _module(config).PREPROCESSING


def build_backbone(config, x, batch_norm_kwargs=None):
    """Builds the backbone named by `config.name` on `x`; returns the dict of taps.

    `batch_norm_kwargs` (synchronized, epsilon, momentum) apply to every BatchNormalization.
    """
    module = _module(config)
    if config.output_stride not in (8, 16):
        raise ConfigError(
            f"model.backbone.output_stride {config.output_stride}: expected 8 or 16")
    taps = module.build(config, x, dict(batch_norm_kwargs or {}))
    missing = [t for t in TAPS if t not in taps]
    if missing:
        raise ValueError(f"backbone '{config.name}' did not return taps {missing}")
    return taps


def cut_layers(config, layer_names) -> list[str]:
    """Names of the layers whose outputs carry the whole trunk of the backbone named by
    `config.name`, from its first layers to its `out` tap, in order: every path from the
    image to `out` passes through each of them (block boundaries; used by
    `gscnn_tf.models.recompute`). `layer_names`: the built model's layer names."""
    return _module(config).cut_layers(config, list(layer_names))
