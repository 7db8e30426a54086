"""Our WRN-38 GSCNN against the reference PyTorch GSCNN (`gscnn_tf.reference_torch`, random
weights; torch is the `convert` extra) on this CPU: converting its checkpoint (time, file
sizes, agreement of the logits), inference round-robin in one process, training steps per
framework in child processes of their own, our step's peak memory by variant, and WRN-38's
convolution shapes one by one (`--parts convs`: where the inference gap comes from), and this
CPU's float32 matmul rate against one inference's FLOP (`--parts ceiling`). Goals:
inference <= 0.6, training step <= 0.8, training peak memory <= 0.75 of the reference.
Run: python -m benchmarks.reference [--reps 2] [--parts inference train memory convs ceiling]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np

from benchmarks import ROOT, argument_parser
from gscnn_tf.benchmark import (command_line, labelled_batch, machine_info, markdown_report,
                                markdown_table, peak_rss_mb, run_child, time_call,
                                time_interleaved, time_once, training_step, write_results)
from gscnn_tf.cli.arguments import add_config_arguments, parse_size

# Our WRN-38 GSCNN's config (the reference's architecture), the default model of every part.
WRN38_CONFIG = os.path.join(ROOT, "configs", "cityscapes_wrn38.yaml")

# Peak RSS seen for one 512x512 batch-2 training step (ours 12.3 GB, reference 8.4 GB), about
# 3 GB of it weights, gradients and momentum: a child starts only when the machine has its
# estimate (scaled by pixels x batch) available.
PEAK_GB = {"ours": 12.3, "reference": 8.4}


def needs_gb(who, height, width, n):
    return 3.0 + (PEAK_GB[who] - 3.0) * height * width * n / (512 * 512 * 2) + 0.5


def _available_gb():
    with open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2 ** 20
    return float("inf")


def _batch(height, width, n):
    """labelled_batch's images and labels, and their 4-neighbour boundaries as float32 edges."""
    images, labels = labelled_batch(n, height, width)
    edges = np.zeros(labels.shape, np.float32)
    edges[:, 1:] += labels[:, 1:] != labels[:, :-1]
    edges[:, :, 1:] += labels[:, :, 1:] != labels[:, :, :-1]
    return images, labels, np.minimum(edges, 1.0)


def child_train(who, height, width, n, config_path, overrides, steps=4):
    """`steps` training steps of `who` (ours / reference): the first untimed, the median of
    the others; prints {"step_s", "warmup_s", "steps", "peak_rss_mb" (after all of them:
    TensorFlow's CPU allocator keeps what it has taken, and its peak can grow over the first
    steps), "loss"} as JSON."""
    images, labels, edges = _batch(height, width, n)
    if who == "reference":
        import torch

        from gscnn_tf import reference_torch

        torch.set_num_threads(os.cpu_count())
        step = reference_torch.make_train_step(reference_torch.random_state_dict(19))

        def run():
            return step(images, labels, edges)
    else:
        import tensorflow as tf

        from gscnn_tf import build_model, load_config
        from gscnn_tf.precision import policy_scope, training_policy

        config = load_config(config_path, ["model.backbone.weights=", "model.sync_batch_norm=false",
                              *overrides])
        with policy_scope(training_policy(config.train)):
            model = build_model(config.model, 19)
        step = training_step(config, model)
        x = tf.constant(images)
        targets = {"labels": tf.constant(labels), "edges": tf.constant(edges)}

        def run():
            return float(step(x, targets)["total"])

    losses = []
    warmup_s, *times = time_call(lambda: losses.append(run()), 0, steps)["times_s"]
    print(json.dumps({"step_s": float(np.median(times)), "warmup_s": warmup_s,
                      "steps": steps, "peak_rss_mb": peak_rss_mb(),
                      "loss": losses[-1]}))


