"""The reference PyTorch GSCNN the import tests compare against lives in the package
(`gscnn_tf.reference_torch`, the `convert` extra), where benchmarks/reference.py times it too."""

from gscnn_tf.reference_torch import (ATROUS, MEAN, STD, WRN, forward,  # noqa: F401
                                      random_state_dict, reference_shapes)
