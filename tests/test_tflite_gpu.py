"""TFLite for a phone GPU: the static GPU-delegate audit (planted unsupported ops, comparison
and partition rules, bad files, CLI) and the `--target gpu` export (audits clean for the small,
MobileNetV2 and ResNet-50 models, float input and probabilities out, Canny equal to the
default export's, labels agreeing with Keras at fp32 and fp16, the edge entry point)."""

import importlib.util
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import gscnn_tf
from gscnn_tf import cli, export, save_config
from gscnn_tf.export import gpu, gpu_audit
from gscnn_tf.config import load_config
from export_support import SIZE, setup  # noqa: F401 (fixture)

STEPS = 64  # export.tflite_canny_max_steps, the default


def _convert(fn, *specs):
    return export.convert_tflite(tf.function(fn, input_signature=list(specs))
                                 .get_concrete_function())


_F = tf.TensorSpec([1, 8, 8, 3], tf.float32)


def _planted(kind):
    """A small float graph with one op the GPU delegate cannot run in its middle."""
    if kind == "ARG_MAX":
        return _convert(lambda x: {"y": 3.0 * tf.cast(tf.argmax(2.0 * x + 1.0, -1), tf.float32)},
                        _F)
    if kind == "WHILE":
        def grow(x):
            y = tf.while_loop(lambda y: tf.reduce_max(y) < 100.0, lambda y: 2.0 * y + 1.0,
                              [tf.nn.relu(x)])[0]
            return {"y": y * 0.5}

        return _convert(grow, _F)
    return _convert(lambda x: {"y": tf.sigmoid(tf.cast(x, tf.float32) * 2.0 - 1.0)},
                    tf.TensorSpec([1, 8, 8, 3], tf.uint8))


@pytest.mark.parametrize("kind,reason", [
    ("ARG_MAX", "no GPU delegate parser"), ("WHILE", "no GPU delegate parser"),
    ("CAST", "CAST UINT8 -> FLOAT32 is not a supported case")])
def test_audit_flags_planted_unsupported_ops(kind, reason):
    content = _planted(kind)
    assert kind in export.tflite_ops(content)  # planted as meant
    report = gpu_audit.audit(content, f"{kind}.tflite")
    flagged = {op.name: op.reason for op in report.unsupported}
    assert kind in flagged and reason in flagged[kind], report.text()
    assert not report.clean
    assert f"unsupported: {kind} (" in report.summary()
    assert "CPU: " + flagged[kind] in report.text()
    if kind == "WHILE":
        assert report.other_subgraphs == 2 and "further subgraph" in report.text()
    if kind == "ARG_MAX":  # float ops before and after it: two GPU partitions
        assert len(report.partitions) == 2


def test_audit_comparisons_and_partitions():
    """A comparison is taken only when its one consumer is a CAST to float; anything else
    (a SELECT, a second consumer) puts it, and everything depending on it, on the CPU."""
    cast_once = _convert(lambda x: {"y": tf.cast(x > 0.5, tf.float32) * x}, _F)
    report = gpu_audit.audit(cast_once)
    assert report.clean and len(report.partitions) == 1, report.text()
    assert {op.name for op in report.ops} >= {"GREATER", "CAST", "MUL"}

    selected = _convert(lambda x: {"y": tf.where(x > 0.5, x, 0.0) + tf.cast(x > 0.5,
                                                                           tf.float32)}, _F)
    reasons = {op.name: op.reason for op in gpu_audit.audit(selected).unsupported}
    assert "GREATER" in reasons and "exactly one CAST" in reasons["GREATER"], reasons
    assert any(name.startswith("SELECT") for name in reasons)

    integers = _convert(lambda x: {"y": tf.cast(tf.cast(x, tf.int32) > 1, tf.float32) * x},
                        _F)
    reasons = {op.name: op.reason for op in gpu_audit.audit(integers).unsupported}
    assert reasons.get("GREATER") == "comparison of INT32 tensors", reasons

    rounded = _convert(lambda x: {"y": tf.round(x * 2.0 + 0.25) * 3.0 - 1.0}, _F)
    report = gpu_audit.audit(rounded)
    assert [op.name for op in report.unsupported] == ["ROUND"]
    assert len(report.partitions) == 2  # before and after ROUND
    ops = {op.name: op for op in report.ops}
    assert ops["ROUND"].partition is None
    assert ops["MUL"].partition is not None and ops["SUB"].partition is not None


