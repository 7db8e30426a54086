"""gscnn_tf: Gated-SCNN (Gated Shape CNNs for Semantic Segmentation) in TensorFlow 2 / Keras 3."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from gscnn_tf.config import Config, ConfigError, load_config, save_config  # noqa: E402

__version__ = "0.1.0"


def build_model(model_config, num_classes):
    """Builds the Gated-SCNN functional model; see `gscnn_tf.models.gscnn.build_model`."""
    from gscnn_tf.models.gscnn import build_model as _build

    return _build(model_config, num_classes)


__all__ = ["Config", "ConfigError", "build_model", "load_config", "save_config", "__version__"]
