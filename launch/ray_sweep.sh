#!/usr/bin/env bash
# A Ray Tune sweep on an existing Ray cluster (run on the head node, or anywhere RAY_ADDRESS reaches):
#   launch/ray_sweep.sh [sweep name or YAML, default: default] [output dir, default: .] [--resume]
# The output dir must be on a filesystem every node shares.
set -euo pipefail
export RAY_ADDRESS="${RAY_ADDRESS:-auto}"
exec python -m infini_bench.sweep --config "${1:-default}" --output-dir "${2:-.}" "${@:3}"
