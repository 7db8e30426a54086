#!/usr/bin/env bash
# GPU check: the figures and checks that need a GPU, in one run on a machine that has one.
#
#     bash benchmarks/gpu_check.sh [MODEL]     # MODEL: a run directory or .keras file
#                                              # (default runs/synthetic; random weights
#                                              # when it does not exist)
#
# Each section below is self-contained: it runs on its own, writes its own results under
# benchmarks/results/, and on a machine where its hardware cannot be had it prints why and
# counts as skipped, not failed. The script exits 1 if any section failed.
set -u
cd "$(dirname "$0")/.."
model="${1:-runs/synthetic}"
status=0

# --- TFLite GPU target on LiteRT's GPU accelerator --------------------------------------
# `gscnn-tf export --target gpu` (fp32 and fp16 weights) compiled by LiteRT's CompiledModel
# with HardwareAccelerator.GPU at float32 precision: is_fully_accelerated() must be true and
# the labels must agree with the Keras model's (>= 99.9 % / >= 99.5 % of pixels).
# About a minute; writes benchmarks/results/litert_gpu.{json,md}.
echo "== TFLite GPU target on LiteRT's GPU accelerator"
timeout 600 python benchmarks/litert_gpu.py "$model" --images 8 || status=1

exit "$status"