def inference(size, reps, bf16=False):
    """The reference's random checkpoint (with DataParallel's `module.` prefixes) converted
    by import-reference (timed; file sizes, load time), then both models on the same weights
    at `size`, batch 1: the logits' largest differences, label agreement, and `reps`
    round-robin runs after one warm-up. With `bf16`, our model under `--precision bf16`
    joins the round-robin (its labels compared with our float32 model's)."""
    import keras
    import tensorflow as tf
    import torch

    from gscnn_tf import reference_import, reference_torch

    torch.set_num_threads(os.cpu_count())
    state = reference_torch.random_state_dict(19, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, out = os.path.join(tmp, "ref.pth"), os.path.join(tmp, "ref.keras")
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, checkpoint)
        report = reference_import.import_reference(checkpoint, out, preset=None)
        files_mb = {"checkpoint_mb": os.path.getsize(checkpoint) / 1e6,
                    "keras_mb": os.path.getsize(out) / 1e6}
        model, load_s = time_once(lambda: keras.saving.load_model(out, compile=False))
    images = _batch(*size, 1)[0]
    x = tf.constant(images)
    forward = tf.function(lambda v: model(v, training=False))
    ours = {k: v.numpy() for k, v in forward(x).items()}
    frozen = _frozen(forward.get_concrete_function(x))
    frozen_diff = float(np.abs(frozen(x).numpy() - ours["seg_logits"]).max())
    seg, edge = reference_torch.forward(state, images)
    runs = {"ours": lambda: forward(x)["seg_logits"].numpy(),
            "ours_frozen": lambda: frozen(x).numpy(),
            "reference": lambda: reference_torch.forward(state, images)}
    extra = {}
    if bf16:
        from gscnn_tf.precision import with_precision

        forward_bf16 = tf.function(lambda v, m=with_precision(model, "bf16"): m(v, training=False))
        runs["ours_bf16"] = lambda: forward_bf16(x)["seg_logits"].numpy()
        extra["bf16_label_agreement"] = float(np.mean(
            runs["ours_bf16"]().argmax(-1) == ours["seg_logits"].argmax(-1)))
    timing = time_interleaved(runs, warmup=1, reps=reps)
    if bf16:
        extra["ratio_bf16"] = timing["ours_bf16"]["median_s"] / timing["reference"]["median_s"]
    return {"size": list(size), "timing": timing, "conversion_s": report.seconds, **extra,
            "load_s": load_s, "parameters": report.parameters, **files_mb,
            "seg_max_abs_diff": float(np.abs(ours["seg_logits"] - seg).max()),
            "seg_max_abs": float(np.abs(seg).max()),
            "edge_max_abs_diff": float(np.abs(ours["edge_logits"] - edge).max()),
            "edge_max_abs": float(np.abs(edge).max()),
            "label_agreement": float(np.mean(ours["seg_logits"].argmax(-1) == seg.argmax(-1))),
            "ratio": timing["ours"]["median_s"] / timing["reference"]["median_s"],
            "ratio_min": timing["ours"]["min_s"] / timing["reference"]["min_s"],
            "ratio_frozen": timing["ours_frozen"]["median_s"] / timing["reference"]["median_s"],
            "frozen_seg_max_abs_diff": frozen_diff}


def _frozen(concrete):
    """`concrete` (our forward pass, outputs a dict) as a graph whose weights are constants
    (`gscnn_tf.export.tflite.frozen_graph_def`, as the TFLite export freezes it), returning
    the seg logits: TensorFlow's oneDNN convolutions then take their filters in a blocked
    layout, reordered once and cached, where a variable's filter at batch 1 is used in its
    plain HWIO layout (and a dilated one reordered at every call)."""
    import tensorflow as tf

    from gscnn_tf.export.tflite import frozen_graph_def, io_names

    graph_def = frozen_graph_def(concrete)
    inputs, outputs, _, keys = io_names(concrete)
    wrapped = tf.compat.v1.wrap_function(
        lambda: tf.graph_util.import_graph_def(graph_def, name=""), [])
    seg_logits = outputs[keys.index("seg_logits")]
    return wrapped.prune(wrapped.graph.get_tensor_by_name(f"{inputs[0]}:0"),
                         wrapped.graph.get_tensor_by_name(f"{seg_logits}:0"))


