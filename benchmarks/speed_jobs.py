"""The jobs of `python -m benchmarks.speed`: a `Job` (what to measure) runs in its own process
(`--child JSON`) and comes back as a `JobRecord` (the job, its figures, the machine), one
line of the run's JSONL file. Random weights and images, batch 1 for inference."""

from __future__ import annotations

import dataclasses
import os
import tempfile

from gscnn_tf.benchmark import (labelled_batch, matmul_peak, peak_rss_mb, rss_mb, time_call,
                                time_interleaved, time_once, training_step)
from gscnn_tf.models.parts import part_graphs

EXPORT_FORMATS = ("saved_model", "tflite_fp32", "tflite_fp16", "tflite_int8")
QUANTIZE = {"tflite_fp32": "none", "tflite_fp16": "fp16", "tflite_int8": "int8"}
NUM_CLASSES = 19
PIPELINE_IMAGES, PIPELINE_BATCHES = 6, 10


@dataclasses.dataclass
class Job:
    """One measurement. kind: matmul | latency | parts | strides | train | pipeline |
    evaluate; `size` [H, W]; `batch` per replica (train) or per batch (pipeline); `config` a
    YAML in place of the defaults (with `label` naming it in the report); `window` the
    evaluation's sliding window (0: the whole image)."""
    kind: str
    backbone: str = "small"
    size: list = dataclasses.field(default_factory=lambda: [512, 1024])
    formats: list = dataclasses.field(default_factory=lambda: ["keras"])
    baseline: bool = False
    flops: bool = False
    mixed: bool = False
    strides: list = dataclasses.field(default_factory=list)
    replicas: int = 1
    batch: int = 2
    config: str = ""
    label: str = ""
    device: str = "cpu"
    warmup: int = 1
    reps: int = 3
    calibration_images: int = 2
    n: int = 4096
    data: str = ""
    window: int = 0

    def describe(self) -> str:
        where = "" if self.kind in ("matmul", "pipeline") else self.label or self.backbone
        extra = {"latency": ", ".join(self.formats) + (" + baseline" if self.baseline else ""),
                 "train": f"{self.replicas} replica(s), batch {self.batch}/replica",
                 "strides": f"strides {self.strides}",
                 "evaluate": f"window {self.window}" if self.window else "whole image"}.get(
                     self.kind, "")
        size = "" if self.kind == "matmul" else "x".join(map(str, self.size))
        extra += ", mixed precision" if self.mixed else ""
        return " ".join(p for p in (self.kind, where, size, extra) if p)


@dataclasses.dataclass
class JobRecord(Job):
    """A job with its figures (`result`: the child's dict, or {"error"}), the seconds it took
    and the machine (gscnn_tf.benchmark.machine_info) at its start."""
    result: dict = dataclasses.field(default_factory=dict)
    wall_s: float = 0.0
    machine: dict = dataclasses.field(default_factory=dict)
    command: str = ""


def _config(job, *extra):
    from gscnn_tf.config import load_config

    sets = ["model.backbone.weights="] + ([] if job.config else
                                         [f"model.backbone.name={job.backbone}"])
    return load_config(job.config or None, [*sets, *extra])


def _build(job, *extra):
    import keras

    from gscnn_tf import build_model

    config = _config(job, *extra)
    keras.utils.set_random_seed(0)
    if job.mixed:
        keras.mixed_precision.set_dtype_policy("mixed_float16")
    return config, build_model(config.model, NUM_CLASSES)


def _numpy(outputs):
    """A tensor, or a list or dict of them, as numpy (waits until they exist)."""
    import tensorflow as tf

    return tf.nest.map_structure(lambda t: t.numpy(), outputs)


def _images(height, width):
    import numpy as np

    image = np.random.default_rng(0).uniform(0, 255, (1, height, width, 3))
    return image.astype(np.float32), image.astype(np.uint8)


def _keras_forward(model, image):
    """A blocking call of `model` under tf.function on `image` (traced on first call)."""
    import tensorflow as tf

    forward = tf.function(lambda x: model(x, training=False))
    x = tf.constant(image)
    return lambda: _numpy(forward(x))


def _guarded(fn):
    try:
        return fn()
    except Exception as e:  # one failing format must not lose the others
        return {"error": f"{type(e).__name__}: {str(e)[-600:]}"}


def child_matmul(job):
    return matmul_peak(job.n, job.warmup, max(job.reps, 5))


