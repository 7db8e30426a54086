"""The one step from the model's logits to what a user reads: labels and boundary probability.

Every consumer of a GSCNN's outputs goes through `postprocess`: every export (the SavedModel
signatures and the TFLite functions, through `gscnn_tf.export.serving.SegmentationModule`),
`gscnn_tf.inference`, validation and the training pictures.
"""

from __future__ import annotations

import tensorflow as tf


def postprocess(outputs, probabilities: bool = False) -> dict:
    """Labels (or class probabilities) and boundary probability from the model's outputs.

    Args:
        outputs: the model's dict, "seg_logits" float `[B, H, W, C]` and "edge_logits" float
            `[B, H, W, 1]`, both logits (any range); each of them that is present is converted
            (validation, for one, reads the labels only).
        probabilities: return the softmax class probabilities instead of the labels.

    Returns:
        {"labels": int32 `[B, H, W]` in [0, C), the argmax over classes (the lowest class on
        ties), "edge_prob": float32 `[B, H, W, 1]` in [0, 1], the sigmoid of the boundary
        logits}; with `probabilities`, "probabilities" float `[B, H, W, C]` in [0, 1] summing
        to 1 over C takes the place of "labels".
    """
    result = {}
    if "edge_logits" in outputs:
        result["edge_prob"] = tf.sigmoid(tf.cast(outputs["edge_logits"], tf.float32))
    if "seg_logits" in outputs and probabilities:
        result["probabilities"] = tf.nn.softmax(outputs["seg_logits"])
    elif "seg_logits" in outputs:
        result["labels"] = tf.argmax(outputs["seg_logits"], -1, output_type=tf.int32)
    return result
