"""The markdown report and derived figures of `python -m benchmarks.speed`, read from its
JSONL file of JobRecords."""

from __future__ import annotations

import json
import os

from benchmarks.speed_jobs import JobRecord
from gscnn_tf.benchmark import machine_line, markdown_table


def read_records(path: str) -> list[JobRecord]:
    """The latest record of each job of a JSONL file, in first-run order."""
    latest = {}
    with open(path, encoding="utf-8") as f:
        for record in (JobRecord(**json.loads(line)) for line in f if line.strip()):
            latest[record.describe()] = record
    return list(latest.values())


def _ok(records, kind):
    return [r for r in records if r.kind == kind and "error" not in r.result]


def _size(r):
    return "x".join(map(str, r.size))


def _ms(timing):
    if not isinstance(timing, dict) or "median_s" not in timing:
        return "failed" if isinstance(timing, dict) and "error" in timing else "-"
    return f"{1000 * timing['median_s']:.0f} ms (load {timing['load_average_1min']:.1f})"


def summarise(records: list[JobRecord]) -> dict:
    """Headline figures derived from the job results."""
    out = {}
    peak = next((r.result for r in _ok(records, "matmul")), None)
    if peak:
        out["matmul_gflops"] = peak["gflops_median"]
        out["matmul_gflops_best"] = peak.get("gflops_best", peak["gflops_median"])
    for j in _ok(records, "latency"):
        if "flops" in j.result and "keras" in j.result:
            key = f"{j.backbone}_{j.size[0]}x{j.size[1]}"
            achieved = j.result["flops"] / j.result["keras"]["median_s"] / 1e9
            out.setdefault("achieved_gflops", {})[key] = achieved
            if peak:
                out.setdefault("share_of_matmul_peak", {})[key] = (
                    achieved / out["matmul_gflops_best"])
    train = {j.replicas: j.result for j in _ok(records, "train")}
    pipeline = next((r.result for r in _ok(records, "pipeline")), None)
    if pipeline and 1 in train:
        out["pipeline_over_train_step"] = pipeline["images_per_s"] / train[1]["images_per_s"]
    if 1 in train and 2 in train:
        out["two_replica_speedup"] = train[2]["images_per_s"] / train[1]["images_per_s"]
    return out


def _latency_row(j, s) -> list:
    r = j.result
    if "error" in r:
        return [j.backbone, _size(j), f"failed: {r['error'][:100]}"] + [""] * 9
    key = f"{j.backbone}_{j.size[0]}x{j.size[1]}"
    cost = "-"
    if "shape_stream_cost" in r:
        cost = f"{r['shape_stream_cost']:.2f} (min {r['shape_stream_cost_min']:.2f}" + (
            f", FLOPs {r['flops'] / r['flops_baseline']:.2f})" if "flops_baseline" in r else ")")
    gflop = f"{r['flops'] / 1e9:.0f}" if "flops" in r else "-"
    if "flops_baseline" in r:
        gflop += f" (baseline {r['flops_baseline'] / 1e9:.0f})"
    rate = (f"{s['achieved_gflops'][key]:.0f} ({100 * s['share_of_matmul_peak'][key]:.0f} %)"
            if "flops" in r and key in s.get("share_of_matmul_peak", {}) else "-")
    return [j.backbone + (" (mixed)" if j.mixed else ""), _size(j), _ms(r.get("keras")),
            _ms(r.get("keras_baseline")), cost, *[_ms(r.get(f)) for f in (
                "saved_model", "tflite_fp32", "tflite_fp16", "tflite_int8")], gflop, rate,
            f"{r['keras']['peak_rss_mb']:.0f} MiB" if "keras" in r else "-"]


def _parts(j) -> list[str]:
    g, b = j.result["gscnn"], j.result["baseline"]
    rows = [[part, _ms(g.get(part)), _ms(b.get(part))]
            for part in ("backbone", "shape_stream", "canny", "fusion_aspp", "aspp", "decoder",
                         "full") if part in g or part in b]
    rows.append(["sum of parts", f"{1000 * g['sum_of_parts_s']:.0f} ms",
                 f"{1000 * b['sum_of_parts_s']:.0f} ms"])
    extra = g["shape_stream"]["median_s"] + g["canny"]["median_s"] + (
        g["fusion_aspp"]["median_s"] - b["aspp"]["median_s"])
    stream = g["shape_stream"]["median_s"]
    return [f"## Where the time goes: {j.backbone} at {_size(j)}", "",
            markdown_table(["part", "GSCNN", "DeepLab v3+"], rows), "",
            "Each part timed alone on the outputs of the part before it. What GSCNN adds "
            f"(shape stream, Canny, fusion): {1000 * extra:.0f} ms, "
            f"{100 * extra / g['sum_of_parts_s']:.0f} % of its sum of parts; the shape stream "
            f"alone {1000 * stream:.0f} ms ({100 * stream / g['sum_of_parts_s']:.0f} %).", ""]


