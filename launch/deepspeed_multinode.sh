#!/usr/bin/env bash
# Several nodes with DeepSpeed's launcher (pdsh/ssh from this node to those in the hostfile):
#   launch/deepspeed_multinode.sh <hostfile> [suite, default core] [ZeRO config, default zero3] [more options]
# See launch/hostfile.example. The output directory (--output-dir, default .) must be shared.
set -euo pipefail
cd "$(dirname "$0")/.."
hostfile=${1:?usage: launch/deepspeed_multinode.sh <hostfile> [suite] [zero config] [options]}
master=$(awk '!/^#/ && NF {print $1; exit}' "$hostfile")
exec deepspeed --hostfile "$hostfile" --master_addr "$master" --master_port "${MASTER_PORT:-29500}" \
  --module infini_bench.run --suite "${2:-core}" --deepspeed "${3:-zero3}" "${@:4}"
