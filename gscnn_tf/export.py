"""Export: a SavedModel for TF Serving and TFLite files, each verified against the Keras model;
`gscnn-tf export` (gscnn_tf.cli.export) is its command line.

SavedModel (`export_saved_model`), written atomically as TF Serving's `<dir>/<name>/<version>/`
(a temporary folder, then a rename; an existing version is kept unless `overwrite`). It needs
only TensorFlow to load: `tf.saved_model.load(path).signatures[...]`. Signatures (stable names,
the `Predictor` and the clients in `export/serving/` rely on them):

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
request has no image size). `assets/classes.json`: {"class_names", "palette"
([C, 3] RGB), "ignore_label"}. Deployment commands: export/README.md.

TFLite (`export_tflite`): a fixed `[1, H, W, 3]` uint8 input, outputs `labels` and `edge_prob`
(signature `serving_default`), TFLite builtin ops only (a graph needing Flex / Select TF ops is
an `ExportError` naming the ops). The variables are frozen into constants of a GraphDef, one
copy of the weights (`gscnn_tf.tflite_graph`: the 137 M-parameter WideResNet-38 model converts
in 7.1 GB; TensorFlow's own freezing and SavedModel round trip ran out of memory past 12 GB).
Quantization: `none` (float32),
`fp16` (float16 weights), `dynamic` (int8 weights), `int8` (full-integer: int8 weights and
activations calibrated on images of the training pipeline; only Canny's grey-level rounding,
which has no int8 kernel, stays float). Files are written atomically and an existing one is
kept unless `overwrite`. Canny's hysteresis for TFLite: `export.tflite_canny_max_steps` N > 0
unrolls N max-pool growth steps (no WHILE op: GPU delegates and int8 calibration need that;
64 steps find 0.984-1.0 of OpenCV's edge pixels, never extra, docs/canny.md), 0 keeps the
exact WHILE loop (float CPU only). `--target gpu` (`gscnn_tf.tflite_gpu`) writes a file
that runs whole on the TFLite GPU delegate instead: float32 input, probabilities out, audited
op by op (`gscnn_tf.tflite_audit`); every TFLite export prints that audit's verdict.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile

import numpy as np

from gscnn_tf import files
from gscnn_tf.errors import ExportError

SIGNATURES = ("serving_default", "probabilities", "serve_bytes")
CLASSES_ASSET = "classes.json"
QUANTIZE = ("none", "fp16", "dynamic", "int8")
FORMATS = ("saved_model", "tflite")
# Least share of pixels whose TFLite label equals the Keras model's (tests, benchmark).
AGREEMENT_TARGET = {"none": 0.999, "fp16": 0.99, "dynamic": 0.95, "int8": 0.95}
# Leading bytes of the encoded formats serve_bytes accepts (PNG, JPEG, GIF, BMP).
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"BM")


def class_metadata(config, num_classes: int, model=None) -> dict:
    """{"class_names", "palette", "ignore_label"} of the model's dataset: the config's when
    given, else the model's own (a `GSCNN` carries them), else placeholders."""
    if config is not None:
        from gscnn_tf.data.pipeline import dataset_info

        info = dataset_info(config)
        if info.num_classes == num_classes:
            return {"class_names": list(info.class_names),
                    "palette": np.asarray(info.palette).tolist(),
                    "ignore_label": int(info.ignore_label)}
    if getattr(model, "class_names", None) is not None:
        return {"class_names": list(model.class_names),
                "palette": [list(c) for c in model.palette],
                "ignore_label": int(model.ignore_label)}
    from gscnn_tf import viz

    return {"class_names": [f"class_{i}" for i in range(num_classes)],
            "palette": viz.default_palette(num_classes).tolist(), "ignore_label": 255}


