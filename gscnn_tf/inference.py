"""Inference: `Predictor` runs a trained model on arrays, image files or folders and writes
viewable pictures; `gscnn-tf predict` (gscnn_tf.cli.predict) is its command line.

A Predictor loads any of
- a `.keras` file (`model.save(...)`) or a preset folder (`GSCNN.save_to_preset`): both carry
  the class names, palette and ignore label, so no config is needed,
- a checkpoint of a training run: the run directory, its `checkpoints/` or `best/` folder, or a
  `ckpt-N` prefix (`tf.train.Checkpoint(model=...)`), with the run's `config.yaml` or a given
  config to rebuild the model,
- a SavedModel directory whose `serving_default` signature maps uint8 `images` `[B, H, W, 3]`
  to `labels` int32 `[B, H, W]` and `edge_prob` float32 `[B, H, W, 1]` (gscnn_tf.export).

    predictor = Predictor("runs/synthetic")
    out = predictor.predict(image)              # {"labels": [B, H, W], "edge_prob": [B, H, W]}
    predictor.predict_folder("images/", "predictions/", gates=True)

For each image the folder mode writes `<name>_labels.png` (train ids, or the dataset's label
ids with `label_ids=True`), `<name>_overlay.png` (palette colours over the image),
`<name>_edges.png` (boundary probability, 0..255) and, with `gates=True`, `<name>_gates.png`
(the three gate alpha maps side by side; Keras sources only).
"""

from __future__ import annotations

import os

import numpy as np

from gscnn_tf import files, viz
from gscnn_tf.errors import CheckpointError, ConfigError, UsageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PICTURES = ("labels", "overlay", "edges")


def find_run_config(path: str) -> str | None:
    """The `config.yaml` of the run holding `path` (it, or up to two folders above)."""
    folder = path if files.isdir(path) else files.dirname(path)
    for _ in range(3):
        candidate = files.join(folder, "config.yaml")
        if files.isfile(candidate):
            return candidate
        folder = files.dirname(folder)
    return None


def label_id_table(config) -> np.ndarray | None:
    """uint8 `[256]` train id -> the dataset's label id (Cityscapes), or None when the dataset
    stores train ids directly. Unmapped values (ignore) go to 0 (Cityscapes 'unlabeled')."""
    if config is None or config.data.dataset != "cityscapes":
        return None
    from gscnn_tf.data.cityscapes import CLASSES

    table = np.zeros(256, np.uint8)
    table[: len(CLASSES)] = [label_id for _, label_id, _ in CLASSES]
    return table