# WRN-38's convolution shapes at a 512x1024 input (output stride 8), batch 1:
# (name, height, width, in channels, out channels, kernel, dilation).
CONV_SHAPES = (
    ("mod2 3x3", 256, 512, 128, 128, 3, 1),
    ("mod3 3x3", 128, 256, 256, 256, 3, 1),
    ("mod4 3x3", 64, 128, 512, 512, 3, 1),
    ("mod5 3x3 d2", 64, 128, 1024, 1024, 3, 2),
    ("mod6 3x3 d4", 64, 128, 512, 1024, 3, 4),
    ("mod7 1x1", 64, 128, 2048, 1024, 1, 1),
    ("mod7 3x3 d4", 64, 128, 1024, 2048, 3, 4),
)


def conv_paths(reps, shapes=CONV_SHAPES):
    """Each shape at batch 1, round-robin three ways: as our model runs it (the filter a
    variable), with the filter a graph constant (a frozen graph), and PyTorch's `conv2d` on
    the same numbers. {name: {"shape", "gflop", "variable", "constant", "torch" (median s),
    "max_abs_diff"}}."""
    import tensorflow as tf
    import torch

    torch.set_num_threads(os.cpu_count())
    rng = np.random.default_rng(0)
    out = {}
    for name, h, w, cin, cout, k, d in shapes:
        x = rng.standard_normal((1, h, w, cin), np.float32)
        kernel = (rng.standard_normal((k, k, cin, cout), np.float32)
                  / np.float32(np.sqrt(k * k * cin)))
        xt, variable = tf.constant(x), tf.Variable(kernel)
        by_variable = tf.function(
            lambda: tf.nn.convolution(xt, variable, padding="SAME", dilations=d))
        by_constant = tf.function(
            lambda: tf.nn.convolution(xt, tf.constant(kernel), padding="SAME", dilations=d))
        xp = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        wp = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())

        def reference():
            with torch.no_grad():
                return torch.nn.functional.conv2d(xp, wp, padding=d * (k // 2), dilation=d)

        ours = by_variable().numpy()
        diff = max(float(np.abs(by_constant().numpy() - ours).max()),
                   float(np.abs(reference().numpy().transpose(0, 2, 3, 1) - ours).max()))
        timing = time_interleaved({"variable": lambda: by_variable().numpy(),
                                   "constant": lambda: by_constant().numpy(),
                                   "torch": reference}, warmup=1, reps=reps)
        out[name] = {"shape": [h, w, cin, cout, k, d], "max_abs_diff": diff,
                     "gflop": 2e-9 * h * w * cin * cout * k * k,
                     **{key: value["median_s"] for key, value in timing.items()}}
    return out


def ceiling(size, reps, n=4096, config=WRN38_CONFIG):
    """How fast this CPU multiplies float32 matrices, against the work of one inference:
    TensorFlow's and PyTorch's `[n, n] @ [n, n]` round-robin (`reps` runs after one warm-up,
    2 n^3 FLOP each) and our WRN-38 GSCNN's FLOP for one `size` image (random weights; the
    reference runs the same convolutions; `config` another model). {"n", "rates" {framework:
    GFLOP/s median}, "model_flops", "size"}."""
    import tensorflow as tf
    import torch

    from gscnn_tf import build_model
    from gscnn_tf.config import load_config
    from gscnn_tf.data.pipeline import dataset_info
    from gscnn_tf.models.summary import count_flops

    torch.set_num_threads(os.cpu_count())
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), np.float32) for _ in range(2))
    ta, tb = tf.constant(a), tf.constant(b)
    pa, pb = torch.from_numpy(a), torch.from_numpy(b)
    tf_matmul = tf.function(lambda: tf.matmul(ta, tb))
    timing = time_interleaved({"tensorflow": lambda: tf_matmul().numpy(),
                               "torch": lambda: torch.mm(pa, pb)}, warmup=1, reps=reps)
    config = load_config(config, ["model.backbone.weights="])
    model = build_model(config.model, dataset_info(config).num_classes)
    return {"n": n, "size": list(size), "model_flops": count_flops(model, *size),
            "rates": {k: 2 * n ** 3 / v["median_s"] / 1e9 for k, v in timing.items()}}


