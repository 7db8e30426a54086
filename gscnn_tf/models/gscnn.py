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

`GSCNN` is that graph as a Keras model built from explicit arguments, with the task half
(`compile` / `fit`: gscnn_tf.models.task) and presets (gscnn_tf.models.presets), in the shape
of keras-hub's models and tasks without depending on keras-hub. `build_model(model_config,
num_classes)` is `GSCNN.from_model_config`.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import layers

from gscnn_tf.config import ModelConfig, config_from_dict
from gscnn_tf.errors import ConfigError
from gscnn_tf.models.backbones import build_backbone, cut_layers, preprocessing_mode
from gscnn_tf.models.compat import batch_norm_kwargs, is_reference, reference_canny
from gscnn_tf.models.layers import (
    Conv2D, Normalize, ResizeLike, ZerosMap, aspp, conv_bn_relu)
from gscnn_tf.models.parts import GATE_ALPHAS
from gscnn_tf.models.shape_stream import segments as shape_stream_segments
from gscnn_tf.models.shape_stream import shape_stream
from gscnn_tf.models.task import GSCNNTask
from gscnn_tf.ops.canny import Canny

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
    raise ConfigError(f"model.image_gradients '{config.image_gradients}': expected one of "
                      f"{IMAGE_GRADIENTS}")


def _fuse_boundary(edge_logits, canny):
    """concat(sigmoid(boundary logits), Canny) -> 1x1 conv (no bias) -> sigmoid."""
    edge_prob = layers.Activation("sigmoid", name="edge_prob")(edge_logits)
    x = layers.Concatenate(name="fusion_concat")([edge_prob, canny])
    x = Conv2D(1, 1, use_bias=False, name="fusion_conv")(x)
    return layers.Activation("sigmoid", name="fusion_boundary")(x)


def _decoder(x, skip, image, num_classes, config, bn_kwargs):
    """DeepLab v3+ decoder: `[B, h, w, 6 x 256]` -> seg logits `[B, H, W, num_classes]`.

    The concat puts the upsampled ASPP features first, the skip second (the reference has
    the opposite order; the converter permutes `decoder_conv1`'s input channels)."""
    x = Conv2D(config.decoder_channels, 1, use_bias=False, name="decoder_aspp_proj")(x)
    low = Conv2D(config.skip_channels, 1, use_bias=False, name="decoder_skip_proj")(skip)
    x = ResizeLike(align_corners=is_reference(config), name="decoder_upsample")([x, low])
    x = layers.Concatenate(name="decoder_concat")([x, low])
    x = conv_bn_relu(x, config.decoder_channels, 3, "decoder_conv1", bn_kwargs)
    x = conv_bn_relu(x, config.decoder_channels, 3, "decoder_conv2", bn_kwargs)
    x = Conv2D(num_classes, 1, use_bias=False, name="decoder_classifier")(x)
    return ResizeLike(name="decoder_output_resize")([x, image])


def _graph(config, num_classes: int):
    """The functional graph of `config`: (input `image`, outputs dict)."""
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
    return image, outputs


def head_segments(model) -> list:
    """The heads of a built GSCNN as `gscnn_tf.models.recompute` segments
    (`model.recompute_heads`), recomputed: the shape stream's parts, ASPP (from the trunk's
    output and the fused boundary map at its resolution) and the decoder (from ASPP's output,
    the skip tap and the image, to the full-resolution logits); between them, run plainly, the
    boundary logits (an output of the model)."""
    from gscnn_tf.models.recompute import Segment

    def out(name):
        return model.get_layer(name).output

    shape = model.model_config.shape_stream
    parts, aspp_inputs = [], [model.get_layer("aspp_pool").input]
    if shape:
        parts = shape_stream_segments(model, True)
        # The boundary logits are an output and feed ASPP's edge branch: computed once,
        # plainly (a 1x1 convolution to one channel and its resize).
        parts.append(Segment([parts[-1].output, model.input], out("shape_output_resize"),
                             False, "the boundary logits"))
        aspp_inputs.append(out("aspp_edge_resize"))
    parts.append(Segment(aspp_inputs, out("aspp_concat"), True, "ASPP"))
    parts.append(Segment([out("aspp_concat"), model.get_layer("decoder_skip_proj").input,
                          model.input], out("decoder_output_resize"), True, "the decoder"))
    return parts


_MODEL_DEFAULTS = ModelConfig()


@keras.saving.register_keras_serializable(package="gscnn_tf")
class GSCNN(GSCNNTask):
    """Gated-SCNN (or, with `shape_stream=False`, the DeepLab v3+ baseline) as a Keras model
    and task: a functional graph built here from explicit arguments, plus the training recipe
    (`compile`, `fit`, `compute_loss`: the `GSCNNTask` base) and presets (`save_to_preset`,
    `from_preset`).

    Input `image` float32 `[B, H, W, 3]`, RGB 0..255, any H and W. Outputs
    `{"seg_logits": [B, H, W, num_classes], "edge_logits": [B, H, W, 1]}`, float32 logits
    even under a mixed-precision policy (the baseline's `edge_logits` is a constant zero map).

        model = gscnn_tf.GSCNN(num_classes=19, backbone={"name": "resnet50"})
        model = gscnn_tf.GSCNN.from_yaml("configs/cityscapes_resnet50.yaml")
        model = gscnn_tf.GSCNN.from_preset("runs/synthetic")   # preset, .keras or run dir

    Args:
        num_classes: segmentation classes.
        backbone ... recompute_heads: the fields of `gscnn_tf.config.ModelConfig`,
            with the same defaults; `backbone` is a dict of `BackboneConfig` fields. Its `weights`
            (ImageNet or a file) initialise a new model only: a model rebuilt from its config
            (`keras.saving.load_model`, presets) gets its weights from the saved file.
        class_names: one name per class (default `class_0`, `class_1`, ...).
        palette: one RGB colour (0..255) per class (default `viz.default_palette`).
        ignore_label: the label value of pixels that count for no class (loss and mIoU).
        loss_config: dict of `gscnn_tf.config.LossConfig` fields: the loss `compile()` uses.

    `get_config()` returns exactly these arguments (and `name`, `trainable`), so
    `model.save("x.keras")` and `keras.saving.load_model("x.keras")` round-trip in any
    process that has run `import gscnn_tf`. Layer names are a contract (`gate_model`,
    `gscnn-tf summary`, the reference import and the `keras.applications` weight transfer
    rely on them).
    """

    def __init__(self, num_classes, backbone=None,
                 shape_stream=_MODEL_DEFAULTS.shape_stream,
                 shape_stream_stride=_MODEL_DEFAULTS.shape_stream_stride,
                 gate=_MODEL_DEFAULTS.gate,
                 image_gradients=_MODEL_DEFAULTS.image_gradients,
                 canny_low=_MODEL_DEFAULTS.canny_low,
                 canny_high=_MODEL_DEFAULTS.canny_high,
                 canny_max_steps=_MODEL_DEFAULTS.canny_max_steps,
                 canny_step_form=_MODEL_DEFAULTS.canny_step_form,
                 aspp_channels=_MODEL_DEFAULTS.aspp_channels,
                 aspp_rates=tuple(_MODEL_DEFAULTS.aspp_rates),
                 decoder_channels=_MODEL_DEFAULTS.decoder_channels,
                 skip_channels=_MODEL_DEFAULTS.skip_channels,
                 compat=_MODEL_DEFAULTS.compat,
                 sync_batch_norm=_MODEL_DEFAULTS.sync_batch_norm,
                 recompute_trunk=_MODEL_DEFAULTS.recompute_trunk,
                 recompute_heads=_MODEL_DEFAULTS.recompute_heads,
                 class_names=None, palette=None, ignore_label=255, loss_config=None,
                 name=None, **kwargs):
        unknown = sorted(set(kwargs) - {"trainable", "dtype"})
        if unknown:
            raise TypeError(f"GSCNN: unknown argument(s) {', '.join(unknown)}; the model's "
                            "arguments are num_classes, the ModelConfig fields, class_names, "
                            "palette, ignore_label, loss_config and name")
        fields = {
            "backbone": dict(backbone or {}), "shape_stream": shape_stream,
            "shape_stream_stride": shape_stream_stride, "gate": gate,
            "image_gradients": image_gradients, "canny_low": canny_low,
            "canny_high": canny_high, "canny_max_steps": canny_max_steps,
            "canny_step_form": canny_step_form, "aspp_channels": aspp_channels,
            "aspp_rates": list(aspp_rates), "decoder_channels": decoder_channels,
            "skip_channels": skip_channels, "compat": compat,
            "sync_batch_norm": sync_batch_norm, "recompute_trunk": recompute_trunk,
            "recompute_heads": recompute_heads}
        parsed = config_from_dict({"model": fields, "loss": dict(loss_config or {})},
                                  "GSCNN arguments")
        model_config, num_classes = parsed.model, int(num_classes)
        image, outputs = _graph(model_config, num_classes)
        kind = "gscnn" if model_config.shape_stream else "deeplabv3plus"
        super().__init__(image, outputs, name=name or f"{kind}_{model_config.backbone.name}",
                         **kwargs)
        # === Config ===
        self.model_config = model_config
        self.loss_config = parsed.loss
        self.num_classes = num_classes
        self.ignore_label = int(ignore_label)
        self.class_names = _class_names(class_names, num_classes)
        self.palette = _palette(palette, num_classes)
        self._task = None
        self._recompute = None

    def call(self, inputs, training=None, mask=None):
        """The functional graph; a training call of a model built with `recompute_trunk` or
        `recompute_heads` runs it through `gscnn_tf.models.recompute.Recompute` (same
        outputs, those activations recomputed in the backward pass)."""
        config = self.model_config
        if not (training and (config.recompute_trunk or config.recompute_heads)):
            return super().call(inputs, training=training, mask=mask)
        if self._recompute is None:
            from gscnn_tf.models import recompute

            cuts = cut_layers(config.backbone, [layer.name for layer in self.layers])
            plan = recompute.trunk_segments(self, cuts, config.recompute_trunk)
            if config.recompute_heads:
                plan += head_segments(self)
            # Not tracked as a sublayer: its views share this model's layers and weights.
            object.__setattr__(self, "_recompute", recompute.Recompute(self, plan))
        return self._recompute(inputs)

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "num_classes": self.num_classes, **dataclasses.asdict(self.model_config),
                "class_names": list(self.class_names),
                "palette": [list(c) for c in self.palette],
                "ignore_label": self.ignore_label,
                "loss_config": dataclasses.asdict(self.loss_config)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        # The weights come with the saved model: its initial-weights source is not read.
        config["backbone"] = {**dict(config.get("backbone") or {}), "weights": ""}
        return cls(**config)

    # === Constructors ===

    @classmethod
    def from_model_config(cls, model_config, num_classes, **kwargs):
        """A new model from a `ModelConfig`; `kwargs`: class_names, palette, ignore_label,
        loss_config (a `LossConfig` or dict), name."""
        loss_config = kwargs.pop("loss_config", None)
        if dataclasses.is_dataclass(loss_config):
            loss_config = dataclasses.asdict(loss_config)
        return cls(num_classes, **dataclasses.asdict(model_config), loss_config=loss_config,
                   **kwargs)

    @classmethod
    def from_run_config(cls, config, **kwargs):
        """A new (untrained) model from a full `Config`: its model and loss sections, with
        the classes, palette and ignore label of its dataset section."""
        from gscnn_tf.data.pipeline import dataset_info

        info = dataset_info(config)
        return cls.from_model_config(
            config.model, info.num_classes, class_names=list(info.class_names),
            palette=np.asarray(info.palette).tolist(), ignore_label=int(info.ignore_label),
            loss_config=config.loss, **kwargs)

    @classmethod
    def from_yaml(cls, path, overrides=(), **kwargs):
        """A new (untrained) model from a config file plus `a.b=value` overrides."""
        from gscnn_tf.config import load_config

        return cls.from_run_config(load_config(path, overrides), **kwargs)

    @classmethod
    def from_preset(cls, path):
        """A trained model from a preset folder (`save_to_preset`), a `.keras` file or a run
        directory (its best model); see `gscnn_tf.models.presets.load_preset`."""
        from gscnn_tf.models.presets import load_preset

        return load_preset(path)

    def save_to_preset(self, preset_dir, metrics=None, training_config=None):
        """Writes a preset folder: config.json, model.weights.h5, metadata.json (classes,
        palette, metrics) and a model card README.md; see `gscnn_tf.models.presets`."""
        from gscnn_tf.models.presets import save_preset

        return save_preset(self, preset_dir, metrics, training_config)


def _class_names(names, num_classes: int) -> tuple:
    if names is None:
        return tuple(f"class_{i}" for i in range(num_classes))
    names = tuple(str(n) for n in names)
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names: expected one per class "
                         f"({num_classes})")
    return names


def _palette(palette, num_classes: int) -> tuple:
    if palette is None:
        from gscnn_tf import viz

        palette = viz.default_palette(num_classes)
    array = np.asarray(palette)
    if array.shape != (num_classes, 3) or array.min() < 0 or array.max() > 255:
        raise ValueError(f"palette shape {array.shape}: expected one RGB colour (0..255) per "
                         f"class, [{num_classes}, 3]")
    return tuple(tuple(int(v) for v in colour) for colour in array)


def build_model(config, num_classes: int) -> GSCNN:
    """Builds Gated-SCNN (or the DeepLab v3+ baseline) from a `ModelConfig`:
    `GSCNN.from_model_config(config, num_classes)`.

    Returns:
        Model with input `image` float32 `[B, H, W, 3]` (RGB 0..255, any H, W) and outputs
        `{"seg_logits": [B, H, W, num_classes], "edge_logits": [B, H, W, 1]}`, float32 logits
        even under a mixed-precision policy.
    """
    return GSCNN.from_model_config(config, num_classes)


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
