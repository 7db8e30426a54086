"""gscnn_tf: Gated-SCNN (Gated Shape CNNs for Semantic Segmentation) in TensorFlow 2 / Keras 3.

    import gscnn_tf
    model = gscnn_tf.GSCNN.from_yaml("configs/synthetic.yaml")     # or GSCNN.from_preset(...)

Importing the package registers every custom layer and `GSCNN` with Keras, so
`keras.saving.load_model("model.keras")` works with nothing else imported.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from gscnn_tf.runtime import quiet_cuda_probe  # noqa: E402

quiet_cuda_probe()  # before TensorFlow's first import: no cuInit error on CPU-only machines

from gscnn_tf.config import Config, ConfigError, load_config, save_config  # noqa: E402
from gscnn_tf.models.gscnn import GSCNN  # noqa: E402  (registers the model and its layers)
from gscnn_tf.training import schedules as _schedules  # noqa: E402,F401  (registers the lr schedule)
from gscnn_tf.training import optimizers as _optimizers  # noqa: E402,F401  (registers SGD)

__version__ = "0.1.0"


def build_model(model_config, num_classes):
    """A new `GSCNN` from a `ModelConfig`: `GSCNN.from_model_config(model_config,
    num_classes)`."""
    return GSCNN.from_model_config(model_config, num_classes)


__all__ = ["Config", "ConfigError", "GSCNN", "build_model", "load_config", "save_config",
           "__version__"]
