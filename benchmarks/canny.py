"""gscnn_tf.ops.canny against cv2.Canny(gray, 10, 100) on this CPU: every step form, the
exported TFLite forms and OpenCV timed round-robin at 1024x2048, the stages as plain TF ops
and XLA-compiled, the agreement of bounded hysteresis on scikit-image's photos, and TFLite
conversion with builtin ops only. Run: python -m benchmarks.canny [--reps 5]
"""

import importlib

import cv2
import numpy as np
import skimage.data
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from benchmarks import argument_parser
from gscnn_tf.benchmark import (machine_info, markdown_report, markdown_table, time_call,
                                time_interleaved, write_results)
from gscnn_tf.ops import canny

# The module itself (its stages); `gscnn_tf.ops.canny` names the function.
C = importlib.import_module("gscnn_tf.ops.canny")

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")


def _photo(name):
    img = getattr(skimage.data, name)()
    return np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img[..., :3]


def _ref(rgb):
    return cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 10, 100) > 0


def _mosaic():
    tiles = [cv2.resize(_photo(n), (512, 512)) for n in PHOTOS[:4]] * 2
    return np.concatenate([np.concatenate(tiles[:4], 1), np.concatenate(tiles[4:], 1)], 0)


def _stages(sobel_fn, jit):
    """tf.functions of the detector's cumulative prefixes on the bits form: gradient,
    + non-maximum suppression and thresholds, + hysteresis; each returns a scalar (so no
    output copy is timed)."""
    def gradient(x):
        dx, dy, mag = C._gradients(C.to_uint8_values(x), "gray", sobel_fn)
        return tf.reduce_sum(dx) + tf.reduce_sum(dy) + tf.reduce_sum(mag)

    def nms(x):
        dx, dy, mag = C._gradients(C.to_uint8_values(x), "gray", sobel_fn)
        keep = C._non_max_suppression(dx, dy, mag)
        return (tf.reduce_sum(tf.cast(tf.logical_and(keep, mag > 10.0), tf.int32))
                + tf.reduce_sum(tf.cast(tf.logical_and(keep, mag > 100.0), tf.int32)))

    def full(x):
        return tf.reduce_sum(C._canny_bits(x, 10.0, 100.0, 0, "gray", 4, sobel_fn))

    return {name: tf.function(fn, jit_compile=jit, autograph=False)
            for name, fn in (("gradient", gradient), ("nms", nms), ("full", full))}


def _canny_tflite(form, steps, shape):
    """(the tf.function of canny, the TFLite file it converts to with builtin ops only) for
    uint8 images of `shape` [1, H, W, 3] (None: any size)."""
    fn = tf.function(lambda x: canny(x, step_form=form, max_steps=steps),
                     input_signature=[tf.TensorSpec(shape, tf.uint8)])
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return fn, conv.convert()


def _interpreter(content, rgb, threads=None):
    """(a LiteRT CPU interpreter of `content` with the uint8 image `rgb` [H, W, 3] as its
    input, the index of its output)."""
    it = Interpreter(model_content=content, num_threads=threads)
    inp = it.get_input_details()[0]["index"]
    it.resize_tensor_input(inp, [1, *rgb.shape])
    it.allocate_tensors()
    it.set_tensor(inp, rgb[None])
    return it, it.get_output_details()[0]["index"]


