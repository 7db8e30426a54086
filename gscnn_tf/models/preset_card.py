"""What a preset (`gscnn_tf.models.presets`) says about its model for people and tools:
`preset_metadata`, the dict of its metadata.json, and `model_card`, its README.md.
"""

from __future__ import annotations

import os

import keras
import numpy as np


def _history_metrics(model) -> dict | None:
    """The last epoch's values of the model's latest `fit` (Keras' History), if any."""
    history = getattr(getattr(model, "history", None), "history", None)
    if not history:
        return None
    return {k: float(v[-1]) for k, v in history.items() if len(v)}


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return np.asarray(value).tolist()
    if hasattr(value, "numpy"):
        return np.asarray(value.numpy()).tolist()
    return value


def preset_metadata(model, metrics=None) -> dict:
    """A preset's metadata.json (JSON-ready): class names, palette, ignore label, parameter
    count, versions and `metrics` (default: the last epoch of the latest `fit`, else those
    the model was loaded with)."""
    import tensorflow as tf

    import gscnn_tf

    if metrics is None:
        metrics = _history_metrics(model) or getattr(model, "training_metrics", None)
    return _jsonable({
        "format": "gscnn_tf preset 1",
        "model": model.name,
        "class_names": list(model.class_names),
        "palette": [list(c) for c in model.palette],
        "ignore_label": model.ignore_label,
        "parameters": int(model.count_params()),
        "metrics": dict(metrics) if metrics else None,
        "versions": {"gscnn_tf": gscnn_tf.__version__, "keras": keras.__version__,
                     "tensorflow": tf.__version__},
    })


def _figure(key: str, value) -> str:
    if not isinstance(value, (int, float)):
        return str(value)
    if ("miou" in key or "boundary_f" in key) and 0 <= value <= 1:
        return f"{100 * value:.2f} %"
    return f"{value:.4g}"


def model_card(model, metadata: dict, preset_dir: str, training_config,
               training_config_file: str) -> str:
    """The preset's README.md: architecture, parameters, data, metrics, usage. `metadata`:
    `preset_metadata`'s dict; `training_config`: the `Config` the model was trained with, or
    None; `training_config_file`: the name it is saved under beside the card."""
    from gscnn_tf.models.summary import parameter_breakdown

    c = model.model_config
    kind = "Gated-SCNN" if c.shape_stream else "DeepLab v3+ (no shape stream)"
    parts = parameter_breakdown(model)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    name = os.fspath(preset_dir)
    lines = [
        f"# {model.name}: {kind}, {c.backbone.name} backbone, {model.num_classes} classes", "",
        "A `gscnn_tf` preset (keras-hub layout: config.json, model.weights.h5, "
        "metadata.json).", "",
        "## Use it", "",
        "```python",
        "import gscnn_tf",
        f'model = gscnn_tf.GSCNN.from_preset("{name}")',
        "out = model(images)  # float32 [B, H, W, 3] RGB 0..255 -> "
        "seg_logits [B, H, W, C], edge_logits [B, H, W, 1]",
        "```", "",
        f"Command line: `gscnn-tf predict {name} street.png`, "
        f"`gscnn-tf export {name} --format saved_model`.", "",
        "## Architecture", "",
        f"- {kind} on `{c.backbone.name}` (output stride {c.backbone.output_stride}"
        + (f", width multiplier {c.backbone.width_multiplier}"
           if c.backbone.name == "mobilenetv2" else "")
        + (f", base width {c.backbone.base_width}" if c.backbone.name == "small" else "")
        + ")",
    ]
    if c.shape_stream:
        lines.append(f"- shape stream at stride {c.shape_stream_stride}, gate `{c.gate}`, "
                     f"image gradients `{c.image_gradients}`"
                     + (f" (Canny {c.canny_low:g} / {c.canny_high:g})"
                        if c.image_gradients == "canny" else ""))
    lines += [
        f"- ASPP {c.aspp_channels} channels, rates {list(c.aspp_rates)} at output stride 16; "
        f"decoder {c.decoder_channels} channels, skip {c.skip_channels}",
        f"- numerics: `compat: {c.compat}`; sync batch norm: {c.sync_batch_norm}",
        "- input: float32 `[B, H, W, 3]` RGB 0..255, any size (normalised inside the model)",
        "", "## Parameters", "",
        f"{parts['total']:,} in all ({trainable:,} trainable): backbone "
        f"{parts['backbone']:,}, shape stream {parts['shape_stream']:,}, fusion / decoder "
        f"{parts['fusion_decoder']:,}.", "",
        "## Data", "",
    ]
    if training_config is not None:
        data, train = training_config.data, training_config.train
        lines.append(f"Trained on `{data.dataset}` (crops {list(data.crop_size)}, "
                     f"{train.steps} steps of batch {train.batch_size}, optimizer "
                     f"{train.optimizer}, lr {train.learning_rate}); the full training config "
                     f"is `{training_config_file}`.")
    else:
        lines.append("Training data: not recorded with this preset.")
    lines += ["", f"Ignore label {model.ignore_label}.", "",
              "| id | class | colour (RGB) |", "|---|---|---|"]
    lines += [f"| {i} | {n} | {tuple(col)} |"
              for i, (n, col) in enumerate(zip(model.class_names, model.palette))]
    lines += ["", "## Metrics", ""]
    metrics = metadata.get("metrics")
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_figure(k, v)} |"
                  for k, v in metrics.items() if not isinstance(v, (dict, list))]
    else:
        lines.append("Not recorded with this preset.")
    versions = metadata.get("versions", {})
    lines += ["", "## Files", "",
              f"Saved with gscnn_tf {versions.get('gscnn_tf')}, Keras {versions.get('keras')}, "
              f"TensorFlow {versions.get('tensorflow')}. `keras.saving.load_model` reads "
              "`model.save` files after `import gscnn_tf`; this folder loads with "
              "`gscnn_tf.GSCNN.from_preset`.", ""]
    return "\n".join(lines)
