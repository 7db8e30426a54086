"""Compute precision: float32, or bfloat16 compute for CPUs that have it (AVX512_BF16 or
AMX: oneDNN runs the convolutions in bfloat16 and accumulates in float32), in inference and
in training (`train.mixed_precision`, `training_policy`).

`gscnn-tf predict / evaluate / export --precision bf16` call `with_precision` on the loaded
Keras model. The bfloat16 model is the same network rebuilt under Keras' `mixed_bfloat16`
policy with the same weights: variables stay float32, convolutions, batch norm and
activations compute in bfloat16, and the layers the builder pins to float32 stay there (Canny
and its input, exact integer arithmetic; the output logits). Latency and label agreement
against float32: benchmarks/README.md#bfloat16-inference.
"""

from __future__ import annotations

import argparse
import contextlib

from gscnn_tf.errors import ConfigError, UsageError

PRECISIONS = ("fp32", "bf16")
_POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
# train.mixed_precision's values; true is fp16, the meaning it had when it was a switch.
TRAINING_PRECISIONS = {False: "fp32", True: "fp16", "fp32": "fp32", "fp16": "fp16",
                       "bf16": "bf16"}


def training_policy(train_config) -> str:
    """The Keras dtype policy `train.mixed_precision` asks for: "float32", "mixed_float16"
    (which also needs a `LossScaleOptimizer`) or "mixed_bfloat16"."""
    value = train_config.mixed_precision
    if isinstance(value, str):
        value = {"false": False, "true": True}.get(value.lower(), value.lower())
    if value not in TRAINING_PRECISIONS:
        raise ConfigError(f"train.mixed_precision '{train_config.mixed_precision}': expected "
                          "false or fp32, true or fp16, bf16")
    return _POLICIES[TRAINING_PRECISIONS[value]]


@contextlib.contextmanager
def policy_scope(policy: str):
    """Keras' global dtype policy set to `policy` (a name such as "mixed_bfloat16") inside
    the block, and restored after it: layers built inside compute in that policy."""
    import keras

    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """`--precision fp32|bf16`, shared by predict, evaluate and export."""
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="compute precision of the Keras model: fp32 (default) or bf16 "
                             "(bfloat16 compute, float32 weights and logits; fast on CPUs with "
                             "AVX512_BF16 or AMX)")


def with_precision(model, precision: str = "fp32"):
    """`model` (a `gscnn_tf.GSCNN`) computing in `precision`: the model itself for fp32 or
    when it already computes so; otherwise a copy rebuilt from its config under that policy,
    with the same weights (float32 variables). Its outputs stay float32 logits."""
    import keras

    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    wanted = _POLICIES[precision]
    if _policy_name(model) == wanted:
        return model
    if not hasattr(model, "model_config"):
        raise UsageError(f"--precision {precision}: {model.name} is not a gscnn_tf model (its "
                         "precision is fixed where it was built)")
    with policy_scope(wanted):
        rebuilt = model.__class__.from_config(model.get_config())
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _policy_name(model) -> str:
    """The compute policy of the model's convolutions (the first layer with a kernel)."""
    for layer in model.layers:
        if getattr(layer, "kernel", None) is not None:
            return layer.dtype_policy.name
    return model.dtype_policy.name


def apply_precision(predictor, precision: str = "fp32"):
    """A `gscnn_tf.inference.Predictor` whose Keras model computes in `precision` (the
    predictor itself for fp32). A SavedModel keeps the precision it was exported with."""
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return predictor
    if predictor.model is None:
        raise UsageError(f"--precision {precision}: {predictor.source} is a SavedModel; its "
                         "precision is the one it was exported with (gscnn-tf export "
                         f"--precision {precision})")
    model = with_precision(predictor.model, precision)
    if model is predictor.model:
        return predictor
    converted = type(predictor).from_model(model, predictor.config)
    converted.source = predictor.source
    return converted