def test_audit_of_files_that_are_not_tflite(tmp_path):
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(export.ExportError, match="model.tflite: not a TFLite file"):
        gpu_audit.audit_file(str(bad))
    with pytest.raises(export.ExportError, match="missing.tflite: no such TFLite file"):
        gpu_audit.audit_file(str(tmp_path / "missing.tflite"))


def test_cli_audit_tflite(tmp_path, capsys):
    planted, clean = tmp_path / "argmax.tflite", tmp_path / "clean.tflite"
    planted.write_bytes(_planted("ARG_MAX"))
    clean.write_bytes(_convert(lambda x: {"y": tf.nn.relu(x * 2.0)}, _F))
    assert cli.main(["audit-tflite", str(planted)]) == 0  # reported, not enforced
    text = capsys.readouterr().out
    assert "ARG_MAX" in text and "CPU: no GPU delegate parser" in text and "partition" in text
    assert cli.main(["audit-tflite", str(planted), str(clean), "--require-clean",
                     "--summary"]) == 1
    assert cli.main(["audit-tflite", str(clean), "--require-clean"]) == 0
    assert "GPU delegate audit: clean" in capsys.readouterr().out


def test_caffe_normalisation_matches_keras_applications():
    """ResNet's RGB -> BGR now splits and concatenates channels (the delegate has no
    reversing slice); the values are keras.applications' own."""
    from gscnn_tf.models.layers import Normalize

    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(Normalize("caffe")(x).numpy(),
                                  keras.applications.resnet50.preprocess_input(x.copy()))


@pytest.fixture(scope="module")
def gpu_files(setup, tmp_path_factory):
    config, model, _ = setup
    root = tmp_path_factory.mktemp("gpu")
    return {q: gpu.export_tflite_gpu(model, config, str(root / f"{q}.tflite"), SIZE, SIZE, q)
            for q in gpu.QUANTIZE}


def test_gpu_target_audits_clean_with_float_io(gpu_files):
    from ai_edge_litert.interpreter import Interpreter

    for quantize, content in gpu_files.items():
        report = gpu_audit.audit(content)
        assert report.clean and len(report.partitions) == 1, report.summary()
        ops = export.tflite_ops(content)
        assert not ops & {"ARG_MAX", "WHILE", "ROUND", "SELECT", "SELECT_V2", "LOGICAL_AND"}
        runner = Interpreter(model_content=content).get_signature_runner("serving_default")
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
        assert list(inputs["images"]["shape"]) == [1, SIZE, SIZE, 3]
        assert inputs["images"]["dtype"] == np.float32
        assert set(outputs) == {"probabilities", "edge_prob"}
        assert list(outputs["probabilities"]["shape"]) == [1, SIZE, SIZE, 10]
        assert list(outputs["edge_prob"]["shape"]) == [1, SIZE, SIZE, 1]
    assert "DEQUANTIZE" in export.tflite_ops(gpu_files["fp16"])  # fp16 weights
    assert 0.4 < len(gpu_files["fp16"]) / len(gpu_files["none"]) < 0.65


