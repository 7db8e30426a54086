"""TFLite export: agreement with the Keras model per quantization (ai-edge-litert), file
sizes, builtin ops only, bounded vs WHILE hysteresis, clear errors, backbones, CLI."""

import copy
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import gscnn_tf
from gscnn_tf import cli, export, save_config
from gscnn_tf.config import load_config
from gscnn_tf.data.pipeline import build_dataset
from export_support import SIZE, setup  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def converted(setup, tmp_path_factory):
    config, model, _ = setup
    root = tmp_path_factory.mktemp("tflite")
    return {q: export.export_tflite(model, config, str(root / f"{q}.tflite"), SIZE, SIZE, q)
            for q in export.QUANTIZE}


@pytest.mark.parametrize("quantize", export.QUANTIZE)
def test_agreement_with_keras_on_heldout_images(setup, converted, quantize):
    _, model, images = setup
    report = export.verify_tflite(converted[quantize], model, images)
    print(f"{quantize}: agreement {100 * report['agreement']:.3f} % on {report['images']} "
          f"images, {report['bytes']} bytes")
    assert report["images"] == 4
    assert report["agreement"] >= export.AGREEMENT_TARGET[quantize]


def test_file_sizes(converted):
    sizes = {q: len(c) for q, c in converted.items()}
    print("TFLite bytes:", sizes)
    # The tiny test model's constant graph overhead (unrolled Canny) keeps the ratios above
    # the 1/2 and 1/4 that weights alone would give.
    assert 0.4 < sizes["fp16"] / sizes["none"] < 0.6
    assert 0.2 < sizes["int8"] / sizes["none"] < 0.4
    assert sizes["dynamic"] < 0.4 * sizes["none"]


def test_fixed_input_and_builtin_ops_only(converted):
    from ai_edge_litert.interpreter import Interpreter

    for quantize, content in converted.items():
        interpreter = Interpreter(model_content=content)
        runner = interpreter.get_signature_runner("serving_default")
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
        assert list(inputs["images"]["shape"]) == [1, SIZE, SIZE, 3]
        assert inputs["images"]["dtype"] == np.uint8
        assert outputs["labels"]["dtype"] == np.int32
        assert list(outputs["edge_prob"]["shape"]) == [1, SIZE, SIZE, 1]
        ops = export.tflite_ops(content)
        assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"]
        assert "WHILE" not in ops and "VAR_HANDLE" not in ops  # bounded Canny, frozen
    assert "QUANTIZE" in export.tflite_ops(converted["int8"])


