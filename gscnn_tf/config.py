"""Configuration: a tree of dataclasses with defaults, loaded from YAML plus dotted overrides.

YAML files hold only what differs from the defaults below. Unknown keys are errors that name
the key, the file and the closest valid key; values are checked against the field's type
(those rules: `gscnn_tf.config_values`).

    config = load_config("configs/cityscapes_resnet50.yaml", ["train.batch_size=8"])
    save_config(config, "runs/x/config.yaml")
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from gscnn_tf import files
from gscnn_tf.config_values import apply_values, parse_override
from gscnn_tf.errors import ConfigError

__all__ = ["Config", "ConfigError", "config_from_dict", "load_config", "save_config"]


@dataclass
class BackboneConfig:
    """The regular stream.

    name: `small` (trains in minutes on a CPU), `resnet50`, `resnet101`, `wrn38`,
        `mobilenetv2`.
    weights: "" (random init), "imagenet" (through `keras.applications`, needs network once)
        or a path to a local `.weights.h5` / `.keras` file.
    """

    name: str = "small"
    output_stride: int = 8
    weights: str = ""
    width_multiplier: float = 1.0
    base_width: int = 16
    dropout: bool = True


@dataclass
class ModelConfig:
    """The Gated-SCNN network (docs/method.md).

    shape_stream: false builds the DeepLab v3+ baseline. shape_stream_stride: 1 (full input
    resolution, the paper), 2 or 4. gate: "reference" (normalised gate network) or "paper".
    image_gradients: "canny" or "none" (zeros). canny_max_steps: 0 runs hysteresis to
    convergence; N > 0 unrolls N steps (no WHILE op, for GPU delegates). canny_step_form:
    "fused" (the default: XLA-compiled, fastest; SavedModel export stores "bits"), "bool" /
    "bits" (TF ops only), "pool" (fast in TFLite) or "mask" (float masks only, every op on
    the TFLite GPU delegate); all give the same edges.
    aspp_rates are given at output stride 16 and doubled at 8. compat: "none" or "reference"
    (the reference PyTorch code's numerics, for its converted checkpoint; wrn38 only; see
    gscnn_tf.models.compat and `gscnn-tf import-reference`).
    recompute_trunk: true keeps only the trunk's block outputs from a training forward pass
    and recomputes the rest in the backward pass (less memory for one more trunk forward;
    same loss, gradients and batch-norm statistics; gscnn_tf.models.recompute).
    recompute_heads: the same for the heads: the shape stream's residual blocks and gated
    convolutions (full resolution at stride 1), ASPP and the decoder.
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    shape_stream: bool = True
    shape_stream_stride: int = 1
    gate: str = "reference"
    image_gradients: str = "canny"
    canny_low: float = 10.0
    canny_high: float = 100.0
    canny_max_steps: int = 0
    canny_step_form: str = "fused"
    aspp_channels: int = 256
    aspp_rates: list[int] = field(default_factory=lambda: [6, 12, 18])
    decoder_channels: int = 256
    skip_channels: int = 48
    compat: str = "none"
    sync_batch_norm: bool = True
    recompute_trunk: bool = False
    recompute_heads: bool = False


@dataclass
class SyntheticConfig:
    """Procedurally drawn scenes (the built-in default dataset)."""

    num_train: int = 300
    num_val: int = 60
    height: int = 128
    width: int = 128
    seed: int = 0


@dataclass
class DataConfig:
    """Datasets and the tf.data pipeline (docs/method.md#data-and-training-recipe).

    dataset: `synthetic` (generated into `root`, default data/synthetic), `folder` or
        `cityscapes` (root: `root` or $CITYSCAPES_DATASET). Training reshuffles the whole
        file list every pass. class_uniform_fraction: share of crops centred on a pixel of a
        class drawn uniformly among those present (restricted to class_uniform_classes when
        given). deterministic: fixed augmentation seeds (`seed`) and element order.
    """

    dataset: str = "synthetic"
    root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    ignore_label: int = 255
    crop_size: list[int] = field(default_factory=lambda: [128, 128])
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    hflip: bool = True
    color_jitter: float = 0.25
    blur_prob: float = 0.5
    blur_sigma: list[float] = field(default_factory=lambda: [0.15, 1.3])
    edge_radius: int = 2
    class_uniform_fraction: float = 0.0
    class_uniform_classes: list[int] = field(default_factory=list)
    skip_corrupt: bool = False
    deterministic: bool = False
    seed: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class LossConfig:
    """The four Gated-SCNN loss terms and their weights (docs/method.md#losses).

    class_weighting: `none`, `image` (the reference's per-image weights 2 - f_c for present
        classes) or `fixed` (`class_weights`, one per class). attention_threshold: boundary
        probability above which a pixel enters the attention loss. dual_tau: Gumbel-softmax
        temperature; dual_sigma: Gaussian smoothing of the dual-task boundary potentials.
    recompute_dual: the dual-task term's per-class maps are computed again in the backward
    pass instead of kept (less memory for one more evaluation of the term; same values).
    """

    lambda_edge: float = 20.0
    lambda_seg: float = 1.0
    lambda_att: float = 1.0
    lambda_dual: float = 1.0
    class_weighting: str = "none"
    class_weights: list[float] = field(default_factory=list)
    attention_threshold: float = 0.8
    dual_tau: float = 1.0
    dual_sigma: float = 1.0
    recompute_dual: bool = False


