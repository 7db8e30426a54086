"""Speed and agreement of gscnn_tf.ops.canny against cv2.Canny(gray, 10, 100).

Times the TF bool and pool step forms and OpenCV at 1024x2048 on this CPU, measures the
bounded-steps agreement on scikit-image's photos, and converts a tf.function wrapping canny
to TFLite with builtin ops only (checking it stays exact). Writes
benchmarks/results/canny.json and canny.md.  Run: python benchmarks/canny.py
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from gscnn_tf.benchmark import cpu_model, time_call  # noqa: E402
from gscnn_tf.ops import canny  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _photo(name):
    img = getattr(skimage.data, name)()
    return np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img[..., :3]


def _ref(rgb):
    return cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 10, 100) > 0


def _timed(fn, reps):
    """Median milliseconds of `reps` calls after one warm-up call."""
    return 1000.0 * time_call(fn, 1, reps)["median_s"]


def _mosaic():
    tiles = [cv2.resize(_photo(n), (512, 512)) for n in PHOTOS[:4]] * 2
    return np.concatenate([np.concatenate(tiles[:4], 1), np.concatenate(tiles[4:], 1)], 0)


def speed(result):
    img = _mosaic()
    x = tf.constant(img[None])
    ref = _ref(img)
    for form, reps in (("bool", 3), ("bits", 3), ("pool", 1)):
        fn = tf.function(lambda x, f=form: canny(x, step_form=f))
        out = fn(x).numpy()[0, ..., 0] > 0.5
        result[f"tf_{form}_ms"] = _timed(lambda: fn(x).numpy(), reps)
        result[f"tf_{form}_mismatched_px"] = int((out != ref).sum())
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    result["opencv_ms"] = _timed(lambda: cv2.Canny(gray, 10, 100), 10)


def bounded(result):
    rows = {}
    for steps in (16, 32, 64, 128):
        fn = tf.function(lambda x, s=steps: canny(x, max_steps=s))
        per = {}
        for name in PHOTOS:
            rgb = _photo(name)
            ref = _ref(rgb)
            out = fn(tf.constant(rgb[None])).numpy()[0, ..., 0] > 0.5
            per[name] = {"found": float((out & ref).sum() / ref.sum()),
                         "extra": float((out & ~ref).sum() / ref.sum())}
        rows[steps] = per
    result["bounded_steps"] = rows


def tflite(result):
    rgb = _photo("chelsea")
    ref = _ref(rgb)
    spec = tf.TensorSpec([1, None, None, 3], tf.uint8)
    out = {}
    for form in ("bool", "pool"):
        for steps in (0, 32):
            fn = tf.function(lambda x, f=form, s=steps: canny(x, step_form=f, max_steps=s),
                             input_signature=[spec])
            conv = tf.lite.TFLiteConverter.from_concrete_functions(
                [fn.get_concrete_function()], fn)
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            key = f"{form}_steps{steps}"
            try:
                buf = conv.convert()
            except Exception as e:  # report, do not crash the benchmark
                out[key] = {"converts": False, "error": str(e)[-300:]}
                continue
            it = Interpreter(model_content=buf)
            inp = it.get_input_details()[0]
            it.resize_tensor_input(inp["index"], [1, *rgb.shape])
            it.allocate_tensors()
            it.set_tensor(inp["index"], rgb[None])
            ms = _timed(it.invoke, 1)
            edges = it.get_tensor(it.get_output_details()[0]["index"])[0, ..., 0] > 0.5
            tf_edges = fn(tf.constant(rgb[None])).numpy()[0, ..., 0] > 0.5
            out[key] = {"converts": True, "bytes": len(buf), "ms_300x451": ms,
                        "mismatch_vs_tf": int((edges != tf_edges).sum()),
                        "mismatch_vs_opencv": int((edges != ref).sum())}
    result["tflite"] = out


def _markdown(r):
    lines = [
        "# Canny benchmark", "",
        f"Machine: {r['cpu']}, {r['cores']} cores; TF {r['tf']}, OpenCV {r['opencv']}.", "",
        "## 1024x2048 (photo mosaic), ms per image", "",
        "| OpenCV | TF bool form | TF bits form | TF pool form |", "|---|---|---|---|",
        f"| {r['opencv_ms']:.1f} | {r['tf_bool_ms']:.1f} | {r['tf_bits_ms']:.1f} | {r['tf_pool_ms']:.1f} |", "",
        f"Mismatched pixels vs cv2.Canny: bool {r['tf_bool_mismatched_px']}, "
        f"bits {r['tf_bits_mismatched_px']}, pool {r['tf_pool_mismatched_px']}.", "",
        "## Bounded hysteresis (`max_steps`, no WHILE op): found share of OpenCV edges "
        "(extra is always 0)", "",
        "| steps | " + " | ".join(PHOTOS) + " |", "|---" * (len(PHOTOS) + 1) + "|"]
    for steps, per in r["bounded_steps"].items():
        lines.append(f"| {steps} | " + " | ".join(f"{per[n]['found']:.4f}" for n in PHOTOS)
                     + " |")
    lines += ["", "## TFLite (builtin ops only, chelsea 300x451)", "",
              "| form | converts | ms | mismatch vs TF | mismatch vs OpenCV |",
              "|---|---|---|---|---|"]
    for key, v in r["tflite"].items():
        if v["converts"]:
            lines.append(f"| {key} | yes | {v['ms_300x451']:.0f} | {v['mismatch_vs_tf']} | "
                         f"{v['mismatch_vs_opencv']} |")
        else:
            lines.append(f"| {key} | no | | | |")
    return "\n".join(lines) + "\n"


def main():
    r = {"cpu": cpu_model(), "cores": os.cpu_count(), "tf": tf.__version__,
         "opencv": cv2.__version__}
    speed(r)
    bounded(r)
    tflite(r)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "canny.json"), "w") as f:
        json.dump(r, f, indent=2)
    md = _markdown(r)
    with open(os.path.join(RESULTS, "canny.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
