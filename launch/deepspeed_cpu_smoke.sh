#!/usr/bin/env bash
# DeepSpeed on this CPU: 2 processes train the smoke preset's Single Memory model with ZeRO-2
# (DeepSpeed's CPU accelerator, gloo; the first run compiles a small shared-memory
# communication op), then reload the saved weights in 2 fresh processes and recompute the
# validation metrics. Last line:
#   RESULT loss_first=<a> loss_last=<b> eval_match=<true|false>
# loss_first / loss_last: the first and last logged training losses (TensorBoard train/loss).
# Usage: launch/deepspeed_cpu_smoke.sh [output dir, default runs-deepspeed-smoke]
# Env: MASTER_PORT (default 29500), MODEL (a smoke-suite run name, default single-memory).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs-deepspeed-smoke}
PORT=${MASTER_PORT:-29500}
MODEL=${MODEL:-single-memory}

launch() {
  deepspeed --num_accelerators 2 --master_port "$PORT" --module infini_bench.run \
    --suite smoke --models "$MODEL" --deepspeed zero2 --output-dir "$OUT" "$@"
}

launch
if launch --reevaluate; then match=true; else match=false; fi
python3 - "$OUT/runs/smoke/$MODEL/tensorboard" "$match" <<'PY'
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

events = EventAccumulator(sys.argv[1])
events.Reload()
losses = [e.value for e in events.Scalars("train/loss")]
print(f"RESULT loss_first={losses[0]:.4f} loss_last={losses[-1]:.4f} eval_match={sys.argv[2]}")
PY
