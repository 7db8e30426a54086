"""Pictures of predictions as uint8 RGB arrays `[H, W, 3]`: label maps in a palette, colour
overlays on the image, boundary probabilities and the three gate alpha maps side by side (as
the paper's figure). `write_png` saves any of them (RGB in, OpenCV's BGR on disk)."""

from __future__ import annotations


import cv2
import numpy as np

from gscnn_tf import files
from gscnn_tf.errors import DataError


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


def titled(picture: np.ndarray, title: str, height: int = 18) -> np.ndarray:
    """uint8 RGB `[H, W, 3]` with a white strip of `height` rows on top holding `title`."""
    strip = np.full((height, picture.shape[1], 3), 255, np.uint8)
    scale = 0.35 if picture.shape[1] < 200 else 0.5
    cv2.putText(strip, title, (3, height - 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.concatenate([strip, picture], axis=0)


def side_by_side(panels: dict, gap: int = 4) -> np.ndarray:
    """Titled uint8 RGB panels {title: [H, W, 3]} (same H) left to right, `gap` white
    columns apart, as one uint8 RGB picture."""
    tiles = []
    for title, picture in panels.items():
        tiles.append(titled(np.asarray(picture, np.uint8), title))
        tiles.append(np.full((tiles[-1].shape[0], gap, 3), 255, np.uint8))
    return np.concatenate(tiles[:-1], axis=1)


def prediction_sheet(image, prediction, palette, boundary, labels=None, gates=None,
                     ignore_label: int = 255) -> np.ndarray:
    """One picture of a prediction, panels side by side: the input, the prediction over it,
    the ground truth (when `labels` are given), the boundary map and each gate's alpha map.

    Args:
        image: `[H, W, 3]` RGB 0..255 (uint8 or float).
        prediction: int `[H, W]` class ids.
        palette: uint8 `[num_classes, 3]`.
        boundary: float `[H, W]` or `[H, W, 1]` boundary probability in [0, 1]; or None
            (a model without a shape stream has no boundary map).
        labels: int `[H, W]` ground truth, `ignore_label` drawn black; or None.
        gates: {"gate1": [h, w(, 1)] alpha in [0, 1], ...} at any resolution; or None (a
            model without a shape stream).

    Returns:
        uint8 RGB `[H + 18, ~(panels x W), 3]`.
    """
    image = np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)
    height, width = image.shape[:2]
    panels = {"input": image, "prediction": overlay(image, prediction, palette)}
    if labels is not None:
        labels = np.asarray(labels)
        panels["ground truth"] = colorize(np.where(labels == ignore_label, 255, labels),
                                          palette)
    if boundary is not None:
        panels["boundary"] = probability_picture(boundary)
    for name in sorted(gates or {}):
        alpha = np.asarray(gates[name], np.float32)
        alpha = alpha[..., 0] if alpha.ndim == 3 else alpha
        panels[f"{name} alpha"] = probability_picture(
            cv2.resize(alpha, (width, height), interpolation=cv2.INTER_LINEAR))
    return side_by_side(panels)


def write_png(path: str, picture: np.ndarray) -> None:
    """Writes uint8 RGB `[H, W, 3]` or single-channel `[H, W]` (uint8 / uint16) as PNG."""
    picture = np.asarray(picture)
    if picture.ndim == 3:
        picture = cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)
    try:
        files.imwrite(path, picture)
    except ValueError as e:
        raise OSError(f"could not write {path}: {e}") from e


def read_rgb(path: str) -> np.ndarray:
    """uint8 RGB `[H, W, 3]` of an image file; a clear error when it cannot be decoded."""
    try:
        picture = files.imread(path, cv2.IMREAD_COLOR)
    except OSError:         # missing, a folder, unreadable: as cv2.imread, no picture
        picture = None
    if picture is None:
        raise DataError(f"{path}: not a readable image file (expected a PNG, JPEG, BMP, TIFF "
                        "or WebP image)")
    return cv2.cvtColor(picture, cv2.COLOR_BGR2RGB)
