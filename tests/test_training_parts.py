"""Schedule, optimizers, kernel weight decay and strategy selection against formulas."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from gscnn_tf.config import TrainConfig, load_config
from gscnn_tf.training.optimizers import add_l2_gradients, build_optimizer, is_kernel, l2_loss
from gscnn_tf.training.schedules import WarmupPolynomialDecay
from gscnn_tf.training.strategy import StrategyError, make_strategy
from gscnn_tf.training.summaries import image_panels


@pytest.mark.parametrize("power,warmup", [(1.0, 0), (0.9, 0), (2.0, 10)])
def test_schedule_matches_formula(power, warmup):
    schedule = WarmupPolynomialDecay(0.01, 100, power, warmup)
    for step in (0, 1, 5, 9, 10, 50, 99, 100, 150):
        if step < warmup:
            expected = 0.01 * (step + 1) / warmup
        else:
            expected = 0.01 * (1 - min(step - warmup, 100 - warmup) / (100 - warmup)) ** power
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9)
    again = WarmupPolynomialDecay.from_config(schedule.get_config())
    assert float(again(37)) == pytest.approx(float(schedule(37)))


def _model():
    x = keras.Input((4, 4, 2))
    y = keras.layers.Conv2D(3, 3, name="conv")(x)
    y = keras.layers.BatchNormalization(name="bn")(y)
    y = keras.layers.DepthwiseConv2D(1, name="dw")(y)
    return keras.Model(x, y)


def test_l2_covers_kernels_only():
    model = _model()
    names = sorted(v.path for v in model.trainable_variables if is_kernel(v))
    assert names == ["conv/kernel", "dw/kernel"]
    expected = 0.5 * 1e-4 * sum(float(np.sum(v.numpy() ** 2)) for v in model.trainable_variables
                                if v.name == "kernel")
    assert float(l2_loss(model.trainable_variables, 1e-4)) == pytest.approx(expected, rel=1e-5)


def test_l2_gradients_added_after_backprop_equal_the_l2_loss_gradient():
    model = _model()
    variables = model.trainable_variables
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 4, 4, 2)), tf.float32)

    @tf.function
    def late(coefficient):
        with tf.GradientTape() as tape:
            data = tf.reduce_sum(tf.square(model(x, training=True)))
        grads = tape.gradient(data, variables)
        return grads, add_l2_gradients(grads, variables, coefficient)

    with tf.GradientTape() as tape:
        full = tf.reduce_sum(tf.square(model(x, training=True))) + l2_loss(variables, 0.3)
    expected = tape.gradient(full, variables)
    plain, added = late(tf.constant(0.3))
    for v, p, a, e in zip(variables, plain, added, expected):
        decay = 0.3 * v.numpy() if is_kernel(v) else 0.0     # d/dw of 0.3 / 2 * w ** 2
        np.testing.assert_allclose(a.numpy(), p.numpy() + decay, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(a.numpy(), e.numpy(), rtol=1e-5, atol=1e-6)
    # Each decay term is computed only once its kernel's gradient exists: the product's op
    # waits on the gradient (no weights-sized tensor held through the backward pass).
    graph = late.get_concrete_function(tf.TensorSpec([], tf.float32)).graph
    coefficient = graph.inputs[0]
    products = [op for op in graph.get_operations() if op.type == "Mul"
                and any(i is coefficient for i in op.inputs)]
    assert len(products) == 2

    assert sorted(op.type for product in products for op in _ancestors(product)
                  if "BackpropFilter" in op.type) == [
        "Conv2DBackpropFilter", "DepthwiseConv2dNativeBackpropFilter"]


def _ancestors(op) -> list:
    """Every op `op` waits for in its graph (data and control inputs, transitively)."""
    seen, stack = {}, [op]
    while stack:
        node = stack.pop()
        for parent in [i.op for i in node.inputs] + list(node.control_inputs):
            if parent.name not in seen:
                seen[parent.name] = parent
                stack.append(parent)
    return list(seen.values())


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_equals_keras_sgd_and_reads_the_momentum_after_the_gradient(nesterov):
    """gscnn_tf's SGD updates bit for bit as keras.optimizers.SGD, and in a traced step every
    read of a momentum variable waits for that variable's gradient (Keras' own reads it at
    the step's start and holds `m * momentum` through the backward pass)."""
    from gscnn_tf.training.optimizers import SGD

    rng = np.random.default_rng(0)
    start = rng.normal(size=(3, 4)).astype(np.float32)
    grads = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(3)]
    results, graphs = [], []
    for cls in (keras.optimizers.SGD, SGD):
        variable = tf.Variable(start)
        optimizer = cls(0.1, momentum=0.9, nesterov=nesterov)
        optimizer.build([variable])

        @tf.function
        def step(g, optimizer=optimizer, variable=variable):
            optimizer.apply([tf.identity(g * 1.0, name="the_gradient")], [variable])

        for g in grads:
            step(tf.constant(g))
        results.append(variable.numpy())
        graph = step.get_concrete_function(tf.TensorSpec([3, 4], tf.float32)).graph
        handle = optimizer.momentums[0].value.handle
        momentum = [inner for outer, inner in graph.captures if outer is handle]
        reads = [op for op in graph.get_operations() if op.type == "ReadVariableOp"
                 and op.inputs[0] is momentum[0]]
        graphs.append([any(a.name == "the_gradient" for a in _ancestors(read))
                       for read in reads])
    np.testing.assert_array_equal(results[1], results[0])
    # Keras' own SGD reads a momentum before the gradient exists (why gscnn_tf has its own;
    # if a Keras release changes that, this line says so).
    assert not all(graphs[0])
    assert graphs[1] and all(graphs[1])