def child_argv(module, who, size, n, config, overrides, steps=4) -> list[str]:
    """`python` arguments that run `module`'s training child for `who` (`child_train`)."""
    return ["-m", module, "--child", who, "--train-size", f"{size[0]}x{size[1]}", "--batch",
            str(n), "--config", config, "--train-steps", str(steps),
            *[f"--set={o}" for o in overrides]]


def step_rounds(module, runs, size, n, rounds, config, overrides, per_child):
    """Rounds of our training step at `size`, batch `n`: one child process of `module` per
    variant and round (`child_argv`), the variants alternating. `runs`: {label: (the child's
    `--child` value, more overrides)}. {"size", "batch", "steps_per_child", "rounds" {label:
    [child_train's JSON, one per round]}}."""
    out = {label: [] for label in runs}
    for _ in range(rounds):
        for label, (who, extra) in runs.items():
            out[label].append(run_child(child_argv(module, who, size, n, config,
                                                   [*overrides, *extra], per_child),
                                        timeout=3600))
    return {"size": list(size), "batch": n, "steps_per_child": per_child, "rounds": out}


def step_rounds_blocks(s, what) -> list[str]:
    """Markdown blocks of `step_rounds`' result: a heading and one row per variant (`what`
    names the variants' column)."""
    rows = [[label, *[(f"{c['step_s']:.1f} s, {c['peak_rss_mb'] / 1024:.1f} GiB"
                       if "step_s" in c else c.get("error", "?")[:60]) for c in runs]]
            for label, runs in s["rounds"].items()]
    return [f"## WRN-38 GSCNN training step, {s['size'][0]}x{s['size'][1]} batch {s['batch']}",
            f"Each cell one child process: {s['steps_per_child']} steps, the first untimed, the "
            "median of the others, and the peak RSS after all of them; the variants alternate.",
            markdown_table([what, *[f"round {i + 1}" for i in range(len(rows[0]) - 1)]], rows)]


