"""The markdown report and derived figures of benchmarks/speed.py's results."""

from __future__ import annotations

import os



def _ms(timing):
    if not isinstance(timing, dict):
        return "-"
    if "median_s" not in timing:
        return "failed (speed.json)" if "error" in timing else "-"
    return f"{1000 * timing['median_s']:.0f} ms (load {timing['load_average_1min']:.1f})"


def summarise(record) -> dict:
    """Headline figures derived from the job results."""
    jobs = [j for j in record["jobs"] if "result" in j and "error" not in j["result"]]
    out = {}
    peak = next((j["result"] for j in jobs if j["kind"] == "matmul"), None)
    if peak:
        out["matmul_gflops"] = peak["gflops_median"]
        out["matmul_gflops_best"] = peak.get("gflops_best", peak["gflops_median"])
    for j in jobs:
        r = j["result"]
        if j["kind"] == "latency" and "flops" in r and "keras" in r:
            key = f"{j['backbone']}_{j['size'][0]}x{j['size'][1]}"
            achieved = r["flops"] / r["keras"]["median_s"] / 1e9
            out.setdefault("achieved_gflops", {})[key] = achieved
            if peak:
                out.setdefault("share_of_matmul_peak", {})[key] = (
                    achieved / out["matmul_gflops_best"])
    train = {j["replicas"]: j["result"] for j in jobs if j["kind"] == "train"}
    pipeline = next((j["result"] for j in jobs if j["kind"] == "pipeline"), None)
    if pipeline and 1 in train:
        out["pipeline_over_train_step"] = pipeline["images_per_s"] / train[1]["images_per_s"]
    if 1 in train and 2 in train:
        out["two_replica_speedup"] = train[2]["images_per_s"] / train[1]["images_per_s"]
    return out


REFERENCE = [
    ("WRN-38 forward, 512x1024, batch 1", "18.91 s (trunk 11.49, shape stream 1.99, ASPP "
     "2.48, decoder 2.39)"),
    ("WRN-38 forward, 256x512 / 1024x2048", "4.00 s / 79.7 s"),
    ("WRN-38 without the shape stream, 512x1024", "16.04 s (shape stream cost 1.18x)"),
    ("WRN-38 FLOPs per 512x1024 image, achieved", "~3.0 TFLOP, ~160 GFLOP/s"),
    ("peak memory 256x512 / 512x1024 / 1024x2048 inference", "1.2 / 2.4 / 6.3 GB"),
    ("WRN-38 training step 512x512, batch 2, SGD", "63.2 s, peak 8.4 GB"),
    ("FP32 matmul in TensorFlow, same machine", "219 GFLOP/s"),
]


