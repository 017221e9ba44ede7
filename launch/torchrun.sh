#!/usr/bin/env bash
# The torchrun alternative (PyTorch DDP; add `--deepspeed zero2` to train with DeepSpeed instead):
#   launch/torchrun.sh [suite, default core] [more infini_bench.run options]
# One node: NPROC (default: the visible GPUs). Several nodes: run it on each with NNODES,
# NODE_RANK and MASTER_ADDR set (or use launch/slurm.sbatch).
set -euo pipefail
cd "$(dirname "$0")/.."
nproc=${NPROC:-$(python3 -c "import torch; print(max(torch.cuda.device_count(), 1))")}
if [[ "${NNODES:-1}" == 1 ]]; then
  exec torchrun --standalone --nproc_per_node "$nproc" -m infini_bench.run --suite "${1:-core}" "${@:2}"
fi
exec torchrun --nnodes "$NNODES" --node_rank "${NODE_RANK:?set NODE_RANK}" --nproc_per_node "$nproc" \
  --rdzv_backend c10d --rdzv_endpoint "${MASTER_ADDR:?set MASTER_ADDR}:${MASTER_PORT:-29500}" \
  -m infini_bench.run --suite "${1:-core}" "${@:2}"
