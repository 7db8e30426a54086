"""The folder format: how users bring their own data (and how the synthetic set is stored).

    <root>/classes.yaml
    <root>/images/<split>/<stem>.png|.jpg|.jpeg     RGB, grayscale or RGBA (alpha dropped)
    <root>/masks/<split>/<stem>.png                  8-bit grayscale, class ids 0..C-1

classes.yaml:

    names: [road, building, pole]        # class i is mask value i
    colors: [[128, 64, 128], ...]        # optional RGB palette, one per class
    ignore_label: 255                    # optional: the mask value meaning "no class"

Mask values >= C other than `ignore_label` are out of range: they become ignore, with a
warning that names the file and counts the pixels.
"""

from __future__ import annotations

import os

import numpy as np
import yaml

from gscnn_tf import files
from gscnn_tf.data.decode import DataError, DatasetInfo, lookup_table

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CLASSES_FILE = "classes.yaml"


def default_palette(num_classes: int) -> np.ndarray:
    """uint8 [C, 3]: the PASCAL VOC bit-interleaved colour map (distinct, deterministic)."""
    palette = np.zeros([num_classes, 3], np.uint8)
    for i in range(num_classes):
        c, colour = i + 1, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((c >> channel) & 1) << shift
            c >>= 3
        palette[i] = colour
    return palette


def read_classes(root: str) -> dict:
    """{names, colors, ignore_label} from `<root>/classes.yaml`, checked."""
    path = files.join(root, CLASSES_FILE)
    if not files.isdir(root):
        raise DataError(f"dataset root {root!r} is not a folder (expected {CLASSES_FILE}, "
                        "images/<split>/ and masks/<split>/ inside)")
    if not files.isfile(path):
        raise DataError(f"{path} not found: a folder dataset needs {CLASSES_FILE} "
                        "(names: [...], optional colors and ignore_label) beside images/ "
                        "and masks/")
    values = yaml.safe_load(files.read_text(path)) or {}
    names = values.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: 'names' must be a non-empty list of class names")
    if len(names) > 255:
        raise DataError(f"{path}: {len(names)} classes; 8-bit masks hold at most 255")
    colors = values.get("colors")
    if colors is None:
        colors = default_palette(len(names))
    colors = np.asarray(colors)
    if colors.shape != (len(names), 3) or colors.min() < 0 or colors.max() > 255:
        raise DataError(f"{path}: 'colors' must be {len(names)} RGB triples in 0..255, got "
                        f"shape {colors.shape}")
    ignore = values.get("ignore_label", 255)
    if not isinstance(ignore, int) or not len(names) <= ignore <= 255:
        raise DataError(f"{path}: 'ignore_label' {ignore!r}: expected an int in "
                        f"{len(names)}..255")
    unknown = set(values) - {"names", "colors", "ignore_label"}
    if unknown:
        raise DataError(f"{path}: unknown keys {sorted(unknown)} (valid: names, colors, "
                        "ignore_label)")
    return {"names": names, "colors": colors.astype(np.uint8), "ignore_label": ignore}


def info(root: str, ignore_label: int = 255) -> DatasetInfo:
    classes = read_classes(root)
    return DatasetInfo(len(classes["names"]), tuple(classes["names"]), classes["colors"],
                       ignore_label)


def label_tables(root: str, ignore_label: int = 255) -> np.ndarray:
    """int32 [1, 256]: mask value -> train id (identity for the classes)."""
    classes = read_classes(root)
    num = len(classes["names"])
    return lookup_table({i: i for i in range(num)}, [classes["ignore_label"]], ignore_label)[None]


def _stems(folder: str, extensions) -> dict:
    out = {}
    for name in files.listdir(folder):
        stem, ext = os.path.splitext(name)
        if ext.lower() in extensions:
            if stem in out:
                raise DataError(f"{folder}: two files with stem '{stem}': {out[stem]} and "
                                f"{files.join(folder, name)}")
            out[stem] = files.join(folder, name)
    return out


def examples(root: str, split: str) -> list[tuple[str, str, int]]:
    """Sorted (image path, mask path, table row 0) pairs of `split`, matched by stem."""
    read_classes(root)
    image_dir = files.join(root, "images", split)
    mask_dir = files.join(root, "masks", split)
    for folder in (image_dir, mask_dir):
        if not files.isdir(folder):
            raise DataError(f"dataset root {root}: missing folder {folder} (expected "
                            f"images/{split}/<stem>.png|jpg and masks/{split}/<stem>.png)")
    images = _stems(image_dir, IMAGE_EXTENSIONS)
    masks = _stems(mask_dir, (".png",))
    if not images:
        raise DataError(f"{image_dir}: no images (expected <stem>.png, .jpg or .jpeg files)")
    missing = sorted(set(images) - set(masks))
    if missing:
        raise DataError(f"no mask for image {images[missing[0]]}: expected "
                        f"{files.join(mask_dir, missing[0] + '.png')} "
                        f"({len(missing)} image(s) without mask)")
    extra = sorted(set(masks) - set(images))
    if extra:
        raise DataError(f"mask without image: {masks[extra[0]]} (expected "
                        f"{files.join(image_dir, extra[0])}.png|.jpg; {len(extra)} such "
                        "mask(s))")
    return [(images[stem], masks[stem], 0) for stem in sorted(images)]
