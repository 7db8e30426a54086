"""Presets: a trained `GSCNN` in a folder anyone can load, the keras-hub way.

    model.save_to_preset("gscnn_synthetic")             # writes the folder below
    model = gscnn_tf.GSCNN.from_preset("gscnn_synthetic")

A preset folder holds
    config.json        the Keras-serialised model: class `gscnn_tf>GSCNN` and its constructor
                       arguments (model config, num_classes, class names, palette, ignore
                       label, loss config)
    model.weights.h5   the weights (no optimizer state)
    metadata.json      class names, palette, ignore label, parameter count, versions and the
                       training metrics when known
    config.yaml        the training config, when known (so `gscnn-tf evaluate` / `export`
                       find the model's dataset and settings beside it, as in a run dir)
    README.md          a model card: architecture, parameters, data, metrics, how to use it
                       (metadata.json and README.md: `gscnn_tf.models.preset_card`)

`load_preset` (`GSCNN.from_preset`) also takes a `.keras` file (`model.save`) or a training
run directory, whose best model it loads (`best/preset/`, `best/model.keras`, else the run's
config and checkpoint: `run_checkpoint`). Folders and files are written through a temporary
name and a rename, so a reader never sees half of one.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np

from gscnn_tf import files
from gscnn_tf.errors import CheckpointError
from gscnn_tf.models.preset_card import model_card, preset_metadata

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
CARD_FILE = "README.md"
TRAINING_CONFIG_FILE = "config.yaml"
BEST_DIR = "best"
BEST_KERAS = "model.keras"
BEST_PRESET = "preset"


def is_preset(path: str) -> bool:
    """True for a folder holding a preset's config.json and weights."""
    return (files.isfile(files.join(path, CONFIG_FILE))
            and files.isfile(files.join(path, WEIGHTS_FILE)))


def is_run_dir(path: str) -> bool:
    """True for a training run directory (config.yaml, checkpoints/ or best/)."""
    return files.isdir(path) and any(
        files.exists(files.join(path, name))
        for name in ("config.yaml", "checkpoints", BEST_DIR))


def _stage_folder(target: str) -> str:
    """The folder to write `target`'s files into: on a local disk a temporary folder beside
    it (`_swap_in` renames it into place); elsewhere (`gs://`, ...: no folder rename)
    `target` itself, emptied first."""
    if not files.is_local(target):
        files.rmtree(target)
        files.makedirs(target)
        return target
    parent = os.path.dirname(os.path.abspath(target))
    files.makedirs(parent)
    staged = os.path.join(parent, f".{os.path.basename(os.path.abspath(target))}"
                                  f".tmp-{os.getpid()}")
    files.rmtree(staged)
    files.makedirs(staged)
    return staged


def _swap_in(staged: str, target: str) -> None:
    """Moves the folder `staged` to `target`, replacing a previous `target` (rename, rename,
    delete: `target` is always either the old or the new folder)."""
    if staged == target:
        return
    old = None
    if files.exists(target):
        old = f"{staged}.old"
        files.rmtree(old)
        files.rename(target, old)
    files.rename(staged, target)
    if old:
        files.rmtree(old)


def _write_text(path: str, text: str) -> None:
    files.write_bytes(path, text.encode("utf-8"))


def save_preset(model, preset_dir, metrics=None, training_config=None) -> str:
    """Writes `model` (a `GSCNN`) as a preset folder, replacing an existing one; returns its
    path. `metrics`: a dict of figures for the card (default: the last epoch of the latest
    `fit`, or those the model was loaded with). `training_config`: the `Config` it was
    trained with, if known (default: the one it was loaded with)."""
    from gscnn_tf.config import save_config
    from gscnn_tf.models.gscnn import GSCNN

    if not isinstance(model, GSCNN):
        raise TypeError(f"save_preset: expected a gscnn_tf.GSCNN, got {type(model).__name__}")
    preset_dir = os.fspath(preset_dir)
    staged = _stage_folder(preset_dir)
    try:
        config = keras.saving.serialize_keras_object(model)
        config.pop("compile_config", None)
        config.pop("build_config", None)
        _write_text(files.join(staged, CONFIG_FILE), json.dumps(config, indent=1))
        _save_weights(model, files.join(staged, WEIGHTS_FILE))
        metadata = preset_metadata(model, metrics)
        _write_text(files.join(staged, METADATA_FILE), json.dumps(metadata, indent=1))
        if training_config is None:
            training_config = getattr(model, "training_config", None)
        if training_config is not None:
            save_config(training_config, files.join(staged, TRAINING_CONFIG_FILE))
        _write_text(files.join(staged, CARD_FILE),
                    model_card(model, metadata, preset_dir, training_config,
                               TRAINING_CONFIG_FILE))
        _swap_in(staged, preset_dir)
    finally:
        if staged != preset_dir:
            files.rmtree(staged)
    return preset_dir


def _save_weights(model, path: str) -> None:
    """The model's weights without the optimizer's state: Keras' own weights writer told to
    skip the optimizer (`Model.save_weights` has no such option; keras >= 3.15 has the
    internal one), else `save_weights` (the optimizer's state is then kept and ignored when
    loading)."""
    optimizer = getattr(model, "optimizer", None)
    try:
        from keras.src.saving import saving_lib

        saving_lib.save_weights_only(model, path,
                                     objects_to_skip=[optimizer] if optimizer else None)
    except (ImportError, TypeError, AttributeError):
        model.save_weights(path)


