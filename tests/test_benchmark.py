"""gscnn_tf.benchmark helpers, every benchmark script's command line, and the speed suite's
plan, children, JSONL records and report at tiny sizes (structure and consistency of the
figures; no timed assertions)."""

import dataclasses
import glob
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmarks import speed
from benchmarks import speed_jobs as jobs
from benchmarks import speed_report as report
from gscnn_tf import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "benchmarks",
                                                                          "*.py"))
                 if not p.endswith("__init__.py"))


def test_every_benchmark_module_imports_and_prints_its_help():
    """One child process (one TensorFlow import) runs `main(["--help"])` of every module of
    benchmarks/ that has a main, as `python -m benchmarks.NAME --help` does."""
    code = f"""
import contextlib, importlib, io, json
out = {{}}
for name in {SCRIPTS!r}:
    module = importlib.import_module("benchmarks." + name)
    if not hasattr(module, "main"):
        out[name] = None
        continue
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        try:
            module.main(["--help"])
        except SystemExit as e:
            out[name] = [e.code, text.getvalue()]
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    helps = json.loads(done.stdout.strip().splitlines()[-1])
    assert SCRIPTS == ["ablation", "batch_norm", "bf16", "boundary_f", "canny", "conv_grad",
                       "edges",
                       "export", "litert_gpu", "reference", "speed",
                       "speed_jobs", "speed_report", "train_step"]
    assert [n for n, h in helps.items() if h is None] == ["speed_jobs", "speed_report"]
    for name, (status, text) in ((n, h) for n, h in helps.items() if h is not None):
        assert status == 0 and text.startswith("usage: "), (name, status, text[:200])
        assert "--help" in text, name


def test_benchmarks_use_the_shared_helpers():
    """No script edits sys.path, imports from tests/, dumps JSON by hand, reads a clock,
    builds its own parser or results path or declares --config / --set itself
    (gscnn_tf.benchmark, benchmarks.argument_parser and gscnn_tf.cli.arguments do)."""
    for name in SCRIPTS:
        with open(os.path.join(ROOT, "benchmarks", f"{name}.py"), encoding="utf-8") as f:
            text = f.read()
        for pattern in (r"sys\.path", r"^\s*(from|import) tests\b", r"json\.dump\(",
                        r"perf_counter|time\.time\(", r"add_argument\(\"--(config|set|out)\"",
                        r"ArgumentParser\(", r"^RESULTS ="):
            assert not re.search(pattern, text, re.M), (name, pattern)


def test_time_call_skips_warmup_and_takes_the_median(monkeypatch):
    ticks = iter([0.0, 1.0, 1.0, 4.0, 4.0, 6.0])  # timed calls of 1, 3 and 2 s
    loads = iter([1.0, 2.5, 2.0])  # before each timed call
    monkeypatch.setattr(benchmark, "load_average", lambda: next(loads))
    calls = []
    out = benchmark.time_call(lambda: calls.append(1), warmup=2, reps=3,
                              clock=lambda: next(ticks))
    assert len(calls) == 5  # 2 warm-up calls read no clock
    assert out["times_s"] == [1.0, 3.0, 2.0]
    assert out["median_s"] == 2.0 and out["min_s"] == 1.0
    assert (out["warmup"], out["reps"]) == (2, 3)
    assert out["load_average_1min"] == 1.83  # their mean, rounded
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


def test_write_results_and_markdown_table(tmp_path, capsys):
    table = benchmark.markdown_table(["a", "b"], [[1, None], ["x", 2.5]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | - |", "| x | 2.5 |"]
    json_path, md_path = benchmark.write_results(str(tmp_path / "r"), "speed",
                                                 {"x": [1, 2]}, "# T\n\n" + table)
    assert json.load(open(json_path)) == {"x": [1, 2]}
    assert open(md_path).read() == "# T\n\n" + table + "\n"
    assert capsys.readouterr().out == ""
    benchmark.write_results(str(tmp_path / "r"), "speed", {"x": 3}, "# U\n", echo=True)
    assert json.load(open(json_path)) == {"x": 3}
    assert capsys.readouterr().out == f"# U\nwrote {json_path} {md_path}\n"
    assert sorted(os.listdir(tmp_path / "r")) == ["speed.json", "speed.md"]  # no .tmp left


def test_markdown_report_names_the_machine():
    machine = {"cpu": "C", "cores": 2, "gpus": 0, "tensorflow": "t", "keras": "k",
               "python": "p", "load_average": [1.0, 1.0, 1.0]}
    text = benchmark.markdown_report("Title", machine, "para\n", "", "| a |", versions=" v1.")
    assert text == "\n\n".join(["# Title", benchmark.machine_line(machine) + " v1.", "para",
                                 "| a |"])


def test_command_line():
    assert benchmark.command_line("benchmarks.x", ["--a", "1"]) == "python -m benchmarks.x --a 1"
    assert benchmark.command_line("m", None) == " ".join(["python -m m", *sys.argv[1:]])


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


def test_time_once_and_write_json(tmp_path):
    ticks = iter([2.0, 5.5])
    assert benchmark.time_once(lambda: "v", clock=lambda: next(ticks)) == ("v", 3.5)
    path = benchmark.write_json(str(tmp_path / "a" / "r.json"),
                                {"x": np.float32(0.5), "y": np.arange(3), "z": np.int64(7)})
    assert json.load(open(path)) == {"x": 0.5, "y": [0, 1, 2], "z": 7}


def test_labelled_batch_has_blocks_of_one_class():
    images, labels = benchmark.labelled_batch(2, 40, 70, classes=5, block=16, seed=3)
    assert images.shape == (2, 40, 70, 3) and images.dtype == np.float32
    assert labels.shape == (2, 40, 70) and labels.dtype == np.int32
    assert 0 <= images.min() and images.max() <= 255 and set(np.unique(labels)) <= set(range(5))
    for r in range(0, 40, 16):
        for c in range(0, 70, 16):
            block = labels[:, r:r + 16, c:c + 16]
            assert (block == block[:, :1, :1]).all()
    again = benchmark.labelled_batch(2, 40, 70, classes=5, block=16, seed=3)
    np.testing.assert_array_equal(again[1], labels)


def _args(**overrides):
    return speed.argparse.Namespace(**{
        "warmup": 1, "reps": 3, "reps_large": 2, "calibration_images": 2,
        "sizes": [[512, 1024], [1024, 2048]], "backbones": list(speed.BACKBONES),
        "train_backbones": ["small", "wrn38"], "train_size": [512, 512], "train_batch": 2,
        "train_reps": 2, "formats": ["keras", "tflite_int8"], "data": "/tmp/x", "only": [],
        **overrides})


def test_cpu_plan_is_every_cell_of_the_selection():
    plan = speed.cpu_plan(_args())
    described = [job.describe() for job in plan]
    assert len(set(described)) == len(plan)  # the report keeps the latest record per job
    assert plan[0].kind == "matmul"
    latency = {(j.backbone, tuple(j.size), tuple(j.formats), j.baseline) for j in plan
               if j.kind == "latency"}
    for name in speed.BACKBONES:
        assert (name, (512, 1024), ("keras",), True) in latency  # the shape stream's cost
        assert (name, (1024, 2048), ("keras",), False) in latency
        for size in ((512, 1024), (1024, 2048)):
            assert (name, size, ("keras", "tflite_int8"), False) in latency
    train = [(j.backbone, j.replicas, j.reps, j.batch) for j in plan if j.kind == "train"]
    assert train == [("small", 1, 2, 2), ("small", 2, 2, 2), ("wrn38", 1, 2, 2),
                     ("wrn38", 2, 2, 2)]
    assert [j.reps for j in plan if tuple(j.size) == (1024, 2048) and j.kind == "latency"] == [
        2] * 10
    assert [(j.window, j.size) for j in plan if j.kind == "evaluate"] == [
        (0, [1024, 2048]), (1024, [1024, 2048])]  # whole image, windows of its height
    only = speed.cpu_plan(_args(only=["train", "pipeline"], backbones=["small"]))
    assert [j.kind for j in only] == ["train"] * 4 + ["pipeline"]
    keras_only = speed.cpu_plan(_args(formats=["keras"], backbones=["resnet50"]))
    assert all(j.formats == ["keras"] for j in keras_only if j.kind == "latency")
    assert not any(j.kind == "strides" for j in keras_only)  # they need the small backbone


def test_latency_and_report_at_tiny_size(monkeypatch):
    from gscnn_tf.models import summary as model_summary

    flops = iter([3e9, 2e9])  # count_flops itself: test_model; here GSCNN's, then baseline's
    monkeypatch.setattr(model_summary, "count_flops", lambda model, h, w: next(flops))
    job = jobs.Job("latency", "small", [32, 64], warmup=0, reps=2, baseline=True, flops=True)
    lat = jobs.child_latency(job)
    assert lat["keras"]["reps"] == 2 and lat["keras"]["median_s"] > 0
    assert lat["shape_stream_cost"] == pytest.approx(
        lat["keras"]["median_s"] / lat["keras_baseline"]["median_s"])
    assert len(lat["keras_baseline"]["times_s"]) == 2
    assert lat["shape_stream_cost_min"] == pytest.approx(
        min(lat["keras"]["times_s"]) / min(lat["keras_baseline"]["times_s"]))
    assert (lat["flops"], lat["flops_baseline"]) == (3e9, 2e9)
    assert lat["peak_rss_mb"] >= lat["keras"]["peak_rss_mb"] >= lat["rss_after_build_mb"]

    evaluate = jobs.Job("evaluate", "small", [32, 64], window=32, label="small GSCNN")
    machine = benchmark.machine_info()
    records = [jobs.JobRecord(**dataclasses.asdict(j), result=r, machine=machine, wall_s=1.0)
               for j, r in [
        (jobs.Job("matmul"), {"gflops_median": 80.0, "gflops_best": 100.0}), (job, lat),
        (jobs.Job("train", size=[8, 8], replicas=1),
         {"median_s": 2.0, "images_per_s": 1.0, "global_batch": 2, "load_average_1min": 1.0,
          "peak_rss_mb": 10.0}),
        (jobs.Job("train", size=[8, 8], replicas=2),
         {"median_s": 2.5, "images_per_s": 1.6, "global_batch": 4, "load_average_1min": 1.0,
          "peak_rss_mb": 10.0}),
        (jobs.Job("pipeline", size=[8, 8]), {"images_per_s": 5.0, "load_average_1min": 1.0,
                                             "decode_images_per_s": 7.0}),
        (jobs.Job("latency", "wrn38", [1024, 2048]), {"error": "exit status 9: killed"}),
        (evaluate, jobs.child_evaluate(evaluate))]]
    summary = report.summarise(records)
    achieved = lat["flops"] / lat["keras"]["median_s"] / 1e9
    assert summary["achieved_gflops"]["small_32x64"] == pytest.approx(achieved)
    assert summary["share_of_matmul_peak"]["small_32x64"] == pytest.approx(achieved / 100)
    assert summary["pipeline_over_train_step"] == pytest.approx(5.0)
    assert summary["two_replica_speedup"] == pytest.approx(1.6)
    text = report.markdown(records)
    assert benchmark.machine_line(machine) in text
    cost = (f"{lat['shape_stream_cost']:.2f} (min {lat['shape_stream_cost_min']:.2f}, FLOPs "
            "1.50) | - | - | - | - | 3 (baseline 2) |")
    assert cost in text
    assert "- latency wrn38 1024x2048 keras: failed: exit status 9: killed" in text
    figures = records[-1].result
    assert figures["peak_rss_mb"] >= figures["rss_after_build_mb"] > 0 and figures["seconds"] > 0
    assert (f"| small GSCNN | 32x64 | window 32 | {figures['seconds']:.1f} s | "
            f"{figures['peak_rss_mb']:.0f} MiB | {figures['inference_peak_mb']:.0f} MiB |") in text
    assert ("5.00 images/s (load 1.0), 5x the 1-replica training step; PNG decoding alone "
            "7.00 images/s.") in text
    assert "| wrn38 | 1024x2048 | failed: exit status 9: killed |" in text
    gpu = [dataclasses.replace(r, device="gpu") for r in records]
    assert report.markdown(gpu).startswith("# Speed (GPU)")


def test_strides_are_timed_round_robin_with_the_baseline(monkeypatch):
    calls = []

    def forward(model, image):  # records which model runs: its shape-stream stride, 0 = none
        stride = next((l.stride for l in model.layers if l.name == "shape_stem_resize"), 0)
        return lambda: calls.append(stride)

    monkeypatch.setattr(jobs, "_keras_forward", forward)
    job = jobs.Job("strides", "small", [32, 64], strides=[4], baseline=True, reps=2)
    out = jobs.child_strides(job)
    assert calls == [0, 4] * 3  # the warm-up round, then each timed round in turn
    assert sorted(out) == ["baseline", "stride4"]
    assert all(len(out[k]["times_s"]) == 2 for k in ("baseline", "stride4"))


def test_gpu_plan(monkeypatch):
    import tensorflow as tf

    args = _args(backbones=["resnet50"])
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    with pytest.raises(SystemExit, match="no GPU"):
        speed.gpu_plan(args)
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["g0", "g1"])
    plan = speed.gpu_plan(args)
    latency = [j for j in plan if j.kind == "latency"]
    assert {(tuple(j.size), j.mixed) for j in latency} == {((1024, 2048), False),
                                                            ((1024, 2048), True)}
    train = [j for j in plan if j.kind == "train"]
    assert {(j.replicas, j.mixed) for j in train} == {(1, False), (1, True), (2, False),
                                                      (2, True)}
    assert all(j.size == [800, 800] and j.batch == 2 and j.device == "gpu" for j in train)
    assert plan[0].n == 8192 and all(j.reps >= 10 for j in plan)


def test_run_appends_typed_records_and_the_report_reads_them(monkeypatch, tmp_path):
    started = []

    def fake_child(argv, env=None):
        job = jobs.Job(**json.loads(argv[argv.index("--child") + 1]))
        started.append(job.describe())
        time.sleep(0.05)
        return {"error": "stand-in child"} if job.kind == "matmul" else {
            "keras": {"median_s": 0.5, "load_average_1min": 1.0, "peak_rss_mb": 9.0}}

    monkeypatch.setattr(speed, "run_child", fake_child)
    common = ["--backbones", "small", "--sizes", "64x128", "--formats", "keras", "--out",
              str(tmp_path), "--only", "matmul", "latency"]
    assert speed.main([*common, "--jobs", "0", "1"]) == 0
    assert started == ["matmul", "latency small 64x128 keras + baseline"]
    assert speed.main([*common, "--jobs", "1"]) == 0  # appended, not rewritten
    with pytest.raises(SystemExit, match="^2$"):  # argparse's usage error
        speed.main([*common, "--jobs", "2"])  # the plan has jobs 0 and 1
    with open(tmp_path / "speed.jsonl", encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    assert [line["kind"] for line in lines] == ["matmul", "latency", "latency"]
    assert all(line["machine"]["cores"] == os.cpu_count() and line["wall_s"] >= 0.05
               and line["command"].startswith("python -m benchmarks.speed") for line in lines)
    records = report.read_records(str(tmp_path / "speed.jsonl"))
    assert [r.kind for r in records] == ["matmul", "latency"]  # the latest of each job
    assert records[1] == jobs.JobRecord(**lines[2])
    text = open(tmp_path / "speed.md").read()
    assert "| small | 64x128 | 500 ms (load 1.0) |" in text
    assert "- matmul: failed: stand-in child" in text
    started.clear()
    assert speed.main([*common, "--deadline-min", "0", "--fresh"]) == 0
    assert started == ["matmul"]  # the first job ran; the deadline had passed for the next
    assert len(open(tmp_path / "speed.jsonl").readlines()) == 1


def test_reference_conv_paths_compute_the_same_convolution_three_ways():
    """The `--parts convs` table compares like with like: the variable-filter, constant-filter
    and PyTorch convolutions agree (dilated and not), and the GFLOP count is 2*H*W*Cin*Cout*k^2."""
    from benchmarks import reference

    shapes = (("plain", 6, 10, 8, 4, 3, 1), ("dilated", 12, 8, 4, 8, 3, 2),
              ("1x1", 5, 7, 8, 16, 1, 1))
    out = reference.conv_paths(1, shapes)
    assert list(out) == ["plain", "dilated", "1x1"]
    for (name, h, w, cin, cout, k, d) in shapes:
        r = out[name]
        assert r["shape"] == [h, w, cin, cout, k, d]
        assert r["gflop"] == pytest.approx(2e-9 * h * w * cin * cout * k * k)
        assert r["max_abs_diff"] < 1e-5
        assert all(r[key] > 0 for key in ("variable", "constant", "torch"))


def test_reference_ceiling_counts_the_model_and_both_matmuls():
    """`--parts ceiling`: both frameworks' matmul rates; the model's FLOP are its
    convolutions' 2 x outputs x kh x kw x Cin x Cout (read from the traced graph's shapes) plus
    a little for the elementwise ops; the report's arithmetic (the rate 0.6 needs against the
    fastest matmul)."""
    import tensorflow as tf

    from benchmarks import reference
    from gscnn_tf import build_model
    from gscnn_tf.config import load_config

    synthetic = os.path.join(ROOT, "configs", "synthetic.yaml")
    out = reference.ceiling((64, 96), 1, n=64, config=synthetic)
    assert set(out["rates"]) == {"tensorflow", "torch"}
    assert all(rate > 0 for rate in out["rates"].values())
    config = load_config(synthetic, [])
    model = build_model(config.model, 19)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, 64, 96, 3])).graph
    convs = sum(2 * np.prod(op.outputs[0].shape) * np.prod(op.inputs[1].shape[:3])
                for op in graph.get_operations() if op.type == "Conv2D")
    assert convs <= out["model_flops"] <= 1.1 * convs
    c = {"n": 64, "size": [64, 64], "model_flops": 6e11, "rates": {"tensorflow": 300.0,
                                                                  "torch": 400.0}}
    timing = {"ours": {"median_s": 2.0}, "reference": {"median_s": 1.5}}  # 300 and 400 GFLOP/s
    text = "\n".join(reference._ceiling_lines(c, {"size": [64, 64], "timing": timing}))
    assert "0.60 TFLOP" in text and "Ours runs it at 300 GFLOP/s, the reference at 400" in text
    assert "needs 667 GFLOP/s, 1.67x the fastest" in text and "would give 1.00" in text
    assert "Ours runs" not in "\n".join(reference._ceiling_lines(c, None))


def test_reference_frozen_forward_equals_the_live_model():
    """`_frozen` (the weights as graph constants) returns the live model's seg logits."""
    import keras
    import tensorflow as tf

    from benchmarks import reference

    image = keras.Input((None, None, 3))
    features = keras.layers.Conv2D(4, 3, padding="same", dilation_rate=2)(image)
    model = keras.Model(image, {"seg_logits": keras.layers.Conv2D(3, 1)(features),
                                "edge_logits": keras.layers.Conv2D(1, 1)(features)})
    x = tf.constant(np.random.default_rng(0).normal(size=(1, 9, 11, 3)).astype(np.float32))
    forward = tf.function(lambda v: model(v, training=False))
    frozen = reference._frozen(forward.get_concrete_function(x))
    np.testing.assert_allclose(frozen(x).numpy(), model(x)["seg_logits"].numpy(), atol=1e-6)


