"""Reference checkpoint import: a random state dict with the reference's key names and shapes
(tests/reference_torch.py) converts through the CLI, loads, holds every source tensor after the
layout change, and the compat model reproduces an independent PyTorch forward pass."""

import argparse
import contextlib
import io
import os
import sys

import keras
import numpy as np
import pytest
import reference_torch
import tensorflow as tf
import torch

from gscnn_tf import export
from gscnn_tf import reference_import as ri
from gscnn_tf.cli import main
from gscnn_tf.config import BackboneConfig, Config, ModelConfig
from gscnn_tf.models.gscnn import build_model

SIZE = 64


@pytest.fixture(scope="module")
def state():
    return reference_torch.random_state_dict(num_classes=19, seed=0)


@pytest.fixture(scope="module")
def checkpoint(state, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ref") / "best_cityscapes_checkpoint.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 1}, path)
    return path


@pytest.fixture(scope="module")
def cli_output(checkpoint):
    out = os.path.join(os.path.dirname(checkpoint), "reference.keras")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["import-reference", checkpoint, "--out", out]) == 0
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def converted(cli_output):
    out, _ = cli_output
    return keras.saving.load_model(out, compile=False), out


def test_cli_reports_classes_and_skipped_dsn1(cli_output):
    out, printed = cli_output
    assert f"wrote {out}: 313 weights set, 19 classes, 137,322,345 parameters" in printed
    assert "skipped (unused by the reference forward pass): dsn1.bias, dsn1.weight" in printed


def _expected(key, tensor):
    """The source tensor in our layout: OIHW -> HWIO; final_seg.0's input channels
    [skip 48, aspp 256] -> [aspp 256, skip 48]."""
    a = tensor.numpy()
    if a.ndim == 4:
        a = a.transpose(2, 3, 1, 0)
    if key == "final_seg.0.weight":
        a = np.concatenate([a[:, :, 48:], a[:, :, :48]], axis=2)
    return a


def test_every_weight_equals_its_source_tensor(converted, state):
    model, _ = converted
    ours = {w.path: np.asarray(w.numpy()) for w in model.weights}
    by_value = {a.tobytes(): path for path, a in ours.items()}
    assert len(by_value) == len(ours) == 313  # random values: every weight is distinct
    sources = {k: v for k, v in state.items()
               if not k.endswith("num_batches_tracked") and not k.startswith("dsn1.")}
    matched = {}
    for key, tensor in sources.items():
        a = _expected(key, tensor)
        path = by_value.get(a.tobytes())
        assert path is not None and ours[path].shape == a.shape, key
        matched[key] = path
    assert sorted(matched.values()) == sorted(ours)  # a bijection: nothing left over
    assert matched["gate1.weight"] == "gate1_weight/kernel"
    assert matched["gate2._gate_conv.4.running_var"] == "gate2_bn_out/moving_variance"
    assert matched["dsn7.bias"] == "gate3_dsn/bias"
    assert matched["mod4.block1.proj_conv.weight"] == "mod4_block1_proj/kernel"
    assert matched["final_seg.6.weight"] == "decoder_classifier/kernel"
    assert model.output["seg_logits"].shape[-1] == 19


def test_compat_model_reproduces_reference_forward(converted, state):
    model, _ = converted
    rng = np.random.default_rng(1)
    smooth = np.linspace(0, 255, SIZE)[None, :, None, None] * np.ones((2, SIZE, 1, 3))
    images = np.clip(smooth + rng.normal(0, 40, (2, SIZE, SIZE, 3)), 0, 255).astype(np.float32)
    seg_ref, edge_ref = reference_torch.forward(state, images)
    out = model(images, training=False)
    for name, ref in (("seg_logits", seg_ref), ("edge_logits", edge_ref)):
        diff, scale = np.abs(out[name].numpy() - ref).max(), np.abs(ref).max()
        print(f"{name}: max abs diff {diff:.3g}, max abs value {scale:.3g}")
        assert diff <= 1e-4 * scale, name  # random weights: values reach ~1e3
    labels = np.argmax(out["seg_logits"].numpy(), -1)
    assert np.mean(labels == np.argmax(seg_ref, -1)) > 0.999


