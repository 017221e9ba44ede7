"""Several seeds: statistics from the per-seed result files, paired differences, determinism."""

import json
import re

import numpy as np
import pytest
from scipy import stats

from helpers import run_cli, table_rows

pytestmark = pytest.mark.slow  # every test here runs the command line end to end


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds")
    result = run_cli("--suite", "smoke", "--seeds", "2", "--output-dir", str(out), cache=out / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def per_seed(out, slug):
    runs = out / "runs" / "smoke"
    return [json.loads((runs / name / "results.json").read_text()) for name in (slug, f"{slug}-seed43")]


def interval(values):
    values = np.asarray(values, dtype=float)
    return values.mean(), stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))


def test_leaderboard_statistics_come_from_the_per_seed_files(two_seeds):
    markdown = (two_seeds / "leaderboard" / "smoke.md").read_text()
    across = table_rows(markdown, "Across seeds")
    differences = markdown.split("## Differences vs Single Memory (paired by seed)\n", 1)[1]
    for slug, name in [("pythia-baseline", "Pythia baseline"), ("single-memory", "Single Memory"),
                       ("multi-memory-4", "Multi Memory (4)"), ("hierarchical-4", "Hierarchical (4)")]:
        runs = per_seed(two_seeds, slug)
        assert [r["seed"] for r in runs] == [42, 43]
        assert runs[0]["best_val_ppl"] != runs[1]["best_val_ppl"]  # the seed changes training
        mean, half = interval([r["best_val_ppl"] for r in runs])
        assert across[name][0] == "2" and across[name][1] == f"{mean:.2f} ± {half:.2f}"
        mean, half = interval([r["reversal"]["backward_acc"] for r in runs])
        assert across[name][4] == f"{mean:.3f} ± {half:.3f}"
        if name != "Single Memory":
            reference = per_seed(two_seeds, "single-memory")
            diff_mean, diff_half = interval([a["best_val_ppl"] - b["best_val_ppl"] for a, b in zip(runs, reference)])
            verdict = ("undetermined (no spread)" if diff_half == 0 else
                       "not significant" if abs(diff_mean) <= diff_half else "significant")
            (line,) = [x for x in differences.splitlines()
                       if re.match(rf"\| {re.escape(name)} +\| best val PPL ", x)]
            assert f"| {diff_mean:.2f} ± {diff_half:.2f} " in line and line.rstrip(" |").endswith(verdict)


def test_same_seed_gives_identical_metrics(two_seeds, smoke):
    reference, _ = smoke
    for slug in ("pythia-baseline", "single-memory", "multi-memory-4", "hierarchical-4"):
        again = json.loads((two_seeds / "runs" / "smoke" / slug / "results.json").read_text())
        first = json.loads((reference / "runs" / "smoke" / slug / "results.json").read_text())
        for key in ("best_val_ppl", "validation", "reversal", "curve", "parameters"):
            assert again[key] == first[key], (slug, key)


def test_seed_zero_with_two_seeds_keeps_both_runs(tmp_path):
    result = run_cli("--suite", "smoke", "--seed", "0", "--seeds", "2", "--models", "single-memory",
                     "--max-epochs", "1", "--output-dir", str(tmp_path), cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = tmp_path / "runs" / "smoke"
    seeds = {p.parent.name: json.loads(p.read_text())["seed"] for p in runs.glob("*/results.json")}
    assert seeds == {"single-memory": 0, "single-memory-seed1": 1}
