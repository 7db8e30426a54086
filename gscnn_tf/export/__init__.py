"""Export: a SavedModel for TF Serving and TFLite files, each verified against the Keras model;
`gscnn-tf export` (gscnn_tf.cli.export) and `gscnn-tf audit-tflite`
(gscnn_tf.cli.audit_tflite) are its command line. Deployment commands: export/README.md.

One module a job:

    serving         SegmentationModule: the one `serve(images)` (uint8 images -> labels,
                    edge_prob or probabilities) that every export runs, the SavedModel
                    signatures and their in-graph input checks; `with_canny`
    saved_model     export_saved_model: TF Serving's `<dir>/<name>/<version>/`, atomically
    tflite          the lean frozen GraphDef, the converter and quantization, export_tflite
    litert          running TFLite files with LiteRT, their op lists, agreement with Keras
    calibration     int8 calibration crops and held-out validation images
    artifacts       atomic single files (write_file) and classes.json (class_metadata)
    gpu             `--target gpu`: a file that runs whole on the TFLite GPU delegate
    gpu_audit       the op-by-op GPU delegate audit every TFLite export prints, by the
                    delegate's rules (delegate_rules) on the file read by flatbuffer

The names below are re-exported here; `gpu` and `gpu_audit` are used as modules.
"""

from gscnn_tf.errors import ExportError
from gscnn_tf.export.artifacts import CLASSES_ASSET, class_metadata, write_file
from gscnn_tf.export.calibration import heldout_images, representative_images
from gscnn_tf.export.litert import (
    AGREEMENT_TARGET, float_ops, keras_labels, run_tflite, tflite_interpreter, tflite_op_list,
    tflite_ops, verify_tflite)
from gscnn_tf.export.saved_model import export_saved_model
from gscnn_tf.export.serving import IMAGE_MAGIC, SIGNATURES, SegmentationModule, with_canny
from gscnn_tf.export.tflite import QUANTIZE, convert_tflite, export_tflite, frozen_function

FORMATS = ("saved_model", "tflite")

__all__ = [
    "AGREEMENT_TARGET", "CLASSES_ASSET", "ExportError", "FORMATS", "IMAGE_MAGIC", "QUANTIZE",
    "SIGNATURES", "SegmentationModule", "class_metadata", "convert_tflite", "export_saved_model",
    "export_tflite", "float_ops", "frozen_function", "heldout_images", "keras_labels",
    "representative_images", "run_tflite", "tflite_interpreter", "tflite_op_list",
    "tflite_ops", "verify_tflite", "with_canny", "write_file"]
