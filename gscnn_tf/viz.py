"""Pictures of predictions as uint8 RGB arrays `[H, W, 3]`: label maps in a palette, colour
overlays on the image, boundary probabilities and the three gate alpha maps side by side (as
the paper's figure). `write_png` saves any of them (RGB in, OpenCV's BGR on disk)."""

from __future__ import annotations

import os

import cv2
import numpy as np


def default_palette(num_classes: int) -> np.ndarray:
    """uint8 `[num_classes, 3]`: the Cityscapes colours for 19 classes, otherwise the PASCAL
    VOC bit-interleaved colour map (distinct colours for any number of classes)."""
    if num_classes == 19:
        from gscnn_tf.data.cityscapes import CLASSES

        return np.array([colour for _, _, colour in CLASSES], np.uint8)
    from gscnn_tf.data.folder import default_palette as voc_palette

    return voc_palette(num_classes)


def colorize(labels, palette, ignore_colour=(0, 0, 0)) -> np.ndarray:
    """int labels `[H, W]` -> uint8 RGB `[H, W, 3]`; values outside the palette (ignore) get
    `ignore_colour`."""
    labels = np.asarray(labels)
    palette = np.asarray(palette, np.uint8)
    table = np.tile(np.asarray(ignore_colour, np.uint8), (256, 1))
    table[: min(len(palette), 256)] = palette[:256]
    return table[np.clip(labels, 0, 255).astype(np.uint8)]


def overlay(image, labels, palette, alpha: float = 0.5) -> np.ndarray:
    """The image `[H, W, 3]` (uint8 or float 0..255) blended with the coloured labels."""
    image = np.clip(np.asarray(image, np.float32), 0, 255)
    colours = colorize(labels, palette).astype(np.float32)
    return np.round((1 - alpha) * image + alpha * colours).astype(np.uint8)


def probability_picture(prob, colormap: int | None = None) -> np.ndarray:
    """A map in [0, 1] `[H, W]` or `[H, W, 1]` -> uint8 RGB `[H, W, 3]`: gray levels 0..255,
    or an OpenCV colour map (e.g. `cv2.COLORMAP_JET`)."""
    prob = np.asarray(prob, np.float32)
    if prob.ndim == 3:
        prob = prob[..., 0]
    gray = np.round(np.clip(prob, 0, 1) * 255).astype(np.uint8)
    if colormap is None:
        return np.repeat(gray[..., None], 3, axis=-1)
    return cv2.cvtColor(cv2.applyColorMap(gray, colormap), cv2.COLOR_BGR2RGB)


def gates_picture(gates: dict, size: tuple[int, int], gap: int = 4) -> np.ndarray:
    """The gate alpha maps {"gate1": [h, w(, 1)], ...} resized to `size` (H, W), drawn in
    gray and placed left to right in name order, `gap` white columns apart."""
    height, width = size
    tiles = []
    for name in sorted(gates):
        alpha = np.asarray(gates[name], np.float32)
        alpha = alpha[..., 0] if alpha.ndim == 3 else alpha
        resized = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_LINEAR)
        tiles.append(probability_picture(resized))
        tiles.append(np.full((height, gap, 3), 255, np.uint8))
    return np.concatenate(tiles[:-1], axis=1)


def write_png(path: str, picture: np.ndarray) -> None:
    """Writes uint8 RGB `[H, W, 3]` or single-channel `[H, W]` (uint8 / uint16) as PNG."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    picture = np.asarray(picture)
    if picture.ndim == 3:
        picture = cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(path, picture):
        raise OSError(f"could not write {path}")


def read_rgb(path: str) -> np.ndarray:
    """uint8 RGB `[H, W, 3]` of an image file; a clear error when it cannot be decoded."""
    picture = cv2.imread(path, cv2.IMREAD_COLOR)
    if picture is None:
        raise ValueError(f"{path}: not a readable image file")
    return cv2.cvtColor(picture, cv2.COLOR_BGR2RGB)
