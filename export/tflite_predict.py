"""Edge entry point: run a Gated-SCNN TFLite export on image files, without gscnn_tf.

Needs `ai-edge-litert`, `numpy` and `opencv-python-headless`. The image is resized to the
model's fixed input size, the labels are resized back (nearest) to the image's size.

    python export/tflite_predict.py exports/gscnn_512x1024_int8.tflite street.png -o out/
    # -> out/street_labels.png (train ids) and out/street_overlay.png (classes.json palette)

`--gpu` loads the TFLite GPU delegate (libtensorflowlite_gpu_delegate.so, built for the
device). Both kinds of export work here: the default one (uint8 `images` in, int32 `labels`
out; the delegate takes only part of it) and the GPU target (`gscnn-tf export --target gpu`:
float32 `images` in, `probabilities` out, every op on the delegate), around which this script
does what an app does: cast the pixels to float32 before, take the argmax after.
"""

from __future__ import annotations

import argparse
import json
import os

import cv2
import numpy as np


def load(model_path: str, gpu_delegate: str | None = None):
    """The `serving_default` signature runner of a TFLite export."""
    from ai_edge_litert.interpreter import Interpreter, load_delegate

    delegates = [load_delegate(gpu_delegate)] if gpu_delegate else None
    interpreter = Interpreter(model_path=model_path, experimental_delegates=delegates)
    return interpreter.get_signature_runner("serving_default")


def predict(runner, image: np.ndarray) -> dict:
    """uint8 RGB `[H, W, 3]` (H, W >= 1) -> {"labels": int32 [H, W], "edge_prob": float32
    [H, W]}; a ValueError naming the rule for any other shape."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"image {image.shape}: expected uint8 RGB [H, W, 3] with H, W >= 1 "
                         "(one image per call)")
    images = runner.get_input_details()["images"]
    height, width = images["shape"][1:3]
    resized = image if image.shape[:2] == (height, width) else cv2.resize(
        image, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)
    # uint8 for the default export; float32 0..255 for the GPU target, which leaves the
    # argmax over its class probabilities to the app.
    out = runner(images=np.ascontiguousarray(resized[None], images["dtype"]))
    labels = out["labels"][0] if "labels" in out else \
        np.argmax(out["probabilities"][0], axis=-1).astype(np.int32)
    edge_prob = out["edge_prob"][0, ..., 0]
    if labels.shape != image.shape[:2]:
        size = (image.shape[1], image.shape[0])
        labels = cv2.resize(labels.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        edge_prob = cv2.resize(edge_prob, size, interpolation=cv2.INTER_LINEAR)
    return {"labels": labels.astype(np.int32), "edge_prob": edge_prob}


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha=0.5):
    """Palette colours over the image, uint8 RGB `[H, W, 3]`."""
    colours = np.asarray(palette, np.float32)[np.clip(labels, 0, len(palette) - 1)]
    return np.round((1 - alpha) * image + alpha * colours).astype(np.uint8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help=".tflite file (classes.json beside it)")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--output", "-o", default="predictions")
    parser.add_argument("--gpu", metavar="DELEGATE_SO", help="TFLite GPU delegate library")
    args = parser.parse_args(argv)
    runner = load(args.model, args.gpu)
    with open(os.path.join(os.path.dirname(args.model), "classes.json")) as f:
        palette = np.array(json.load(f)["palette"], np.uint8)
    os.makedirs(args.output, exist_ok=True)
    for path in args.images:
        image = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
        labels = predict(runner, image)["labels"]
        stem = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0])
        cv2.imwrite(f"{stem}_labels.png", labels.astype(np.uint8))
        cv2.imwrite(f"{stem}_overlay.png",
                    cv2.cvtColor(overlay(image, labels, palette), cv2.COLOR_RGB2BGR))
        print(f"{path} -> {stem}_labels.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