def child_latency(job):
    """GSCNN (and its DeepLab v3+ baseline) latency per format at one size."""
    height, width = job.size
    start_rss = rss_mb()
    config, model = _build(job)
    image, image_u8 = _images(height, width)
    out = {"rss_after_build_mb": rss_mb(), "rss_before_build_mb": start_rss}
    formats = job.formats
    if "keras" in formats:
        fns = {"keras": _keras_forward(model, image)}
        fns["keras"]()  # traces and allocates: the peak of GSCNN inference alone
        gscnn_peak = peak_rss_mb()
        if job.baseline:
            _, baseline = _build(job, "model.shape_stream=false")
            fns["keras_baseline"] = _keras_forward(baseline, image)
        # Round-robin: a change in the machine's load affects GSCNN and the baseline alike.
        out.update(time_interleaved(fns, job.warmup, job.reps))
        out["keras"]["peak_rss_mb"] = gscnn_peak
        if job.baseline:
            out["shape_stream_cost"] = (out["keras"]["median_s"]
                                        / out["keras_baseline"]["median_s"])
            out["shape_stream_cost_min"] = out["keras"]["min_s"] / out["keras_baseline"]["min_s"]
        if job.flops:
            from gscnn_tf.models.summary import count_flops

            out["flops"] = count_flops(model, height, width)
            if job.baseline:
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
        path, export_s = time_once(lambda: export_saved_model(
            model, tmp, "gscnn", 1, class_metadata(None, NUM_CLASSES)))
        loaded, load_s = time_once(lambda: tf.saved_model.load(path))
        signature = loaded.signatures["serving_default"]
        x = tf.constant(image_u8)
        timing = time_call(lambda: _numpy(signature(images=x)), job.warmup, job.reps)
    return {**timing, "export_s": export_s, "load_s": load_s}


def _tflite_latency(model, config, image_u8, name, job):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from gscnn_tf.export import convert_tflite, frozen_function, with_canny

    height, width = image_u8.shape[1:3]
    e = config.export
    graph_model = with_canny(model, e.tflite_canny_max_steps, e.tflite_canny_step_form)
    function = frozen_function(graph_model, height, width)  # graph_model alive until converted
    representative = None
    if name == "tflite_int8":
        rng = np.random.default_rng(1)
        samples = rng.integers(0, 256, (job.calibration_images, 1, height, width, 3),
                               dtype=np.uint8)

        def representative():
            for sample in samples:
                yield [sample]

    content, convert_s = time_once(lambda: convert_tflite(function, QUANTIZE[name],
                                                          representative))
    interpreter = Interpreter(model_content=content, num_threads=os.cpu_count())
    interpreter.allocate_tensors()
    runner = interpreter.get_signature_runner("serving_default")
    timing = time_call(lambda: runner(images=image_u8), job.warmup, job.reps)
    return {**timing, "convert_s": convert_s, "bytes": len(content),
            "canny": f"{e.tflite_canny_step_form} form, {e.tflite_canny_max_steps} steps"}


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
    height, width = job.size
    image, _ = _images(height, width)
    fns = {}
    for tag, extra in (("gscnn", ()), ("baseline", ("model.shape_stream=false",))):
        _, model = _build(job, *extra)
        fns.update({(tag, k): v for k, v in _part_functions(model, image).items()})
    timed = time_interleaved({f"{t}/{k}": fn for (t, k), fn in fns.items()}, job.warmup,
                             job.reps)
    out = {"gscnn": {}, "baseline": {}}
    for key, timing in timed.items():
        tag, part = key.split("/")
        out[tag][part] = timing
    for tag in ("gscnn", "baseline"):
        out[tag]["sum_of_parts_s"] = sum(v["median_s"] for k, v in out[tag].items()
                                         if k != "full")
    return out


def child_strides(job):
    """GSCNN latency at each shape_stream_stride (and the baseline's), timed round-robin."""
    height, width = job.size
    image, _ = _images(height, width)
    fns = {}
    if job.baseline:
        fns["baseline"] = _keras_forward(_build(job, "model.shape_stream=false")[1], image)
    for stride in job.strides:
        _, model = _build(job, f"model.shape_stream_stride={stride}")
        fns[f"stride{stride}"] = _keras_forward(model, image)
    return time_interleaved(fns, job.warmup, job.reps)


