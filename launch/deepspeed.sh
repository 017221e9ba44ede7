#!/usr/bin/env bash
# One node, several GPUs, DeepSpeed's launcher:
#   launch/deepspeed.sh [suite, default core] [ZeRO config, default zero2] [more infini_bench.run options]
# The suite's training.batch_size is the global batch, split over the GPUs (it must divide).
# NUM_GPUS (default: all visible) and MASTER_PORT (default 29500) can be set.
set -euo pipefail
cd "$(dirname "$0")/.."
gpus=()
if [[ -n "${NUM_GPUS:-}" ]]; then gpus=(--num_gpus "$NUM_GPUS"); fi
exec deepspeed "${gpus[@]}" --master_port "${MASTER_PORT:-29500}" --module infini_bench.run \
  --suite "${1:-core}" --deepspeed "${2:-zero2}" "${@:3}"
