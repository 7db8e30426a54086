"""Speed measurement helpers shared by the scripts in `benchmarks/` and `gscnn-tf benchmark`:
timing (round-robin, with the load average beside each figure), machine info, peak memory,
child processes, and results files (JSON and markdown, each naming the machine)."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time


def _proc_field(path: str, name: str) -> str | None:
    """The value of the first `name: value` line of the /proc file `path` (None where there
    is no such line or no such file)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


# The CPU flags that set the FP32 matmul peak (hosts with the same model name differ in them).
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def load_average() -> float:
    """The 1-minute load average (processes running or waiting for a core)."""
    return float(os.getloadavg()[0])


def machine_info() -> dict:
    """{"cpu" (the model name in /proc/cpuinfo), "cpu_flags" (which of VECTOR_FLAGS it
    lists), "cores", "load_average_1min", "load_average" [1, 5, 15 min], "python",
    "tensorflow", "keras", "platform", "gpus" (count), "gpu_names"}."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    flags = set((_proc_field("/proc/cpuinfo", "flags") or "").split())
    return {"cpu": _proc_field("/proc/cpuinfo", "model name") or platform.processor()
            or "unknown", "cpu_flags": [f for f in VECTOR_FLAGS if f in flags],
            "cores": os.cpu_count(), "load_average_1min": load_average(),
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "platform": platform.platform(), "gpus": len(gpus),
            "gpu_names": [tf.config.experimental.get_device_details(g).get("device_name",
                                                                           g.name)
                          for g in gpus]}


def machine_line(machine: dict) -> str:
    """One line naming the machine of a `machine_info()` record, for results files: CPU
    (vector flags), cores, GPUs, TensorFlow / Keras / Python versions, load average."""
    m = machine
    flags = f" ({', '.join(m['cpu_flags'])})" if m.get("cpu_flags") else ""
    gpus = f", {m['gpus']} GPU" + (f" ({', '.join(m['gpu_names'])})" if m.get("gpu_names")
                                   else "")
    return (f"Machine: {m['cpu']}{flags}, {m['cores']} cores{gpus}; TensorFlow "
            f"{m['tensorflow']}, Keras {m['keras']}, Python {m['python']}; load average "
            f"{m['load_average']} at the start (other processes share the cores).")


def time_call(fn, warmup: int = 1, reps: int = 3, clock=time.perf_counter) -> dict:
    """Runs `fn()` `warmup` times untimed (tracing, allocation), then `reps` times timed.
    `fn` must block until its result exists (return numpy, not a pending tensor).

    Returns {"median_s", "min_s", "times_s" (each timed call), "warmup", "reps",
    "load_average_1min" (the mean of the load read before each timed call)}.
    """
    return time_interleaved({"fn": fn}, warmup, reps, clock)["fn"]


def time_once(fn, clock=time.perf_counter) -> tuple:
    """(`fn()`'s value, the seconds that one call took): for what runs once (an export, a
    conversion, a load), where time_call's warm-up and repetitions do not apply."""
    start = clock()
    value = fn()
    return value, clock() - start


def time_interleaved(fns: dict, warmup: int = 1, reps: int = 3,
                     clock=time.perf_counter) -> dict:
    """time_call for several functions at once, round-robin: each repetition runs every
    function once, so a change in the machine's load during the run affects all of them
    alike (what comparing parts of one model needs on a shared machine).
    Returns {key: time_call's dict}."""
    if reps < 1 or warmup < 0:
        raise ValueError(f"reps {reps} must be >= 1 and warmup {warmup} >= 0")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {key: [] for key in fns}
    loads = {key: [] for key in fns}
    for _ in range(reps):
        for key, fn in fns.items():
            loads[key].append(load_average())
            start = clock()
            fn()
            times[key].append(clock() - start)
    return {key: {"median_s": statistics.median(t), "min_s": min(t), "times_s": t,
                  "warmup": warmup, "reps": reps,
                  "load_average_1min": round(statistics.fmean(loads[key]), 2)}
            for key, t in times.items()}


