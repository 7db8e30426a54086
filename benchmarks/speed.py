"""Speed figures side by side in one run: batch-1 inference latency per backbone and format
(Keras under tf.function, the SavedModel, TFLite fp32 / fp16 / int8 on LiteRT), the shape
stream's cost (GSCNN / DeepLab v3+ latency) and where its time goes (parts, shape-stream
stride 1 / 2 / 4), training images/s (1 replica, 2-replica MirroredStrategy), the input
pipeline against the training step, FLOPs and achieved FLOP/s against a measured FP32 matmul,
and peak memory. Writes benchmarks/results/speed.json and speed.md (speed_gpu.* on a GPU).

    python benchmarks/speed.py                       # the plan that fits --budget-min
    python benchmarks/speed.py --list                # print the plan and its estimates only
    python benchmarks/speed.py --all                 # every cell, however long it takes
    python benchmarks/speed.py --device gpu          # 1024x2048 fp32 / mixed, 800x800 training
    python benchmarks/speed.py --backbones small --sizes 64x128 --budget-min 2   # smoke
    python benchmarks/speed.py --only parts --backbones small --name speed_parts
    python benchmarks/speed.py --report benchmarks/results/speed.json   # markdown again

Every job (speed_jobs.py) runs in its own process (its own peak memory; logical CPU devices
must be set up before TensorFlow initialises); speed_report.py writes the markdown. Weights are random (no downloads): speed does not depend on
them. Each figure is the median of --reps timed runs after --warmup untimed ones, with the
1-minute load average beside it (other processes share the cores). Jobs are planned in
priority order with an estimated cost; the ones that do not fit the time budget, or whose
estimated memory exceeds --max-memory-gb, are listed in the results as not measured, with
the reason. Results are rewritten after every job, so an interrupted run keeps its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gscnn_tf.benchmark import machine_info, run_child, write_results  # noqa: E402
from speed_jobs import CHILDREN, EXPORT_FORMATS  # noqa: E402
from speed_report import markdown, summarise  # noqa: E402

BACKBONES = ("small", "mobilenetv2", "resnet50", "resnet101", "wrn38")
SYNTHETIC = os.path.join(ROOT, "configs", "synthetic.yaml")
# Seconds of one batch-1 GSCNN forward at 512x1024 on the quiet 2-core EPYC (results/
# speed.json of 2026-12-01: small, mobilenetv2, resnet50 measured; resnet101 and wrn38 scaled
# from resnet50 by FLOPs at the same ~55 GFLOP/s), GiB of peak memory of 1024x2048 inference /
# 512x512 batch-2 training (speed.json, evaluate_memory.json; the reference's WRN-38 figures,
# benchmarks/README.md), and a train step's cost in forwards of the same pixels (23.4 s for
# 2 x 512x512 against 4.4 s for one 512x1024 forward). Used only to plan a run; on another
# machine --deadline-min bounds the wall time whatever the estimates say.
FORWARD_S = {"small": 4.4, "mobilenetv2": 5.4, "resnet50": 14.6, "resnet101": 22, "wrn38": 55}
INFER_GB = {"small": 1.5, "mobilenetv2": 2.0, "resnet50": 3.5, "resnet101": 4.0, "wrn38": 7.0}
TRAIN_GB = {"small": 3.3, "mobilenetv2": 3.8, "resnet50": 6.0, "resnet101": 7.0, "wrn38": 9.0}
TRAIN_STEP_FORWARDS = 5.3
CHILD_START_S = 10  # TensorFlow import, model build and tracing


def _pixels(size):
    return size[0] * size[1] / (512 * 1024)


def estimate_s(job) -> float:
    """Rough cost of a job in seconds on the quiet 2-core machine (for planning)."""
    kind = job["kind"]
    calls = job.get("warmup", 1) + job.get("reps", 3) + 1
    t = FORWARD_S.get(job.get("backbone") or "small", 12) * _pixels(job.get("size", [512, 1024]))
    if kind == "matmul":
        return 30
    if kind == "latency":
        cost = 0.0
        for name in job["formats"]:
            if name == "keras":
                cost += calls * t * (2 if job.get("baseline") else 1) + (20 if job.get(
                    "flops") else 0)
            elif name == "saved_model":
                cost += 3 * t + 20 + calls * t
            else:
                cost += 2 * t + calls * t
                if name == "tflite_int8":
                    cost += 3 * t * job["calibration_images"]
        return CHILD_START_S + cost
    if kind == "parts":
        return CHILD_START_S + 3.5 * calls * t
    if kind == "strides":
        return CHILD_START_S + calls * t * (len(job["strides"]) * 0.8 + bool(job.get("baseline")))
    if kind == "train":
        per_step = TRAIN_STEP_FORWARDS * t * job["batch_per_replica"] * job["replicas"]
        return CHILD_START_S + (calls + 1) * per_step
    return 60


def memory_gb(job) -> float:
    backbone = job.get("backbone") or "small"
    if job["kind"] == "train":
        return TRAIN_GB[backbone] * job["replicas"] * _pixels(job["size"]) * 2
    if job["kind"] in ("latency", "parts", "strides"):
        return INFER_GB[backbone] * _pixels(job["size"]) / 4
    return 1.0


def cpu_plan(args):
    """Jobs in priority order: the shape stream's cost first, then where its time goes,
    training, the exports at 512x1024, stride 2 / 4 at that size, full resolution, and the
    big backbones last."""
    common = {"device": "cpu", "warmup": args.warmup, "reps": args.reps,
              "calibration_images": args.calibration_images}
    small, large = args.sizes[0], args.sizes[-1]
    large_reps = {"warmup": args.warmup, "reps": args.reps_large}
    b = [name for name in BACKBONES if name in args.backbones]
    light = [n for n in b if n in ("small", "mobilenetv2", "resnet50")]
    heavy = [n for n in b if n not in light]
    plan = [{"kind": "matmul", **common}]
    plan += [{"kind": "latency", "backbone": n, "size": small, "formats": ["keras"],
              "baseline": True, "flops": True, **common} for n in light]
    if "small" in b:
        plan += [{"kind": "strides", "config": SYNTHETIC, "label": "synthetic.yaml (ablation)",
                  "size": [128, 128], "strides": [1, 2, 4], "baseline": True, **common},
                 {"kind": "parts", "backbone": "small", "size": small, **common}]
    for n in args.train_backbones:
        plan += [{"kind": "train", "backbone": n, "size": args.train_size,
                  "batch_per_replica": args.train_batch, "replicas": r, **common,
                  "reps": args.train_reps} for r in (1, 2)]
    plan.append({"kind": "pipeline", "size": args.train_size, "batch": args.train_batch,
                 "batches": 10, "images": 6, "data": args.data})
    # Export jobs time the Keras model too, so that each row is measured side by side.
    exports = [f for f in args.formats if f in EXPORT_FORMATS]
    exports = ["keras", *exports] if exports and "keras" in args.formats else exports
    if exports and "small" in b:
        plan.append({"kind": "latency", "backbone": "small", "size": small,
                     "formats": exports, **common})
    if "small" in b:
        plan.append({"kind": "strides", "backbone": "small", "size": small,
                     "strides": [1, 2, 4], "baseline": True, **common})
    if large != small:
        plan += [{"kind": "latency", "backbone": n, "size": large, "formats": ["keras"],
                  **common, **large_reps} for n in b[:1]]
    plan += [{"kind": "latency", "backbone": n, "size": small, "formats": ["keras"],
              "baseline": True, "flops": True, **common} for n in heavy]
    plan += [{"kind": "parts", "backbone": n, "size": small, **common}
             for n in b if n != "small"][:1]
    if large != small:
        plan += [{"kind": "latency", "backbone": n, "size": large, "formats": ["keras"],
                  **common, **large_reps} for n in b[1:]]
    if exports:
        plan += [{"kind": "latency", "backbone": n, "size": small, "formats": exports,
                  **common} for n in b if n != "small"]
        if large != small:
            plan += [{"kind": "latency", "backbone": n, "size": large, "formats": exports,
                      **common, **large_reps} for n in b]
    return plan


def gpu_plan(args):
    """1024x2048 inference fp32 and mixed precision per backbone; training at 800x800,
    batch 2 per replica, on 1 GPU and on all of them."""
    import tensorflow as tf

    gpus = len(tf.config.list_physical_devices("GPU"))
    if not gpus:
        raise SystemExit("--device gpu: TensorFlow sees no GPU on this machine")
    common = {"device": "gpu", "warmup": max(args.warmup, 2), "reps": max(args.reps, 10)}
    plan = [{"kind": "matmul", "n": 8192, **common}]
    for n in args.backbones:
        for mixed in (False, True):
            plan.append({"kind": "latency", "backbone": n, "size": [1024, 2048],
                         "formats": ["keras"], "baseline": True, "flops": not mixed,
                         "mixed": mixed, **common})
    for n in args.backbones:
        for replicas in sorted({1, gpus}):
            for mixed in (False, True):
                plan.append({"kind": "train", "backbone": n, "size": [800, 800],
                             "batch_per_replica": 2, "replicas": replicas, "mixed": mixed,
                             **common})
    return plan


def describe(job) -> str:
    where = job.get("label") or job.get("backbone", "")
    size = "x".join(map(str, job["size"])) if "size" in job else ""
    extra = {"latency": ", ".join(job.get("formats", [])) + (" + baseline" if job.get(
        "baseline") else ""), "train": f"{job.get('replicas')} replica(s), batch "
                                        f"{job.get('batch_per_replica')}/replica",
             "strides": f"strides {job.get('strides')}"}.get(job["kind"], "")
    mixed = ", mixed precision" if job.get("mixed") else ""
    return " ".join(p for p in (job["kind"], where, size, extra + mixed) if p)


def select(plan, budget_s, max_memory_gb, everything=False):
    """(jobs to run, [{"job", "reason"}] not run) within the budget and memory limit."""
    chosen, skipped, spent = [], [], 0.0
    for job in plan:
        cost, memory = estimate_s(job), memory_gb(job)
        if not everything and memory > max_memory_gb:
            skipped.append({"job": describe(job), "reason": f"estimated peak memory "
                            f"{memory:.1f} GiB exceeds --max-memory-gb {max_memory_gb:g} "
                            "(the machine is shared)"})
        elif not everything and spent + cost > budget_s:
            skipped.append({"job": describe(job), "reason": f"estimated {cost / 60:.1f} min "
                            f"would exceed the run's {budget_s / 60:.0f}-min budget (already "
                            f"{spent / 60:.1f} min planned); run with --all"})
        else:
            chosen.append(job)
            spent += cost
    return chosen, skipped


def parse_size(text):
    from gscnn_tf.cli.arguments import parse_size as parse

    return list(parse(text))


def _save(record, start, out_dir, name):
    record["summary"] = summarise(record)
    record["wall_s"] = time.perf_counter() - start
    return write_results(out_dir, name, record, markdown(record))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--sizes", nargs="+", type=parse_size,
                        default=[[512, 1024], [1024, 2048]], help="HxW, the first is the "
                        "size of the ratios, parts and exports")
    parser.add_argument("--formats", nargs="+", default=["keras", *EXPORT_FORMATS],
                        choices=["keras", *EXPORT_FORMATS])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--reps-large", type=int, default=2,
                        help="timed runs at the last (largest) size")
    parser.add_argument("--train-backbones", nargs="+", default=["small"], choices=BACKBONES)
    parser.add_argument("--train-size", type=parse_size, default=[512, 512])
    parser.add_argument("--train-batch", type=int, default=2, help="per replica")
    parser.add_argument("--train-reps", type=int, default=2)
    parser.add_argument("--calibration-images", type=int, default=2)
    parser.add_argument("--budget-min", type=float, default=40)
    parser.add_argument("--max-memory-gb", type=float, default=7,
                        help="skip jobs estimated above this peak RSS (2-replica training "
                        "of the small backbone at 512x512 measured 6.4 GB)")
    parser.add_argument("--deadline-min", type=float, default=None,
                        help="start no job after this many minutes of wall time: the estimates "
                        "are from one machine, the deadline holds on any (jobs not started are "
                        "listed as not measured)")
    parser.add_argument("--all", action="store_true", help="ignore the budget and memory "
                        "limit: measure every cell")
    parser.add_argument("--only", nargs="+", default=[], choices=sorted(CHILDREN),
                        help="plan only these kinds of job")
    parser.add_argument("--list", action="store_true", help="print the plan and exit")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(),
                                                       "gscnn_bench_2048x1024"))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--name", default="", help="results file name (speed / speed_gpu)")
    parser.add_argument("--report", default="", metavar="JSON",
                        help="rewrite the markdown of an earlier run's JSON and exit")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(CHILDREN[job["kind"]](job)))
        return 0
    if args.report:
        with open(args.report, encoding="utf-8") as f:
            record = json.load(f)
        record["summary"] = summarise(record)
        name = os.path.splitext(os.path.basename(args.report))[0]
        print(write_results(os.path.dirname(os.path.abspath(args.report)), name, record,
                            markdown(record))[1])
        return 0

    env = {"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {}
    os.environ.update(env)
    plan = cpu_plan(args) if args.device == "cpu" else gpu_plan(args)
    plan = [job for job in plan if not args.only or job["kind"] in args.only]
    # GPU jobs are quick and their memory is the GPU's: the CPU budget does not apply.
    chosen, skipped = select(plan, 60 * args.budget_min, args.max_memory_gb,
                             args.all or args.device == "gpu")
    for job in plan:
        mark = "run " if job in chosen else "skip"
        print(f"{mark} ~{estimate_s(job) / 60:5.1f} min  {describe(job)}")
    if args.list:
        return 0
    record = {"benchmark": "speed", "device": args.device, "machine": machine_info(),
              "command": " ".join(["python", "benchmarks/speed.py", *(argv or sys.argv[1:])]),
              "jobs": [], "not_measured": skipped, "summary": {}, "wall_s": 0.0}
    name = args.name or ("speed" if args.device == "cpu" else "speed_gpu")
    start = time.perf_counter()
    for index, job in enumerate(chosen):
        if args.deadline_min is not None and time.perf_counter() - start > 60 * args.deadline_min:
            record["not_measured"] += [{"job": describe(left), "reason": "not started: the "
                                        f"run's {args.deadline_min:g}-min deadline had passed"}
                                       for left in chosen[index:]]
            break
        began = time.perf_counter()
        result = run_child([os.path.abspath(__file__), "--child", json.dumps(job)], env=env)
        record["jobs"].append({**job, "description": describe(job), "result": result,
                               "wall_s": time.perf_counter() - began})
        if "error" in result:
            record["not_measured"].append({"job": describe(job),
                                           "reason": f"failed: {result['error'][-300:]}"})
        print(f"{time.perf_counter() - began:6.0f} s  {describe(job)}: "
              f"{json.dumps(result)[:300]}", flush=True)
        paths = _save(record, start, args.out, name)
    paths = _save(record, start, args.out, name)
    print(markdown(record))
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