class Predictor:
    """Runs a saved Gated-SCNN model. See the module docstring for the accepted sources.

    Args:
        source: `.keras` file, run directory / checkpoint folder / prefix, or SavedModel dir.
        config: `Config` or a YAML path; needed for checkpoints when the run has no
            config.yaml; gives the dataset palette and label ids.
        overrides: `a.b=value` strings applied to a config read from a file.
        checkpoint: which checkpoint of a run (`--checkpoint`): a step N, `ckpt-N` or a
            prefix; default the latest. A damaged one is a CheckpointError naming the bad
            files and the intact checkpoints.
    """

    def __init__(self, source: str, config=None, overrides=(), checkpoint=None):
        import tensorflow as tf

        import gscnn_tf
        from gscnn_tf.models.presets import is_preset, load_preset

        source = os.fspath(source)
        if config is None or isinstance(config, (str, os.PathLike)):
            path = config or find_run_config(source)
            config = gscnn_tf.load_config(path, overrides) if path else None
        self.config = config
        self.model = self._signature = None
        if checkpoint not in (None, "") and (source.endswith(".keras") or is_preset(source)
                                             or files.isfile(files.join(source,
                                                                        "saved_model.pb"))):
            raise UsageError(f"--checkpoint {checkpoint}: {source} is a single model, not a run "
                             "directory or checkpoint folder to choose from")
        if source.endswith(".keras"):
            if not files.isfile(source):
                raise FileNotFoundError(f"model file not found: {source}")
            import zipfile

            import keras

            try:
                with files.open(source, "rb") as f:
                    is_zip = zipfile.is_zipfile(f)
            except tf.errors.OpError:   # GFile's seek before the start of a short file
                is_zip = False
            if not is_zip:  # Keras would call it "File not found"
                raise CheckpointError(f"{source}: not a readable .keras file (expected the zip "
                                      "archive model.save writes; it may be truncated)")
            self.model = keras.saving.load_model(source, compile=False)
        elif is_preset(source):
            self.model = load_preset(source)
        elif files.isfile(files.join(source, "saved_model.pb")):
            loaded = tf.saved_model.load(source)
            if "serving_default" not in loaded.signatures:
                raise ValueError(f"SavedModel {source}: no 'serving_default' signature")
            self._loaded, self._signature = loaded, loaded.signatures["serving_default"]
        else:
            from gscnn_tf.training.checkpoints import find_checkpoint, restore_checkpoint

            prefix = find_checkpoint(source, checkpoint)
            if prefix is None:
                raise FileNotFoundError(
                    f"{source}: not a .keras file, a preset folder (config.json), a SavedModel "
                    "directory (saved_model.pb) or a checkpoint (run dir, checkpoints/ or "
                    "best/ folder, or ckpt-N prefix)")
            if config is None:
                raise ConfigError(f"checkpoint {prefix}: no config.yaml found beside it; pass "
                                  "the training config (--config)")
            from gscnn_tf.data.pipeline import dataset_info

            self.model = gscnn_tf.build_model(config.model, dataset_info(config).num_classes)
            restore_checkpoint(tf.train.Checkpoint(model=self.model), prefix)
        self._setup(source)

    @classmethod
    def from_model(cls, model, config=None) -> "Predictor":
        """A Predictor around a Keras model already in memory (e.g. during training)."""
        predictor = cls.__new__(cls)
        predictor.config, predictor.model, predictor._signature = config, model, None
        predictor._setup(f"<model {model.name}>")
        return predictor

    def _setup(self, source: str) -> None:
        import tensorflow as tf

        self.source = source
        self._gates = None
        if self.model is not None:
            spec = [tf.TensorSpec([None, None, None, 3], tf.float32)]
            model = self.model
            self._forward = tf.function(lambda x: model(x, training=False),
                                        input_signature=spec)

    @property
    def num_classes(self) -> int | None:
        """Classes of a Keras model; None for a SavedModel (it returns labels only)."""
        return None if self.model is None else int(self.model.output["seg_logits"].shape[-1])

    @property
    def palette(self) -> np.ndarray:
        """uint8 `[C, 3]`: the config's dataset's, else the model's own (`GSCNN`)."""
        if self.config is not None:
            from gscnn_tf.data.pipeline import dataset_info

            return dataset_info(self.config).palette
        if getattr(self.model, "palette", None) is not None:
            return np.asarray(self.model.palette, np.uint8)
        return viz.default_palette(self.num_classes or 256)

    def predict(self, images, gates: bool = False) -> dict:
        """images: `[H, W, 3]` or `[B, H, W, 3]` RGB, uint8 or float 0..255.

        Returns numpy {"labels": int32 `[B, H, W]`, "edge_prob": float32 `[B, H, W]` in
        [0, 1]} and with `gates` {"gates": {"gate1": `[B, h, w]`, ...}} (Keras sources).
        """
        import tensorflow as tf

        from gscnn_tf.models.postprocess import postprocess

        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images: expected RGB [H, W, 3] or [B, H, W, 3], got "
                             f"{images.shape}")
        if self._signature is not None:
            if gates:
                raise UsageError(f"{self.source}: a SavedModel does not expose the gates")
            pixels = np.clip(np.round(images.astype(np.float32)), 0, 255).astype(np.uint8)
            out = self._signature(images=tf.constant(pixels))
            return {"labels": out["labels"].numpy().astype(np.int32),
                    "edge_prob": out["edge_prob"].numpy()[..., 0]}
        x = tf.constant(images.astype(np.float32))
        out = postprocess(self._forward(x))
        result = {"labels": out["labels"].numpy(), "edge_prob": out["edge_prob"][..., 0].numpy()}
        if gates:
            result["gates"] = {k: v.numpy()[..., 0] for k, v in self._gate_fn()(x).items()}
        return result

    def probabilities(self, images) -> np.ndarray:
        """images `[B, H, W, 3]` RGB 0..255 -> float32 `[B, H, W, C + 1]`: the softmax class
        probabilities and, last, the boundary probability (Keras sources only; averaging
        them is how test-time augmentation combines predictions)."""
        import tensorflow as tf

        from gscnn_tf.models.postprocess import postprocess

        if self.model is None:
            raise UsageError(f"{self.source}: a SavedModel returns labels only; flip, "
                             "multi-scale and sliding-window inference need a Keras source")
        out = postprocess(self._forward(tf.constant(np.asarray(images, np.float32))),
                          probabilities=True)
        return tf.concat([out["probabilities"], out["edge_prob"]], -1).numpy()

    def _gate_fn(self):
        if self._gates is None:
            import tensorflow as tf

            from gscnn_tf.models.gscnn import gate_model

            view = gate_model(self.model)
            self._gates = tf.function(
                lambda x: view(x, training=False),
                input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        return self._gates

    def pictures(self, image, gates: bool = False, label_ids: bool = False,
                 alpha: float = 0.5) -> dict:
        """One image `[H, W, 3]` -> {"labels": uint8 `[H, W]`, "overlay", "edges"(, "gates")
        uint8 RGB `[H, W(, ...), 3]`}."""
        out = self.predict(image, gates=gates)
        labels = out["labels"][0]
        table = label_id_table(self.config) if label_ids else None
        pictures = {
            "labels": table[labels] if table is not None else labels.astype(np.uint8),
            "overlay": viz.overlay(image, labels, self.palette, alpha),
            "edges": viz.probability_picture(out["edge_prob"][0]),
        }
        if gates:
            pictures["gates"] = viz.gates_picture({k: v[0] for k, v in out["gates"].items()},
                                                  labels.shape)
        return pictures

    def predict_file(self, path: str, output_dir: str, name: str | None = None,
                     **kwargs) -> list[str]:
        """Writes the pictures of one image file as `<output_dir>/<name>_<picture>.png`."""
        name = name or os.path.splitext(os.path.basename(path))[0]
        written = []
        for kind, picture in self.pictures(viz.read_rgb(path), **kwargs).items():
            target = files.join(output_dir, f"{name}_{kind}.png")
            viz.write_png(target, picture)
            written.append(target)
        return written

    def predict_folder(self, folder: str, output_dir: str, progress: bool = True,
                       **kwargs) -> list[str]:
        """Every image under `folder` (recursively); the output keeps the sub-folders."""
        paths = sorted(files.join(root, f) for root, _, names in files.walk(folder)
                       for f in names if f.lower().endswith(IMAGE_EXTENSIONS))
        if not paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
        bar = None
        if progress:
            import keras

            bar = keras.utils.Progbar(len(paths), unit_name="image")
        written = []
        for i, path in enumerate(paths):
            relative = os.path.splitext(path[len(folder.rstrip("/" + os.sep)) + 1:])[0]
            written += self.predict_file(path, files.join(output_dir,
                                                          os.path.dirname(relative)),
                                         os.path.basename(relative), **kwargs)
            if bar is not None:
                bar.update(i + 1)
        return written