def labelled_batch(n: int, height: int, width: int, classes: int = 19, block: int = 32,
                   seed: int = 0) -> tuple:
    """A synthetic training batch: labels int32 [n, H, W] of random classes in `block`-pixel
    squares (so the boundary terms see real boundaries), images float32 [n, H, W, 3] in
    0..255, random with a brightness that follows the label."""
    import numpy as np

    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, classes, (n, height // block + 1, width // block + 1))
    labels = np.repeat(np.repeat(blocks, block, 1), block, 2)[:, :height, :width]
    images = rng.uniform(0, 255, (n, height, width, 3)) * 0.5 + 12.0 * (labels[..., None] % 8)
    return np.clip(images, 0, 255).astype(np.float32), labels.astype(np.int32)


def training_step(config, model, strategy=None):
    """The training step `gscnn-tf train` runs for `model` (built in `strategy`'s scope) under
    `config`: make_train_step with GSCNNLoss, L2 and the configured optimizer, a tf.function
    `(images float32 [N, H, W, 3], {"labels" int32 [N, H, W], "edges"}) -> loss terms`."""
    import tensorflow as tf

    from gscnn_tf.losses import GSCNNLoss
    from gscnn_tf.training.optimizers import build_optimizer, learning_rate_schedule
    from gscnn_tf.training.step import make_train_step

    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        optimizer = build_optimizer(config.train, model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False)
    return make_train_step(strategy, model, optimizer,
                           GSCNNLoss(config.loss, config.data.ignore_label),
                           learning_rate_schedule(config.train), config.train, step)


def _proc_status_mb(key: str) -> float | None:
    value = _proc_field("/proc/self/status", key + ":")
    return None if value is None else int(value.split()[0]) / 1024


def peak_rss_mb() -> float:
    """This process's peak resident set size so far in MiB (VmHWM, else ru_maxrss)."""
    peak = _proc_status_mb("VmHWM")
    return peak if peak is not None else (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def rss_mb() -> float:
    """This process's resident set size now in MiB (VmRSS, else the peak)."""
    now = _proc_status_mb("VmRSS")
    return now if now is not None else peak_rss_mb()


def matmul_peak(n: int = 4096, warmup: int = 1, reps: int = 5) -> dict:
    """FP32 matrix-multiply rate of this machine: `[n, n] @ [n, n]` under tf.function on the
    default device. Returns time_call's dict plus {"n", "flops" (2 n^3), "gflops_median",
    "gflops_best"}."""
    import tensorflow as tf

    a = tf.random.uniform([n, n], dtype=tf.float32)
    b = tf.random.uniform([n, n], dtype=tf.float32)
    matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    timing = time_call(lambda: matmul().numpy(), warmup, reps)
    flops = 2 * n ** 3
    return {**timing, "n": n, "flops": flops,
            "gflops_median": flops / timing["median_s"] / 1e9,
            "gflops_best": flops / timing["min_s"] / 1e9}


def run_child(argv: list[str], timeout: float | None = None, env: dict | None = None) -> dict:
    """Runs `python argv...` in a fresh process (its own peak memory and TensorFlow set-up)
    and returns the JSON object printed on its last stdout line, or {"error": ...} naming
    the exit status and the end of its stderr."""
    try:
        out = subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                             timeout=timeout, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = out.stdout.strip().splitlines()
    if out.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    return {"error": f"exit status {out.returncode}: {out.stderr.strip()[-800:]}"}


def command_line(module: str, argv: list[str] | None = None) -> str:
    """The command that runs `python -m module` with `argv` (None: this process's
    arguments), for results files."""
    return " ".join(["python -m", module, *(sys.argv[1:] if argv is None else argv)])


def markdown_report(title: str, machine: dict, *blocks: str, versions: str = "") -> str:
    """A results file's markdown: `# title`, the machine line (with `versions` after it),
    then `blocks` (paragraphs, tables), separated by blank lines; empty blocks left out."""
    return "\n\n".join([f"# {title}", machine_line(machine) + versions,
                         *(b.strip("\n") for b in blocks if b)])


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; None cells print as "-"."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def _plain(value):
    """numpy scalars and arrays as Python numbers and lists (for json.dumps)."""
    import numpy as np

    return np.asarray(value).tolist()


def write_json(path: str, value, indent: int = 2) -> str:
    """Writes `value` as JSON to `path` via a temporary file and a rename (numpy scalars and
    arrays as plain numbers and lists). Returns `path`."""
    from gscnn_tf import files

    files.atomic_write_text(path, json.dumps(value, indent=indent, default=_plain) + "\n")
    return path


def write_results(out_dir: str, name: str, record: dict, markdown: str,
                  echo: bool = False) -> tuple[str, str]:
    """Writes `<out_dir>/<name>.json` and `<name>.md` (each via a temporary file and a
    rename: a failed run leaves the previous results whole); with `echo`, prints the
    markdown and the two paths too. Returns both paths."""
    from gscnn_tf import files

    paths = (files.join(out_dir, f"{name}.json"), files.join(out_dir, f"{name}.md"))
    write_json(paths[0], record)
    files.atomic_write_text(paths[1], markdown.rstrip() + "\n")
    if echo:
        print(f"{markdown.rstrip()}\nwrote", *paths)
    return paths
