#!/usr/bin/env bash
# Regenerate the committed leaderboards from the checked-out commit, which they then name (run it
# on a clean work tree; a dirty one is recorded as <commit>-dirty). CPU, 2 cores: about 75 minutes
# (core with 3 seeds about 55, core-seq about 20). runs/ (ignored by git) keeps the run folders.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
python -m infini_bench.run --suite core --seeds 3 --device cpu
python -m infini_bench.run --suite core-seq --device cpu
