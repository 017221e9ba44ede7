#!/usr/bin/env bash
# Regenerate the committed leaderboards from the checked-out commit, which they then name (run it
# on a clean work tree; a dirty one is recorded as <commit>-dirty). CPU, 2 cores: core with 5 seeds
# about 63 minutes, core-seq about 15, long about 68 at 704426e (four first-stage candidates,
# then four models; see the README), the default sweep about 97 at 776eba2 (four first-stage
# candidates, then 10 trials two at a time).
# runs/ (ignored by git) keeps the run folders.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
python -m infini_bench.run --suite core --seeds 5 --device cpu
python -m infini_bench.run --suite core-seq --device cpu
python -m infini_bench.run --suite long --device cpu
python -m infini_bench.run --suite sweep
