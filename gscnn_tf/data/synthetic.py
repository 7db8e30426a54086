"""Procedural street-like scenes where boundaries matter: the built-in default dataset.

Ten classes. Thin structures (poles 1-4 px wide, wires 1-2 px), small objects (signs,
people), textured regions whose colours overlap between classes (grey road / sidewalk /
building / pole / overcast sky; green vegetation / terrain), an illumination gradient,
Gaussian blur and sensor noise. Image i of a split depends only on (seed, split, i).
Written in the folder format (`gscnn_tf.data.folder`) plus `synthetic.yaml`, the generation
settings, which `ensure_synthetic` compares to decide whether to (re)generate.

    gscnn-tf make-synthetic --out data/synthetic --num-train 300 --num-val 60
"""

from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np
import yaml

from gscnn_tf import files
from gscnn_tf.config import SyntheticConfig
from gscnn_tf.data.decode import DataError

DEFAULT_ROOT = os.path.join("data", "synthetic")
GENERATOR_VERSION = 1
MARKER = "synthetic.yaml"
CLASSES = (
    ("road", (128, 64, 128)), ("sidewalk", (244, 35, 232)), ("building", (70, 70, 70)),
    ("vegetation", (107, 142, 35)), ("terrain", (152, 251, 152)), ("sky", (70, 130, 180)),
    ("pole", (153, 153, 153)), ("wire", (250, 170, 30)), ("sign", (220, 220, 0)),
    ("person", (220, 20, 60)),
)
ROAD, SIDEWALK, BUILDING, VEGETATION, TERRAIN, SKY, POLE, WIRE, SIGN, PERSON = range(10)


def _grey(rng, low, high, tint=12):
    g = rng.uniform(low, high)
    return np.clip(g + rng.uniform(-tint, tint, 3), 0, 255)


def _class_colour(rng, c):
    """A per-image base colour; the ranges overlap between classes on purpose."""
    if c == SKY:
        if rng.random() < 0.5:
            return _grey(rng, 150, 220, 8)
        return np.array([rng.uniform(100, 170), rng.uniform(140, 200), rng.uniform(190, 240)])
    ranges = {
        ROAD: (70, 140), SIDEWALK: (105, 170), BUILDING: (60, 180), POLE: (60, 160),
        WIRE: (20, 90),
    }
    if c in ranges:
        return _grey(rng, *ranges[c])
    if c == VEGETATION:
        return np.array([rng.uniform(40, 110), rng.uniform(70, 150), rng.uniform(20, 80)])
    if c == TERRAIN:
        return np.array([rng.uniform(80, 150), rng.uniform(100, 170), rng.uniform(40, 100)])
    return rng.uniform(0, 255, 3)  # signs and people: any colour


