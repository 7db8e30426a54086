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

Every job runs in its own process (its own peak memory; logical CPU devices must be set up
before TensorFlow initialises). Weights are random (no downloads): speed does not depend on
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

from gscnn_tf.benchmark import (  # noqa: E402
    load_average, machine_info, matmul_peak, peak_rss_mb, rss_mb, run_child, time_call,
    time_interleaved, write_results)

BACKBONES = ("small", "mobilenetv2", "resnet50", "resnet101", "wrn38")
EXPORT_FORMATS = ("saved_model", "tflite_fp32", "tflite_fp16", "tflite_int8")
QUANTIZE = {"tflite_fp32": "none", "tflite_fp16": "fp16", "tflite_int8": "int8"}
SYNTHETIC = os.path.join(ROOT, "configs", "synthetic.yaml")
NUM_CLASSES = 19
# Seconds of one batch-1 GSCNN forward at 512x1024 on the 2-core EPYC with a load average
# of ~8 (results/speed.json; resnet101 and wrn38 scaled from resnet50 by FLOPs), and GiB of
# peak memory of 1024x2048 inference / 512x512 batch-2 training (speed.json,
# evaluate_memory.json; the reference's WRN-38 figures, REFERENCE.md section 7), and a train
# step's cost in forwards of the same pixels. Used only to plan a run.
FORWARD_S = {"small": 18, "mobilenetv2": 23, "resnet50": 61, "resnet101": 100, "wrn38": 200}
INFER_GB = {"small": 1.5, "mobilenetv2": 2.0, "resnet50": 3.5, "resnet101": 4.0, "wrn38": 7.0}
TRAIN_GB = {"small": 3.3, "mobilenetv2": 3.8, "resnet50": 6.0, "resnet101": 7.0, "wrn38": 9.0}
TRAIN_STEP_FORWARDS = 4.5
CHILD_START_S = 30  # TensorFlow import, model build and tracing under load


# ----------------------------------------------------------------------------- children

def _config(job, *extra):
    from gscnn_tf.config import load_config

    sets = ["model.backbone.weights="]
    if job.get("backbone"):
        sets.append(f"model.backbone.name={job['backbone']}")
    return load_config(job.get("config"), [*sets, *job.get("set", []), *extra])


def _build(job, *extra):
    import keras

    from gscnn_tf import build_model

    config = _config(job, *extra)
    keras.utils.set_random_seed(0)
    if job.get("mixed"):
        keras.mixed_precision.set_dtype_policy("mixed_float16")
    return config, build_model(config.model, NUM_CLASSES)


