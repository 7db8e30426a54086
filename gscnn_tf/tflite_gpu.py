"""Moved to gscnn_tf.export.gpu; kept until benchmarks/ moves."""

from gscnn_tf.export.gpu import (  # noqa: F401
    AGREEMENT_TARGET, QUANTIZE, STEP_FORM, convert_gpu, export_tflite_gpu, gpu_function,
    run_tflite_gpu, verify_tflite_gpu)