def _noise_field(rng, h, w, cell, amplitude):
    """Smooth noise [h, w] of roughly `cell`-pixel blobs, std about `amplitude`."""
    small = rng.normal(0.0, amplitude, (max(2, h // cell + 2), max(2, w // cell + 2)))
    return cv2.resize(small.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)


def _draw(canvas, labels, c, colour, draw_fn):
    """Runs `draw_fn(target, value)` on the image and the label map alike."""
    draw_fn(canvas, tuple(float(v) for v in colour))
    draw_fn(labels, int(c))


def _scene(rng, h, w):
    """(image float32 [h, w, 3] before texture and noise, labels uint8 [h, w])."""
    colours = [_class_colour(rng, c) for c in range(len(CLASSES))]
    canvas = np.zeros([h, w, 3], np.float32)
    labels = np.zeros([h, w], np.uint8)
    horizon = int(rng.uniform(0.3, 0.55) * h)
    _draw(canvas, labels, SKY, colours[SKY],
          lambda t, v: cv2.rectangle(t, (0, 0), (w - 1, horizon), v, -1))
    for _ in range(rng.integers(1, 4)):  # trees behind the buildings
        centre = (int(rng.uniform(0, w)), int(horizon - rng.uniform(0, 0.2) * h))
        radius = int(rng.uniform(0.08, 0.2) * h)
        _draw(canvas, labels, VEGETATION, colours[VEGETATION],
              lambda t, v: cv2.circle(t, centre, radius, v, -1))
    x = int(rng.uniform(-0.1, 0.1) * w)
    while x < w:  # buildings with windows (image only: the label stays "building")
        bw = int(rng.uniform(0.15, 0.4) * w)
        if rng.random() < 0.75:
            top = int(rng.uniform(0.03, 0.9) * horizon)
            shade = colours[BUILDING] * rng.uniform(0.8, 1.2)
            _draw(canvas, labels, BUILDING, shade,
                  lambda t, v: cv2.rectangle(t, (x, top), (x + bw, horizon + 2), v, -1))
            step = int(rng.integers(5, 10))
            window = np.clip(shade * rng.uniform(0.5, 1.4), 0, 255)
            for wy in range(top + 3, horizon - 3, step):
                for wx in range(x + 3, x + bw - 3, step):
                    cv2.rectangle(canvas, (wx, wy), (wx + step // 2, wy + step // 2),
                                  tuple(float(v) for v in window), -1)
        x += bw + int(rng.integers(0, max(1, w // 8)))
    # ground: terrain, sidewalks and a road narrowing towards the horizon
    _draw(canvas, labels, TERRAIN, colours[TERRAIN],
          lambda t, v: cv2.rectangle(t, (0, horizon), (w - 1, h - 1), v, -1))
    vx = rng.uniform(0.3, 0.7) * w
    for c, near, far in ((SIDEWALK, rng.uniform(0.6, 0.9), 0.1), (ROAD, rng.uniform(0.35, 0.6),
                                                                  0.04)):
        poly = np.array([[vx - far * w, horizon], [vx + far * w, horizon],
                         [vx + near * w, h], [vx - near * w, h]], np.int32)
        _draw(canvas, labels, c, colours[c], lambda t, v: cv2.fillPoly(t, [poly], v))
    tops = []
    for _ in range(rng.integers(1, 5)):  # poles 1-4 px wide, with signs
        px, width = int(rng.uniform(0, w)), int(rng.integers(1, 5))
        base, top = int(rng.uniform(horizon, h)), int(rng.uniform(0, 0.6) * horizon)
        _draw(canvas, labels, POLE, colours[POLE] * rng.uniform(0.85, 1.15),
              lambda t, v: cv2.rectangle(t, (px, top), (px + width - 1, base), v, -1))
        tops.append((px, top))
        if rng.random() < 0.7:
            size, sy = int(rng.integers(2, 5)), int(rng.uniform(top, (top + base) / 2))
            colour = _class_colour(rng, SIGN)
            if rng.random() < 0.5:
                _draw(canvas, labels, SIGN, colour,
                      lambda t, v: cv2.circle(t, (px + width // 2, sy), size, v, -1))
            else:
                _draw(canvas, labels, SIGN, colour, lambda t, v: cv2.rectangle(
                    t, (px - size, sy - size), (px + width + size, sy + size), v, -1))
    for _ in range(rng.integers(1, 4)):  # wires sagging across the image, 1-2 px
        y0, y1 = rng.uniform(0, 0.7 * horizon, 2)
        sag = rng.uniform(2, 0.15 * h)
        xs = np.linspace(-1, w, 64)
        s = xs / w
        ys = y0 + (y1 - y0) * s + 4 * sag * s * (1 - s)
        line = np.stack([xs, ys], 1).round().astype(np.int32)
        thickness = int(rng.integers(1, 3))
        _draw(canvas, labels, WIRE, colours[WIRE],
              lambda t, v: cv2.polylines(t, [line], False, v, thickness))
    for _ in range(rng.integers(0, 5)):  # people: small upright ellipses on the ground
        cx, cy = int(rng.uniform(0, w)), int(rng.uniform(horizon + 2, h))
        scale = (cy - horizon) / max(1, h - horizon)
        axes = (max(1, int(2 + 4 * scale)), max(2, int(4 + 10 * scale)))
        _draw(canvas, labels, PERSON, _class_colour(rng, PERSON),
              lambda t, v: cv2.ellipse(t, (cx, cy - axes[1]), axes, 0, 0, 360, v, -1))
    return canvas, labels


def render(seed: int, split: str, index: int, height: int, width: int):
    """One scene: (image uint8 [H, W, 3] RGB, labels uint8 [H, W] class ids)."""
    split_id = {"train": 0, "val": 1, "test": 2}[split]
    rng = np.random.default_rng([seed, split_id, index])
    canvas, labels = _scene(rng, height, width)
    texture = np.zeros([height, width], np.float32)
    for c, (cell, amplitude) in {
        ROAD: (2, 10), SIDEWALK: (4, 12), BUILDING: (8, 14), VEGETATION: (3, 30),
        TERRAIN: (2, 18), SKY: (16, 10),
    }.items():
        texture += (labels == c) * _noise_field(rng, height, width, cell, amplitude)
    light = np.linspace(rng.uniform(0.7, 1.1), rng.uniform(0.9, 1.3), width, dtype=np.float32)
    image = (canvas + texture[..., None]) * light[None, :, None]
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.0))
    image += rng.normal(0.0, rng.uniform(2, 8), image.shape).astype(np.float32)
    return np.clip(image, 0, 255).round().astype(np.uint8), labels


def _settings(synthetic: SyntheticConfig) -> dict:
    return {**dataclasses.asdict(synthetic), "version": GENERATOR_VERSION}


def generate(out_dir: str, synthetic: SyntheticConfig) -> str:
    """Writes the dataset into `out_dir` (replacing a synthetic set there; refusing any other
    non-empty folder). On a local disk it is written to a temporary folder first, then moved
    into place; elsewhere (`gs://`, ...: no folder rename) the old set is deleted first and
    `MARKER`, which `ensure_synthetic` looks for, is written last."""
    if files.isdir(out_dir) and files.listdir(out_dir) \
            and not files.isfile(files.join(out_dir, MARKER)):
        raise DataError(f"{out_dir} is not empty and holds no {MARKER}: not overwriting it; "
                        "give an empty or new folder for the synthetic dataset")
    local = files.is_local(out_dir)
    tmp = f"{out_dir.rstrip('/' + os.sep)}.tmp-{os.getpid()}" if local else out_dir
    files.rmtree(tmp)
    for split, count in (("train", synthetic.num_train), ("val", synthetic.num_val)):
        for sub in ("images", "masks"):
            files.makedirs(files.join(tmp, sub, split))
        for i in range(count):
            image, labels = render(synthetic.seed, split, i, synthetic.height, synthetic.width)
            name = f"{split}_{i:05d}.png"
            files.imwrite(files.join(tmp, "images", split, name), image[:, :, ::-1])
            files.imwrite(files.join(tmp, "masks", split, name), labels)
    classes = {"names": [n for n, _ in CLASSES], "colors": [list(c) for _, c in CLASSES],
               "ignore_label": 255}
    files.atomic_write_text(files.join(tmp, "classes.yaml"), yaml.safe_dump(
        classes, default_flow_style=None, sort_keys=False))
    files.atomic_write_text(files.join(tmp, MARKER),
                            yaml.safe_dump(_settings(synthetic), sort_keys=False))
    if not local:
        return out_dir
    if files.isdir(out_dir):
        old = f"{out_dir.rstrip(os.sep)}.old-{os.getpid()}"
        files.rename(out_dir, old)
        files.rename(tmp, out_dir)
        files.rmtree(old)
    else:
        files.makedirs(os.path.dirname(os.path.abspath(out_dir)))
        files.rename(tmp, out_dir)
    return out_dir


def synthetic_root(config) -> str:
    return config.data.root or DEFAULT_ROOT


def ensure_synthetic(config) -> str:
    """The synthetic dataset's root (`data.root`, default data/synthetic), generated first if
    missing or made with other `data.synthetic` settings."""
    root = synthetic_root(config)
    marker = files.join(root, MARKER)
    if files.isfile(marker) and \
            yaml.safe_load(files.read_text(marker)) == _settings(config.data.synthetic):
        return root
    return generate(root, config.data.synthetic)