def test_reference_training_child_reports_its_steps():
    """The training child the `train` part runs (its own process): `--train-steps` steps of
    ours with every memory switch on, the first untimed, as one JSON line."""
    from benchmarks import reference

    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.reference", "--child", "ours", "--train-size",
         "32x32", "--batch", "1", "--train-steps", "3", "--config",
         os.path.join(ROOT, "configs", "synthetic.yaml"),
         *[f"--set={o}" for o in reference.RECOMPUTE_ALL]],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["steps"] == 3 and record["step_s"] > 0 and record["warmup_s"] > 0
    assert record["peak_rss_mb"] > 100 and np.isfinite(record["loss"])


def test_conv_grad_benchmark_times_both_forms(tmp_path, monkeypatch):
    """`benchmarks.conv_grad` at tiny sizes: the shape table (both forms, the form `auto`
    picks, their agreement) and one round of training-step children in each form."""
    from benchmarks import conv_grad, reference
    from gscnn_tf.ops import conv

    monkeypatch.setattr(conv, "gpu_visible", lambda: False)  # "auto" as on a CPU host
    monkeypatch.setattr(conv_grad, "SHAPES", {"wide 3x3": (1, 6, 6, 256, 256, 3, 1),
                                              "narrow 3x3 / 2": (1, 8, 8, 16, 16, 3, 2),
                                              "1x1 to one channel": (1, 8, 8, 16, 1, 1, 1)})
    assert conv_grad.main(["--reps", "1", "--rounds", "1", "--train-size", "32x32",
                           "--batch", "1", "--train-steps", "2", "--config",
                           os.path.join(ROOT, "configs", "synthetic.yaml"),
                           "--out", str(tmp_path)]) == 0
    with open(tmp_path / "conv_grad.json") as f:
        record = json.load(f)
    shapes = record["shapes"]
    assert [shapes[n]["auto"] for n in conv_grad.SHAPES] == ["matmul", "native", "matmul"]
    for row in shapes.values():
        assert row["float32"]["max_rel_diff"] < 1e-5
        assert row["float32"]["native_s"] > 0 and row["float32"]["matmul_s"] > 0
    assert shapes["wide 3x3"]["gflop"] == pytest.approx(2e-9 * 36 * 256 * 256 * 9)
    bf16 = reference.has_bf16(record["machine"])
    assert list(record["steps"]["rounds"]) == ["native", "matmul (auto)"] + bf16 * [
        "native, bf16", "matmul (auto), bf16"]
    for form in record["steps"]["rounds"]:
        (child,) = record["steps"]["rounds"][form]
        assert child["steps"] == 2 and child["step_s"] > 0, child
    text = (tmp_path / "conv_grad.md").read_text()
    assert "| wide 3x3 | 0.0 | matmul |" in text and "| native |" in text


