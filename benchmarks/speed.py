"""Speed figures side by side: batch-1 latency per backbone and format, the shape stream's
cost and where its time goes, training images/s, the input pipeline, FLOPs against a measured
matmul, peak memory. Each job of the plan runs in its own process and is appended to
results/speed.jsonl as it ends; speed_report.py writes speed.md from that file.
Run: python -m benchmarks.speed [--list] [--jobs N ...] [--device gpu] [--report JSONL]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile

from benchmarks import ROOT, argument_parser
from benchmarks.speed_jobs import CHILDREN, EXPORT_FORMATS, Job, JobRecord
from benchmarks.speed_report import read_records, write_report
from gscnn_tf.benchmark import command_line, machine_info, run_child, time_once
from gscnn_tf.cli.arguments import parse_size

BACKBONES = ("small", "mobilenetv2", "resnet50", "resnet101", "wrn38")
SYNTHETIC = os.path.join(ROOT, "configs", "synthetic.yaml")
RESNET50 = os.path.join(ROOT, "configs", "cityscapes_resnet50.yaml")


def cpu_plan(args) -> list[Job]:
    """Every cell of the selection: the matmul peak, the shape stream's cost per backbone,
    the stride variants, where the time goes, training, the input pipeline, full resolution,
    the exports, and evaluation memory at the largest size (ResNet-50 GSCNN, whole image and
    square windows of the image's height)."""
    common = {"warmup": args.warmup, "reps": args.reps,
              "calibration_images": args.calibration_images}
    large_reps = {**common, "reps": args.reps_large}
    b = [name for name in BACKBONES if name in args.backbones]
    small, large = args.sizes[0], args.sizes[-1]
    sizes = [(small, common)] + ([(large, large_reps)] if large != small else [])
    plan = [Job("matmul", **common)]
    plan += [Job("latency", n, small, baseline=True, flops=True, **common) for n in b]
    if "small" in b:
        plan += [Job("strides", size=[128, 128], strides=[1, 2, 4], baseline=True,
                     config=SYNTHETIC, label="synthetic.yaml (ablation)", **common),
                 Job("strides", "small", small, strides=[1, 2, 4], baseline=True, **common)]
    plan += [Job("parts", n, small, **common) for n in b[:2]]
    plan += [Job("train", n, args.train_size, batch=args.train_batch, replicas=r,
                 **{**common, "reps": args.train_reps})
             for n in args.train_backbones for r in (1, 2)]
    plan.append(Job("pipeline", size=args.train_size, batch=args.train_batch, data=args.data))
    plan += [Job("latency", n, large, **large_reps) for n in b if large != small]
    if any(f in EXPORT_FORMATS for f in args.formats):
        plan += [Job("latency", n, size, formats=list(args.formats), **reps)
                 for size, reps in sizes for n in b]
    plan += [Job("evaluate", size=large, config=RESNET50, label="ResNet-50 GSCNN", window=w)
             for w in (0, large[0])]
    return [job for job in plan if not args.only or job.kind in args.only]


def gpu_plan(args) -> list[Job]:
    """1024x2048 inference fp32 and mixed precision per backbone; training at 800x800,
    batch 2 per replica, on 1 GPU and on all of them."""
    import tensorflow as tf

    gpus = len(tf.config.list_physical_devices("GPU"))
    if not gpus:
        raise SystemExit("--device gpu: TensorFlow sees no GPU on this machine")
    common = {"device": "gpu", "warmup": max(args.warmup, 2), "reps": max(args.reps, 10)}
    plan = [Job("matmul", n=8192, **common)]
    plan += [Job("latency", n, [1024, 2048], baseline=True, flops=not mixed, mixed=mixed,
                 **common) for n in args.backbones for mixed in (False, True)]
    plan += [Job("train", n, [800, 800], batch=2, replicas=r, mixed=mixed, **common)
             for n in args.backbones for r in sorted({1, gpus}) for mixed in (False, True)]
    return [job for job in plan if not args.only or job.kind in args.only]


def run_jobs(jobs: list[Job], path: str, command: str, deadline_s: float | None = None,
             env: dict | None = None) -> list[str]:
    """Runs each job in its own process and appends its JobRecord to the JSONL file `path`
    as it ends; starts no job after `deadline_s` seconds. Returns the jobs not started."""
    from gscnn_tf import files

    files.makedirs(os.path.dirname(path))
    elapsed = 0.0
    for index, job in enumerate(jobs):
        if deadline_s is not None and elapsed > deadline_s:
            return [left.describe() for left in jobs[index:]]
        machine = machine_info()
        result, seconds = time_once(lambda: run_child(
            ["-m", "benchmarks.speed", "--child", json.dumps(dataclasses.asdict(job))],
            env=env))
        elapsed += seconds
        record = JobRecord(**dataclasses.asdict(job), result=result, wall_s=seconds,
                           machine=machine, command=command)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(dataclasses.asdict(record)) + "\n")
        print(f"{seconds:6.0f} s  {job.describe()}: {json.dumps(result)[:300]}", flush=True)
    return []


