#!/usr/bin/env bash
# GPU check: the figures and checks that need a GPU, in one run on a machine that has one.
#
#     bash benchmarks/gpu_check.sh [MODEL]     # MODEL: a run directory or .keras file
#                                              # (default runs/synthetic; random weights
#                                              # when it does not exist)
#
# Each section below is self-contained: it runs on its own, writes its own results under
# benchmarks/results/, and on a machine where its hardware cannot be had it prints why and
# counts as skipped, not failed. The script exits 1 if any section failed. Together they fit
# in 8 minutes on one GPU (the section time limits add up to 480 s); every section's outcome and time go to benchmarks/results/gpu.md.
set -u
cd "$(dirname "$0")/.."
model="${1:-runs/synthetic}"
status=0
report=benchmarks/results/gpu.md
work="$(mktemp -d)"
gpus=$(python -c "import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='3'
import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))" 2>/dev/null || echo 0)
{
  echo "# GPU check"
  echo
  echo "\`bash benchmarks/gpu_check.sh\` on $(date -u +%Y-%m-%d): $(nvidia-smi \
    --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    | paste -sd ';' || echo 'no nvidia-smi'); TensorFlow sees ${gpus} GPU(s)."
  echo
  echo "| section | outcome | seconds |"
  echo "|---|---|---|"
} > "$report"

# section NAME TIMEOUT_S COMMAND...: runs COMMAND with a time limit, records the outcome.
section() {
  local name="$1" limit="$2" start rc outcome
  shift 2
  echo "== $name"
  start=$(date +%s)
  timeout "$limit" "$@"
  rc=$?
  case $rc in
    0) outcome=passed ;;
    124) outcome="timed out after ${limit} s"; status=1 ;;
    *) outcome="failed (exit $rc)"; status=1 ;;
  esac
  echo "| $name | $outcome | $(( $(date +%s) - start )) |" >> "$report"
}

if [ "$gpus" -gt 0 ]; then
  # --- GPU-relevant tests: mixed-precision and XLA training steps, fused Canny under XLA,
  # float32 logits under mixed precision, the loss under XLA.
  section "tests: mixed precision, XLA on/off, fused Canny" 100 \
    python -m pytest -q -x -p no:cacheprovider \
      tests/test_training_loop.py -k "options_train_finite" \
      tests/test_model.py::test_mixed_precision_outputs_float32 \
      tests/test_losses.py::test_dual_support_is_the_same_with_xla \
      tests/test_losses.py::test_mixed_precision_logits_are_computed_in_float32 \
      tests/test_canny.py::test_fused_form_equals_the_other_forms

  # --- The main job's model, 20 steps with mixed precision and XLA (and 2 replicas of
  # MirroredStrategy when there are several GPUs).
  strategy=one_device
  [ "$gpus" -gt 1 ] && strategy=mirrored
  section "train 20 steps: mixed_float16 + XLA, strategy $strategy" 80 \
    python train.py --set train.steps=20 --set train.val_every=0 --set train.image_every=0 \
      --set train.mixed_precision=true --set train.xla=true --set train.strategy=$strategy \
      --set train.run_dir="$work/run"

  # --- Timings: 1024x2048 inference fp32 / fp16 (mixed precision) for WRN-38 and
  # ResNet-50 with their DeepLab v3+ baselines, 800x800 training steps (batch 2 per GPU, one
  # GPU and all of them), an FP32 matmul for scale; writes speed_gpu.{json,md}.
  section "timings: 1024x2048 inference fp32/fp16, 800x800 training" 240 \
    python -m benchmarks.speed --device gpu --backbones wrn38 resnet50 \
      --train-backbones wrn38 resnet50 --deadline-min 3 --name speed_gpu
else
  echo "| tests, training and timings | skipped: TensorFlow sees no GPU | 0 |" >> "$report"
fi

# --- TFLite GPU target on LiteRT's GPU accelerator --------------------------------------
# `gscnn-tf export --target gpu` (fp32 and fp16 weights) compiled by LiteRT's CompiledModel
# with HardwareAccelerator.GPU at float32 precision: is_fully_accelerated() must be true and
# the labels must agree with the Keras model's (>= 99.9 % / >= 99.5 % of pixels).
# About a minute; writes benchmarks/results/litert_gpu.{json,md}.
section "TFLite GPU target on LiteRT's GPU accelerator" 60 \
  python -m benchmarks.litert_gpu "$model" --images 8

{
  echo
  echo "Figures: [speed_gpu.md](speed_gpu.md) (timings), [litert_gpu.md](litert_gpu.md)"
  echo "(LiteRT GPU). Commit this file with them."
} >> "$report"
rm -rf "$work"
exit "$status"
