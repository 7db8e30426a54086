"""gscnn_tf.benchmark helpers and benchmarks/speed.py's planning, children and report at tiny
sizes (structure and consistency of the figures; no timed assertions)."""

import importlib.util
import json
import os
import platform
import re
import resource
import sys
import time

import numpy as np
import pytest

from gscnn_tf import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    spec = importlib.util.spec_from_file_location(
        f"benchmarks_{name}", os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def speed():
    return _load("speed")


@pytest.fixture(scope="module")
def jobs():
    return _load("speed_jobs")


@pytest.fixture(scope="module")
def report():
    return _load("speed_report")


def test_time_call_skips_warmup_and_takes_the_median(monkeypatch):
    ticks = iter([0.0, 1.0, 1.0, 4.0, 4.0, 6.0])  # timed calls of 1, 3 and 2 s
    loads = iter([1.0, 2.5])  # before and after the timed calls
    monkeypatch.setattr(benchmark, "load_average", lambda: next(loads))
    calls = []
    out = benchmark.time_call(lambda: calls.append(1), warmup=2, reps=3,
                              clock=lambda: next(ticks))
    assert len(calls) == 5  # 2 warm-up calls read no clock
    assert out["times_s"] == [1.0, 3.0, 2.0]
    assert out["median_s"] == 2.0 and out["min_s"] == 1.0
    assert (out["warmup"], out["reps"]) == (2, 3)
    assert out["load_average_1min"] == 1.75  # their mean
    with pytest.raises(ValueError, match="reps 0"):
        benchmark.time_call(lambda: None, reps=0)
    with pytest.raises(ValueError, match="warmup -1"):
        benchmark.time_call(lambda: None, warmup=-1)


def test_time_interleaved_runs_round_robin():
    order = []
    ticks = iter([0.0, 1.0, 1.0, 11.0, 11.0, 14.0, 14.0, 24.0])  # a: 1, 3; b: 10, 10
    out = benchmark.time_interleaved({"a": lambda: order.append("a"),
                                      "b": lambda: order.append("b")}, warmup=1, reps=2,
                                     clock=lambda: next(ticks))
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert out["a"]["times_s"] == [1.0, 3.0] and out["a"]["median_s"] == 2.0
    assert out["b"]["median_s"] == 10.0 and out["b"]["reps"] == 2
    with pytest.raises(ValueError, match="reps 0"):
        benchmark.time_interleaved({"a": lambda: None}, reps=0)


def test_machine_info_fields():
    import keras
    import tensorflow as tf

    info = benchmark.machine_info()
    assert info["cores"] == os.cpu_count()
    assert info["tensorflow"] == tf.__version__ and info["keras"] == keras.__version__
    assert len(info["load_average"]) == 3 and min(info["load_average"]) >= 0
    assert info["gpus"] == len(info["gpu_names"]) == len(tf.config.list_physical_devices("GPU"))
    with open("/proc/cpuinfo") as f:
        text = f.read()
    names = re.findall(r"^model name\s*:\s*(.+)$", text, re.M)
    assert info["cpu"] == (names[0].strip() if names else platform.processor() or "unknown")
    flags = re.findall(r"^flags\s*:\s*(.+)$", text, re.M)[0].split()
    assert info["cpu_flags"] == [f for f in benchmark.VECTOR_FLAGS if f in flags]


def test_machine_line_names_the_machine():
    info = {"cpu": "Some CPU", "cpu_flags": ["avx2", "amx_tile"], "cores": 2, "gpus": 1,
            "gpu_names": ["H200"], "tensorflow": "2.21.0", "keras": "3.15.1",
            "python": "3.11.7", "load_average": [1.5, 1.0, 0.5]}
    line = benchmark.machine_line(info)
    assert line == ("Machine: Some CPU (avx2, amx_tile), 2 cores, 1 GPU (H200); TensorFlow "
                    "2.21.0, Keras 3.15.1, Python 3.11.7; load average [1.5, 1.0, 0.5] at the "
                    "start (other processes share the cores).")
    info.update(cpu_flags=[], gpus=0, gpu_names=[])
    assert benchmark.machine_line(info).startswith("Machine: Some CPU, 2 cores, 0 GPU; ")


def test_peak_memory_follows_allocations():
    before = benchmark.rss_mb()
    block = np.ones(64 * 2**20 // 8 * 4, np.float64)  # 256 MiB, touched
    assert benchmark.rss_mb() >= before + 200
    assert benchmark.peak_rss_mb() >= benchmark.rss_mb()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert abs(benchmark.peak_rss_mb() - maxrss) < 64
    del block


def test_write_results_and_markdown_table(tmp_path):
    table = benchmark.markdown_table(["a", "b"], [[1, None], ["x", 2.5]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | - |", "| x | 2.5 |"]
    json_path, md_path = benchmark.write_results(str(tmp_path / "r"), "speed",
                                                 {"x": [1, 2]}, "# T\n\n" + table)
    assert json.load(open(json_path)) == {"x": [1, 2]}
    assert open(md_path).read() == "# T\n\n" + table + "\n"
    benchmark.write_results(str(tmp_path / "r"), "speed", {"x": 3}, "# U")
    assert json.load(open(json_path)) == {"x": 3}
    assert sorted(os.listdir(tmp_path / "r")) == ["speed.json", "speed.md"]  # no .tmp left


def test_run_child_reads_the_last_json_line_or_reports_the_error():
    ok = benchmark.run_child(["-c", "print('log'); print('{\"a\": 1}')"])
    assert ok == {"a": 1}
    bad = benchmark.run_child(["-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"])
    assert "exit status 3" in bad["error"] and "boom" in bad["error"]


def test_matmul_peak_counts_2n3_flops():
    out = benchmark.matmul_peak(n=128, warmup=1, reps=3)
    assert out["flops"] == 2 * 128 ** 3
    assert out["gflops_median"] == pytest.approx(out["flops"] / out["median_s"] / 1e9)
    assert out["gflops_best"] >= out["gflops_median"] > 0


def test_plan_respects_budget_and_memory(speed):
    args = speed.argparse.Namespace(
        warmup=1, reps=3, reps_large=2, calibration_images=2, sizes=[[512, 1024], [1024, 2048]],
        backbones=list(speed.BACKBONES), train_backbones=["small", "wrn38"],
        train_size=[512, 512], train_batch=2, train_reps=2, formats=["keras", "tflite_int8"],
        data="/tmp/x")
    plan = speed.cpu_plan(args)
    assert plan[0]["kind"] == "matmul" and all(speed.estimate_s(j) > 0 for j in plan)
    chosen, skipped = speed.select(plan, 20 * 60, 6.0)
    assert sum(speed.estimate_s(j) for j in chosen) <= 20 * 60
    assert len(chosen) + len(skipped) == len(plan)
    reasons = {s["job"]: s["reason"] for s in skipped}
    assert "exceeds --max-memory-gb 6" in reasons["train wrn38 512x512 2 replica(s), "
                                                  "batch 2/replica"]
    assert any("budget" in r and "--all" in r for r in reasons.values())
    everything, none = speed.select(plan, 0, 0.0, everything=True)
    assert everything == plan and none == []


def test_latency_parts_and_report_at_tiny_size(jobs, report):
    import keras
    import tensorflow as tf

    job = {"kind": "latency", "backbone": "small", "size": [32, 64], "warmup": 0, "reps": 2,
           "formats": ["keras"], "baseline": True, "flops": True, "device": "cpu"}
    lat = jobs.child_latency(job)
    assert lat["keras"]["reps"] == 2 and lat["keras"]["median_s"] > 0
    assert lat["shape_stream_cost"] == pytest.approx(
        lat["keras"]["median_s"] / lat["keras_baseline"]["median_s"])
    assert lat["interleaved"] and len(lat["keras_baseline"]["times_s"]) == 2
    assert lat["shape_stream_cost_min"] == pytest.approx(
        min(lat["keras"]["times_s"]) / min(lat["keras_baseline"]["times_s"]))
    assert lat["flops"] > lat["flops_baseline"] > 0
    assert lat["peak_rss_mb"] >= lat["keras"]["peak_rss_mb"] >= lat["rss_after_build_mb"]

    # The parts, run one after another on each other's outputs, are the whole model.
    _, model = jobs._build(job)
    image = np.random.default_rng(0).uniform(0, 255, (1, 32, 64, 3)).astype(np.float32)
    values = {id(model.input): tf.constant(image)}
    parts = jobs.part_graphs(model)
    assert list(parts) == ["backbone", "shape_stream", "canny", "fusion_aspp", "decoder"]
    for inputs, outputs in parts.values():
        sub = keras.Model(inputs, outputs)
        result = sub([values[id(t)] for t in inputs], training=False)
        result = result if isinstance(result, (list, tuple)) else [result]
        values.update({id(t): v for t, v in zip(outputs, result)})
    np.testing.assert_allclose(values[id(parts["decoder"][1][0])],
                               model(image, training=False)["seg_logits"], atol=1e-4)

    record = {"device": "cpu", "machine": benchmark.machine_info(), "wall_s": 1.0,
              "jobs": [{"kind": "matmul", "result": {"gflops_median": 80.0, "gflops_best": 100.0}},
                       {**job, "result": lat},
                       {"kind": "train", "backbone": "small", "size": [8, 8], "replicas": 1,
                        "result": {"median_s": 2.0, "images_per_s": 1.0, "global_batch": 2,
                                   "load_average_1min": 1.0, "peak_rss_mb": 10.0}},
                       {"kind": "train", "backbone": "small", "size": [8, 8], "replicas": 2,
                        "result": {"median_s": 2.5, "images_per_s": 1.6, "global_batch": 4,
                                   "load_average_1min": 1.0, "peak_rss_mb": 10.0}},
                       {"kind": "pipeline", "size": [8, 8],
                        "result": {"images_per_s": 5.0, "load_average_1min": 1.0}}],
              "not_measured": [{"job": "latency wrn38 1024x2048 keras", "reason": "why"}]}
    summary = report.summarise(record)
    achieved = lat["flops"] / lat["keras"]["median_s"] / 1e9
    assert summary["achieved_gflops"]["small_32x64"] == pytest.approx(achieved)
    assert summary["share_of_matmul_peak"]["small_32x64"] == pytest.approx(achieved / 100)
    assert summary["pipeline_over_train_step"] == pytest.approx(5.0)
    assert summary["two_replica_speedup"] == pytest.approx(1.6)
    text = report.markdown({**record, "summary": summary})
    cost = f"{lat['shape_stream_cost']:.2f} (min {lat['shape_stream_cost_min']:.2f}, FLOPs"
    assert cost in text
    assert "- latency wrn38 1024x2048 keras: why" in text
    assert "one after the other" not in text
    sequential = {k: v for k, v in lat.items() if k not in ("interleaved",
                                                             "shape_stream_cost_min")}
    old = {**record, "jobs": [{**job, "result": sequential}]}
    assert "one after the other" in report.markdown({**old, "summary": report.summarise(old)})
    for figure, value in report.REFERENCE:  # the reference's figures beside ours (CPU only)
        assert f"| {figure} | {value} |" in text
    gpu = {**record, "device": "gpu"}
    assert "reference" not in report.markdown({**gpu, "summary": report.summarise(gpu)})


def test_strides_are_timed_round_robin_with_the_baseline(jobs, monkeypatch):
    calls = []

    def forward(model, image):  # records which model runs: its shape-stream stride, 0 = none
        stride = next((l.stride for l in model.layers if l.name == "shape_stem_resize"), 0)
        return lambda: calls.append(stride)

    monkeypatch.setattr(jobs, "_keras_forward", forward)
    job = {"kind": "strides", "backbone": "small", "size": [32, 64], "strides": [1, 2],
           "baseline": True, "warmup": 1, "reps": 2}
    out = jobs.child_strides(job)
    assert calls == [0, 1, 2] * 3  # the warm-up round, then each timed round in turn
    assert out["interleaved"] and sorted(out) == ["baseline", "interleaved", "stride1",
                                                   "stride2"]
    assert all(len(out[k]["times_s"]) == 2 for k in ("baseline", "stride1", "stride2"))


def test_gpu_plan(speed, monkeypatch):
    import tensorflow as tf

    args = speed.argparse.Namespace(warmup=1, reps=3, backbones=["resnet50"])
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    with pytest.raises(SystemExit, match="no GPU"):
        speed.gpu_plan(args)
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["g0", "g1"])
    plan = speed.gpu_plan(args)
    latency = [j for j in plan if j["kind"] == "latency"]
    assert {(tuple(j["size"]), j["mixed"]) for j in latency} == {((1024, 2048), False),
                                                                  ((1024, 2048), True)}
    train = [j for j in plan if j["kind"] == "train"]
    assert {(j["replicas"], j["mixed"]) for j in train} == {(1, False), (1, True), (2, False),
                                                            (2, True)}
    assert all(j["size"] == [800, 800] and j["batch_per_replica"] == 2 and
               j["device"] == "gpu" for j in train)


def test_deadline_lists_the_jobs_not_started(speed, monkeypatch, tmp_path):
    started = []

    def fake_child(argv, env=None):
        started.append(json.loads(argv[-1])["kind"])
        time.sleep(0.2)
        return {"error": "stand-in child"}

    monkeypatch.setattr(speed, "run_child", fake_child)
    assert speed.main(["--backbones", "small", "--sizes", "64x128", "--train-backbones",
                       "small", "--formats", "keras", "--budget-min", "1000",
                       "--deadline-min", str(0.1 / 60), "--out", str(tmp_path)]) == 0
    with open(tmp_path / "speed.json", encoding="utf-8") as f:
        record = json.load(f)
    assert started == ["matmul"] and [j["kind"] for j in record["jobs"]] == ["matmul"]
    deadline = [s for s in record["not_measured"] if "deadline" in s["reason"]]
    assert len(deadline) >= 3 and all("0.00166667-min deadline" in s["reason"] for s in deadline)
    assert any(s["job"].startswith("latency small 64x128") for s in deadline)
