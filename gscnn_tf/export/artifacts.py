"""What an export writes beside the graph, and how: one file written atomically
(`write_file`: the TFLite files, the `classes.json` beside them) and the class metadata of
`classes.json` (`class_metadata`; the SavedModel carries it as `assets/classes.json`).

`classes.json`: {"class_names": [C] strings, "palette": [C, 3] RGB 0..255, "ignore_label"}.
"""

from __future__ import annotations

import numpy as np

from gscnn_tf import files
from gscnn_tf.errors import ExportError

CLASSES_ASSET = "classes.json"


def class_metadata(config, num_classes: int, model=None) -> dict:
    """{"class_names", "palette", "ignore_label"} of the model's dataset: the config's when
    given, else the model's own (a `GSCNN` carries them), else placeholders."""
    if config is not None:
        from gscnn_tf.data.pipeline import dataset_info

        info = dataset_info(config)
        if info.num_classes == num_classes:
            return {"class_names": list(info.class_names),
                    "palette": np.asarray(info.palette).tolist(),
                    "ignore_label": int(info.ignore_label)}
    if getattr(model, "class_names", None) is not None:
        return {"class_names": list(model.class_names),
                "palette": [list(c) for c in model.palette],
                "ignore_label": int(model.ignore_label)}
    from gscnn_tf import viz

    return {"class_names": [f"class_{i}" for i in range(num_classes)],
            "palette": viz.default_palette(num_classes).tolist(), "ignore_label": 255}


def refuse_existing(path: str, overwrite: bool) -> None:
    """ExportError when `path` exists and `overwrite` is not set (checked before converting,
    so that a refused export costs nothing)."""
    if files.exists(path) and not overwrite:
        raise ExportError(f"{path} exists; pass --overwrite to replace it")


def write_file(path: str, data: bytes, overwrite: bool = False) -> None:
    """Writes `data` to `path` atomically (`files.atomic_write_bytes`: `path` is either its
    old content or the new one, never half-written, readable by other users as a plain
    `open` would leave it); an existing `path` is an ExportError unless `overwrite`."""
    refuse_existing(path, overwrite)
    files.atomic_write_bytes(path, data)