def test_sgd_step_and_adamw_decays_kernels_only():
    model = _model()
    config = TrainConfig(steps=10)
    sgd = build_optimizer(config, model.trainable_variables)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.9 and sgd.built
    adamw = build_optimizer(TrainConfig(optimizer="adamw", weight_decay=0.5, steps=10),
                            model.trainable_variables)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    adamw.apply([np.zeros(v.shape, np.float32) for v in model.trainable_variables],
                model.trainable_variables)
    for v in model.trainable_variables:
        if is_kernel(v):    # decoupled decay: w <- w - lr * wd * w (Adam's update is 0 here)
            np.testing.assert_allclose(v.numpy(), before[v.path] * (1 - 0.01 * 0.5), rtol=1e-5)
        else:
            np.testing.assert_array_equal(v.numpy(), before[v.path])
    scaled = build_optimizer(TrainConfig(mixed_precision=True, steps=10))
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer)
    with pytest.raises(ValueError, match="train.optimizer 'adam'"):
        build_optimizer(TrainConfig(optimizer="adam"))


def test_strategy_selection(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert make_strategy("one_device").num_replicas_in_sync == 1
    assert make_strategy("auto", cpu_replicas=0).num_replicas_in_sync == 1
    with pytest.raises(StrategyError, match="train.strategy 'ring'"):
        make_strategy("ring")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(StrategyError, match="TF_CONFIG is not valid JSON"):
        make_strategy("auto")


@pytest.mark.parametrize("name", ["cityscapes_wrn38", "cityscapes_resnet50",
                                  "cityscapes_resnet101", "cityscapes_mobilenetv2",
                                  "deeplabv3plus_resnet50", "deeplabv3plus_wrn38"])
def test_cityscapes_configs_follow_the_paper_recipe(name):
    config = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.yaml"))
    t = config.train
    assert config.data.dataset == "cityscapes" and config.data.crop_size == [800, 800]
    assert (t.batch_size, t.optimizer, t.learning_rate, t.momentum) == (16, "sgd", 0.01, 0.9)
    assert (t.weight_decay, t.poly_power, config.model.sync_batch_norm) == (1e-4, 1.0, True)
    assert config.model.shape_stream == name.startswith("cityscapes")
    assert config.model.backbone.name == name.split("_")[1]


def test_image_panels_against_numpy(rng):
    palette = rng.integers(0, 256, (4, 3)).astype(np.uint8)
    labels = rng.integers(0, 4, (2, 8, 8)).astype(np.int32)
    labels[0, 0, 0] = 255
    images = rng.uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    logits = rng.normal(size=(2, 8, 8, 4)).astype(np.float32)
    edges = (rng.uniform(size=(2, 8, 8)) > 0.5).astype(np.float32)
    gates = [np.full((2, 8 // s, 8 // s, 1), 0.5, np.float32) for s in (1, 2, 4)]
    panels = image_panels(images, {"labels": labels, "edges": edges},
                          {"seg_logits": logits, "edge_logits": np.zeros((2, 8, 8, 1),
                                                                         np.float32)},
                          gates, palette)
    assert sorted(panels) == sorted(["input", "ground_truth", "prediction_overlay",
                                     "edge_probability", "ground_truth_edges", "gate1_alpha",
                                     "gate2_alpha", "gate3_alpha"])
    truth = np.concatenate([palette, [[0, 0, 0]]])[np.where(labels == 255, 4, labels)]
    np.testing.assert_array_equal(panels["ground_truth"].numpy(), truth)
    overlay = (0.5 * images.astype(np.uint8) + 0.5 * palette[logits.argmax(-1)]).astype(np.uint8)
    np.testing.assert_allclose(panels["prediction_overlay"].numpy(), overlay, atol=1)
    np.testing.assert_array_equal(panels["ground_truth_edges"].numpy()[..., 0],
                                  (edges * 255).astype(np.uint8))
    for name in ("edge_probability", "gate3_alpha"):
        assert panels[name].shape == (2, 8, 8, 3) and panels[name].dtype == tf.uint8
        np.testing.assert_array_equal(panels[name].numpy(), 127)


def test_validate_matches_numpy_confusion_and_boundary_f():
    from gscnn_tf.config import EvalConfig
    from gscnn_tf.training.validation import pixel_tolerances, validate

    rng = np.random.default_rng(0)
    num_classes = 4
    labels = rng.integers(0, num_classes, (6, 16, 16)).astype(np.int32)
    labels[:, :2] = 255
    pred = labels.copy()
    pred[:3, 8:] = (pred[:3, 8:] + 1) % num_classes
    pred[pred == 255] = 0
    logits = np.eye(num_classes, dtype=np.float32)[pred]
    x = keras.Input((16, 16, num_classes))
    model = keras.Model(x, {"seg_logits": keras.layers.Identity()(x)})
    dataset = tf.data.Dataset.from_tensor_slices((logits, {"labels": labels})).batch(4)
    config = EvalConfig(tolerances=[64, 128], reference_height=1024)

    result = validate(model, dataset, num_classes, config)

    valid = labels != 255
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (labels[valid], pred[valid]), 1)
    tp = np.diag(cm)
    iou = tp / (cm.sum(0) + cm.sum(1) - tp)
    assert result["iou"] == pytest.approx(list(iou))
    assert result["miou"] == pytest.approx(iou.mean())
    assert result["tolerance_px"] == 1 and pixel_tolerances(config, 16) == [1, 2]
    assert set(result["boundary_f_by_tolerance"]) == {64, 128}
    assert 0.0 < result["boundary_f"] < 1.0
    assert result["boundary_f_by_tolerance"][128] >= result["boundary_f"]

    exact = tf.data.Dataset.from_tensor_slices(
        (np.eye(num_classes, dtype=np.float32)[np.where(valid, labels, 0)][3:],
         {"labels": labels[3:]})).batch(4)
    perfect = validate(model, exact, num_classes, config)
    assert perfect["miou"] == pytest.approx(1.0)
    assert perfect["boundary_f_by_tolerance"] == {64: 1.0, 128: 1.0}


def test_validate_empty_split_names_the_problem():
    from gscnn_tf.config import EvalConfig
    from gscnn_tf.training.validation import validate

    x = keras.Input((8, 8, 2))
    model = keras.Model(x, {"seg_logits": keras.layers.Identity()(x)})
    empty = tf.data.Dataset.from_tensor_slices(
        (np.zeros((0, 8, 8, 2), np.float32), {"labels": np.zeros((0, 8, 8), np.int32)})).batch(2)
    with pytest.raises(ValueError, match="validation split is empty"):
        validate(model, empty, 2, EvalConfig())


def test_listed_checkpoints_of_a_relative_run_dir(tmp_path, monkeypatch):
    """A run directory given relative to the working directory (`gscnn-tf export
    runs/synthetic`): the listed prefixes are the files there, not the folder joined twice."""
    from gscnn_tf.training.checkpoints import listed_checkpoints

    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1.0)),
                                         str(tmp_path / "run" / "checkpoints"), max_to_keep=2)
    manager.save()
    manager.save()
    monkeypatch.chdir(tmp_path)
    listed = listed_checkpoints(os.path.join("run", "checkpoints"))
    assert listed == [os.path.join("run", "checkpoints", f"ckpt-{n}") for n in (2, 1)]
    assert all(os.path.isfile(f"{p}.index") for p in listed)
    absolute = listed_checkpoints(str(tmp_path / "run" / "checkpoints"))
    assert absolute == [str(tmp_path / "run" / "checkpoints" / f"ckpt-{n}") for n in (2, 1)]
