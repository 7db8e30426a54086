"""SavedModel for TF Serving (`export_saved_model`): `SegmentationModule`'s signatures
(`gscnn_tf.export.serving`) and `assets/classes.json`, written atomically as TF Serving's
`<dir>/<name>/<version>/` (a temporary folder, then a rename; an existing version is kept
unless `overwrite`). It needs only TensorFlow to load: `tf.saved_model.load(path).signatures[...]`.
Deployment commands: export/README.md.
"""

from __future__ import annotations

import json
import os
import re
import tempfile

from gscnn_tf import files
from gscnn_tf.errors import ExportError
from gscnn_tf.export.artifacts import CLASSES_ASSET
from gscnn_tf.export.serving import SegmentationModule, without_xla_canny


def export_saved_model(model, export_dir: str, model_name: str, version: int,
                       metadata: dict, overwrite: bool = False) -> str:
    """Writes `model` as `<export_dir>/<model_name>/<version>/`; returns that path.
    `metadata`: the `classes.json` content (`class_metadata`).

    On a local disk the SavedModel is written into a temporary folder beside the target and
    renamed into place, so TF Serving (which polls the model folder) never sees a
    half-written version. An object store (`gs://`) has no folder rename: the version is
    written in place there, so export a new version number rather than replacing one that
    a server is loading.
    """
    import tensorflow as tf

    if version < 1:
        raise ExportError(f"version {version}: TF Serving versions are integers >= 1")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", model_name):
        raise ExportError(f"model name '{model_name}': use letters, digits, '_', '-', '.'")
    parent = files.join(export_dir, model_name)
    target = files.join(parent, str(version))
    if files.exists(target) and not overwrite:
        raise ExportError(f"{target} exists; pass --overwrite to replace version {version}, "
                          "or export a new --version")
    files.makedirs(parent)
    local = files.is_local(parent)
    work = (tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=parent) if local
            else f"{parent}/.{version}.tmp-{os.getpid()}")
    try:
        classes_file = files.join(work, CLASSES_ASSET)
        files.write_bytes(classes_file, json.dumps(metadata, indent=1).encode("utf-8"))
        module = SegmentationModule(without_xla_canny(model), classes_file)
        if not local:
            files.rmtree(target)
        staged = files.join(work, "saved_model") if local else target
        tf.saved_model.save(module, staged, signatures=module.signatures())
        if local:
            _swap_into_place(staged, target, work, overwrite)
    finally:
        files.rmtree(work)
    return target


def _swap_into_place(staged: str, target: str, work: str, overwrite: bool) -> None:
    """Renames `staged` to `target`. With `overwrite`, an existing `target` is first moved
    into `work` (removed with it afterwards) and moved back if the rename fails, so it is
    never lost; without, a `target` written meanwhile by another export makes the rename
    fail and stays as it is."""
    replaced = None
    if overwrite and os.path.exists(target):
        replaced = os.path.join(work, "replaced")
        os.rename(target, replaced)
    try:
        os.rename(staged, target)
    except BaseException:
        if replaced is not None:
            os.rename(replaced, target)
        raise