def test_op_lists_read_the_file_as_litert_does(converted):
    """tflite_op_list and float_ops read the flatbuffer itself; LiteRT's interpreter, built
    without delegates, is the independent reference for the ops in order and their input
    dtypes."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    for content in converted.values():
        interpreter = Interpreter(
            model_content=content,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        nodes = interpreter._get_ops_details()
        dtypes = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
        assert export.tflite_op_list(content) == [op["op_name"] for op in nodes]
        assert export.float_ops(content) == sorted(
            op["op_name"] for op in nodes
            if any(dtypes[i] == np.float32 for i in op["inputs"] if i >= 0))


def test_int8_is_full_integer(converted):
    """Every convolution, activation and elementwise op of the int8 file computes in int8;
    only Canny's grey-level rounding (no int8 kernel in TFLite) and the (de)quantize ops at
    its borders see float32."""
    assert "CONV_2D" in export.float_ops(converted["none"])  # the check sees float ops
    floats = export.float_ops(converted["int8"])
    assert set(floats) <= {"QUANTIZE", "DEQUANTIZE", "ROUND", "FLOOR", "MINIMUM",
                           "STRIDED_SLICE", "CONCATENATION", "RESHAPE"}, floats
    assert len(floats) <= 16


def test_existing_file_is_kept(setup, converted, tmp_path, monkeypatch):
    """No overwrite without the flag; a conversion or a write that fails keeps the old file
    and leaves no temporary one."""
    config, model, _ = setup
    path = tmp_path / "m.tflite"
    path.write_bytes(converted["none"])
    with pytest.raises(export.ExportError, match="m.tflite exists; pass --overwrite"):
        export.export_tflite(model, config, str(path), SIZE, SIZE, "none")

    def failing_convert(*args):  # as convert_tflite fails on a non-builtin op
        raise export.ExportError("TFLite conversion needs op(s) that are not TFLite builtins")

    with monkeypatch.context() as patch, pytest.raises(export.ExportError, match="builtins"):
        patch.setattr(export.tflite, "convert_tflite", failing_convert)
        export.export_tflite(model, config, str(path), SIZE, SIZE, "none", overwrite=True)
    monkeypatch.setattr(export.tflite, "convert_tflite", lambda *args: b"new model")

    def failing_replace(source, target):
        raise OSError("No space left on device")

    with monkeypatch.context() as patch, pytest.raises(OSError, match="No space"):
        patch.setattr(os, "replace", failing_replace)
        export.export_tflite(model, config, str(path), SIZE, SIZE, "none", overwrite=True)
    assert os.listdir(tmp_path) == ["m.tflite"]
    assert path.read_bytes() == converted["none"]
    export.export_tflite(model, config, str(path), SIZE, SIZE, "none", overwrite=True)
    assert path.read_bytes() == b"new model" and os.listdir(tmp_path) == ["m.tflite"]


def test_while_loop_hysteresis_is_exact(setup, tmp_path):
    config, model, images = setup
    own = model.get_layer("canny").step_form
    assert export.with_canny(model, 0, own) is model  # the trained model's own settings
    assert export.with_canny(model, 0, "pool").get_layer("canny").step_form == "pool"
    content = export.export_tflite(model, config, str(tmp_path / "m.tflite"), SIZE, SIZE,
                                   "none", max_steps=0, step_form="pool")
    assert "WHILE" in export.tflite_ops(content)
    assert export.verify_tflite(content, model, images)["agreement"] >= 0.999
    with pytest.raises(export.ExportError, match="WHILE.*tflite_canny_max_steps"):
        export.export_tflite(model, config, str(tmp_path / "q.tflite"), SIZE, SIZE, "int8",
                             max_steps=0)


def test_a_clone_with_other_canny_settings_lives_until_converted(setup, tmp_path,
                                                                 monkeypatch):
    """The model rebuilt with the export's Canny settings is only weakly held by its traced
    function: a garbage collection between tracing and conversion must not delete its
    variables (it did, now and then, under the full suite)."""
    import gc

    from gscnn_tf.export import tflite

    config, model, images = setup
    convert = tflite.convert_tflite
    monkeypatch.setattr(tflite, "convert_tflite", lambda *a: [gc.collect(), convert(*a)][1])
    content = export.export_tflite(model, config, str(tmp_path / "m.tflite"), SIZE, SIZE,
                                   "none", max_steps=3, step_form="pool")
    assert export.verify_tflite(content, model, images)["agreement"] >= 0.999


def test_canny_edges_match_the_keras_layer(setup):
    """The TFLite graph's Canny (bounded pool steps) equals the model's exact Canny here."""
    config, model, images = setup
    from gscnn_tf.ops.canny import Canny

    layer = Canny(config.model.canny_low, config.model.canny_high, 64, "pool")

    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.uint8)])
    def edges(image):
        return {"edges": layer(tf.cast(image, tf.float32))}

    content = export.convert_tflite(edges.get_concrete_function())
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=content).get_signature_runner()
    exact = Canny(config.model.canny_low, config.model.canny_high)
    for image in images:
        got = runner(image=image[None])["edges"]
        np.testing.assert_array_equal(got, exact(tf.constant(image[None], tf.float32)))


def test_non_builtin_op_is_named():
    @tf.function(input_signature=[tf.TensorSpec([4, 4], tf.float32)])
    def svd(x):
        return {"s": tf.linalg.svd(x, compute_uv=False)}

    with pytest.raises(export.ExportError, match="not TFLite builtins: Svd"):
        export.convert_tflite(svd.get_concrete_function())


def test_int8_calibrates_on_training_pipeline_crops(setup, tmp_path, monkeypatch):
    """`--quantize int8` feeds the converter export.representative_images augmented training
    crops at the TFLite size: the training pipeline's own images, not validation ones."""
    config, model, _ = setup
    seen = {}

    def recording_convert(function, quantize, representative):
        seen["input"] = function.inputs[0].shape.as_list()
        seen["samples"] = np.concatenate([s[0].numpy() for s in representative()])
        return b"int8 model"

    monkeypatch.setattr(export.tflite, "convert_tflite", recording_convert)
    export.export_tflite(model, config, str(tmp_path / "q.tflite"), 48, 40, "int8")
    samples = seen["samples"]
    assert seen["input"] == [1, 48, 40, 3]
    assert samples.shape == (config.export.representative_images, 48, 40, 3)
    assert samples.dtype == np.uint8 and len({im.tobytes() for im in samples}) == len(samples)
    train = copy.deepcopy(config)
    train.data.crop_size = [48, 40]
    crops = [image for image, _ in build_dataset(train, "train", training=True,
                                                 batch_size=1).take(len(samples))]
    np.testing.assert_array_equal(
        samples, np.clip(np.round(np.concatenate(crops)), 0, 255).astype(np.uint8))
    val = {im.tobytes() for im in export.heldout_images(config, 48, 40, 4)}
    assert not val & {im.tobytes() for im in samples}