def test_reports_dsn1_and_sets_nothing_on_errors(converted, state):
    model, _ = converted
    arrays = {k: v.numpy() for k, v in state.items()}
    assert ri.load_reference_weights(model, arrays) == ["dsn1.bias", "dsn1.weight"]
    before = model.get_layer("mod2_block1_conv1").kernel.numpy().copy()
    broken = {k: v for k, v in arrays.items() if k != "mod4.block3.convs.conv2.weight"}
    broken["gate2._gate_conv.1.bias"] = np.zeros(5, np.float32)
    broken["aspp.extra.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    broken["mod2.block1.convs.conv1.weight"] = 1.0 + arrays["mod2.block1.convs.conv1.weight"]
    with pytest.raises(ri.ReferenceImportError) as e:
        ri.load_reference_weights(model, broken)
    message = str(e.value)
    assert "3 problem(s)" in message
    assert "missing 'mod4.block3.convs.conv2.weight' [512, 512, 3, 3]" in message
    assert "wrong shape 'gate2._gate_conv.1.bias' [5]: expected [17]" in message
    assert "unexpected 'aspp.extra.weight'" in message
    np.testing.assert_array_equal(model.get_layer("mod2_block1_conv1").kernel.numpy(), before)


def test_backbone_weights_from_converted_file(converted):
    """`model.backbone.weights: converted.keras` starts a (non-compat) wrn38 GSCNN from the
    converted trunk; the rest keeps its initialisation."""
    source, out = converted
    config = ModelConfig(backbone=BackboneConfig(name="wrn38", weights=out))
    model = build_model(config, 5)
    for name in ("mod1_conv1", "mod4_block1_proj", "mod7_block1_bn3"):
        for ours, theirs in zip(model.get_layer(name).weights, source.get_layer(name).weights):
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert not np.array_equal(model.get_layer("gate1_weight").kernel.numpy(),
                              source.get_layer("gate1_weight").kernel.numpy())


def test_import_writes_a_preset_that_loads_alike(cli_output, converted):
    """The preset beside the .keras file (`gscnn-tf import-reference` writes both) gives the
    same outputs and names the 19 Cityscapes classes."""
    from gscnn_tf import GSCNN
    from gscnn_tf.data.cityscapes import CLASSES

    model, out = converted
    preset = out[: -len(".keras")]
    assert f"wrote the preset {preset}" in cli_output[1]
    loaded = GSCNN.from_preset(preset)
    assert list(loaded.class_names) == [name for name, _, _ in CLASSES]
    assert loaded.model_config.compat == "reference" and model.class_names == loaded.class_names
    images = _probe_images().astype(np.float32)
    for key, value in loaded(images, training=False).items():
        np.testing.assert_allclose(value.numpy(), model(images, training=False)[key].numpy(),
                                   atol=1e-6)


def test_existing_output_is_kept(converted, checkpoint, capsys):
    _, out = converted
    size = os.path.getsize(out)
    assert main(["import-reference", checkpoint, "--out", out]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert os.path.getsize(out) == size
    with pytest.raises(ri.ReferenceImportError, match="ending in .keras"):
        ri.import_reference(checkpoint, out[:-6] + ".h5")


def test_read_checkpoint_forms(tmp_path):
    bare = str(tmp_path / "bare.pth")
    torch.save({"final_seg.6.weight": torch.zeros(7, 256, 1, 1)}, bare)
    state = ri.read_checkpoint(bare)
    assert ri.num_classes_of(state) == 7 and state["final_seg.6.weight"].dtype == np.float32
    odd = str(tmp_path / "odd.pth")
    torch.save({"state_dict": {"module.a": torch.zeros(1)}, "args": argparse.Namespace(a=1)},
               odd)
    with pytest.raises(ri.ReferenceImportError, match="--trust-pickle"):
        ri.read_checkpoint(odd)
    assert list(ri.read_checkpoint(odd, trust_pickle=True)) == ["a"]
    with pytest.raises(ri.ReferenceImportError, match="final_seg.6.weight"):
        ri.num_classes_of({"a": np.zeros(1)})
    with pytest.raises(ri.ReferenceImportError, match="no such file"):
        ri.read_checkpoint(str(tmp_path / "none.pth"))


def test_missing_torch_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ri.ReferenceImportError, match=r"\.\[convert\]"):
        ri.read_checkpoint(str(tmp_path / "x.pth"))


def _probe_images():
    images = np.clip(np.random.default_rng(2).normal(128, 60, (2, SIZE, SIZE, 3)), 0, 255)
    return images.astype(np.uint8)


def _keras_outputs(model, images):
    out = model(images.astype(np.float32), training=False)
    return np.argmax(out["seg_logits"].numpy(), -1), tf.sigmoid(out["edge_logits"]).numpy()


def _edge_tolerance(model, images):
    """How far two float32 runs of this graph may put `edge_prob` apart: the random-weight
    WRN-38 drives edge logits to |x| ~ 350, float32 sums over 137 M parameters in another
    order (TFLite's kernels against oneDNN's) differ by ~3e-6 of that largest magnitude
    (measured: 1.1e-3 on a logit near 0 with the largest at 356), and sigmoid's slope is at
    most 1/4. We allow 1e-5 of the largest logit, the agreement this model reaches with the
    PyTorch forward pass (test above), times that slope."""
    logits = model(images.astype(np.float32), training=False)["edge_logits"].numpy()
    return 0.25 * 1e-5 * float(np.abs(logits).max())


@pytest.mark.slow
def test_converted_model_exports_saved_model(converted, tmp_path):
    """SavedModel of the 137 M-parameter converted model: ~75 s, 550 MB written (slow)."""
    model, _ = converted
    images = _probe_images()
    labels, edges = _keras_outputs(model, images)
    path = export.export_saved_model(model, str(tmp_path), "gscnn_reference", 1,
                                     export.class_metadata(None, 19))
    out = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_array_equal(out["labels"].numpy(), labels)
    # The SavedModel's graph runs Canny in another step form and is optimised apart from
    # the Keras call: the same float32 reordering argument as the TFLite test below.
    np.testing.assert_allclose(out["edge_prob"].numpy(), edges,
                               atol=_edge_tolerance(model, images))


@pytest.mark.slow
def test_converted_model_exports_tflite(converted, tmp_path):
    """Float TFLite of the converted 137 M-parameter model (slow: about 64 s and 8.5 GB peak
    for the pytest process on the 2-core development machine)."""
    model, _ = converted
    images = _probe_images()
    labels, edges = _keras_outputs(model, images)
    content = export.export_tflite(model, Config(), str(tmp_path / "reference.tflite"),
                                   SIZE, SIZE)
    got = export.run_tflite(content, images)
    assert np.mean(got["labels"] == labels) > 0.999
    tolerance = _edge_tolerance(model, images)
    assert 1e-4 < tolerance < 2e-3  # the scale argued in _edge_tolerance, not a blank cheque
    np.testing.assert_allclose(got["edge_prob"], edges, atol=tolerance)