def child_train(job):
    """Training images/s of the project's train step (forward, GSCNNLoss, L2, SGD)."""
    from gscnn_tf.training.strategy import configure_cpu_replicas

    replicas = job.replicas
    if job.device == "cpu":
        configure_cpu_replicas(replicas)
    import tensorflow as tf

    from gscnn_tf.data.edges import label_edges

    kind = "GPU" if job.device == "gpu" else "CPU"
    devices = [d.name for d in tf.config.list_logical_devices(kind)][:replicas]
    if len(devices) < replicas:
        raise RuntimeError(f"{replicas} replicas asked, {len(devices)} {kind} devices found")
    strategy = (tf.distribute.MirroredStrategy(devices) if replicas > 1
                else tf.distribute.OneDeviceStrategy(devices[0]))
    batch = job.batch * replicas
    config = _config(job, f"train.batch_size={batch}",
                     f"train.mixed_precision={str(job.mixed).lower()}")
    with strategy.scope():
        _, model = _build(job)
    train_step = training_step(config, model, strategy)
    images, labels = labelled_batch(batch, *job.size, NUM_CLASSES)
    edges = label_edges(tf.constant(labels), config.data.edge_radius)
    data = tf.data.Dataset.from_tensor_slices((images, {"labels": labels, "edges": edges}))
    iterator = iter(strategy.experimental_distribute_dataset(data.repeat().batch(batch)))
    timing = time_call(lambda: {k: float(v) for k, v in train_step(*next(iterator)).items()},
                       job.warmup, job.reps)
    return {**timing, "global_batch": batch, "images_per_s": batch / timing["median_s"],
            "peak_rss_mb": peak_rss_mb()}


def make_dataset(root: str, count: int) -> str:
    """`count` synthetic 2048x1024 PNG scenes in the folder format under `root` (reused when
    present); returns the dataset root."""
    from gscnn_tf.config import load_config
    from gscnn_tf.data import synthetic

    config = load_config(None, [f"data.root={root}", f"data.synthetic.num_train={count}",
                                "data.synthetic.num_val=0", "data.synthetic.height=1024",
                                "data.synthetic.width=2048"])
    return synthetic.ensure_synthetic(config)


def _rate(dataset, batches: int, batch_size: int, warmup: int = 2) -> dict:
    """time_call of one `next` per batch of `dataset` (repeated): {"per_s": examples per
    second over `batches` batches after `warmup`, "load_average_1min"}."""
    iterator = iter(dataset.repeat())
    timing = time_call(lambda: next(iterator), warmup, batches)
    return {"per_s": batches * batch_size / sum(timing["times_s"]),
            "load_average_1min": timing["load_average_1min"]}


def child_pipeline(job):
    """Images/s of the training input pipeline (PNG decode, labels, scale, crop, flip, jitter,
    blur, edges) at the training crop size, of the evaluation pipeline (decode, labels, edges
    at 2048x1024) and of PNG decoding alone."""
    import tensorflow as tf

    from gscnn_tf.config import load_config
    from gscnn_tf.data.pipeline import build_dataset, list_examples

    root = make_dataset(job.data, PIPELINE_IMAGES)
    config = load_config(None, ["data.dataset=folder", f"data.root={root}",
                                f"data.crop_size=[{job.size[0]}, {job.size[1]}]"])
    train = _rate(build_dataset(config, "train", True, job.batch), PIPELINE_BATCHES, job.batch)
    files = tf.data.Dataset.from_tensor_slices(tuple(map(list, zip(*list_examples(config,
                                                                                 "train")))))
    decoded = files.map(lambda i, m: (tf.io.decode_png(tf.io.read_file(i), channels=3),
                                      tf.io.decode_png(tf.io.read_file(m), channels=1)),
                        num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return {"images_per_s": train["per_s"], "batch": job.batch, "batches": PIPELINE_BATCHES,
            "load_average_1min": train["load_average_1min"],
            "eval_images_per_s": _rate(build_dataset(config, "train", False, 1),
                                       2 * PIPELINE_IMAGES, 1)["per_s"],
            "decode_images_per_s": _rate(decoded, 3 * PIPELINE_IMAGES, 1)["per_s"]}


def child_evaluate(job):
    """Peak memory and time of one batch-1 image through the Evaluator's inference
    (`Predictor.probabilities` + argmax), whole or in `job.window` windows; the memory after
    building the model is subtracted."""
    import numpy as np

    from gscnn_tf.evaluation.evaluator import Evaluator
    from gscnn_tf.inference import Predictor

    window = [f"eval.window=[{job.window},{job.window}]"] if job.window else []
    config, model = _build(job, *window)
    evaluator = Evaluator(Predictor.from_model(model, config), config)
    image = np.random.default_rng(0).uniform(0, 255, (*job.size, 3)).astype(np.float32)
    built = peak_rss_mb()
    _, seconds = time_once(lambda: evaluator.predict(image))
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "rss_after_build_mb": built,
            "inference_peak_mb": peak_rss_mb() - built}


CHILDREN = {"matmul": child_matmul, "latency": child_latency, "parts": child_parts,
            "strides": child_strides, "train": child_train, "pipeline": child_pipeline,
            "evaluate": child_evaluate}
