"""The Gated-SCNN network: shapes, gradients, baseline, serialisation, mixed precision."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import gscnn_tf
from gscnn_tf.models.gscnn import gate_model
from gscnn_tf.models.summary import parameter_breakdown
from conftest import tiny_model_config


def images(rng, batch, h, w):
    return rng.uniform(0, 255, (batch, h, w, 3)).astype("float32")


@pytest.mark.parametrize("batch,h,w,stride", [(1, 97, 131, 1), (2, 64, 48, 2), (1, 33, 65, 4)])
def test_output_shapes_and_dtypes(rng, batch, h, w, stride):
    model = gscnn_tf.build_model(tiny_model_config(shape_stream_stride=stride), num_classes=5)
    out = model(images(rng, batch, h, w), training=False)
    assert set(out) == {"seg_logits", "edge_logits"}
    assert out["seg_logits"].shape == (batch, h, w, 5)
    assert out["edge_logits"].shape == (batch, h, w, 1)
    assert out["seg_logits"].dtype == tf.float32 and out["edge_logits"].dtype == tf.float32
    gates = gate_model(model)(images(rng, batch, h, w))
    for name in ("gate1", "gate2", "gate3"):
        alpha = gates[name].numpy()
        assert alpha.shape == (batch, -(-h // stride), -(-w // stride), 1)
        assert alpha.min() >= 0.0 and alpha.max() <= 1.0


def test_every_variable_gets_a_gradient(rng):
    model = gscnn_tf.build_model(tiny_model_config(), num_classes=4)
    x = images(rng, 2, 48, 40)
    labels = rng.integers(0, 4, (2, 48, 40))
    edges = rng.integers(0, 2, (2, 48, 40, 1)).astype("float32")
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        seg = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels, out["seg_logits"]))
        edge = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(edges, out["edge_logits"]))
        loss = seg + edge
    grads = tape.gradient(loss, model.trainable_variables)
    dead = [v.path for v, g in zip(model.trainable_variables, grads)
            if g is None or not np.any(g.numpy())]
    assert not dead
    assert any("gate1" in v.path for v in model.trainable_variables)


def test_baseline_has_no_shape_stream_weights(rng):
    gscnn = gscnn_tf.build_model(tiny_model_config(), num_classes=4)
    baseline = gscnn_tf.build_model(tiny_model_config(shape_stream=False), num_classes=4)
    names = [layer.name for layer in baseline.layers]
    assert not any(n.startswith(("shape_", "gate", "fusion_", "aspp_edge")) for n in names)
    parts_g, parts_b = parameter_breakdown(gscnn), parameter_breakdown(baseline)
    assert parts_b["shape_stream"] == 0 and parts_g["shape_stream"] > 0
    assert parts_b["backbone"] == parts_g["backbone"]
    # The edge branch of ASPP (1x1 conv 1 -> 16, BN 4 x 16) and the wider ASPP concat
    # projection (16 x 16 more inputs) are the only fusion/decoder differences.
    assert parts_g["fusion_decoder"] - parts_b["fusion_decoder"] == 16 + 4 * 16 + 16 * 16
    out = baseline(images(rng, 1, 40, 56))
    np.testing.assert_array_equal(out["edge_logits"].numpy(), 0.0)
    with pytest.raises(ValueError, match="no shape-stream gates"):
        gate_model(baseline)


def test_shape_stream_width_matches_the_reference_design():
    # 64-wide basic block, then 32/16/8 with three gates: about 0.108 M parameters at a
    # 64-channel stem (docs/method.md#shape-stream), independent of the backbone except for
    # the dsn convs.
    config = tiny_model_config()
    config.backbone.base_width = 64
    parts = parameter_breakdown(gscnn_tf.build_model(config, num_classes=3))
    assert 0.095e6 < parts["shape_stream"] < 0.12e6


@pytest.mark.parametrize("gate", ["reference", "paper"])
def test_keras_round_trip(rng, tmp_path, gate):
    model = gscnn_tf.build_model(tiny_model_config(gate=gate), num_classes=3)
    x = images(rng, 1, 45, 37)
    expected = model(x, training=False)
    clone = gscnn_tf.GSCNN.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    for other in (clone, loaded):
        got = other(x, training=False)
        for key in expected:
            np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), atol=1e-5)


def test_image_gradients_none_and_canny_differ(rng):
    x = images(rng, 1, 40, 40)
    with_canny = gscnn_tf.build_model(tiny_model_config(), 3)
    without = gscnn_tf.build_model(tiny_model_config(image_gradients="none"), 3)
    without.set_weights(with_canny.get_weights())
    a = with_canny(x)["seg_logits"].numpy()
    b = without(x)["seg_logits"].numpy()
    assert not np.allclose(a, b)
    pooled = gscnn_tf.build_model(tiny_model_config(canny_step_form="pool"), 3)
    pooled.set_weights(with_canny.get_weights())
    np.testing.assert_allclose(pooled(x)["seg_logits"].numpy(), a, atol=1e-6)
    with pytest.raises(ValueError, match="image_gradients"):
        gscnn_tf.build_model(tiny_model_config(image_gradients="sobel"), 3)


def test_mixed_precision_outputs_float32(rng):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = gscnn_tf.build_model(tiny_model_config(), num_classes=3)
        out = model(images(rng, 1, 33, 47), training=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert any(v.dtype == "float32" for v in model.weights)
    assert model.get_layer("decoder_classifier").compute_dtype == "float16"
    assert out["seg_logits"].dtype == tf.float32 and out["edge_logits"].dtype == tf.float32
    assert np.all(np.isfinite(out["seg_logits"].numpy()))


def test_bad_config_errors():
    with pytest.raises(ValueError, match="shape_stream_stride"):
        gscnn_tf.build_model(tiny_model_config(shape_stream_stride=3), 3)
    with pytest.raises(ValueError, match="model.gate"):
        gscnn_tf.build_model(tiny_model_config(gate="other"), 3)
    with pytest.raises(ValueError, match="num_classes"):
        gscnn_tf.build_model(tiny_model_config(), 0)


def test_flop_count_matches_an_analytic_conv(rng):
    inputs = keras.Input((None, None, 3), name="image")
    outputs = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    model = keras.Model(inputs, outputs)
    # 2 x (H x W x k x k x Cin x Cout) multiply-adds.
    from gscnn_tf.models.summary import count_flops
    assert count_flops(model, 10, 12) == 2 * 10 * 12 * 3 * 3 * 3 * 4


def test_layer_name_contract_finds_each_part(rng):
    """Every name of gscnn_tf.models.parts finds what it should on the GSCNN and on the
    baseline, so renaming a layer in the builder fails here rather than in a summary."""
    from gscnn_tf.models import parts as contract
    from gscnn_tf.models.backbones import build_backbone, preprocessing_mode
    from gscnn_tf.models.layers import Normalize
    from gscnn_tf.models.shape_stream import shape_stream

    config = tiny_model_config()
    gscnn = gscnn_tf.build_model(config, num_classes=4)
    baseline = gscnn_tf.build_model(tiny_model_config(shape_stream=False), num_classes=4)
    # The backbone and the shape stream built on their own are independent references for
    # the parameter counts the prefixes assign.
    image = keras.Input((None, None, 3))
    bn = {"synchronized": config.sync_batch_norm}
    taps = build_backbone(config.backbone, Normalize(preprocessing_mode(config.backbone))(image),
                          bn)
    backbone_params = keras.Model(image, taps).count_params()
    boundary, _ = shape_stream(image, taps, config, bn)
    fusion_conv = 2  # 1x1 conv without bias over concat(edge prob, Canny) -> 1 channel
    shape_params = keras.Model(image, boundary).count_params() - backbone_params + fusion_conv
    x = images(rng, 1, 40, 56)
    for model, has_shape_stream in ((gscnn, True), (baseline, False)):
        names = {layer.name for layer in model.layers}
        boundaries = {contract.BACKBONE_OUT, contract.DECODER_SKIP, contract.DECODER_ASPP,
                      contract.SEG_LOGITS}
        shape_names = {contract.SHAPE_STEM, contract.SHAPE_OUTPUT, contract.CANNY,
                       *contract.GATE_DSNS, *contract.GATE_ALPHAS}
        assert boundaries <= names
        assert (shape_names <= names) if has_shape_stream else not (shape_names & names)
        breakdown = parameter_breakdown(model)
        assert breakdown["backbone"] == backbone_params
        assert breakdown["shape_stream"] == (shape_params if has_shape_stream else 0)
        assert breakdown["total"] == model.count_params()
        # The parts, run one after another on each other's outputs, are the whole model.
        graphs = contract.part_graphs(model)
        assert list(graphs) == (["backbone", "shape_stream", "canny", "fusion_aspp", "decoder"]
                                if has_shape_stream else ["backbone", "aspp", "decoder"])
        values = {id(model.input): tf.constant(x)}
        for inputs, outputs in graphs.values():
            result = keras.Model(inputs, outputs)([values[id(t)] for t in inputs])
            result = result if isinstance(result, (list, tuple)) else [result]
            values.update({id(t): v for t, v in zip(outputs, result)})
        np.testing.assert_allclose(values[id(graphs["decoder"][1][0])],
                                   model(x, training=False)["seg_logits"], atol=1e-4)
    gates = gate_model(gscnn)(x)
    assert sorted(gates) == ["gate1", "gate2", "gate3"]
    np.testing.assert_array_equal(gates["gate2"], keras.Model(
        gscnn.input, gscnn.get_layer(contract.GATE_ALPHAS[1]).output)(x))


def test_postprocess_against_numpy(rng):
    from gscnn_tf.models.postprocess import postprocess

    seg = rng.normal(0, 3, (2, 5, 7, 4)).astype("float32")
    seg[0, 0, 0] = [1.0, 2.0, 2.0, 0.0]  # a tie goes to the lower class
    edge = rng.normal(0, 3, (2, 5, 7, 1)).astype("float32")
    out = postprocess({"seg_logits": seg, "edge_logits": edge})
    assert out["labels"].dtype == tf.int32 and out["edge_prob"].dtype == tf.float32
    np.testing.assert_array_equal(out["labels"], np.argmax(seg, -1))
    assert out["labels"][0, 0, 0] == 1
    np.testing.assert_allclose(out["edge_prob"], 1 / (1 + np.exp(-edge)), rtol=1e-6)
    probs = postprocess({"seg_logits": seg, "edge_logits": edge}, probabilities=True)
    expected = np.exp(seg - seg.max(-1, keepdims=True))
    np.testing.assert_allclose(probs["probabilities"], expected / expected.sum(-1, keepdims=True),
                               rtol=1e-5)
    assert set(probs) == {"probabilities", "edge_prob"}
    assert set(postprocess({"seg_logits": seg})) == {"labels"}