def _numpy(outputs):
    if isinstance(outputs, dict):
        return {k: v.numpy() for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return [v.numpy() for v in outputs]
    return outputs.numpy()


def _images(height, width):
    import numpy as np

    image = np.random.default_rng(0).uniform(0, 255, (1, height, width, 3))
    return image.astype(np.float32), image.astype(np.uint8)


def _keras_latency(model, image, job):
    import tensorflow as tf

    forward = tf.function(lambda x: model(x, training=False))
    x = tf.constant(image)
    return time_call(lambda: _numpy(forward(x)), job["warmup"], job["reps"])


def _guarded(fn):
    try:
        return fn()
    except Exception as e:  # one failing format must not lose the others
        return {"error": f"{type(e).__name__}: {str(e)[-600:]}"}


def child_matmul(job):
    return matmul_peak(job.get("n", 4096), job["warmup"], max(job["reps"], 5))


def child_latency(job):
    """GSCNN (and its DeepLab v3+ baseline) latency per format at one size."""
    height, width = job["size"]
    start_rss = rss_mb()
    config, model = _build(job)
    image, image_u8 = _images(height, width)
    out = {"rss_after_build_mb": rss_mb(), "rss_before_build_mb": start_rss}
    formats = job["formats"]
    if "keras" in formats:
        out["keras"] = _keras_latency(model, image, job)
        out["keras"]["peak_rss_mb"] = peak_rss_mb()
        if job.get("baseline"):
            _, baseline = _build(job, "model.shape_stream=false")
            out["keras_baseline"] = _keras_latency(baseline, image, job)
            out["shape_stream_cost"] = (out["keras"]["median_s"]
                                        / out["keras_baseline"]["median_s"])
        if job.get("flops"):
            from gscnn_tf.models.summary import count_flops

            out["flops"] = count_flops(model, height, width)
            if job.get("baseline"):
                out["flops_baseline"] = count_flops(baseline, height, width)
    if "saved_model" in formats:
        out["saved_model"] = _guarded(lambda: _saved_model_latency(model, image_u8, job))
    for name in formats:
        if name in QUANTIZE:
            out[name] = _guarded(lambda n=name: _tflite_latency(model, config, image_u8, n, job))
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def _saved_model_latency(model, image_u8, job):
    import tensorflow as tf

    from gscnn_tf.export import class_metadata, export_saved_model

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = export_saved_model(model, tmp, "gscnn", 1, class_metadata(None, NUM_CLASSES))
        export_s = time.perf_counter() - start
        start = time.perf_counter()
        signature = tf.saved_model.load(path).signatures["serving_default"]
        load_s = time.perf_counter() - start
        x = tf.constant(image_u8)
        timing = time_call(lambda: _numpy(signature(images=x)), job["warmup"], job["reps"])
    return {**timing, "export_s": export_s, "load_s": load_s}


def _tflite_latency(model, config, image_u8, name, job):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from gscnn_tf.export import convert_tflite, frozen_function, with_canny

    height, width = image_u8.shape[1:3]
    e = config.export
    function = frozen_function(with_canny(model, e.tflite_canny_max_steps,
                                          e.tflite_canny_step_form), height, width)
    representative = None
    if name == "tflite_int8":
        rng = np.random.default_rng(1)
        samples = rng.integers(0, 256, (job["calibration_images"], 1, height, width, 3),
                               dtype=np.uint8)

        def representative():
            for sample in samples:
                yield [sample]

    start = time.perf_counter()
    content = convert_tflite(function, QUANTIZE[name], representative)
    convert_s = time.perf_counter() - start
    interpreter = Interpreter(model_content=content, num_threads=os.cpu_count())
    interpreter.allocate_tensors()
    runner = interpreter.get_signature_runner("serving_default")
    timing = time_call(lambda: runner(images=image_u8), job["warmup"], job["reps"])
    return {**timing, "convert_s": convert_s, "bytes": len(content),
            "canny": f"{e.tflite_canny_step_form} form, {e.tflite_canny_max_steps} steps"}


def _tensor(model, layer, kind="output", index=None):
    value = getattr(model.get_layer(layer), kind)
    return value[index] if index is not None else value


def part_graphs(model):
    """{part: (inputs, outputs)} KerasTensors of `model` splitting its forward pass into
    backbone, shape stream, Canny, fusion + ASPP (ASPP for the baseline) and decoder."""
    image = model.input
    out = _tensor(model, "aspp_1x1_conv", "input")
    skip = _tensor(model, "decoder_skip_proj", "input")
    aspp_out = _tensor(model, "decoder_aspp_proj", "input")
    seg = _tensor(model, "seg_logits")
    if any(layer.name == "shape_output_resize" for layer in model.layers):
        stem = _tensor(model, "shape_stem_resize", "input", 0)
        gates = [_tensor(model, f"gate{i}_dsn", "input") for i in (1, 2, 3)]
        edge = _tensor(model, "shape_output_resize")
        canny = _tensor(model, "canny")
        parts = {"backbone": ([image], [out, skip, stem, *gates]),
                 "shape_stream": ([image, stem, *gates], [edge]),
                 "canny": ([image], [canny]),
                 "fusion_aspp": ([out, edge, canny], [aspp_out])}
    else:
        parts = {"backbone": ([image], [out, skip]), "aspp": ([out], [aspp_out])}
    parts["decoder"] = ([aspp_out, skip, image], [seg])
    return parts


def _part_functions(model, image):
    """{part: blocking call} for `model`'s parts (part_graphs), each fed the outputs the
    parts before it produced, and "full" for the whole model."""
    import keras
    import tensorflow as tf

    values = {id(model.input): tf.constant(image)}
    full = tf.function(lambda x: model(x, training=False))
    fns = {"full": lambda: _numpy(full(values[id(model.input)]))}
    for name, (inputs, outputs) in part_graphs(model).items():
        sub = keras.Model(inputs, outputs, name=f"part_{name}")
        forward = tf.function(lambda *xs, m=sub: m(list(xs), training=False))
        args = [values[id(t)] for t in inputs]
        result = forward(*args)
        result = result if isinstance(result, (list, tuple)) else [result]
        values.update({id(t): v for t, v in zip(outputs, result)})
        fns[name] = lambda f=forward, a=args: _numpy(f(*a))
    return fns


def child_parts(job):
    """Each part's latency, timed alone on the inputs the part before produced; the parts
    of GSCNN and of the baseline timed round-robin (the load drifts alike for all)."""
    height, width = job["size"]
    image, _ = _images(height, width)
    fns = {}
    for tag, extra in (("gscnn", ()), ("baseline", ("model.shape_stream=false",))):
        _, model = _build(job, *extra)
        fns.update({(tag, k): v for k, v in _part_functions(model, image).items()})
    timed = time_interleaved({f"{t}/{k}": fn for (t, k), fn in fns.items()}, job["warmup"],
                             job["reps"])
    out = {"gscnn": {}, "baseline": {}, "interleaved": True}
    for key, timing in timed.items():
        tag, part = key.split("/")
        out[tag][part] = timing
    for tag in ("gscnn", "baseline"):
        out[tag]["sum_of_parts_s"] = sum(v["median_s"] for k, v in out[tag].items()
                                         if k != "full")
    return out


def child_strides(job):
    """GSCNN latency at each shape_stream_stride (and the baseline's)."""
    height, width = job["size"]
    image, _ = _images(height, width)
    out = {}
    if job.get("baseline"):
        out["baseline"] = _keras_latency(_build(job, "model.shape_stream=false")[1], image, job)
    for stride in job["strides"]:
        _, model = _build(job, f"model.shape_stream_stride={stride}")
        out[f"stride{stride}"] = _keras_latency(model, image, job)
    return out


def child_train(job):
    """Training images/s of the project's train step (forward, GSCNNLoss, L2, SGD)."""
    from gscnn_tf.training.strategy import configure_cpu_replicas

    replicas = job["replicas"]
    if job["device"] == "cpu":
        configure_cpu_replicas(replicas)
    import numpy as np
    import tensorflow as tf

    from gscnn_tf.data.edges import label_edges
    from gscnn_tf.losses import GSCNNLoss
    from gscnn_tf.training.optimizers import build_optimizer, learning_rate_schedule
    from gscnn_tf.training.step import make_train_step

    kind = "GPU" if job["device"] == "gpu" else "CPU"
    devices = [d.name for d in tf.config.list_logical_devices(kind)][:replicas]
    if len(devices) < replicas:
        raise RuntimeError(f"{replicas} replicas asked, {len(devices)} {kind} devices found")
    strategy = (tf.distribute.MirroredStrategy(devices) if replicas > 1
                else tf.distribute.OneDeviceStrategy(devices[0]))
    size = job["size"]
    batch = job["batch_per_replica"] * replicas
    config = _config(job, f"train.batch_size={batch}",
                     f"train.mixed_precision={str(bool(job.get('mixed'))).lower()}")
    with strategy.scope():
        _, model = _build(job)
        optimizer = build_optimizer(config.train, model.trainable_variables)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    loss_fn = GSCNNLoss(config.loss, config.data.ignore_label)
    train_step = make_train_step(strategy, model, optimizer, loss_fn,
                                 learning_rate_schedule(config.train), config.train, step_var)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, *size, 3)).astype(np.float32)
    coarse = rng.integers(0, NUM_CLASSES, (batch, max(size[0] // 32, 1),
                                           max(size[1] // 32, 1)))
    rows = np.arange(size[0]) * coarse.shape[1] // size[0]
    cols = np.arange(size[1]) * coarse.shape[2] // size[1]
    labels = coarse[:, rows][:, :, cols].astype(np.int32)  # 32-px blocks of random classes
    edges = label_edges(tf.constant(labels), config.data.edge_radius)
    data = tf.data.Dataset.from_tensor_slices((images, {"labels": labels, "edges": edges}))
    iterator = iter(strategy.experimental_distribute_dataset(data.repeat().batch(batch)))
    timing = time_call(lambda: {k: float(v) for k, v in train_step(*next(iterator)).items()},
                       job["warmup"], job["reps"])
    return {**timing, "global_batch": batch, "images_per_s": batch / timing["median_s"],
            "peak_rss_mb": peak_rss_mb()}


def child_pipeline(job):
    """The training input pipeline (PNG decode ... edges) at the training crop size."""
    from data_pipeline import make_dataset, rate

    from gscnn_tf.config import load_config
    from gscnn_tf.data.pipeline import build_dataset

    root = make_dataset(job["data"], job["images"])
    crop = job["size"]
    config = load_config(None, ["data.dataset=folder", f"data.root={root}",
                                f"data.crop_size=[{crop[0]}, {crop[1]}]"])
    load = load_average()
    iterator = iter(build_dataset(config, "train", True, job["batch"]))
    per_s = rate(iterator, job["batches"], job["batch"])
    return {"images_per_s": per_s, "batch": job["batch"], "batches": job["batches"],
            "load_average_1min": round((load + load_average()) / 2, 2)}


CHILDREN = {"matmul": child_matmul, "latency": child_latency, "parts": child_parts,
            "strides": child_strides, "train": child_train, "pipeline": child_pipeline}


# ----------------------------------------------------------------------------- planning

def _pixels(size):
    return size[0] * size[1] / (512 * 1024)


def estimate_s(job) -> float:
    """Rough cost of a job in seconds on the 2-core machine under load (for planning)."""
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
        plan.append({"kind": "strides", "backbone": "small", "size": small, "strides": [2, 4],
                     **common})
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


# ----------------------------------------------------------------------------- report

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
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['gpus']} GPU "
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
            if "flops_baseline" in r:
                cost += f" (FLOPs {r['flops'] / r['flops_baseline']:.2f})"
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
        lines += ["", "Shape-stream cost = GSCNN / DeepLab v3+ latency on the same backbone "
                  "(goal <= 1.15), in brackets the same ratio of FLOPs (not affected by the "
                  "load). FLOPs: TensorFlow's graph profiler on the traced forward pass "
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
        lines += ["## The PyTorch reference on the same machine class (REFERENCE.md "
                  "section 7)", "", "| figure | reference |", "|---|---|"]
        lines += [f"| {a} | {b} |" for a, b in REFERENCE]
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def parse_size(text):
    from gscnn_tf.export import parse_size as parse

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
    for job in chosen:
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
