"""Which `tf.distribute` strategy a run uses, and how to ask for N logical CPU replicas.

`train.strategy`:
  auto          MultiWorkerMirroredStrategy when TF_CONFIG names more than one task,
                else MirroredStrategy over all local GPUs (or `train.cpu_replicas` logical CPU
                devices) when there is more than one, else the default one-device strategy.
  one_device    the default strategy (one GPU or the CPU).
  mirrored      MirroredStrategy over all local GPUs, or the logical CPU devices.
  multi_worker  MultiWorkerMirroredStrategy, cluster from TF_CONFIG.

`configure_cpu_replicas(n)` splits the CPU into n logical devices; TensorFlow allows this only
before it initialises its devices, so the CLI calls it first thing.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from gscnn_tf.errors import StrategyError

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")


def configure_cpu_replicas(n: int) -> None:
    """Splits the first physical CPU into `n` logical devices (no-op for n <= 1 or when the
    split is already in place). Raises StrategyError once TensorFlow has initialised."""
    if n <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == n:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as e:
        raise StrategyError(f"train.cpu_replicas={n}: TensorFlow has already initialised its "
                            "devices; set it before any TensorFlow op runs (the CLI does)") from e


def cluster_size() -> int:
    """Number of tasks in TF_CONFIG's cluster (1 when unset)."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return 1
    try:
        cluster = json.loads(raw).get("cluster", {})
    except json.JSONDecodeError as e:
        raise StrategyError(f"TF_CONFIG is not valid JSON: {e}") from e
    return sum(len(tasks) for name, tasks in cluster.items() if name in ("chief", "worker"))


def _local_devices(cpu_replicas: int) -> list[str]:
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return [d.name for d in gpus]
    cpus = tf.config.list_logical_devices("CPU")
    return [d.name for d in cpus[:max(cpu_replicas, 1)]]


def make_strategy(name: str = "auto", cpu_replicas: int = 0,
                  worker_timeout: float = 0) -> tf.distribute.Strategy:
    """The strategy named by `train.strategy` (see the module docstring). Under
    MultiWorkerMirroredStrategy, `worker_timeout` (seconds, `train.worker_timeout`; 0: no
    limit) bounds each collective (gradient all-reduce, sync batch norm): a worker that
    waits longer for its peers stops with DeadlineExceededError. A peer whose process has
    died is noticed sooner, by the coordination service's heartbeats (10 s)."""
    if name not in STRATEGIES:
        raise StrategyError(f"train.strategy '{name}': expected one of {', '.join(STRATEGIES)}")
    if name == "multi_worker" or (name == "auto" and cluster_size() > 1):
        if not os.environ.get("TF_CONFIG"):
            raise StrategyError("train.strategy 'multi_worker' needs TF_CONFIG (cluster, task)")
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=worker_timeout if worker_timeout > 0 else None)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if name == "one_device":
        return tf.distribute.get_strategy()
    devices = _local_devices(cpu_replicas)
    if name == "mirrored" or len(devices) > 1:
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the task that writes checkpoints, summaries and metrics."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().jobs
