"""The serving graph of every export: `SegmentationModule`, whose one `serve(images)` the
SavedModel signatures and the TFLite functions (`gscnn_tf.export.tflite`,
`gscnn_tf.export.gpu`) all run, and the Canny settings an export target needs (`with_canny`).

SavedModel signatures (stable names: the `Predictor` and the clients in `export/serving/` rely
on them):

    serving_default   images       uint8 [B, H, W, 3] RGB, any H, W
                      -> labels    int32 [B, H, W] (train ids)
                         edge_prob float32 [B, H, W, 1] (boundary probability, 0..1)
    probabilities     images       uint8 [B, H, W, 3]
                      -> probabilities float32 [B, H, W, C] (softmax), edge_prob as above
    serve_bytes       image_bytes  string [B]: encoded PNG / JPEG / BMP / GIF, one size per
                                   request (grey files are replicated to RGB, alpha is
                                   dropped) -> labels, edge_prob as serving_default

Inputs are declared with unknown rank (`saved_model_cli`: `unknown_rank`) so that in-graph
checks answer a wrong rank or channel count with a clear `InvalidArgumentError`: a declared
rank is trusted, and a request breaking it aborts the process inside a convolution. Empty
images and strings that are not image files are refused the same way; TF Serving and loaded
signatures check the dtype. A batch of 0 images `[0, H, W, 3]` gets empty outputs of the
same layout (`labels` `[0, H, W]`, ...); `serve_bytes` with no strings is refused (an empty
request has no image size).
"""

from __future__ import annotations

import tensorflow as tf

from gscnn_tf.models.postprocess import postprocess

SIGNATURES = ("serving_default", "probabilities", "serve_bytes")
# Leading bytes of the encoded formats serve_bytes accepts (PNG, JPEG, GIF, BMP).
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"BM")


def checked_images(images, name: str):
    """`images` (any rank, uint8) checked in the graph to be `[B, H, W, 3]` with H, W >= 1
    (an `InvalidArgumentError` naming signature `name` otherwise), reshaped to that rank."""
    rule = f"{name}: `images` must be uint8 [batch, height, width, 3] RGB"
    rank = tf.debugging.assert_rank(images, 4, message=rule)
    with tf.control_dependencies([rank]):
        shape = tf.shape(images)
        channels = tf.debugging.assert_equal(shape[-1], 3, message=rule)
        size = tf.debugging.assert_positive(
            shape[1:3], message=f"{name}: `images` height and width must be >= 1")
    with tf.control_dependencies([channels, size]):
        # A reshape, not ensure_shape: that one fails at graph instantiation already,
        # before the asserts can name the problem.
        return tf.reshape(images, [shape[0], shape[1], shape[2], 3])