def markdown(records: list[JobRecord]) -> str:
    s = summarise(records)
    hosts = {}
    for r in records:
        m = r.machine
        hosts.setdefault((m.get("cpu"), m.get("cores"), m.get("gpus"), m.get("tensorflow")), m)
    commands = list(dict.fromkeys(r.command for r in records if r.command))
    device = records[0].device if records else "cpu"
    lines = [f"# Speed ({device.upper()})", "",
             *[machine_line(m) for m in hosts.values() if m],
             "", "Every figure has the 1-min load average measured beside it; each job's "
             "machine and load at its start are in the JSONL file. Batch 1, random weights, 19 "
             "classes; median of the timed runs after warm-up (warm-up / runs per job in the "
             f"JSONL). Jobs' wall time: {sum(r.wall_s for r in records) / 60:.1f} min"
             + (" (" + "; ".join(f"`{c}`" for c in commands) + ")." if commands else "."), ""]
    if "matmul_gflops" in s:
        lines += [f"FP32 matmul (4096^2, tf.function): {s['matmul_gflops']:.0f} GFLOP/s "
                  f"median, {s['matmul_gflops_best']:.0f} GFLOP/s best of the runs (the "
                  "peak the models' achieved FLOP/s are compared with, measured in the same "
                  "run under the same sharing of the cores).", ""]
    lat = [r for r in records if r.kind == "latency"]
    if lat:
        lines += ["## Inference latency", "", markdown_table(
            ["backbone", "size", "Keras tf.function", "DeepLab v3+ baseline",
             "shape-stream cost", "SavedModel", "TFLite fp32", "TFLite fp16", "TFLite int8",
             "GFLOP", "GFLOP/s (share of matmul)", "peak RSS"],
            [_latency_row(j, s) for j in lat]),
            "", "Shape-stream cost = GSCNN / DeepLab v3+ median latency on the same "
            "backbone (goal <= 1.15), the two timed round-robin; in brackets the ratio "
            "of the fastest runs and the ratio of FLOPs (not affected by the load). FLOPs: TensorFlow's graph profiler on the traced forward pass (multiply and "
            "add counted separately). Peak RSS: the process's VmHWM after building the model "
            "and running the Keras GSCNN (the full-resolution inference memory at "
            "1024x2048). TFLite: LiteRT CPU, builtin ops, "
            f"{os.cpu_count()} threads, Canny hysteresis bounded (export settings); "
            "int8 calibrated on random images (speed only).", ""]
    for j in _ok(records, "parts"):
        lines += _parts(j)
    strides = _ok(records, "strides")
    if strides:
        lines += ["## Shape-stream stride (speed side; boundary F: ablation.md)", "",
                  markdown_table(["model", "size", "stride 1", "stride 2", "stride 4",
                                  "baseline"],
                                 [[j.label or j.backbone, _size(j),
                                   *[_ms(j.result.get(k)) for k in (
                                       "stride1", "stride2", "stride4", "baseline")]]
                                  for j in strides]), ""]
    train = [r for r in records if r.kind == "train"]
    if train:
        rows = [[j.backbone + (" (mixed)" if j.mixed else ""), _size(j), j.replicas]
                + ([j.result["global_batch"], _ms(j.result),
                    f"{j.result['images_per_s']:.3f}", f"{j.result['peak_rss_mb']:.0f} MiB"]
                   if "error" not in j.result else
                   ["", f"failed: {j.result['error'][:100]}", "", ""]) for j in train]
        lines += ["## Training throughput", "", markdown_table(
            ["backbone", "crop", "replicas", "global batch", "step", "images/s", "peak RSS"],
            rows), "", "The project's train step (forward, GSCNNLoss, L2, SGD momentum); "
            "2 replicas = MirroredStrategy over 2 logical CPU devices of the same cores (sync "
            "batch norm)."]
        if "two_replica_speedup" in s:
            lines.append(f"2 replicas / 1 replica: {s['two_replica_speedup']:.2f}x.")
        lines.append("")
    for pipe in _ok(records, "pipeline")[:1]:
        lines += [f"Input pipeline (decode, scale, crop, flip, jitter, blur, edges; "
                  f"{_size(pipe)} crops from 2048x1024 PNGs): "
                  f"{pipe.result['images_per_s']:.2f} images/s (load "
                  f"{pipe.result['load_average_1min']:.1f})"
                  + (f", {s['pipeline_over_train_step']:.0f}x the 1-replica training step"
                     if "pipeline_over_train_step" in s else "")
                  + "".join(f"; {what} {pipe.result[key]:.2f} images/s" for key, what in (
                      ("eval_images_per_s", "evaluation (decode, labels, edges at 2048x1024)"),
                      ("decode_images_per_s", "PNG decoding alone")) if key in pipe.result)
                  + ".", ""]
    evaluate = _ok(records, "evaluate")
    if evaluate:
        lines += ["## Batch-1 evaluation memory", "", markdown_table(
            ["model", "image", "mode", "time", "peak RSS", "of which inference"],
            [[j.label, _size(j), f"window {j.window}" if j.window else "whole image",
              f"{j.result['seconds']:.1f} s", f"{j.result['peak_rss_mb']:.0f} MiB",
              f"{j.result['inference_peak_mb']:.0f} MiB"] for j in evaluate]), "",
            "The Evaluator's inference (`Predictor.probabilities` + argmax) of one random "
            "float32 image, each mode in its own process; of which inference = peak RSS minus "
            "the peak after building the model.", ""]
    failed = [r for r in records if "error" in r.result]
    if failed:
        lines += ["## Not measured", ""]
        lines += [f"- {r.describe()}: failed: {r.result['error'][-300:]}" for r in failed]
        lines.append("")
    return "\n".join(lines)


def write_report(records: list[JobRecord], stem: str) -> str:
    """Writes `<stem>.md` (the markdown of `records`); returns its path."""
    from gscnn_tf import files

    files.atomic_write_text(f"{stem}.md", markdown(records))
    return f"{stem}.md"