def _serving_module(model, classes_file: str):
    """A tf.Module holding `model`, the classes asset and the three signature functions."""
    import tensorflow as tf

    from gscnn_tf.models.postprocess import postprocess

    def checked_images(images, name):
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

    def decode_batch(image_bytes):
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
        first = tf.shape(tf.io.decode_image(image_bytes[0], channels=3,
                                            expand_animations=False))

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

    class ServingModule(tf.Module):
        def __init__(self):
            super().__init__(name="gscnn_serving")
            self.model = model
            self.classes = tf.saved_model.Asset(classes_file)

        def _run(self, images, probabilities=False):
            # A batch of 0 runs the model on one zero image (the model's layers need a
            # batch) and returns none of it: empty outputs of the right layout.
            count = tf.shape(images)[0]
            padded = tf.pad(images, [[0, tf.maximum(1 - count, 0)], [0, 0], [0, 0], [0, 0]])
            out = self.model(tf.cast(padded, tf.float32), training=False)
            return postprocess({k: v[:count] for k, v in out.items()}, probabilities)

        @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name="images")])
        def serving_default(self, images):
            return self._run(checked_images(images, "serving_default"))

        @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name="images")])
        def probabilities(self, images):
            return self._run(checked_images(images, "probabilities"), probabilities=True)

        @tf.function(input_signature=[tf.TensorSpec(None, tf.string, name="image_bytes")])
        def serve_bytes(self, image_bytes):
            return self._run(decode_batch(image_bytes))

    return ServingModule()


def export_saved_model(model, export_dir: str, model_name: str, version: int,
                       metadata: dict, overwrite: bool = False) -> str:
    """Writes `model` as `<export_dir>/<model_name>/<version>/`; returns that path.

    On a local disk the SavedModel is written into a temporary folder beside the target and
    renamed into place, so TF Serving (which polls the model folder) never sees a
    half-written version. An object store (`gs://`) has no folder rename: the version is
    written in place there, so export a new version number rather than replacing one that
    a server is loading.
    """
    import tensorflow as tf

    if version < 1:
        raise ExportError(f"version {version}: TF Serving versions are integers >= 1")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", model_name):
        raise ExportError(f"model name '{model_name}': use letters, digits, '_', '-', '.'")
    parent = files.join(export_dir, model_name)
    target = files.join(parent, str(version))
    if files.exists(target) and not overwrite:
        raise ExportError(f"{target} exists; pass --overwrite to replace version {version}, "
                          "or export a new --version")
    files.makedirs(parent)
    local = files.is_local(parent)
    work = (tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=parent) if local
            else f"{parent}/.{version}.tmp-{os.getpid()}")
    try:
        classes_file = files.join(work, CLASSES_ASSET)
        files.write_bytes(classes_file, json.dumps(metadata, indent=1).encode("utf-8"))
        module = _serving_module(_without_xla_canny(model), classes_file)
        if not local:
            files.rmtree(target)
        staged = files.join(work, "saved_model") if local else target
        tf.saved_model.save(module, staged, signatures={
            name: getattr(module, name) for name in SIGNATURES})
        if local:
            _swap_into_place(staged, target, work, overwrite)
    finally:
        files.rmtree(work)
    return target


def _swap_into_place(staged: str, target: str, work: str, overwrite: bool) -> None:
    """Renames `staged` to `target`. With `overwrite`, an existing `target` is first moved
    into `work` (removed with it afterwards) and moved back if the rename fails, so it is
    never lost; without, a `target` written meanwhile by another export makes the rename
    fail and stays as it is."""
    replaced = None
    if overwrite and os.path.exists(target):
        replaced = os.path.join(work, "replaced")
        os.rename(target, replaced)
    try:
        os.rename(staged, target)
    except BaseException:
        if replaced is not None:
            os.rename(replaced, target)
        raise