def test_batch_norm_benchmark_times_both_paths(tmp_path, monkeypatch):
    """`benchmarks.batch_norm` at tiny sizes: the shape table (Keras's graph and the fused
    kernel, their agreement) and one round of training-step children with each."""
    from benchmarks import batch_norm, reference

    monkeypatch.setattr(batch_norm, "SHAPES", {"narrow": (2, 6, 6, 8), "wide": (1, 4, 4, 64)})
    assert batch_norm.main(["--reps", "1", "--rounds", "1", "--train-size", "32x32",
                            "--batch", "1", "--train-steps", "2", "--config",
                            os.path.join(ROOT, "configs", "synthetic.yaml"),
                            "--out", str(tmp_path)]) == 0
    with open(tmp_path / "batch_norm.json") as f:
        record = json.load(f)
    for row in record["shapes"].values():
        assert row["float32"]["max_rel_diff"] < 1e-5
        assert row["float32"]["keras_s"] > 0 and row["float32"]["fused_s"] > 0
    bf16 = reference.has_bf16(record["machine"])
    assert list(record["steps"]["rounds"]) == ["keras", "fused"] + bf16 * [
        "keras, bf16", "fused, bf16"]
    for who in record["steps"]["rounds"]:
        (child,) = record["steps"]["rounds"][who]
        assert child["steps"] == 2 and child["step_s"] > 0, child
    text = (tmp_path / "batch_norm.md").read_text()
    assert "| narrow |" in text and "| fused |" in text and "round 1" in text