def load_preset(path):
    """A `GSCNN` from a preset folder, a `.keras` file or a run directory (its best model).
    A preset's metrics and training config come back as `model.training_metrics` (dict)
    and `model.training_config` (`Config`), None when it has none."""
    from gscnn_tf.models.gscnn import GSCNN

    path = os.fspath(path)
    if path.endswith(".keras"):
        if not files.isfile(path):
            raise FileNotFoundError(f"model file not found: {path}")
        model = keras.saving.load_model(path, compile=False)
        if not isinstance(model, GSCNN):
            raise CheckpointError(f"{path}: a {type(model).__name__}, not a gscnn_tf.GSCNN (a "
                                  "file saved by an older gscnn_tf: load it with "
                                  "keras.saving.load_model)")
        return model
    if files.isdir(path) and is_preset(path):
        config = json.loads(files.read_text(files.join(path, CONFIG_FILE)))
        model = keras.saving.deserialize_keras_object(config)
        if not isinstance(model, GSCNN):
            raise CheckpointError(f"{path}/{CONFIG_FILE}: describes a "
                                  f"{type(model).__name__}, not a gscnn_tf.GSCNN")
        model.load_weights(files.join(path, WEIGHTS_FILE))
        metadata = read_metadata(path)
        model.training_metrics = metadata.get("metrics")
        model.training_config = read_training_config(path)
        return model
    if is_run_dir(path):
        return load_run_model(path)
    raise FileNotFoundError(f"{path}: not a preset folder ({CONFIG_FILE} and {WEIGHTS_FILE}), "
                            "a .keras file or a training run directory")


def read_metadata(preset_dir: str) -> dict:
    path = files.join(preset_dir, METADATA_FILE)
    if not files.isfile(path):
        return {}
    return json.loads(files.read_text(path))


def read_training_config(preset_dir: str):
    """The `Config` a preset was trained with (its config.yaml), or None."""
    from gscnn_tf.config import load_config

    path = files.join(preset_dir, TRAINING_CONFIG_FILE)
    return load_config(path) if files.isfile(path) else None


def run_checkpoint(run_dir: str) -> str | None:
    """The checkpoint prefix a run directory's model is restored from when it has no saved
    best model: its best checkpoint, else its latest one; None when it has neither."""
    from gscnn_tf.training.checkpoints import find_checkpoint

    return find_checkpoint(files.join(run_dir, BEST_DIR)) or find_checkpoint(run_dir)


def load_run_model(run_dir: str):
    """The best model of a training run: `best/preset/`, else `best/model.keras`, else the
    run's config.yaml rebuilt and restored from `run_checkpoint`."""
    import tensorflow as tf

    from gscnn_tf.models.gscnn import GSCNN
    from gscnn_tf.training.checkpoints import restore_checkpoint

    best = files.join(run_dir, BEST_DIR)
    if is_preset(files.join(best, BEST_PRESET)):
        return load_preset(files.join(best, BEST_PRESET))
    if files.isfile(files.join(best, BEST_KERAS)):
        return load_preset(files.join(best, BEST_KERAS))
    config_path = files.join(run_dir, "config.yaml")
    prefix = run_checkpoint(run_dir)
    if prefix is None or not files.isfile(config_path):
        raise FileNotFoundError(f"run directory {run_dir}: no saved model ({BEST_DIR}/"
                                f"{BEST_PRESET}/, {BEST_DIR}/{BEST_KERAS}) and no config.yaml "
                                "with a checkpoint to rebuild one from")
    # The checkpoint holds every weight: the backbone's initial weights are not read.
    model = GSCNN.from_yaml(config_path, ["model.backbone.weights="])
    restore_checkpoint(tf.train.Checkpoint(model=model), prefix)
    return model


def describe_dataset(model, config) -> None:
    """Sets a `GSCNN`'s class names, palette, ignore label and loss config from a training
    `Config` (a model built from `config.model` alone has placeholder names)."""
    import dataclasses

    from gscnn_tf.data.pipeline import dataset_info
    from gscnn_tf.models.gscnn import GSCNN

    if not isinstance(model, GSCNN):
        return
    info = dataset_info(config)
    if info.num_classes != model.num_classes:
        return
    model.class_names = tuple(info.class_names)
    model.palette = tuple(tuple(int(v) for v in c) for c in np.asarray(info.palette))
    model.ignore_label = int(info.ignore_label)
    model.loss_config = dataclasses.replace(config.loss)


def save_run_best(model, run_dir: str, config, metrics: dict) -> list[str]:
    """Writes a run's best model as `best/model.keras` and the preset `best/preset/`
    (the latter for a `GSCNN` only); returns the paths written."""
    from gscnn_tf.models.gscnn import GSCNN

    best = files.join(run_dir, BEST_DIR)
    files.makedirs(best)
    describe_dataset(model, config)
    target = files.join(best, BEST_KERAS)
    tmp = files.join(best, f".{BEST_KERAS}.tmp-{os.getpid()}.keras")
    try:
        model.save(tmp)
        files.rename(tmp, target, overwrite=True)
    finally:
        if files.exists(tmp):
            files.remove(tmp)
    written = [target]
    if isinstance(model, GSCNN):
        written.append(save_preset(model, files.join(best, BEST_PRESET), metrics, config))
    return written
