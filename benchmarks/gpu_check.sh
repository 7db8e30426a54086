#!/usr/bin/env bash
# The figures and checks that need a GPU, in sections whose time limits add up to 8 minutes;
# each section's outcome and time go to benchmarks/results/gpu.md, a section whose hardware
# is missing counts as skipped, and the exit status is 1 if any section failed.
#     bash benchmarks/gpu_check.sh [MODEL]   # run directory or .keras (default runs/synthetic)
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
  section "tests: mixed precision (fp16, bf16), XLA on/off, fused Canny, recomputation, fused batch norm" 120 \
    python -m pytest -q -x -p no:cacheprovider -n 0 \
      tests/test_training_loop.py::test_options_train_finite \
      "tests/test_recompute.py::test_recomputed_step_equals_plain_step[trunk-1]" \
      "tests/test_recompute.py::test_recomputed_step_equals_plain_step[heads-1]" \
      tests/test_training_loop.py::test_bf16_training_follows_float32 \
      tests/test_model.py::test_mixed_precision_outputs_float32 \
      tests/test_losses.py::test_dual_support_is_the_same_with_xla \
      tests/test_losses.py::test_mixed_precision_logits_are_computed_in_float32 \
      tests/test_canny.py::test_fused_form_equals_the_other_forms \
      tests/test_batch_norm.py::test_training_pass_equals_kerass \
      tests/test_batch_norm.py::test_bfloat16_inputs_go_in_as_they_are

  strategy=one_device
  [ "$gpus" -gt 1 ] && strategy=mirrored
  section "train 20 steps: mixed_float16 + XLA, strategy $strategy" 80 \
    python train.py --set train.steps=20 --set train.val_every=0 --set train.image_every=0 \
      --set train.mixed_precision=true --set train.xla=true --set train.strategy=$strategy \
      --set train.run_dir="$work/run"

  section "timings: 1024x2048 inference fp32/fp16, 800x800 training" 220 \
    python -m benchmarks.speed --device gpu --backbones wrn38 resnet50 \
      --deadline-min 3 --name speed_gpu
else
  echo "| tests, training and timings | skipped: TensorFlow sees no GPU | 0 |" >> "$report"
fi

section "TFLite GPU target on LiteRT's GPU accelerator" 60 \
  python -m benchmarks.litert_gpu "$model" --images 8

{
  echo
  echo "Figures: [speed_gpu.md](speed_gpu.md) (timings), [litert_gpu.md](litert_gpu.md)"
  echo "(LiteRT GPU). Commit this file with them."
} >> "$report"
rm -rf "$work"
exit "$status"