def _file_mode() -> int:
    """The mode `open()` gives a new file under the process's umask (0644 under 022), so a
    serving container running as another user can read what we export."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_file(path: str, data: bytes, overwrite: bool = False) -> None:
    """Writes `data` to `path` through a temporary file in the same folder and a rename:
    `path` is either its old content or the new one, never half-written."""
    if files.exists(path) and not overwrite:
        raise ExportError(f"{path} exists; pass --overwrite to replace it")
    if not files.is_local(path):    # gs:// and the like: see gscnn_tf.files
        files.atomic_write_bytes(path, data)
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=folder)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        os.chmod(tmp, _file_mode())  # mkstemp's 0600 would hide the file from other users
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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


def _without_xla_canny(model):
    """`model` with Canny's XLA-compiled "fused" form swapped for "bits" (same edges, plain
    TF ops): TF Serving runs no XLA by default."""
    from gscnn_tf.ops.canny import Canny

    fused = [layer for layer in model.layers
             if isinstance(layer, Canny) and layer.step_form == "fused"]
    return with_canny(model, fused[0].max_steps, "bits") if fused else model


def frozen_function(model, height: int, width: int):
    """Concrete function `images` uint8 [1, H, W, 3] -> {"labels", "edge_prob"} of `model`
    (its variables captured; `convert_tflite` freezes them into constants)."""
    import tensorflow as tf

    from gscnn_tf.models.postprocess import postprocess

    spec = [tf.TensorSpec([1, height, width, 3], tf.uint8, name="images")]

    @tf.function(input_signature=spec)
    def predict(images):
        return postprocess(model(tf.cast(images, tf.float32), training=False))

    return predict.get_concrete_function()


def _missing_ops(message: str) -> list[str]:
    """Names of the TF ops a converter error says are not TFLite builtins."""
    found = re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", message)
    for listed in re.findall(r"(?:Custom|Flex) ops: ([\w, ]+)", message):
        found += [op.strip() for op in listed.split(",") if op.strip()]
    return sorted(set(found))


def convert_tflite(function, quantize: str = "none", representative=None) -> bytes:
    """TFLite flatbuffer of a concrete function (variables frozen into constants), builtin
    ops only, with a `serving_default` signature named as the function's inputs and outputs.

    quantize: one of QUANTIZE; `int8` needs `representative`, a callable returning an
    iterable of `[input]` lists (calibration samples).
    """
    import tensorflow as tf

    from gscnn_tf import tflite_graph

    if quantize not in QUANTIZE:
        raise ExportError(f"quantize '{quantize}': expected one of {', '.join(QUANTIZE)}")
    converter, input_names, output_names = tflite_graph.graph_converter(function)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        # Full-integer: every op with an int8 kernel runs in int8 (the converter fails
        # otherwise); ops TFLite has no int8 kernel for (Canny's grey-level rounding) stay
        # float between QUANTIZE / DEQUANTIZE.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if representative is None:
            raise ExportError("int8 quantization needs representative images")
        if _has_while(function):
            raise ExportError("int8 calibration cannot run a graph with a WHILE loop (Canny's "
                              "hysteresis): set export.tflite_canny_max_steps > 0 "
                              "(--canny-max-steps, e.g. 64)")
        converter.representative_dataset = representative
    try:
        content = converter.convert()
    except Exception as e:  # the converter raises ConverterError with the op list in text
        ops = _missing_ops(str(e))
        if ops:
            raise ExportError(f"TFLite conversion needs op(s) that are not TFLite builtins: "
                              f"{', '.join(ops)}; Flex / Select TF ops are not allowed "
                              "(GPU delegates cannot run them)") from e
        raise
    del converter  # its frozen GraphDef: one copy of the weights
    custom = sorted(op for op in tflite_ops(content)
                    if op.startswith("Flex") or op == "CUSTOM")
    if custom:
        raise ExportError(f"TFLite model contains non-builtin op(s): {', '.join(custom)}")
    return tflite_graph.add_signature(content, input_names, output_names)


def _has_while(function) -> bool:
    graph = function.graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return any(node.op in ("While", "StatelessWhile") for node in nodes)


def tflite_interpreter(content: bytes, delegates: bool = True):
    """A LiteRT interpreter of a TFLite flatbuffer, tensors allocated; `delegates=False`
    runs the builtin kernels without the default XNNPACK delegate. Needs the `litert`
    extra; without it, one ExportError saying how to install it."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as e:
        raise ExportError("running a TFLite file needs LiteRT: pip install -e \".[litert]\" "
                          "(ai-edge-litert)") from e

    resolver = OpResolverType.AUTO if delegates else \
        OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(model_content=content, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    return interpreter


def tflite_op_list(content: bytes) -> list[str]:
    """The ops of a TFLite flatbuffer in graph order (e.g. ["CAST", "CONV_2D", ...]), as the
    file has them (no default XNNPACK delegate folding ops into DELEGATE nodes)."""
    return [op["op_name"] for op in tflite_interpreter(content, False)._get_ops_details()]


def tflite_ops(content: bytes) -> set[str]:
    """The op names in a TFLite flatbuffer (e.g. {"CONV_2D", "WHILE", ...})."""
    return set(tflite_op_list(content))


def float_ops(content: bytes) -> list[str]:
    """Names of the ops of a TFLite file that take float32 tensors (sorted, repeated)."""
    interpreter = tflite_interpreter(content, False)
    dtypes = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    return sorted(op["op_name"] for op in interpreter._get_ops_details()
                  if any(dtypes[i] == np.float32 for i in op["inputs"] if i >= 0))


def run_tflite(content: bytes, images: np.ndarray) -> dict:
    """Runs a TFLite export on uint8 `[N, H, W, 3]` images one at a time; returns
    {"labels": int32 [N, H, W], "edge_prob": float32 [N, H, W, 1]} (empty for N = 0)."""
    runner = tflite_interpreter(content).get_signature_runner("serving_default")
    height, width = (int(v) for v in runner.get_input_details()["images"]["shape"][1:3])
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (height, width, 3):
        raise ValueError(f"images {images.shape}: expected uint8 [N, {height}, {width}, 3], "
                         "the export's input size")
    outs = [runner(images=np.asarray(image[None], np.uint8)) for image in images]
    if not outs:
        return {"labels": np.zeros([0, height, width], np.int32),
                "edge_prob": np.zeros([0, height, width, 1], np.float32)}
    return {key: np.concatenate([o[key] for o in outs]) for key in ("labels", "edge_prob")}


def keras_labels(model, images: np.ndarray) -> np.ndarray:
    """int32 `[N, H, W]` argmax of the Keras model on uint8 images `[N, H, W, 3]`."""
    import tensorflow as tf

    from gscnn_tf.models.postprocess import postprocess

    return np.concatenate([
        postprocess(model(tf.constant(image[None], tf.float32), training=False))["labels"]
        for image in images])


def _to_uint8(images) -> np.ndarray:
    return np.clip(np.round(np.asarray(images, np.float32)), 0, 255).astype(np.uint8)


def representative_images(config, height: int, width: int, count: int) -> np.ndarray:
    """uint8 `[count, H, W, 3]`: augmented training crops of size H x W from the training
    pipeline (`data.crop_size` set to the TFLite size), for int8 calibration."""
    from gscnn_tf.data.pipeline import build_dataset

    config = copy.deepcopy(config)
    config.data.crop_size = [height, width]
    dataset = build_dataset(config, config.data.train_split, training=True, batch_size=1)
    return _to_uint8(np.concatenate([image for image, _ in dataset.take(count)]))


def heldout_images(config, height: int, width: int, count: int) -> np.ndarray:
    """uint8 `[<=count, H, W, 3]`: validation images (never trained on), resized bilinearly
    to H x W when their size differs."""
    import tensorflow as tf

    from gscnn_tf.data.pipeline import build_dataset

    dataset = build_dataset(config, config.data.val_split, training=False, batch_size=1)
    images = [tf.image.resize(image, [height, width]) if image.shape[1:3] != (height, width)
              else image for image, _ in dataset.take(count)]
    return _to_uint8(np.concatenate(images))


def export_tflite(model, config, path: str, height: int, width: int, quantize: str = "none",
                  max_steps: int | None = None, step_form: str | None = None,
                  overwrite: bool = False) -> bytes:
    """Converts `model` for a fixed `[1, H, W, 3]` input and writes it to `path` (atomically;
    an existing file is kept unless `overwrite`, and always when the conversion fails).

    max_steps / step_form: Canny hysteresis for the TFLite graph (default
    `export.tflite_canny_max_steps` / `export.tflite_canny_step_form`).
    """
    import tensorflow as tf

    if files.exists(path) and not overwrite:
        raise ExportError(f"{path} exists; pass --overwrite to replace it")
    export = config.export
    max_steps = export.tflite_canny_max_steps if max_steps is None else max_steps
    step_form = step_form or export.tflite_canny_step_form
    graph_model = with_canny(model, max_steps, step_form)
    function = frozen_function(graph_model, height, width)
    representative = None
    if quantize == "int8":
        samples = representative_images(config, height, width, export.representative_images)

        def representative():
            for image in samples:
                yield [tf.constant(image[None])]

    content = convert_tflite(function, quantize, representative)
    write_file(path, content, overwrite)
    return content


def verify_tflite(content: bytes, model, images: np.ndarray) -> dict:
    """Agreement of a TFLite export with the Keras model on uint8 `[N, H, W, 3]` images:
    {"agreement": share of pixels with equal labels, "images": N, "bytes": file size}."""
    labels = run_tflite(content, images)["labels"]
    return {"agreement": float(np.mean(labels == keras_labels(model, images))),
            "images": int(len(images)), "bytes": len(content)}
