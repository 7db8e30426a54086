"""Test set-up: two logical CPU devices (for tf.distribute tests), configured before
TensorFlow initialises, and small shared fixtures."""

import functools
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)


@functools.lru_cache(maxsize=None)
def two_cpu_strategy():
    """The one MirroredStrategy over the two logical CPUs for the whole test session:
    strategies made one after another in a process collide on collective instance keys
    (a later sync-BN all-reduce then meets another op's shape)."""
    return tf.distribute.MirroredStrategy(
        [d.name for d in tf.config.list_logical_devices("CPU")[:2]])


@pytest.fixture
def rng():
    return np.random.default_rng(0)
