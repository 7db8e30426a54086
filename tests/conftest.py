"""Test set-up: two logical CPU devices (for tf.distribute tests), configured before
TensorFlow initialises, and the shared test harness: `tiny_model_config(**overrides)` (the
one tiny model), the session's one trained tiny run (`tiny_run`), and `run_layer_test` for
every custom layer."""

import functools
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)


@functools.lru_cache(maxsize=None)
def two_cpu_strategy():
    """The one MirroredStrategy over the two logical CPUs for the whole test session:
    strategies made one after another in a process collide on collective instance keys
    (a later sync-BN all-reduce then meets another op's shape)."""
    return tf.distribute.MirroredStrategy(
        [d.name for d in tf.config.list_logical_devices("CPU")[:2]])


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ---------------------------------------------------------------------------------------
# The tiny model every model-level test builds, and one trained tiny run for the session.

TINY_SIZE = 64
TINY_BASE_WIDTH = 8
TINY_HEAD = {"aspp_channels": 16, "decoder_channels": 16, "skip_channels": 8}


def op_count(concrete, op_type: str) -> int:
    """How many `op_type` nodes a concrete function's graph holds, its function library
    (gradient and recompute functions) included."""
    graph = concrete.graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return sum(node.op == op_type for node in nodes)


def tiny_model_config(**overrides):
    """The tests' narrow small-backbone `ModelConfig` (base width 8, 16-channel ASPP and
    decoder, 8-channel skip); `overrides` set more of its fields."""
    from gscnn_tf.config import ModelConfig

    config = ModelConfig(**TINY_HEAD)
    config.backbone.base_width = TINY_BASE_WIDTH
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def tiny_model_kwargs(**backbone):
    """The same tiny model as `GSCNN(num_classes, **kwargs)` arguments; `backbone` adds
    backbone fields (e.g. dropout=False)."""
    return {"backbone": {"base_width": TINY_BASE_WIDTH, **backbone}, **TINY_HEAD}


def tiny_model_overrides(*more):
    """The same tiny model as `--set` overrides, then `more` of them."""
    return (f"model.backbone.base_width={TINY_BASE_WIDTH}",
            *(f"model.{key}={value}" for key, value in TINY_HEAD.items()), *more)


def tiny_run_config(root):
    """Synthetic data at 64x64 (24 train, 4 val images) under `root` and the tiny model."""
    from gscnn_tf.config import load_config

    config = load_config(None, [
        f"data.root={root}", "data.synthetic.num_train=24", "data.synthetic.num_val=4",
        f"data.synthetic.height={TINY_SIZE}", f"data.synthetic.width={TINY_SIZE}",
        f"data.crop_size=[{TINY_SIZE},{TINY_SIZE}]", "data.deterministic=true",
        "export.representative_images=8"])
    config.model = tiny_model_config(sync_batch_norm=False)
    return config


def train_tiny(config, steps=60, batch_size=4):
    """The simplest loop: Adam on masked cross-entropy + boundary BCE. (model, last seg loss)."""
    import gscnn_tf
    from gscnn_tf.data.pipeline import build_dataset, dataset_info

    tf.keras.utils.set_random_seed(0)
    num_classes = dataset_info(config).num_classes
    model = gscnn_tf.build_model(config.model, num_classes)
    optimizer = tf.keras.optimizers.Adam(3e-3)
    dataset = build_dataset(config, "train", training=True, batch_size=batch_size)

    @tf.function
    def step(images, targets):
        with tf.GradientTape() as tape:
            out = model(images, training=True)
            labels = targets["labels"]
            valid = labels != config.data.ignore_label
            seg = tf.keras.losses.sparse_categorical_crossentropy(
                tf.where(valid, labels, 0), out["seg_logits"], from_logits=True)
            seg = tf.reduce_sum(tf.where(valid, seg, 0.0)) / tf.maximum(
                tf.reduce_sum(tf.cast(valid, tf.float32)), 1.0)
            edge = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
                targets["edges"][..., None], out["edge_logits"]))
            loss = seg + edge
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return seg

    for images, targets in dataset.take(steps):
        seg = step(images, targets)
    return model, float(seg)


@functools.cache
def trained_tiny(root):
    """(config, trained model, final seg loss) of the tiny run, once per session and root."""
    config = tiny_run_config(root)
    model, loss = train_tiny(config)
    return config, model, loss


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The session's one trained tiny run: (config, model, final seg loss)."""
    return trained_tiny(str(tmp_path_factory.getbasetemp() / "tiny_run"))


# ---------------------------------------------------------------------------------------
# keras-hub's run_layer_test, in the small: what every custom layer must do.

POLICY_TOLERANCE = {"float32": 1e-6, "mixed_float16": 2e-2, "mixed_bfloat16": 1e-1}


def run_layer_test(layer_cls, init_kwargs, inputs, expected_output_shape,
                   output_dtype="compute", exact=False):
    """Checks a custom Keras layer the way keras-hub's `run_layer_test` does.

    - `get_config` round trip: `from_config(get_config())` has the same config, and the
      registered name deserialises to the same class (what `.keras` loading needs);
    - `compute_output_shape` against `call`: on the concrete `inputs` (numpy arrays, one or a
      list) the output has `expected_output_shape`, and `compute_output_shape` of their
      shapes agrees with it wherever it declares a dimension; the layer also builds on
      symbolic inputs of unknown height and width;
    - float32, mixed_float16 and mixed_bfloat16 policies: the layer runs under each, its
      output dtype is the policy's compute dtype (or `output_dtype` where the layer fixes
      it) and its values equal the float32 output within `POLICY_TOLERANCE` (exactly with
      `exact`, for layers whose outputs are integers).
    """
    import keras

    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is layer_cls and revived.get_config() == config

    many = isinstance(inputs, (list, tuple))
    as_list = list(inputs) if many else [inputs]
    reference = None
    for policy in ("float32", "mixed_float16", "mixed_bfloat16"):
        layer = layer_cls(**init_kwargs, dtype=policy)
        out = layer(as_list if many else as_list[0])
        assert tuple(out.shape) == tuple(expected_output_shape), (policy, out.shape)
        dtype = layer.compute_dtype if output_dtype == "compute" else output_dtype
        assert out.dtype == dtype, (policy, out.dtype, dtype)
        values = np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")))
        if reference is None:
            reference = values
        elif exact:
            np.testing.assert_array_equal(values, reference, err_msg=policy)
        else:
            scale = max(1.0, float(np.abs(reference).max()))
            np.testing.assert_allclose(values, reference, atol=POLICY_TOLERANCE[policy] * scale,
                                       err_msg=policy)
    # compute_output_shape against call: on the concrete shapes (a symbolic call would only
    # echo compute_output_shape back) every dimension it declares is the one call returns
    shapes = [tuple(x.shape) for x in as_list]
    declared = layer.compute_output_shape(shapes if many else shapes[0])
    assert len(declared) == len(expected_output_shape), declared
    for d, e in zip(declared, expected_output_shape):
        assert d is None or d == e, (declared, expected_output_shape)
    # and the layer builds into a functional graph with unknown height and width
    symbolic = [keras.Input((None, None, x.shape[-1]), dtype=str(x.dtype)) for x in as_list]
    assert len(layer(symbolic if many else symbolic[0]).shape) == len(expected_output_shape)