def main(argv=None) -> int:
    size = lambda text: list(parse_size(text))  # noqa: E731
    parser = argument_parser(__doc__, "")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--sizes", nargs="+", type=size, default=[[512, 1024], [1024, 2048]],
                        help="HxW, the first is the size of the ratios, parts and exports")
    parser.add_argument("--formats", nargs="+", default=["keras", *EXPORT_FORMATS],
                        choices=["keras", *EXPORT_FORMATS])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--reps-large", type=int, default=2,
                        help="timed runs at the last (largest) size")
    parser.add_argument("--train-backbones", nargs="+", default=["small"], choices=BACKBONES)
    parser.add_argument("--train-size", type=size, default=[512, 512])
    parser.add_argument("--train-batch", type=int, default=2, help="per replica")
    parser.add_argument("--train-reps", type=int, default=2)
    parser.add_argument("--calibration-images", type=int, default=2)
    parser.add_argument("--only", nargs="+", default=[], choices=sorted(CHILDREN),
                        help="plan only these kinds of job")
    parser.add_argument("--list", action="store_true", help="print the plan and exit")
    parser.add_argument("--jobs", nargs="+", type=int, default=None, metavar="N",
                        help="run only these jobs of the plan (numbers from --list)")
    parser.add_argument("--deadline-min", type=float, default=None,
                        help="start no job after this many minutes of wall time")
    parser.add_argument("--fresh", action="store_true",
                        help="start the JSONL file anew instead of appending to it")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(),
                                                       "gscnn_bench_2048x1024"))
    parser.add_argument("--report", default="", metavar="JSONL",
                        help="rewrite the markdown of a JSONL file and exit")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        job = Job(**json.loads(args.child))
        print(json.dumps(CHILDREN[job.kind](job)))
        return 0
    if args.report:
        print(write_report(read_records(args.report), os.path.splitext(args.report)[0]))
        return 0
    env = {"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {}
    os.environ.update(env)
    plan = cpu_plan(args) if args.device == "cpu" else gpu_plan(args)
    if any(not 0 <= i < len(plan) for i in args.jobs or []):
        parser.error(f"--jobs: the plan has jobs 0 to {len(plan) - 1} (see --list)")
    chosen = [plan[i] for i in args.jobs] if args.jobs is not None else plan
    for index, job in enumerate(plan):
        print(f"{'run ' if job in chosen else 'skip'} {index:3d}  {job.describe()}")
    if args.list:
        return 0
    name = args.name or ("speed" if args.device == "cpu" else "speed_gpu")
    path = os.path.join(args.out, f"{name}.jsonl")
    if args.fresh and os.path.exists(path):
        os.remove(path)
    command = command_line("benchmarks.speed", argv)
    deadline = None if args.deadline_min is None else 60 * args.deadline_min
    for left in run_jobs(chosen, path, command, deadline, env):
        print(f"not started (the {args.deadline_min:g}-min deadline had passed): {left}")
    print(f"wrote {path} and {write_report(read_records(path), path[:-len('.jsonl')])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
