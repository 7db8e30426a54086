"""Cost and fidelity of `gscnn-tf import-reference` on this CPU.

Writes a random checkpoint with the reference's key names and shapes (`module.` prefixes, as
DataParallel saves it), converts it (timed: read, build, map, save), loads the `.keras` file,
and compares the compat model with the independent PyTorch forward pass of
gscnn_tf.reference_torch on one image at 256x512: max abs differences of the seg and edge
logits, label agreement, and both forward times. Writes benchmarks/results/reference_import.json
and .md (torch is the `convert` extra).  Run: python -m benchmarks.reference_import [--size 256x512]
"""

from __future__ import annotations

import argparse
import os
import tempfile

from gscnn_tf.benchmark import machine_info, machine_line, markdown_table, time_once, write_results
from gscnn_tf.cli.arguments import parse_size

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def measure(height: int, width: int) -> dict:
    import keras
    import numpy as np
    import torch

    from gscnn_tf import reference_import, reference_torch

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
        model, load_s = time_once(lambda: keras.saving.load_model(out, compile=False))
    model(image, training=False)
    out, tf_s = time_once(lambda: model(image, training=False))
    (seg_ref, edge_ref), torch_s = time_once(lambda: reference_torch.forward(state, image))
    seg, edge = out["seg_logits"].numpy(), out["edge_logits"].numpy()
    return {
        "machine": machine_info(), "torch": torch.__version__,
        "conversion_s": round(report.seconds, 1), "load_s": round(load_s, 1), **sizes,
        "parameters": report.parameters, "size": [height, width],
        "seg_max_abs_diff": float(np.abs(seg - seg_ref).max()),
        "seg_max_abs": float(np.abs(seg_ref).max()),
        "edge_max_abs_diff": float(np.abs(edge - edge_ref).max()),
        "edge_max_abs": float(np.abs(edge_ref).max()),
        "label_agreement": float(np.mean(seg.argmax(-1) == seg_ref.argmax(-1))),
        "tf_forward_s": round(tf_s, 2), "torch_forward_s": round(torch_s, 2),
    }


def markdown(r: dict) -> str:
    height, width = r["size"]
    rows = [
        ["conversion (read .pth, build, map, save .keras)", f"{r['conversion_s']} s"],
        ["load .keras", f"{r['load_s']} s"],
        ["files", f".pth {r['checkpoint_mb']:.0f} MB, .keras {r['keras_mb']:.0f} MB"],
        ["parameters", f"{r['parameters']:,}"],
        [f"seg logits max abs diff at {height}x{width}",
         f"{r['seg_max_abs_diff']:.3g} (largest value {r['seg_max_abs']:.3g})"],
        ["edge logits max abs diff",
         f"{r['edge_max_abs_diff']:.3g} (largest value {r['edge_max_abs']:.3g})"],
        ["label agreement", f"{100 * r['label_agreement']:.4f} %"],
        ["forward, 1 image: TF compat model / torch reference",
         f"{r['tf_forward_s']} s / {r['torch_forward_s']} s"]]
    return "\n".join([
        "# Reference checkpoint import (random weights, reference key names and shapes)", "",
        machine_line(r["machine"]) + f" torch {r['torch']}.", "",
        markdown_table(["measure", "value"], rows)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256x512", help="HEIGHTxWIDTH of the test image")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    record = measure(*parse_size(args.size))
    write_results(args.out, "reference_import", record, markdown(record), echo=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