def variants_main(argv, doc, module, variants, child_setup, shapes, markdown) -> int:
    """`main` of a benchmark that times variants of a training kernel (conv_grad, batch_norm):
    `--parts shapes` (`shapes(reps, dtypes)`: the kernel shape by shape, in one process) and
    `--parts steps` (WRN-38 GSCNN's training step, `step_rounds` over `variants` {label:
    child name}, in float32 and, where the CPU has bfloat16 instructions, in bfloat16 too).
    In a child, `child_setup(child name)` is the context its steps run in. Writes
    `markdown(record)` and the record as NAME.json beside it."""
    name = module.rsplit(".", 1)[-1]
    parser = argument_parser(doc, name)
    add_config_arguments(parser, "the training step's YAML config (default "
                         "configs/cityscapes_wrn38.yaml)")
    parser.set_defaults(config=WRN38_CONFIG)
    parser.add_argument("--parts", nargs="+", default=["shapes", "steps"],
                        choices=("shapes", "steps"))
    parser.add_argument("--reps", type=int, default=5, help="round-robin runs per shape")
    parser.add_argument("--rounds", type=int, default=2, help="training-step rounds")
    parser.add_argument("--train-size", type=lambda t: tuple(parse_size(t)), default=(512, 512))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--train-steps", type=train_steps, default=4,
                        help="training steps per child process (>= 2; the first untimed)")
    parser.add_argument("--child", choices=tuple(variants.values()), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        with child_setup(args.child):
            child_train("ours", *args.train_size, args.batch, args.config, args.set,
                        args.train_steps)
        return 0
    record = {"machine": machine_info(), "reps": args.reps,
              "command": command_line(module, argv)}
    dtypes = ["float32", *(["bfloat16"] if has_bf16(record["machine"]) else [])]
    precisions = {"": [], ", bf16": ["train.mixed_precision=bf16"]}
    runs = {f"{label}{tag}": (child, precisions[tag]) for tag in list(precisions)[:len(dtypes)]
            for label, child in variants.items()}
    run = {"shapes": lambda: shapes(args.reps, dtypes),
           "steps": lambda: step_rounds(module, runs, args.train_size, args.batch, args.rounds,
                                        args.config, args.set, args.train_steps)}
    for part in args.parts:
        record[part], _ = time_once(run[part])
        write_results(args.out, args.name, record, markdown(record))
    write_results(args.out, args.name, record, markdown(record), echo=True)
    return 0


def train_steps(text) -> int:
    """argparse type of --train-steps: a whole number >= 2 (the first step is untimed)."""
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 2 (the first "
                                         "step is untimed)")
    return int(text)


def _child(who, size, n, config, overrides, steps=4):
    return run_child(child_argv("benchmarks.reference", who, size, n, config, overrides, steps),
                     timeout=3600)


# Our training steps timed against the reference's: the plain step, the step with the trunk's
# activations recomputed in the backward pass, and with everything recomputed (the memory
# switches: trunk, heads, the dual-task loss's maps); on CPUs with bfloat16 instructions, the
# plain and the fully recomputed step under
# train.mixed_precision=bf16 (the reference stays float32: those rows compare two precisions).
RECOMPUTE_ALL = ["model.recompute_trunk=true", "model.recompute_heads=true",
                 "loss.recompute_dual=true"]
OUR_STEPS = {"ours": [], "ours, model.recompute_trunk": ["model.recompute_trunk=true"],
             "ours, everything recomputed": RECOMPUTE_ALL}
BF16_STEPS = {"ours, bf16": ["train.mixed_precision=bf16"],
              "ours, bf16, everything recomputed": [
                  "train.mixed_precision=bf16", *RECOMPUTE_ALL]}
BF16_FLAGS = ("avx512_bf16", "amx_tile")


def has_bf16(machine) -> bool:
    """Whether the CPU of a `machine_info()` record has bfloat16 instructions."""
    return any(flag in machine["cpu_flags"] for flag in BF16_FLAGS)


def our_steps(machine) -> dict:
    """OUR_STEPS, and BF16_STEPS where the machine's CPU has bfloat16 instructions."""
    return {**OUR_STEPS, **(BF16_STEPS if has_bf16(machine) else {})}


def training(size, n, reps, config, overrides=(), steps=OUR_STEPS, per_child=4):
    rounds = []
    for _ in range(reps):
        row = {}
        for who, extra in [*steps.items(), ("reference", [])]:
            kind = "reference" if who == "reference" else "ours"
            available = _available_gb()
            need = needs_gb(kind, *size, n)
            if available < need:
                row[who] = {"error": f"not run: {available:.1f} GB available, about "
                                     f"{need:.0f} GB needed"}
                continue
            row[who] = _child(kind, size, n, config, [*overrides, *extra], per_child)
        rounds.append(row)
    result = {"size": list(size), "batch": n, "steps_per_child": per_child, "rounds": rounds,
              "ratios": {}}
    for who in steps:
        done = [r for r in rounds if all("step_s" in r.get(w, {}) for w in (who, "reference"))]
        if done:
            med = {w: sorted(r[w]["step_s"] for r in done)[len(done) // 2]
                   for w in (who, "reference")}
            peak = {w: max(r[w]["peak_rss_mb"] for r in done) for w in (who, "reference")}
            result["ratios"][who] = {"step_ratio": med[who] / med["reference"],
                                     "memory_ratio": peak[who] / peak["reference"]}
    return result


MEMORY_VARIANTS = {
    "GSCNN (full resolution shape stream, four loss terms)": [],
    "no dual-task loss (loss.lambda_dual=0)": ["loss.lambda_dual=0"],
    "shape stream at stride 2": ["model.shape_stream_stride=2"],
    "trunk recomputed in the backward pass (model.recompute_trunk=true)": [
        "model.recompute_trunk=true"],
    "everything recomputed (+ model.recompute_heads, loss.recompute_dual)": RECOMPUTE_ALL,
    "DeepLab v3+ baseline (segmentation loss only)": [
        "model.shape_stream=false", "loss.lambda_edge=0", "loss.lambda_att=0",
        "loss.lambda_dual=0"],
}


def memory_parts(size, n, config, overrides=(), per_child=4):
    return {"size": list(size), "batch": n, "steps_per_child": per_child,
            "variants": {name: _child("ours", size, n, config, [*overrides, *extra], per_child)
                         for name, extra in MEMORY_VARIANTS.items()}}


def markdown(r):
    lines = [f"Command: `{r['command']}`.", ""]
    if "inference" in r:
        i, t = r["inference"], r["inference"]["timing"]
        lines += ["## Converting the reference checkpoint (import-reference)", "",
                  markdown_table(["measure", "value"], [
            ["conversion (read .pth, build, map, save .keras)", f"{i['conversion_s']:.1f} s"],
            ["load .keras", f"{i['load_s']:.1f} s"],
            ["files", f".pth {i['checkpoint_mb']:.0f} MB, .keras {i['keras_mb']:.0f} MB"],
            ["parameters", f"{i['parameters']:,}"],
            ["seg / edge logits max abs diff", f"{i['seg_max_abs_diff']:.3g} / "
             f"{i['edge_max_abs_diff']:.3g} (largest values {i['seg_max_abs']:.3g} / "
             f"{i['edge_max_abs']:.3g})"]]), "",
                  f"## Inference, {i['size'][0]}x{i['size'][1]}, batch 1", "",
                  f"Round-robin in one process, {t['ours']['reps']} runs after one warm-up: "
                  f"ours {t['ours']['median_s']:.1f} s, reference "
                  f"{t['reference']['median_s']:.1f} s median: **ratio {i['ratio']:.2f}** "
                  f"(fastest runs {i['ratio_min']:.2f}; goal <= 0.6). Same weights (converted "
                  f"by import-reference): labels agree on {100 * i['label_agreement']:.3f} %.",
                  ""]
        if "ratio_bf16" in i:
            lines += [f"Ours under `--precision bf16` (bfloat16 compute, float32 weights): "
                      f"{t['ours_bf16']['median_s']:.1f} s, **ratio {i['ratio_bf16']:.2f}** "
                      f"against the reference's float32; labels equal to our float32 model's "
                      f"on {100 * i['bf16_label_agreement']:.2f} % of the pixels (random "
                      f"weights).", ""]
        if "ratio_frozen" in i:
            lines += [f"Ours with the weights frozen into graph constants: "
                      f"{t['ours_frozen']['median_s']:.1f} s, **ratio "
                      f"{i['ratio_frozen']:.2f}** (seg logits within "
                      f"{i['frozen_seg_max_abs_diff']:.2g} of the live model's).", ""]
    if "train" in r:
        tr = r["train"]
        lines += [f"## Training step, {tr['size'][0]}x{tr['size'][1]}, batch {tr['batch']}",
                  "", "Each framework in its own child process, alternating: "
                  f"{tr.get('steps_per_child', 2)} steps, the first untimed, the median of the "
                  "others; peak RSS after all of them.", ""]
        rows = []
        for k, row in enumerate(tr["rounds"], 1):
            for who, v in row.items():
                rows.append([k, who, f"{v['step_s']:.1f}" if "step_s" in v else "-",
                             f"{v['peak_rss_mb'] / 1024:.1f}" if "peak_rss_mb" in v else "-",
                             v.get("error", "")[-200:]])
        lines += [markdown_table(["round", "model", "step s", "peak RSS GiB", "note"], rows),
                  ""]
        for who, ratio in tr.get("ratios", {}).items():
            precision = " (bfloat16 against the reference's float32)" if who in BF16_STEPS else ""
            lines += [f"{who}: step ratio **{ratio['step_ratio']:.2f}** (goal <= 0.8), peak "
                      f"memory ratio **{ratio['memory_ratio']:.2f}** (goal <= 0.75)"
                      f"{precision}.", ""]
    if "memory" in r:
        m = r["memory"]
        rows = [[name, f"{v['peak_rss_mb'] / 1024:.2f}" if "peak_rss_mb" in v else "-",
                 f"{v['step_s']:.1f}" if "step_s" in v else v.get("error", "")[-200:]]
                for name, v in m["variants"].items()]
        lines += [f"## Where our training peak comes from ({m['size'][0]}x{m['size'][1]}, "
                  f"batch {m['batch']}, one child process per variant)", "",
                  markdown_table(["variant", "peak RSS GiB", "step s"], rows)]
    if "convs" in r:
        rows = [[name, "x".join(map(str, v["shape"][:2])) + f" {v['shape'][2]}->{v['shape'][3]}"
                 f" k{v['shape'][4]} d{v['shape'][5]}"]
                + [f"{1e3 * v[key]:.0f} ({v['gflop'] / v[key]:.0f})"
                   for key in ("variable", "constant", "torch")]
                + [f"{v['variable'] / v['torch']:.2f}"] for name, v in r["convs"].items()]
        lines += ["", "## WRN-38's convolutions one by one (batch 1, ms median, GFLOP/s)", "",
                  markdown_table(["layer", "shape", "ours (filter a variable)",
                                  "ours (filter a constant)", "PyTorch", "ours / PyTorch"],
                                 rows)]
    if "ceiling" in r:
        lines += ["", *_ceiling_lines(r["ceiling"], r.get("inference"))]
    return markdown_report("Against the reference PyTorch GSCNN (WRN-38, random weights)",
                           r["machine"], "\n".join(lines), versions=f" torch {r['torch']}.")


def _ceiling_lines(c, inference=None):
    rates = c["rates"]
    fastest = max(rates.values())
    lines = ["## The float32 ceiling", "",
             f"float32 `[{c['n']}, {c['n']}] @ [{c['n']}, {c['n']}]`, round-robin: "
             + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items())
             + f". One {c['size'][0]}x{c['size'][1]} inference: "
             f"{c['model_flops'] / 1e12:.2f} TFLOP (the convolutions, both models)."]
    if inference and list(inference["size"]) == list(c["size"]):
        t = inference["timing"]
        ours, ref = (c["model_flops"] / t[k]["median_s"] / 1e9 for k in ("ours", "reference"))
        needed = ref / 0.6
        lines[-1] += (f" Ours runs it at {ours:.0f} GFLOP/s, the reference at {ref:.0f}: "
                      f"ratio 0.6 needs {needed:.0f} GFLOP/s, {needed / fastest:.2f}x the "
                      f"fastest float32 matmul measured here; ours at that matmul rate would "
                      f"give {ref / fastest:.2f}.")
    return lines + [""]


def main(argv=None) -> int:
    size = lambda text: tuple(parse_size(text))  # noqa: E731
    parser = argument_parser(__doc__, "reference")
    add_config_arguments(parser, "our training step's YAML config (default "
                         "configs/cityscapes_wrn38.yaml)")
    parser.set_defaults(config=WRN38_CONFIG)
    parser.add_argument("--parts", nargs="+", default=["inference", "train", "memory"],
                        choices=("inference", "train", "memory", "convs", "ceiling"))
    parser.add_argument("--size", type=size, default=(512, 1024))
    parser.add_argument("--train-size", type=size, default=(512, 512))
    parser.add_argument("--parts-size", type=size, default=(256, 256))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--reps", type=int, default=2, help="inference rounds")
    parser.add_argument("--train-reps", type=int, default=1, help="training rounds")
    parser.add_argument("--train-steps", type=train_steps, default=4,
                        help="training steps per child process (>= 2; the first untimed)")
    parser.add_argument("--child", choices=("ours", "reference"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_train(args.child, *args.train_size, args.batch, args.config, args.set,
                    args.train_steps)
        return 0
    import torch

    record = {"machine": machine_info(), "torch": torch.__version__,
              "command": command_line("benchmarks.reference", argv)}
    run = {"inference": lambda: inference(args.size, args.reps, has_bf16(record["machine"])),
           "train": lambda: training(args.train_size, args.batch, args.train_reps,
                                     args.config, args.set, our_steps(record["machine"]),
                                     args.train_steps),
           "memory": lambda: memory_parts(args.parts_size, args.batch, args.config, args.set,
                                          args.train_steps),
           "convs": lambda: conv_paths(args.reps),
           "ceiling": lambda: ceiling(args.size, max(args.reps, 3))}
    elapsed = 0.0
    for part in args.parts:
        record[part], seconds = time_once(run[part])
        elapsed += seconds
        write_results(args.out, args.name, record, markdown(record))
    record["wall_s"] = elapsed
    write_results(args.out, args.name, record, markdown(record), echo=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
