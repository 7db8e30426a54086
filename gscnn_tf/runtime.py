"""TensorFlow start-up for the command line: on a machine without an NVIDIA driver, TensorFlow's
CUDA probe writes `failed call to cuInit: ... UNKNOWN ERROR (303)` (an error-level line) and
`Could not find cuda drivers` to stderr at every start, which reads as a failure on the CPU
machines most of our users start on. `quiet_cuda_probe` imports TensorFlow and lists its
devices with the process's stderr (file descriptor 2, where TensorFlow's C++ logging writes)
sent to a temporary file, then writes back every line but the probe's.

TensorFlow's INFO-level lines are left out too: those written at start-up (`I0000 ...`:
oneDNN and CPU-feature notes), which TensorFlow 2.21 prints before absl's logging reads
`TF_CPP_MIN_LOG_LEVEL`, by the same filter, and the later ones (XLA's compiler notes, say) by
`TF_CPP_MIN_LOG_LEVEL=1`, set unless the user set it. A failing command's one error line is
then the only thing it prints; TensorFlow's warnings and errors still show.

Nothing is hidden on a machine with a driver (`/dev/nvidiactl` or `/proc/driver/nvidia`),
where a CUDA error is news and the INFO lines name the devices, or when TensorFlow is
already imported.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

# Lines of the CUDA probe on a machine without a driver (and absl's note that precedes them),
# and the continuation line of the CPU-feature INFO note.
PROBE_NOISE = ("cuInit", "cuda drivers", "cudart_stub", "cuda_platform", "cuda_dnn",
               "cuda_fft", "cuda_blas", "All log messages before absl::InitializeLog()",
               "Unable to register cu", "To enable the following instructions:")
INFO_LINE = re.compile(r"^I\d{4} \d\d:\d\d:\d\d")  # absl's INFO prefix, e.g. 'I0000 00:00:17...'



def has_nvidia_driver() -> bool:
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia")


def filter_probe_noise(text: str) -> str:
    """`text` without the lines of TensorFlow's CUDA probe and its INFO start-up notes."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not INFO_LINE.match(line)
                   and not any(marker in line for marker in PROBE_NOISE))


def quiet_cuda_probe() -> None:
    """Imports TensorFlow and probes its devices without the CUDA probe's lines on stderr.

    Leaves logical-device configuration possible afterwards (listing physical devices does
    not initialise the runtime)."""
    if "tensorflow" in sys.modules or has_nvidia_driver():
        return
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # INFO lines after start-up
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            rest = filter_probe_noise(captured.read().decode("utf-8", "replace"))
            if rest:
                sys.stderr.write(rest)
                sys.stderr.flush()