@dataclass
class TrainConfig:
    """The training loop, optimiser and run directory (docs/method.md#data-and-training-recipe).

    strategy: auto | one_device | mirrored | multi_worker (see gscnn_tf.training.strategy);
    cpu_replicas: split the CPU into this many logical devices (tests; no GPU needed).
    worker_timeout: seconds a multi-worker collective waits for the other workers before the
    run stops with WorkerLostError (0: no limit); a worker whose process died is noticed
    within about 10 s by the coordination service's heartbeats (docs/cluster.md).
    mixed_precision: false or fp32 (float32), fp16 (true says the same: Keras' mixed_float16 with
    dynamic loss scaling, for GPUs) or bf16 (mixed_bfloat16, no loss scaling: GPUs from
    Ampere on, CPUs with AVX512_BF16 or AMX); variables, logits and the loss stay float32.
    batch_size is the global batch. With data.deterministic, a resumed run skips the batches
    already seen, so it sees exactly the batches an uninterrupted run would.
    """

    run_dir: str = "runs/synthetic"
    strategy: str = "auto"
    cpu_replicas: int = 0
    worker_timeout: float = 600.0
    batch_size: int = 8
    steps: int = 1500
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 1.0
    warmup_steps: int = 0
    mixed_precision: bool | str = False  # false | fp32 | true | fp16 | bf16
    xla: bool = False
    clip_norm: float = 0.0
    checkpoint_every: int = 250  # steps between checkpoints (and one at the last step)
    keep_checkpoints: int = 3  # how many of the newest checkpoints stay in checkpoints/
    val_every: int = 500  # steps between validations (0: only at the last step)
    log_every: int = 25  # steps between logged scalars (and the last step)
    image_every: int = 250  # steps between TensorBoard images (0: none)
    seed: int = 0


@dataclass
class EvalConfig:
    """The evaluation protocol (docs/evaluation.md)."""

    tolerances: list[int] = field(default_factory=lambda: [3, 5, 9, 12])
    reference_height: int = 1024
    crop_factors: list[int] = field(default_factory=lambda: [0, 100, 200, 300, 400])
    flip: bool = False
    scales: list[float] = field(default_factory=lambda: [1.0])
    window: list[int] = field(default_factory=list)
    window_overlap: float = 0.33


@dataclass
class ExportConfig:
    """SavedModel and TFLite export (gscnn_tf.export).

    model_name / version: TF Serving's <dir>/<model_name>/<version>/. tflite_size: fixed
    [height, width] of a TFLite export. quantize: none | fp16 | dynamic | int8 (calibrated on
    `representative_images` training-pipeline crops). tflite_canny_max_steps: Canny hysteresis
    steps unrolled in the TFLite graph (no WHILE op, for GPU delegates and int8); 0 keeps the
    exact WHILE loop. tflite_canny_step_form: the step form there ("pool" is fast in TFLite;
    `--target gpu` always uses "mask").
    """

    model_name: str = "gscnn"
    version: int = 1
    tflite_size: list[int] = field(default_factory=lambda: [512, 1024])
    quantize: str = "none"
    representative_images: int = 32
    tflite_canny_max_steps: int = 64
    tflite_canny_step_form: str = "pool"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def config_from_dict(values: dict, source: str = "<dict>") -> Config:
    config = Config()
    apply_values(config, values or {}, "", source)
    return config


def load_config(path: Optional[str | os.PathLike] = None, overrides=()) -> Config:
    """Reads a YAML config (differences from the defaults) and applies `a.b=value` overrides."""
    config = Config()
    if path:
        path = os.fspath(path)
        if not files.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(files.read_text(path))
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        apply_values(config, values or {}, "", path)
    for text in overrides:
        apply_values(config, parse_override(text), "", f"override '{text}'")
    return config


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Writes the full config as YAML, atomically (a temporary file, then rename)."""
    files.atomic_write_text(os.fspath(path), config.to_yaml())
