"""Import the reference PyTorch Gated-SCNN checkpoint (WideResNet-38, Cityscapes) as a Keras
model that reproduces its outputs; `gscnn-tf import-reference` (gscnn_tf.cli.import_reference)
is its command line.

    gscnn-tf import-reference best_cityscapes_checkpoint.pth --out gscnn_reference.keras

The checkpoint (a state dict, or a dict holding one under "state_dict"; DataParallel's
`module.` prefixes are stripped) is read with torch (the `convert` extra). Every tensor is
mapped by name and shape onto `build_model` of `reference_model_config()`, a WideResNet-38
GSCNN with `model.compat: reference`: conv kernels OIHW -> HWIO, BatchNorm weight / bias /
running_mean / running_var -> gamma / beta / moving_mean / moving_variance, biases as they are.
`decoder_conv1`'s input channels are permuted, because our decoder concatenates
[upsampled ASPP, skip] where the reference concatenates [skip, upsampled ASPP]. The reference's
unused `dsn1` pair is reported and skipped; every other unmapped, missing or wrong-shaped
tensor is an error, all of them listed in one message, before any weight is set. The number of
classes comes from `final_seg.6.weight` (19: the Cityscapes names and palette). The `.keras`
file is written atomically, and a preset folder beside it (`gscnn_tf.models.presets`:
`gscnn_tf.GSCNN.from_preset("gscnn_reference")`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import time

import numpy as np

from gscnn_tf import files
from gscnn_tf.config import BackboneConfig, ModelConfig
from gscnn_tf.errors import ReferenceImportError

SKIPPED_PREFIX = "dsn1."
CLASSIFIER_KEY = "final_seg.6.weight"
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")
# Keras layer name (full match) -> reference state-dict prefix; the first rule that matches.
_RULES = tuple((re.compile(pattern), prefix) for pattern, prefix in (
    (r"mod1_conv1", "mod1.conv1"),
    (r"(mod\d)_(block\d+)_bn1", r"\1.\2.bn1.0"),
    (r"(mod\d)_(block\d+)_bn(\d)", r"\1.\2.convs.bn\3.0"),
    (r"(mod\d)_(block\d+)_conv(\d)", r"\1.\2.convs.conv\3"),
    (r"(mod\d)_(block\d+)_proj", r"\1.\2.proj_conv"),
    (r"shape_res(\d)_(\d)_conv", r"res\1.conv\2"),
    (r"shape_res(\d)_(\d)_bn", r"res\1.bn\2"),
    (r"shape_reduce(\d)", r"d\1"),
    (r"gate1_dsn", "dsn3"), (r"gate2_dsn", "dsn4"), (r"gate3_dsn", "dsn7"),
    (r"gate(\d)_bn_in", r"gate\1._gate_conv.0"),
    (r"gate(\d)_conv1", r"gate\1._gate_conv.1"),
    (r"gate(\d)_conv2", r"gate\1._gate_conv.3"),
    (r"gate(\d)_bn_out", r"gate\1._gate_conv.4"),
    (r"gate(\d)_weight", r"gate\1"),
    (r"shape_fuse", "fuse"), (r"fusion_conv", "cw"),
    (r"aspp_image_conv", "aspp.img_conv.0"), (r"aspp_image_bn", "aspp.img_conv.1"),
    (r"aspp_edge_conv", "aspp.edge_conv.0"), (r"aspp_edge_bn", "aspp.edge_conv.1"),
    (r"aspp_1x1_conv", "aspp.features.0.0"), (r"aspp_1x1_bn", "aspp.features.0.1"),
    (r"aspp_atrous(\d)_conv", r"aspp.features.\1.0"),
    (r"aspp_atrous(\d)_bn", r"aspp.features.\1.1"),
    (r"decoder_aspp_proj", "bot_aspp"), (r"decoder_skip_proj", "bot_fine"),
    (r"decoder_conv1_conv", "final_seg.0"), (r"decoder_conv1_bn", "final_seg.1"),
    (r"decoder_conv2_conv", "final_seg.3"), (r"decoder_conv2_bn", "final_seg.4"),
    (r"decoder_classifier", "final_seg.6"),
))




@dataclasses.dataclass
class ImportReport:
    """What `import_reference` did: Keras weights set, keys skipped (dsn1), classes, seconds."""

    out: str
    num_classes: int
    mapped: int
    skipped: list
    parameters: int
    seconds: float
    preset: str | None = None


def reference_model_config(image_gradients: str = "canny") -> ModelConfig:
    """The ModelConfig of the reference network: WideResNet-38 at output stride 8, full-
    resolution shape stream, normalised gates, ASPP rates 12/24/36, `compat: reference`."""
    return ModelConfig(backbone=BackboneConfig(name="wrn38", output_stride=8),
                       image_gradients=image_gradients, compat="reference")


def _import_torch():
    try:
        import torch
    except ImportError as e:
        raise ReferenceImportError(
            "reading a PyTorch checkpoint needs torch: pip install -e \".[convert]\" "
            "(torch==2.13.0, CPU build)") from e
    return torch


def read_checkpoint(path: str, trust_pickle: bool = False) -> dict:
    """`{key: float32 / int64 ndarray}` of a `.pth` file, `module.` prefixes stripped.

    trust_pickle: unpickle arbitrary objects (only for a file you trust); by default torch's
    `weights_only` loader reads tensors and plain containers only.
    """
    torch = _import_torch()
    if not os.path.isfile(path):
        raise ReferenceImportError(f"checkpoint '{path}': no such file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError by cause
        hint = "" if trust_pickle else (" (if it holds other Python objects and you trust "
                                        "the file, pass --trust-pickle)")
        raise ReferenceImportError(f"checkpoint '{path}': not readable by torch.load{hint}: "
                                   f"{e}") from e
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ReferenceImportError(f"checkpoint '{path}': expected a state dict, got "
                                   f"{type(loaded).__name__}")
    state = {}
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise ReferenceImportError(f"checkpoint '{path}': '{key}' is a "
                                       f"{type(value).__name__}, expected a tensor")
        array = value.detach().cpu().numpy()
        state[key.removeprefix("module.")] = (
            array.astype(np.float32) if array.dtype.kind == "f" else array)
    return state


def num_classes_of(state: dict) -> int:
    if CLASSIFIER_KEY not in state or state[CLASSIFIER_KEY].ndim != 4:
        raise ReferenceImportError(f"checkpoint has no 4-d '{CLASSIFIER_KEY}' (the classifier "
                                   "that gives the number of classes)")
    return int(state[CLASSIFIER_KEY].shape[0])


def _prefix(layer_name: str):
    for pattern, prefix in _RULES:
        if pattern.fullmatch(layer_name):
            return pattern.sub(prefix, layer_name)
    return None


def _is_batch_norm(layer) -> bool:
    import keras

    return isinstance(layer, keras.layers.BatchNormalization)


def _layer_tensors(layer, prefix: str, model) -> list:
    """[(key, expected reference shape, array -> Keras array)] for one weighted layer."""
    if _is_batch_norm(layer):
        return [(f"{prefix}.{t}", tuple(w.shape), lambda a: a)
                for t, w in zip(_BN_TENSORS, layer.weights)]
    import keras

    if not isinstance(layer, keras.layers.Conv2D):  # AtrousConv2D (ASPP) is one too
        raise ReferenceImportError(
            f"layer '{layer.name}' ({type(layer).__name__}) has no reference mapping")
    kh, kw, cin, cout = layer.kernel.shape
    if layer.name == "decoder_conv1_conv":  # reference order [skip, aspp] -> ours [aspp, skip]
        skip = model.get_layer("decoder_skip_proj").filters

        def kernel(a):
            return np.roll(a.transpose(2, 3, 1, 0), -skip, axis=2)
    else:
        def kernel(a):
            return a.transpose(2, 3, 1, 0)
    tensors = [(f"{prefix}.weight", (cout, cin, kh, kw), kernel)]
    if layer.use_bias:
        tensors.append((f"{prefix}.bias", (cout,), lambda a: a))
    return tensors


def load_reference_weights(model, state: dict) -> list:
    """Sets every weight of `model` (a `reference_model_config` model) from `state`.

    Returns the skipped keys (dsn1). Raises `ReferenceImportError` listing every layer without
    a reference tensor, every missing, wrong-shaped and unexpected tensor; nothing is set then.
    """
    problems, assignments, used = [], [], set()
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = _prefix(layer.name)
        if prefix is None:
            problems.append(f"layer '{layer.name}': no reference tensor maps to it")
            continue
        values = []
        for key, shape, convert in _layer_tensors(layer, prefix, model):
            if key not in state:
                problems.append(f"missing '{key}' {list(shape)} (for layer '{layer.name}')")
            elif state[key].shape != shape:
                problems.append(f"wrong shape '{key}' {list(state[key].shape)}: expected "
                                f"{list(shape)} (for layer '{layer.name}')")
            else:
                values.append(convert(state[key]))
            used.add(key)
        if _is_batch_norm(layer):
            used.add(f"{prefix}.num_batches_tracked")
        assignments.append((layer, values))
    skipped = sorted(k for k in state if k.startswith(SKIPPED_PREFIX))
    problems += [f"unexpected '{k}' {list(state[k].shape)}: no layer of the model takes it"
                 for k in sorted(state) if k not in used and k not in skipped]
    if problems:
        raise ReferenceImportError(
            f"checkpoint does not fit the reference WideResNet-38 GSCNN ({len(problems)} "
            "problem(s)):\n  " + "\n  ".join(problems))
    for layer, values in assignments:
        layer.set_weights(values)
    return skipped


def _check_out(out: str, overwrite: bool) -> None:
    if not out.endswith(".keras"):
        raise ReferenceImportError(f"--out '{out}': expected a path ending in .keras")
    if files.exists(out) and not overwrite:
        raise ReferenceImportError(f"{out} exists; pass --overwrite to replace it")


def save_atomic(model, out: str, overwrite: bool = False) -> None:
    """`model.save(out)` through a temporary file beside `out`, then a rename."""
    _check_out(out, overwrite)
    folder = os.path.dirname(os.path.abspath(out)) if files.is_local(out) else files.dirname(out)
    files.makedirs(folder)
    tmp = files.join(folder, f".{os.path.basename(out)}.tmp-{os.getpid()}.keras")
    try:
        model.save(tmp)
        _check_out(out, overwrite)
        files.rename(tmp, out, overwrite=True)
    finally:
        if files.exists(tmp):
            files.remove(tmp)


def default_preset_dir(out: str) -> str:
    """The preset folder written beside `out`: its path without `.keras`."""
    return out[: -len(".keras")] if out.endswith(".keras") else f"{out}_preset"


def _check_preset(preset: str, overwrite: bool) -> None:
    if files.exists(preset) and not overwrite:
        raise ReferenceImportError(f"preset folder {preset} exists; pass --overwrite to "
                                   "replace it (or --preset to write another)")


def import_reference(checkpoint: str, out: str, overwrite: bool = False,
                     image_gradients: str = "canny", trust_pickle: bool = False,
                     preset: str | None = ""):
    """Converts `checkpoint` into the Keras model file `out` and a preset folder (`preset`;
    "" for the default beside `out`, None for none); returns an `ImportReport`. A 19-class
    checkpoint gets the Cityscapes class names and palette."""
    from gscnn_tf.models.gscnn import GSCNN

    _check_out(out, overwrite)
    if preset == "":
        preset = default_preset_dir(out)
    if preset is not None:
        _check_preset(preset, overwrite)
    start = time.perf_counter()
    state = read_checkpoint(checkpoint, trust_pickle)
    num_classes = num_classes_of(state)
    classes = {}
    if num_classes == 19:
        from gscnn_tf.data.cityscapes import info

        cityscapes = info()
        classes = {"class_names": list(cityscapes.class_names),
                   "palette": cityscapes.palette.tolist()}
    model = GSCNN.from_model_config(reference_model_config(image_gradients), num_classes,
                                    **classes)
    skipped = load_reference_weights(model, state)
    save_atomic(model, out, overwrite)
    if preset is not None:
        _check_preset(preset, overwrite)
        model.save_to_preset(preset)
    return ImportReport(out, num_classes, len(model.weights), skipped, model.count_params(),
                        time.perf_counter() - start, preset)