@pytest.mark.parametrize("quantize", gpu.QUANTIZE)
def test_gpu_target_labels_agree_with_keras(setup, gpu_files, quantize):
    _, model, images = setup
    report = gpu.verify_tflite_gpu(gpu_files[quantize], model, images)
    print(f"GPU target {quantize}: agreement {100 * report['agreement']:.3f} % on "
          f"{report['images']} images, {report['bytes']} bytes")
    assert report["agreement"] >= gpu.AGREEMENT_TARGET[quantize]
    out = gpu.run_tflite_gpu(gpu_files[quantize], images)
    np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, atol=1e-5)
    keras_edges = tf.sigmoid(model(tf.constant(images, tf.float32))["edge_logits"]).numpy()
    assert np.abs(out["edge_prob"] - keras_edges).max() < (1e-4 if quantize == "none" else 0.05)


def _canny_map(content, image):
    """The Canny map inside an export: the second input of the boundary-fusion concat
    (`[sigmoid(edge logits), Canny]`), read from the interpreter's preserved tensors."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    ops, tensors, _, _ = gpu_audit.read_model(content)
    fusion = [op for op in ops if op.name == "CONCATENATION" and len(op.inputs) == 2
              and "canny" in tensors[op.inputs[1]].name]
    assert len(fusion) == 1
    interpreter = Interpreter(
        model_content=content, experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    runner = interpreter.get_signature_runner("serving_default")
    dtype = runner.get_input_details()["images"]["dtype"]
    runner(images=image[None].astype(dtype))
    return interpreter.get_tensor(fusion[0].inputs[1])


def test_gpu_target_canny_equals_the_default_exports(setup, gpu_files, tmp_path):
    config, model, images = setup
    default = export.export_tflite(model, config, str(tmp_path / "cpu.tflite"), SIZE, SIZE,
                                   "none", max_steps=STEPS, step_form="pool")
    from gscnn_tf.ops.canny import canny

    edges = 0
    for image in images:
        ours = _canny_map(gpu_files["none"], image)
        np.testing.assert_array_equal(ours, _canny_map(default, image))
        np.testing.assert_array_equal(ours, canny(image[None], max_steps=STEPS))
        edges += int(ours.sum())
    assert edges > 100


@pytest.mark.parametrize("backbone", ["mobilenetv2", "resnet50"])
def test_backbones_gpu_target_audits_clean(backbone):
    """Random weights, 64x64: the GPU target of the deployment backbones converts with every
    op on the delegate in one partition (convert_gpu raises otherwise) and agrees with the
    Keras model run with the same Canny steps. MobileNetV2 4 s, ResNet-50 16 s on 2 cores;
    ResNet-50 stays in the default suite as the one backbone with Caffe normalisation."""
    config = load_config(None, [f"model.backbone.name={backbone}",
                                "model.sync_batch_norm=false"])
    model = gscnn_tf.build_model(config.model, 19)
    content = gpu.convert_gpu(model, 64, 64, "none", 16, backbone)
    assert gpu_audit.audit(content).clean
    image = np.random.default_rng(0).integers(0, 256, [1, 64, 64, 3], dtype=np.uint8)
    graph_model = export.with_canny(model, 16, "mask")
    assert gpu.verify_tflite_gpu(content, graph_model, image)["agreement"] >= 0.999


def test_gpu_target_refuses_what_the_delegate_cannot_run(setup, tmp_path, monkeypatch):
    config, model, _ = setup
    path = tmp_path / "m.tflite"
    with pytest.raises(export.ExportError, match="quantize 'int8' with --target gpu"):
        gpu.export_tflite_gpu(model, config, str(path), SIZE, SIZE, "int8")
    with pytest.raises(export.ExportError, match="canny max steps 0 with --target gpu"):
        gpu.export_tflite_gpu(model, config, str(path), SIZE, SIZE, max_steps=0)
    # A graph the audit rejects is not written (here: the default export's graph).
    monkeypatch.setattr(gpu, "gpu_function", lambda m, h, w: export.frozen_function(
        export.with_canny(m, 4, "pool"), h, w))
    with pytest.raises(export.ExportError, match="would not run whole on the GPU delegate, "
                                                 "not written.*ARG_MAX"):
        gpu.export_tflite_gpu(model, config, str(path), SIZE, SIZE, max_steps=4)
    assert os.listdir(tmp_path) == []


def test_cli_gpu_target(setup, tmp_path, capsys):
    config, model, _ = setup
    model.save(tmp_path / "model.keras")
    save_config(config, tmp_path / "config.yaml")
    args = ["export", str(tmp_path / "model.keras"), "--format", "tflite", "--size",
            f"{SIZE}x{SIZE}", "--output", str(tmp_path / "out"), "--canny-max-steps", "16"]
    assert cli.main(args + ["--target", "gpu", "--quantize", "fp16", "--verify", "2"]) == 0
    text = capsys.readouterr().out
    assert os.path.isfile(tmp_path / "out" / f"gscnn_{SIZE}x{SIZE}_fp16_gpu.tflite")
    assert "GPU delegate audit: clean" in text
    assert "label agreement with the Keras model on 2 validation images" in text
    assert cli.main(args) == 0  # the default export: its audit is reported, not enforced
    text = capsys.readouterr().out
    assert "partition(s)" in text and "ARG_MAX" in text and "audit-tflite" in text


def test_edge_entry_point_takes_the_gpu_target(setup, gpu_files, tmp_path):
    _, _, images = setup
    spec = importlib.util.spec_from_file_location(
        "tflite_predict", os.path.join(os.path.dirname(__file__), "..", "export",
                                       "tflite_predict.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "m.tflite").write_bytes(gpu_files["none"])
    runner = module.load(str(tmp_path / "m.tflite"))
    expected = gpu.run_tflite_gpu(gpu_files["none"], images[:1])
    out = module.predict(runner, images[0])
    np.testing.assert_array_equal(out["labels"], expected["labels"][0])
    np.testing.assert_allclose(out["edge_prob"], expected["edge_prob"][0, ..., 0], atol=1e-6)


def _litert_gpu_script():
    spec = importlib.util.spec_from_file_location(
        "litert_gpu", os.path.join(os.path.dirname(__file__), "..", "benchmarks",
                                   "litert_gpu.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_litert_compiled_model_check_runs_on_cpu(setup, gpu_files, tmp_path):
    """The GPU check's CompiledModel path (child process, buffers, argmax), run on LiteRT's
    CPU accelerator: the labels equal the interpreter's."""
    _, _, images = setup
    script = _litert_gpu_script()
    path = tmp_path / "m.tflite"
    path.write_bytes(gpu_files["none"])
    result = script.check_on_accelerator(str(path), images[:2], "cpu")
    assert result["status"] == "ran", result
    np.testing.assert_array_equal(result["labels"],
                                  gpu.run_tflite_gpu(gpu_files["none"], images[:2])
                                  ["labels"])
    reason = script.failure_reason("INFO: x\nERROR: [delegate_webgpu.cc:359] Failed to "
                                   "initialize WebGPU environment: INTERNAL: No adapters found\n")
    assert reason == "Failed to initialize WebGPU environment: INTERNAL: No adapters found"


@pytest.mark.parametrize("quantize", gpu.QUANTIZE)
def test_litert_gpu_runs_the_gpu_target_whole(setup, gpu_files, tmp_path, quantize):
    """Where LiteRT can create its GPU accelerator: fully accelerated, labels agree with
    Keras. Elsewhere skipped with LiteRT's reason."""
    _, model, images = setup
    path = tmp_path / "m.tflite"
    path.write_bytes(gpu_files[quantize])
    result = _litert_gpu_script().check_on_accelerator(str(path), images, "gpu")
    if result["status"] == "skipped":
        pytest.skip(result["reason"])
    assert result["fully_accelerated"]
    agreement = float(np.mean(result["labels"] == export.keras_labels(model, images)))
    assert agreement >= gpu.AGREEMENT_TARGET[quantize]
