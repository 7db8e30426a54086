"""Pure-TF image ops that export (SavedModel, TFLite builtin ops): Canny and filters; and
`gscnn_tf.ops.conv`, the training convolution whose filter gradient is matrix products."""

from gscnn_tf.ops.canny import Canny, canny
from gscnn_tf.ops.canny_rules import rgb_to_gray
from gscnn_tf.ops.filters import depthwise_filter, gaussian_blur, pad_replicate, sobel

__all__ = ["Canny", "canny", "depthwise_filter", "gaussian_blur", "pad_replicate",
           "rgb_to_gray", "sobel"]
