"""Cost and fidelity of `gscnn-tf import-reference` on this CPU.

Writes a random checkpoint with the reference's key names and shapes (`module.` prefixes, as
DataParallel saves it), converts it (timed: read, build, map, save), loads the `.keras` file,
and compares the compat model with the independent PyTorch forward pass of
gscnn_tf.reference_torch on one image at 256x512: max abs differences of the seg and edge
logits, label agreement, and both forward times. Writes benchmarks/results/reference_import.json
and .md.  Run: python benchmarks/reference_import.py [--size 256x512]
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402

from gscnn_tf import reference_import, reference_torch  # noqa: E402
from gscnn_tf.benchmark import cpu_model, load_average, write_results  # noqa: E402

RESULTS = os.path.join(HERE, "results")


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256x512", help="HEIGHTxWIDTH of the test image")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    torch.set_num_threads(os.cpu_count())
    state = reference_torch.random_state_dict(19, seed=0)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, width)[None, None, :, None] * np.ones((1, height, 1, 3))
    image = np.clip(ramp + rng.normal(0, 30, (1, height, width, 3)), 0, 255).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, out = os.path.join(tmp, "ref.pth"), os.path.join(tmp, "ref.keras")
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, checkpoint)
        report = reference_import.import_reference(checkpoint, out)
        sizes = {"checkpoint_mb": os.path.getsize(checkpoint) / 1e6,
                 "keras_mb": os.path.getsize(out) / 1e6}
        model, load_s = _timed(lambda: keras.saving.load_model(out, compile=False))
    model(image, training=False)
    out, tf_s = _timed(lambda: model(image, training=False))
    (seg_ref, edge_ref), torch_s = _timed(lambda: reference_torch.forward(state, image))
    seg, edge = out["seg_logits"].numpy(), out["edge_logits"].numpy()
    results = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "load_average_1min": round(load_average(), 1),
                    "tensorflow": tf.__version__, "torch": torch.__version__},
        "conversion_s": round(report.seconds, 1), "load_s": round(load_s, 1), **sizes,
        "parameters": report.parameters, "size": [height, width],
        "seg_max_abs_diff": float(np.abs(seg - seg_ref).max()),
        "seg_max_abs": float(np.abs(seg_ref).max()),
        "edge_max_abs_diff": float(np.abs(edge - edge_ref).max()),
        "edge_max_abs": float(np.abs(edge_ref).max()),
        "label_agreement": float(np.mean(seg.argmax(-1) == seg_ref.argmax(-1))),
        "tf_forward_s": round(tf_s, 2), "torch_forward_s": round(torch_s, 2),
    }
    r, m = results, results["machine"]
    lines = [
        "# Reference checkpoint import (random weights, reference key names and shapes)", "",
        f"{m['cores']} cores ({m['cpu']}), TF {m['tensorflow']}, torch {m['torch']}; load "
        f"average {m['load_average_1min']} at the end (times include other processes' "
        "load)", "",
        "| measure | value |", "|---|---|",
        f"| conversion (read .pth, build, map, save .keras) | {r['conversion_s']} s |",
        f"| load .keras | {r['load_s']} s |",
        f"| files | .pth {r['checkpoint_mb']:.0f} MB, .keras {r['keras_mb']:.0f} MB |",
        f"| parameters | {r['parameters']:,} |",
        f"| seg logits max abs diff at {height}x{width} | {r['seg_max_abs_diff']:.3g} "
        f"(largest value {r['seg_max_abs']:.3g}) |",
        f"| edge logits max abs diff | {r['edge_max_abs_diff']:.3g} "
        f"(largest value {r['edge_max_abs']:.3g}) |",
        f"| label agreement | {100 * r['label_agreement']:.4f} % |",
        f"| forward, 1 image: TF compat model / torch reference | {r['tf_forward_s']} s / "
        f"{r['torch_forward_s']} s |", ""]
    write_results(RESULTS, "reference_import", results, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
