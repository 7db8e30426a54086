"""Cityscapes (docs/method.md#data-and-training-recipe): layout, splits and the labelId ->
trainId table.

    <root>/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
    <root>/gtFine/<split>/<city>/<name>_gtFine_labelIds.png      (or _gtFine_labelTrainIds.png)

The root comes from `data.root`, else the `CITYSCAPES_DATASET` environment variable (the
variable `cityscapesscripts` reads). A `_gtFine_labelTrainIds.png` (written by
`cityscapesscripts/preparation/createTrainIdLabelImgs.py`) is used directly when present;
otherwise the `_gtFine_labelIds.png` is mapped through the official 19-class table.
"""

from __future__ import annotations

import os

import numpy as np

from gscnn_tf import files
from gscnn_tf.data.decode import DataError, DatasetInfo, lookup_table

SPLITS = ("train", "val", "test")
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"

# (name, labelId, RGB colour) of the 19 evaluated classes, in trainId order.
CLASSES = (
    ("road", 7, (128, 64, 128)), ("sidewalk", 8, (244, 35, 232)),
    ("building", 11, (70, 70, 70)), ("wall", 12, (102, 102, 156)),
    ("fence", 13, (190, 153, 153)), ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)), ("traffic sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)), ("terrain", 22, (152, 251, 152)),
    ("sky", 23, (70, 130, 180)), ("person", 24, (220, 20, 60)), ("rider", 25, (255, 0, 0)),
    ("car", 26, (0, 0, 142)), ("truck", 27, (0, 0, 70)), ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)), ("motorcycle", 32, (0, 0, 230)),
    ("bicycle", 33, (119, 11, 32)),
)
NUM_LABEL_IDS = 34  # labelIds 0..33 exist; 255 is the license plate (-1) as stored in PNGs


def resolve_root(root: str) -> str:
    root = root or os.environ.get("CITYSCAPES_DATASET", "")
    if not root:
        raise DataError("Cityscapes root not given: set data.root (--set data.root=DIR) or "
                        "the CITYSCAPES_DATASET environment variable to the folder holding "
                        "leftImg8bit/ and gtFine/")
    return root


def info(ignore_label: int = 255) -> DatasetInfo:
    return DatasetInfo(
        num_classes=len(CLASSES),
        class_names=tuple(name for name, _, _ in CLASSES),
        palette=np.array([colour for _, _, colour in CLASSES], np.uint8),
        ignore_label=ignore_label,
    )


def label_tables(ignore_label: int = 255) -> np.ndarray:
    """int32 [2, 256]: row 0 maps labelIds, row 1 labelTrainIds, to train ids."""
    label_ids = lookup_table({label_id: i for i, (_, label_id, _) in enumerate(CLASSES)},
                             ignore_values=[*range(NUM_LABEL_IDS), 255],
                             ignore_label=ignore_label)
    train_ids = lookup_table({i: i for i in range(len(CLASSES))}, ignore_values=[255],
                             ignore_label=ignore_label)
    return np.stack([label_ids, train_ids])


def table_row(label_path: str) -> int:
    """The `label_tables` row for a label file: 1 for labelTrainIds, 0 for labelIds."""
    return 1 if label_path.endswith(TRAIN_IDS_SUFFIX) else 0


def examples(root: str, split: str) -> list[tuple[str, str, int]]:
    """Sorted (image path, label path, table row) for every image of `split`."""
    if split not in SPLITS:
        raise DataError(f"Cityscapes split '{split}': expected one of {', '.join(SPLITS)}")
    root = resolve_root(root)
    image_dir = files.join(root, "leftImg8bit", split)
    label_dir = files.join(root, "gtFine", split)
    for folder in (image_dir, label_dir):
        if not files.isdir(folder):
            raise DataError(f"Cityscapes root {root}: missing folder {folder} (expected "
                            f"leftImg8bit/{split}/<city>/*{IMAGE_SUFFIX} and "
                            f"gtFine/{split}/<city>/*{LABEL_IDS_SUFFIX})")
    images = files.glob(files.join(image_dir, "*", "*" + IMAGE_SUFFIX))
    if not images:
        raise DataError(f"Cityscapes: no *{IMAGE_SUFFIX} files under {image_dir}/<city>/")
    # Two listings instead of a file test per image (each one a request on gs://).
    labels = {suffix: set(files.glob(files.join(label_dir, "*", "*" + suffix)))
              for suffix in (LABEL_IDS_SUFFIX, TRAIN_IDS_SUFFIX)}
    found = []
    for image in images:
        stem = image[len(image_dir) + 1: -len(IMAGE_SUFFIX)]
        train_ids = files.join(label_dir, stem + TRAIN_IDS_SUFFIX)
        label_ids = files.join(label_dir, stem + LABEL_IDS_SUFFIX)
        label = train_ids if train_ids in labels[TRAIN_IDS_SUFFIX] else label_ids
        if label in labels[LABEL_IDS_SUFFIX] or label == train_ids:
            found.append((image, label, table_row(label)))
        else:
            raise DataError(f"Cityscapes: no label for image {image}: expected {label_ids}")
    labelled = {label[len(label_dir) + 1:].rsplit("_gtFine_", 1)[0]
                for paths in labels.values() for label in paths}
    extra = sorted(labelled - {i[len(image_dir) + 1: -len(IMAGE_SUFFIX)] for i in images})
    if extra:
        raise DataError(f"Cityscapes: label without image: "
                        f"{files.join(label_dir, extra[0])}_gtFine_* (expected "
                        f"{files.join(image_dir, extra[0])}{IMAGE_SUFFIX}); "
                        f"{len(extra)} such label(s)")
    return found
