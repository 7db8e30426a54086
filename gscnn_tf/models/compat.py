"""`model.compat: reference`: the reference PyTorch implementation's numerical conventions, so
a model holding converted reference weights (gscnn_tf.reference_import) reproduces its outputs.

    resizes          align_corners=True bilinear (scale (in - 1) / (out - 1)) for the gate
                     maps, the shape output, the ASPP image and edge branches and the decoder
                     upsampling; the final upsampling to the input size stays half-pixel
    BatchNorm        epsilon 1e-5, momentum 0.9 (PyTorch's eps and momentum 0.1)
    image gradients  Canny (10 / 100, all three channels, OpenCV's per-pixel largest-gradient
                     rule) of the ImageNet-normalised image cast to uint8 as numpy does it
                     (truncation toward zero, wrapping modulo 256), map left at 0 / 255

It applies to the reference architecture only: WideResNet-38 at output stride 8, the shape
stream at full resolution with the normalised gate. `compat: none` (default) changes nothing.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from gscnn_tf.config import ConfigError
from gscnn_tf.ops.canny import Canny

COMPAT_MODES = ("none", "reference")
# What the reference network is, as (field, value) pairs of the ModelConfig.
_REFERENCE_FIELDS = (("backbone.name", "wrn38"), ("backbone.output_stride", 8),
                     ("shape_stream", True), ("shape_stream_stride", 1), ("gate", "reference"))


def _field(config, dotted):
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def is_reference(config) -> bool:
    """Checks `config.compat` (a `ModelConfig`); True for "reference".

    Raises:
        ConfigError: an unknown mode, or "reference" on a network other than the reference's.
    """
    if config.compat not in COMPAT_MODES:
        raise ConfigError(f"model.compat '{config.compat}': expected one of {COMPAT_MODES}")
    if config.compat == "none":
        return False
    wrong = [f"model.{name} is {_field(config, name)!r} (needs {value!r})"
             for name, value in _REFERENCE_FIELDS if _field(config, name) != value]
    if wrong:
        raise ConfigError("model.compat 'reference' reproduces the reference WideResNet-38 "
                          "GSCNN only: " + "; ".join(wrong))
    return True


def batch_norm_kwargs(config) -> dict:
    """Extra BatchNormalization arguments: PyTorch's epsilon and momentum in compat mode."""
    return {"epsilon": 1e-5, "momentum": 0.9} if is_reference(config) else {}


@keras.saving.register_keras_serializable(package="gscnn_tf")
class WrapToUint8(layers.Layer):
    """Float `[B, H, W, C]` -> float32 integers 0..255: numpy's `astype(np.uint8)` on x86
    made explicit (truncate toward zero, then modulo 256: -2.1 -> 254, -0.5 -> 0,
    256.5 -> 0), with FLOOR / CEIL / MUL / SUB only, so every backend and TFLite agree."""

    def call(self, x):
        x = tf.cast(x, tf.float32)
        t = tf.where(x < 0.0, tf.math.ceil(x), tf.math.floor(x))
        return t - 256.0 * tf.math.floor(t / 256.0)

    def compute_output_shape(self, input_shape):
        return input_shape


def reference_canny(normalized, config):
    """The reference's image-gradient map: `[B, H, W, 3]` ImageNet-normalised image ->
    `[B, H, W, 1]` float32 in {0, 255}."""
    x = WrapToUint8(name="canny_wrap_uint8", dtype="float32")(normalized)
    x = Canny(config.canny_low, config.canny_high, config.canny_max_steps,
              config.canny_step_form, channels="max", name="canny", dtype="float32")(x)
    return layers.Rescaling(255.0, name="canny_scale", dtype="float32")(x)