def test_bad_arguments():
    from gscnn_tf.cli.arguments import parse_size
    from gscnn_tf.errors import UsageError

    for bad in ("512", "0x64", "64x", "axb"):
        with pytest.raises(UsageError, match=f"--size '{bad}': expected HEIGHTxWIDTH"):
            parse_size(bad)
    assert parse_size("64x96") == (64, 96) and parse_size(" 64 X 96 ") == (64, 96)
    with pytest.raises(export.ExportError, match="quantize 'int4'"):
        export.convert_tflite(None, "int4")


def test_cli_tflite(setup, tmp_path, capsys):
    config, model, _ = setup
    model.save(tmp_path / "model.keras")
    save_config(config, tmp_path / "config.yaml")
    assert cli.main(["export", str(tmp_path / "model.keras"), "--format", "tflite",
                     "--size", f"{SIZE}x{SIZE}", "--quantize", "fp16", "--verify", "2",
                     "--output", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert os.path.isfile(tmp_path / "out" / f"gscnn_{SIZE}x{SIZE}_fp16.tflite")
    with open(tmp_path / "out" / export.CLASSES_ASSET) as f:
        assert json.load(f)["class_names"][0] == "road"
    assert "label agreement with the Keras model on 2 validation images" in text
    args = ["export", str(tmp_path / "model.keras"), "--format", "tflite", "--size",
            f"{SIZE}x{SIZE}", "--quantize", "fp16", "--output", str(tmp_path / "out")]
    assert cli.main(args) == 2  # one error line (tests/test_errors.py), the file kept
    assert "fp16.tflite exists; pass --overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("backbone", ["mobilenetv2", "resnet50"])
def test_backbones_convert(backbone):
    """Both deployment backbones' GSCNN convert with builtin ops only (ResNet-50: 64 s on a
    2-core machine under a load average of 7, so it stays in the default suite)."""
    config = load_config(None, [f"model.backbone.name={backbone}",
                                "model.sync_batch_norm=false"])
    model = gscnn_tf.build_model(config.model, 19)
    graph_model = export.with_canny(model, 16, "pool")
    content = export.convert_tflite(export.frozen_function(graph_model, 64, 64))
    ops = export.tflite_ops(content)
    assert "CONV_2D" in ops and "WHILE" not in ops
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"]
    image = np.random.default_rng(0).integers(0, 256, [1, 64, 64, 3], dtype=np.uint8)
    agreement = export.verify_tflite(content, graph_model, image)["agreement"]
    assert agreement >= 0.999


def test_edge_entry_point(setup, converted, tmp_path):
    import importlib.util

    _, _, images = setup
    spec = importlib.util.spec_from_file_location(
        "tflite_predict", os.path.join(os.path.dirname(__file__), "..", "export",
                                       "tflite_predict.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "m.tflite").write_bytes(converted["none"])
    expected = export.run_tflite(converted["none"], images[:1])["labels"][0]
    runner = module.load(str(tmp_path / "m.tflite"))
    np.testing.assert_array_equal(module.predict(runner, images[0])["labels"], expected)
    larger = np.repeat(np.repeat(images[0], 2, 0), 2, 1)  # resized down to the input size
    assert module.predict(runner, larger)["labels"].shape == (2 * SIZE, 2 * SIZE)
    with open(tmp_path / "classes.json", "w") as f:
        json.dump(export.class_metadata(setup[0], 10), f)
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(images[0], cv2.COLOR_RGB2BGR))
    assert module.main([str(tmp_path / "m.tflite"), str(tmp_path / "a.png"),
                        "-o", str(tmp_path / "out")]) == 0
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "out" / "a_labels.png"), 0),
                                  expected)