def speed(result, reps):
    img = _mosaic()
    x = tf.constant(img[None])
    ref = _ref(img)
    fns = {}
    for form in ("bool", "bits", "fused", "pool"):
        fn = tf.function(lambda x, f=form: canny(x, step_form=f))
        out = fn(x).numpy()[0, ..., 0] > 0.5
        result[f"tf_{form}_mismatched_px"] = int((out != ref).sum())
        fns[f"tf_{form}"] = lambda fn=fn: fn(x).numpy()
    for form, steps in (("pool", 64), ("mask", 64)):
        it, out = _interpreter(_canny_tflite(form, steps, [1, *img.shape])[1], img, 2)
        it.invoke()
        edges = it.get_tensor(out)[0, ..., 0] > 0.5
        result[f"tflite_{form}{steps}_found"] = float((edges & ref).sum() / ref.sum())
        result[f"tflite_{form}{steps}_extra_px"] = int((edges & ~ref).sum())
        fns[f"tflite_{form}{steps}"] = it.invoke
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    fns["opencv"] = lambda: cv2.Canny(gray, 10, 100)
    for jit, sobel_fn, tag in ((False, None, "ops"), (True, C._sobel_shifts, "xla")):
        for stage, fn in _stages(sobel_fn, jit).items():
            fns[f"stage_{tag}_{stage}"] = lambda fn=fn: fn(x).numpy()
    timing = time_interleaved(fns, warmup=1, reps=reps)
    result["timing"] = timing
    for key, t in timing.items():
        result[f"{key}_ms"] = 1000.0 * t["median_s"]
        result[f"{key}_min_ms"] = 1000.0 * t["min_s"]


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
    out = {}
    for form in ("bool", "pool"):
        for steps in (0, 32):
            key = f"{form}_steps{steps}"
            try:
                fn, buf = _canny_tflite(form, steps, [1, None, None, 3])
            except Exception as e:  # report, do not crash the benchmark
                out[key] = {"converts": False, "error": str(e)[-300:]}
                continue
            it, output = _interpreter(buf, rgb)
            ms = 1000.0 * time_call(it.invoke, 1, 1)["median_s"]
            edges = it.get_tensor(output)[0, ..., 0] > 0.5
            tf_edges = fn(tf.constant(rgb[None])).numpy()[0, ..., 0] > 0.5
            out[key] = {"converts": True, "bytes": len(buf), "ms_300x451": ms,
                        "mismatch_vs_tf": int((edges != tf_edges).sum()),
                        "mismatch_vs_opencv": int((edges != ref).sum())}
    result["tflite"] = out


def _markdown(r):
    def ms(key):
        return f"{r[key + '_ms']:.1f} (min {r[key + '_min_ms']:.1f})"

    def stages(tag):
        g, n, f = (r[f"stage_{tag}_{s}_ms"] for s in ("gradient", "nms", "full"))
        return [f"{g:.1f}", f"{n - g:.1f}", f"{f - n:.1f}", f"{f:.1f}"]

    forms = [[f"TF `{form}`", ms("tf_" + form), r[f"tf_{form}_mismatched_px"]]
             for form in ("fused", "bits", "bool", "pool")]
    forms += [[f"TFLite `{key[:-2]}`, 64 steps (LiteRT CPU, 2 threads)", ms("tflite_" + key),
               f"found {r['tflite_' + key + '_found']:.4f} of OpenCV's edges, "
               f"{r['tflite_' + key + '_extra_px']} extra px"] for key in ("pool64", "mask64")]
    return markdown_report(
        "Canny benchmark", r["machine"], "## 1024x2048 (photo mosaic), ms per image",
        f"Median of {r['timing']['opencv']['reps']} round-robin runs in one process (min in "
        "brackets); every form gives cv2.Canny's edges.",
        markdown_table(["form", "ms", "mismatched px vs cv2.Canny"],
                       [["OpenCV `cv2.Canny`", ms("opencv"), "-"], *forms]),
        "Stages (ms, medians; differences of cumulative prefixes of the detector, each "
        "reduced to a scalar so no output copy is timed):",
        markdown_table(["graph", "gradient", "+ NMS and thresholds",
                        "+ hysteresis (bits, to convergence)", "whole"],
                       [["TF ops (depthwise Sobel)", *stages("ops")],
                        ["XLA (`fused`: Sobel by shifted adds)", *stages("xla")]]),
        "## Bounded hysteresis (`max_steps`, no WHILE op): found share of OpenCV edges "
        "(extra is always 0)",
        markdown_table(["steps", *PHOTOS], [[steps, *[f"{per[n]['found']:.4f}" for n in PHOTOS]]
                                            for steps, per in r["bounded_steps"].items()]),
        "## TFLite (builtin ops only, chelsea 300x451)",
        markdown_table(["form", "converts", "ms", "mismatch vs TF", "mismatch vs OpenCV"],
                       [[key, "yes", f"{v['ms_300x451']:.0f}", v["mismatch_vs_tf"],
                         v["mismatch_vs_opencv"]] if v["converts"] else [key, "no", "", "", ""]
                        for key, v in r["tflite"].items()]),
        versions=f" OpenCV {r['opencv']}.")


def main(argv=None) -> int:
    parser = argument_parser(__doc__, "canny")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    r = {"machine": machine_info(), "opencv": cv2.__version__}
    speed(r, args.reps)
    bounded(r)
    tflite(r)
    write_results(args.out, args.name, r, _markdown(r), echo=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