def decoded_images(image_bytes):
    """uint8 `[B, H, W, 3]` RGB of a string vector `[B]` of encoded images of one size,
    each rule (rank 1, at least one string, known formats, one size) checked in the graph."""
    rule = "serve_bytes: `image_bytes` must be a string vector [batch] of encoded images"
    rank = tf.debugging.assert_rank(image_bytes, 1, message=rule)
    with tf.control_dependencies([rank]):
        size = tf.debugging.assert_positive(
            tf.size(image_bytes), message="serve_bytes: `image_bytes` must hold at least "
            "one encoded image (an empty request has no image size)")
    with tf.control_dependencies([size]):
        image_bytes = tf.reshape(image_bytes, [-1])
    known = tf.reduce_any(tf.stack([
        tf.strings.substr(image_bytes, 0, len(magic)) == magic
        for magic in IMAGE_MAGIC]), axis=0)
    formats = tf.debugging.Assert(tf.reduce_all(known), [
        "serve_bytes: `image_bytes` elements must be PNG, JPEG, BMP or GIF files; "
        "these are not:", tf.where(~known)[:, 0]])
    with tf.control_dependencies([formats]):
        image_bytes = tf.identity(image_bytes)
    first = tf.shape(tf.io.decode_image(image_bytes[0], channels=3, expand_animations=False))

    def decode(data):
        # channels=3: grayscale files are replicated, an alpha channel is dropped.
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        same = tf.debugging.assert_equal(
            tf.shape(image), first, message="serve_bytes: all images of one request "
            "must have the same size (send one request per size)")
        with tf.control_dependencies([same]):
            return tf.identity(image)

    return tf.map_fn(decode, image_bytes,
                     fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


class SegmentationModule(tf.Module):
    """A GSCNN as a servable: `serve` and the SavedModel signatures over it.

    Args:
        model: the Keras GSCNN (inputs RGB float 0..255, outputs "seg_logits" and
            "edge_logits").
        classes_file: the classes JSON to carry as the SavedModel asset (None: no asset, as
            for TFLite).
    """

    def __init__(self, model, classes_file: str | None = None):
        super().__init__(name="gscnn_serving")
        self.model = model
        if classes_file is not None:
            self.classes = tf.saved_model.Asset(classes_file)

    def serve(self, images, probabilities: bool = False) -> dict:
        """`postprocess` of the model on `images`, uint8 `[B, H, W, 3]` RGB 0..255 (or
        float32 0..255, the GPU target's input): {"labels" int32 `[B, H, W]` (or, with
        `probabilities`, "probabilities" float32 `[B, H, W, C]`), "edge_prob" float32
        `[B, H, W, 1]` in [0, 1]}."""
        batch = images.shape[0]
        dynamic = batch is None or batch == 0
        if dynamic:
            # A batch of 0 runs the model on one zero image (the model's layers need a
            # batch) and returns none of it: empty outputs of the right layout. A fixed
            # batch (TFLite) needs neither the pad nor the slice.
            count = tf.shape(images)[0]
            images = tf.pad(images, [[0, tf.maximum(1 - count, 0)], [0, 0], [0, 0], [0, 0]])
        out = self.model(tf.cast(images, tf.float32), training=False)
        if dynamic:
            out = {k: v[:count] for k, v in out.items()}
        return postprocess(out, probabilities)

    @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name="images")])
    def serving_default(self, images):
        return self.serve(checked_images(images, "serving_default"))

    @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name="images")])
    def probabilities(self, images):
        return self.serve(checked_images(images, "probabilities"), probabilities=True)

    @tf.function(input_signature=[tf.TensorSpec(None, tf.string, name="image_bytes")])
    def serve_bytes(self, image_bytes):
        return self.serve(decoded_images(image_bytes))

    def signatures(self) -> dict:
        """{name: function} of the SavedModel signatures (SIGNATURES)."""
        return {name: getattr(self, name) for name in SIGNATURES}

    def fixed_function(self, height: int, width: int, dtype=tf.uint8,
                       probabilities: bool = False):
        """Concrete function of `serve` for one image, `images` `dtype` `[1, H, W, 3]` (the
        model's variables captured; TFLite conversion freezes them into constants)."""
        spec = [tf.TensorSpec([1, height, width, 3], dtype, name="images")]

        @tf.function(input_signature=spec)
        def predict(images):
            return self.serve(images, probabilities)

        return predict.get_concrete_function()


def with_canny(model, max_steps: int, step_form: str):
    """`model` with its Canny layers set to other hysteresis settings (a clone; Canny has
    no weights, so the weights copy over unchanged). `model` itself when nothing changes."""
    import keras

    from gscnn_tf.ops.canny import Canny

    wanted = {"max_steps": int(max_steps), "step_form": step_form}
    cannies = [layer for layer in model.layers if isinstance(layer, Canny)]
    if all({"max_steps": c.max_steps, "step_form": c.step_form} == wanted for c in cannies):
        return model

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, Canny):
            config.update(wanted)
        return layer.__class__.from_config(config)

    rebuilt = keras.models.clone_model(model, clone_function=clone)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def without_xla_canny(model):
    """`model` with Canny's XLA-compiled "fused" form swapped for "bits" (same edges, plain
    TF ops): TF Serving runs no XLA by default."""
    from gscnn_tf.ops.canny import Canny

    fused = [layer for layer in model.layers
             if isinstance(layer, Canny) and layer.step_form == "fused"]
    return with_canny(model, fused[0].max_steps, "bits") if fused else model