def markdown(record) -> str:
    m, s = record["machine"], record["summary"]
    lines = [f"# Speed ({record['device'].upper()})", "",
             f"Machine: {m['cpu']}"
             + (f" ({', '.join(m['cpu_flags'])})" if m.get("cpu_flags") else "")
             + f", {m['cores']} cores, {m['gpus']} GPU "
             f"{', '.join(m['gpu_names'])}".rstrip() +
             f"; TensorFlow {m['tensorflow']}, Keras {m['keras']}, Python {m['python']}. "
             f"Load average at the start {m['load_average']} (other processes share the "
             "cores: every figure has the 1-min load average measured beside it). Batch 1, "
             f"random weights, 19 classes; median of the timed runs after warm-up "
             f"(warm-up / runs per job in speed.json). Wall time of the run: "
             f"{record['wall_s'] / 60:.1f} min" + (f" (`{record['command']}`)." if record.get(
                 "command") else "."), ""]
    jobs = [j for j in record["jobs"] if "result" in j]
    if "matmul_gflops" in s:
        lines += [f"FP32 matmul (4096^2, tf.function): {s['matmul_gflops']:.0f} GFLOP/s "
                  f"median, {s['matmul_gflops_best']:.0f} GFLOP/s best of the runs (the "
                  "peak the models' achieved FLOP/s are compared with, measured in the same "
                  "run under the same sharing of the cores).", ""]
    lat = [j for j in jobs if j["kind"] == "latency"]
    if lat:
        lines += ["## Inference latency", "",
                  "| backbone | size | Keras tf.function | DeepLab v3+ baseline | shape-stream "
                  "cost | SavedModel | TFLite fp32 | TFLite fp16 | TFLite int8 | GFLOP | "
                  "GFLOP/s (share of matmul) | peak RSS |", "|" + "---|" * 12]
        for j in lat:
            r = j["result"]
            if "error" in r:
                lines.append(f"| {j['backbone']} | {'x'.join(map(str, j['size']))} | "
                             f"failed: {r['error'][:100]} |" + " |" * 10)
                continue
            key = f"{j['backbone']}_{j['size'][0]}x{j['size'][1]}"
            cost = f"{r['shape_stream_cost']:.2f}" if "shape_stream_cost" in r else "-"
            brackets = [f"min {r['shape_stream_cost_min']:.2f}"] if (
                "shape_stream_cost_min" in r) else []
            if "flops_baseline" in r:
                brackets.append(f"FLOPs {r['flops'] / r['flops_baseline']:.2f}")
            cost += f" ({', '.join(brackets)})" if brackets else ""
            gflop = f"{r['flops'] / 1e9:.0f}" if "flops" in r else "-"
            if "flops_baseline" in r:
                gflop += f" (baseline {r['flops_baseline'] / 1e9:.0f})"
            rate = (f"{s['achieved_gflops'][key]:.0f} ({100 * s['share_of_matmul_peak'][key]:.0f}"
                    " %)" if "flops" in r and key in s.get("share_of_matmul_peak", {}) else "-")
            mixed = " (mixed)" if j.get("mixed") else ""
            rss = f"{r['keras']['peak_rss_mb']:.0f} MiB" if "keras" in r else "-"
            lines.append(
                f"| {j['backbone']}{mixed} | {'x'.join(map(str, j['size']))} | "
                f"{_ms(r.get('keras'))} | {_ms(r.get('keras_baseline'))} | {cost} | "
                f"{_ms(r.get('saved_model'))} | {_ms(r.get('tflite_fp32'))} | "
                f"{_ms(r.get('tflite_fp16'))} | {_ms(r.get('tflite_int8'))} | {gflop} | "
                f"{rate} | {rss} |")
        sequential = any("keras_baseline" in j["result"] and not j["result"].get(
            "interleaved") for j in lat)
        lines += ["", "Shape-stream cost = GSCNN / DeepLab v3+ median latency on the same "
                  "backbone (goal <= 1.15), the two timed round-robin; in brackets the ratio "
                  "of the fastest runs and the ratio of FLOPs (not affected by the load)."
                  + (" Rows without the fastest-run ratio timed the two one after the other "
                     "(this run predates round-robin timing)." if sequential else "")
                  + " FLOPs: TensorFlow's graph profiler on the traced forward pass "
                  "(multiply and add counted separately). Peak RSS: the process's VmHWM after building the model "
                  "and running the Keras GSCNN (the full-resolution inference memory at "
                  "1024x2048). TFLite: LiteRT CPU, builtin ops, "
                  f"{os.cpu_count()} threads, Canny hysteresis bounded (export settings); "
                  "int8 calibrated on random images (speed only).", ""]
    for j in jobs:
        if j["kind"] == "parts" and "error" not in j["result"]:
            lines += [f"## Where the time goes: {j['backbone']} at "
                      f"{'x'.join(map(str, j['size']))}", "",
                      "| part | GSCNN | DeepLab v3+ |", "|---|---|---|"]
            g, b = j["result"]["gscnn"], j["result"]["baseline"]
            for part in ("backbone", "shape_stream", "canny", "fusion_aspp", "aspp",
                         "decoder", "full"):
                if part in g or part in b:
                    lines.append(f"| {part} | {_ms(g.get(part))} | {_ms(b.get(part))} |")
            extra = g["shape_stream"]["median_s"] + g["canny"]["median_s"] + (
                g["fusion_aspp"]["median_s"] - b["aspp"]["median_s"])
            lines += [f"| sum of parts | {1000 * g['sum_of_parts_s']:.0f} ms | "
                      f"{1000 * b['sum_of_parts_s']:.0f} ms |", "",
                      "Each part timed alone on the outputs of the part before it. What "
                      f"GSCNN adds (shape stream, Canny, fusion): {1000 * extra:.0f} ms, "
                      f"{100 * extra / g['sum_of_parts_s']:.0f} % of its sum of parts; "
                      f"the shape stream alone {1000 * g['shape_stream']['median_s']:.0f} ms "
                      f"({100 * g['shape_stream']['median_s'] / g['sum_of_parts_s']:.0f} %)."
                      + ("" if j["result"].get("interleaved") else
                         " These parts were timed one after another, not round-robin: the "
                         "load drifted between them (the two models' decoders are the same "
                         "layers), so compare within a column only; later runs interleave."),
                      ""]
    strides = [j for j in jobs if j["kind"] == "strides" and "error" not in j["result"]]
    if strides:
        lines += ["## Shape-stream stride (speed side; boundary F: ablation.md)", "",
                  "| model | size | stride 1 | stride 2 | stride 4 | baseline |",
                  "|---|---|---|---|---|---|"]
        for j in strides:
            r = j["result"]
            lines.append(f"| {j.get('label') or j['backbone']} | "
                         f"{'x'.join(map(str, j['size']))} | {_ms(r.get('stride1'))} | "
                         f"{_ms(r.get('stride2'))} | {_ms(r.get('stride4'))} | "
                         f"{_ms(r.get('baseline'))} |")
        lines.append("")
    train = [j for j in jobs if j["kind"] == "train"]
    if train:
        lines += ["## Training throughput", "",
                  "| backbone | crop | replicas | global batch | step | images/s | peak RSS |",
                  "|---|---|---|---|---|---|---|"]
        for j in train:
            r = j["result"]
            if "error" in r:
                lines.append(f"| {j['backbone']} | | {j['replicas']} | | failed: "
                             f"{r['error'][:100]} | | |")
                continue
            mixed = " (mixed)" if j.get("mixed") else ""
            lines.append(f"| {j['backbone']}{mixed} | {'x'.join(map(str, j['size']))} | "
                         f"{j['replicas']} | {r['global_batch']} | {_ms(r)} | "
                         f"{r['images_per_s']:.3f} | {r['peak_rss_mb']:.0f} MiB |")
        lines += ["", "The project's train step (forward, GSCNNLoss, L2, SGD momentum); "
                  "2 replicas = MirroredStrategy over 2 logical CPU devices of the same "
                  "cores (sync batch norm)."]
        if "two_replica_speedup" in s:
            lines.append(f"2 replicas / 1 replica: {s['two_replica_speedup']:.2f}x.")
        lines.append("")
    pipe = next((j for j in jobs if j["kind"] == "pipeline"), None)
    if pipe and "error" not in pipe["result"]:
        lines += [f"Input pipeline (decode, scale, crop, flip, jitter, blur, edges; "
                  f"{'x'.join(map(str, pipe['size']))} crops from 2048x1024 PNGs): "
                  f"{pipe['result']['images_per_s']:.2f} images/s (load "
                  f"{pipe['result']['load_average_1min']:.1f})"
                  + (f", {s['pipeline_over_train_step']:.0f}x the 1-replica training step."
                     if "pipeline_over_train_step" in s else "."), ""]
    if record["not_measured"]:
        lines += ["## Not measured in this run", ""]
        lines += [f"- {n['job']}: {n['reason']}" for n in record["not_measured"]]
        lines.append("")
    if record["device"] == "cpu":
        lines += ["## The PyTorch reference on the same machine class (benchmarks/README.md)",
                  "", "| figure | reference |", "|---|---|"]
        lines += [f"| {a} | {b} |" for a, b in REFERENCE]
        lines.append("")
    return "\n".join(lines)
