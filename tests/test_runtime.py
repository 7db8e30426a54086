"""TensorFlow's CUDA probe is silenced on machines without a GPU driver, and nothing else."""

import os
import subprocess
import sys

import pytest

from gscnn_tf.runtime import filter_probe_noise, has_nvidia_driver

PROBE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "I0000 00:00:1796203914.775269    4547 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.\n",
    "E0000 00:00:1796203915.544353    4547 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
]
PROBE.append("I0000 00:00:1796203914.774788    4547 port.cc:153] oneDNN custom operations are "
             "on.\n")
KEPT = ["W0000 00:00:1796203914.774788    4547 some.cc:1] a warning stays\n",
        "gscnn-tf train: error: configs/x.yaml: unknown key 'train.stpes'\n",
        "Traceback (most recent call last):\n"]


def test_filter_removes_the_probe_lines_only():
    assert filter_probe_noise("".join(PROBE[:1] + KEPT[:1] + PROBE[1:] + KEPT[1:])) == \
        "".join(KEPT)


def _stderr(code):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=env).stderr


@pytest.mark.skipif(has_nvidia_driver(), reason="a machine with an NVIDIA driver shows "
                    "CUDA's lines on purpose")
def test_importing_gscnn_tf_prints_no_cuda_error_on_a_cpu_machine():
    probe = "import tensorflow as tf; tf.config.list_physical_devices()"
    plain = _stderr(probe)
    if "cuInit" not in plain:
        pytest.skip("this TensorFlow build prints no CUDA probe here")
    quiet = _stderr("import gscnn_tf; " + probe + "; import sys; print('after', file=sys.stderr)")
    assert "cuInit" not in quiet and "cuda drivers" not in quiet
    assert "oneDNN custom operations" not in quiet  # INFO start-up notes
    jit = _stderr("import gscnn_tf, tensorflow as tf; tf.function(lambda x: x * 2, "
                  "jit_compile=True)(tf.ones(3))")
    assert "XLA service" not in jit and "I0000" not in jit  # INFO lines after start-up
    assert "after" in quiet  # stderr works as before once TensorFlow is up
    # logical CPU devices can still be configured after the import
    split = _stderr("import gscnn_tf, tensorflow as tf; cpu = tf.config.list_physical_devices("
                    "'CPU')[0]; tf.config.set_logical_device_configuration(cpu, "
                    "[tf.config.LogicalDeviceConfiguration()] * 2); "
                    "assert len(tf.config.list_logical_devices('CPU')) == 2")
    assert "Error" not in split, split
