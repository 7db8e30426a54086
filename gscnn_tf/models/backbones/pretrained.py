"""ImageNet weights for backbones that mirror a `keras.applications` model layer by layer.

`backbone.weights` is "" (keep the random initialisation), "imagenet" (keras.applications
downloads its no-top file; needs network once, then Keras' cache) or a path to a weights file of
that same keras.applications model without its top (the downloaded `*_notop.h5`, or a
`.weights.h5` / `.keras` file saved from it). Either way the source model is built and loaded by
keras.applications, then every weighted layer of our backbone takes the weights of the source
layer with the same name. Source layers we do not build (a classifier head, MobileNetV2's last
1x1 conv) are ignored.
"""

from __future__ import annotations

from typing import Callable

import keras

from gscnn_tf import files
from gscnn_tf.errors import ConfigError


def load_pretrained(config, x, taps, make_source: Callable, source_name: str) -> None:
    """Loads `config.weights` into the backbone layers between `x` and the taps, in place.

    Args:
        config: the `BackboneConfig`; nothing happens when `config.weights` is "".
        x: the backbone's input tensor in the caller's functional graph.
        taps: the backbone's taps (tensors computed from `x`).
        make_source: `make_source(weights)` builds the keras.applications model with
            `include_top=False` and `weights` ("imagenet" or None).
        source_name: how errors name that model, e.g. "keras.applications.ResNet50".

    Raises:
        ValueError: file not found or not loadable into the source model; a layer of ours with
            no source layer of that name, or with weights of other shapes (both named).
    """
    weights = config.weights
    if not weights:
        return
    if weights == "imagenet":
        try:
            source = make_source("imagenet")
        except Exception as e:  # no network, or a width keras.applications has no weights for
            raise ConfigError(
                f"model.backbone.weights 'imagenet': keras.applications could not provide "
                f"{source_name}'s ImageNet weights (the first use downloads them; a local "
                f"weights file works offline): {e}") from e
    else:
        if not files.isfile(weights):
            raise ConfigError(
                f"model.backbone.weights '{weights}': no such file (expected 'imagenet', '' or "
                f"a weights file of {source_name} without its top)")
        source = make_source(None)
        try:
            source.load_weights(weights)
        except Exception as e:  # Keras raises ValueError, OSError or KeyError by format.
            raise ConfigError(
                f"model.backbone.weights '{weights}': not a weights file of {source_name} "
                f"without its top: {e}") from e
    outputs = list({id(t): t for t in taps.values()}.values())
    copy_weights_by_name(source, keras.Model(x, outputs).layers, source_name)


def copy_weights_by_name(source: keras.Model, layers, source_name: str) -> None:
    """Gives every layer in `layers` that has weights the weights of `source`'s same-named layer."""
    for layer in layers:
        if not layer.weights:
            continue
        try:
            src = source.get_layer(layer.name)
        except ValueError:
            raise ValueError(
                f"backbone layer '{layer.name}' has no layer of that name in {source_name}"
            ) from None
        ours = [tuple(w.shape) for w in layer.weights]
        theirs = [tuple(w.shape) for w in src.weights]
        if ours != theirs:
            raise ValueError(
                f"backbone layer '{layer.name}': weight shapes {ours} differ from "
                f"{source_name}'s {theirs}")
        layer.set_weights(src.get_weights())
