"""Speed figures side by side in one run: batch-1 inference latency per backbone and format
(Keras under tf.function, the SavedModel, TFLite fp32 / fp16 / int8 on LiteRT), the shape
stream's cost (GSCNN / DeepLab v3+ latency) and where its time goes (parts, shape-stream
stride 1 / 2 / 4), training images/s (1 replica, 2-replica MirroredStrategy), the input
pipeline against the training step, FLOPs and achieved FLOP/s against a measured FP32 matmul,
and peak memory. Appends to benchmarks/results/speed.jsonl and writes speed.md (speed_gpu.*
on a GPU).

    python -m benchmarks.speed --list                # the plan, numbered; nothing runs
    python -m benchmarks.speed --jobs 0 1 4          # these jobs of the plan
    python -m benchmarks.speed                       # every job of the plan
    python -m benchmarks.speed --device gpu          # 1024x2048 fp32 / mixed, 800x800 training
    python -m benchmarks.speed --only latency --backbones small --sizes 64x128   # smoke
    python -m benchmarks.speed --report benchmarks/results/speed.jsonl   # markdown again

The plan is every cell of the selection (--backbones, --sizes, --formats, --train-backbones,
--only); --jobs picks cells of it by number. Every job (speed_jobs.py) runs in its own process
(its own peak memory; logical CPU devices must be set up before TensorFlow initialises) and
its typed record is appended to the JSONL file as soon as it ends, so an interrupted run
keeps its figures and later runs add cells to it (--fresh starts the file anew; the report
takes the latest record of each job). speed_report.py writes the markdown from that file.
Weights are random (no downloads): speed does not depend on them. Each figure is the median of
--reps timed runs after --warmup untimed ones, with the 1-minute load average beside it
(other processes share the cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile

from benchmarks.speed_jobs import CHILDREN, EXPORT_FORMATS, Job, JobRecord
from benchmarks.speed_report import read_records, write_report
from gscnn_tf.benchmark import command_line, machine_info, run_child, time_once
from gscnn_tf.cli.arguments import parse_size

BACKBONES = ("small", "mobilenetv2", "resnet50", "resnet101", "wrn38")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
SYNTHETIC = os.path.join(ROOT, "configs", "synthetic.yaml")


def cpu_plan(args) -> list[Job]:
    """Every cell of the selection: the matmul peak, the shape stream's cost per backbone,
    the stride variants, where the time goes, training, the input pipeline, full resolution
    and the exports."""
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--name", default="", help="results file name (speed / speed_gpu)")
    parser.add_argument("--report", default="", metavar="JSONL",
                        help="rewrite the markdown of a JSONL file (or an earlier run's "
                             "speed.json) and exit")
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
