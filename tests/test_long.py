"""The long suite end to end at toy size (lengths <= 4K): curriculum, pass-key grid, long PPL,
heatmaps; the baseline marked beyond its context; the suite and the lm-eval task agree."""

import json
import math

import pytest

from helpers import run_cli

pytestmark = pytest.mark.slow  # every test here runs the command line end to end


@pytest.fixture(scope="module")
def long_smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("long")
    result = run_cli("--suite", "long-smoke", "--output-dir", str(out), cache=out / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def results(out, slug):
    return json.loads((out / "runs" / "long-smoke" / slug / "results.json").read_text())


def test_leaderboard_has_heatmaps_tables_and_curves(long_smoke):
    text = (long_smoke / "leaderboard" / "long-smoke.md").read_text()
    for heading in ("## Pass-key retrieval", "## Long-document PPL by position", "### Single Memory",
                    "### Hierarchical (4)", "### Pythia baseline"):
        assert heading in text
    assert "## Reversal curse" not in text  # the long suite does not train reversal facts
    for slug in ("pythia-baseline", "single-memory", "hierarchical-4"):
        png = long_smoke / "leaderboard" / "plots" / f"long-smoke-passkey-{slug}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and f"plots/{png.name}" in text
    assert (long_smoke / "leaderboard" / "plots" / "long-smoke-long-ppl.png").exists()


def test_memory_models_fill_the_grid_and_the_baseline_stops_at_its_context(long_smoke):
    for slug in ("single-memory", "hierarchical-4"):
        r = results(long_smoke, slug)
        grid = r["passkey"]
        assert grid["context_limit"] is None and grid["lengths"] == [128, 1024, 4096]
        for length in grid["lengths"]:
            for depth in ("0", "50", "100"):
                assert 0.0 <= grid["accuracy"][str(length)][depth] <= 1.0
                assert grid["key_logprob"][str(length)][depth] < 0
        assert r["long_ppl"]["tokens"] == 4096
        assert all(math.isfinite(v) for v in r["long_ppl"]["position_ppl"].values())
    base = results(long_smoke, "pythia-baseline")
    grid = base["passkey"]
    assert grid["context_limit"] == 128
    assert all(v is not None for v in grid["accuracy"]["128"].values())
    assert all(v is None for n in ("1024", "4096") for v in grid["accuracy"][n].values())
    buckets = base["long_ppl"]["position_ppl"]
    assert buckets["0-64"] is not None and buckets["64-1024"] is None and buckets["2048-4095"] is None
    text = (long_smoke / "leaderboard" / "long-smoke.md").read_text()
    assert "n/a (context 128)" in text


def test_curriculum_runs_short_stages_first(long_smoke):
    run_dir = long_smoke / "runs" / "long-smoke" / "single-memory"
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(e["epoch"], e["stage"], e["sample_len"]) for e in epochs] == [(1, 1, 128), (2, 2, 256)]
    recorded = json.loads((run_dir / "run_config.json").read_text())
    assert [s["sample_len"] for s in recorded["stages"]] == [128, 256]
    assert recorded["model"]["bptt_segments"] == 2 and recorded["model"]["memory_scope"] == "sequence"
    assert results(long_smoke, "single-memory")["curve"][1]["sample_len"] == 256
    # The baseline (context 128) trains and validates on 128-token windows of the 256-token stage.
    base = results(long_smoke, "pythia-baseline")
    assert base["validation"]["tokens"] % 127 == 0
    assert (long_smoke / "runs" / "long-smoke" / "pythia-baseline" / "stages" / "2-256" / "stage.json").exists()


def test_suite_pass_key_equals_the_lm_eval_task(long_smoke, tmp_path):
    """The suite's 1K cells are the infini_passkey_1k task's documents, scored the same way."""
    run_dir = long_smoke / "runs" / "long-smoke" / "single-memory"
    result = run_cli("--model", "infini_pythia", "--model_args", f"pretrained={run_dir}", "--tasks",
                     "infini_passkey_1k", "--include_path", "tasks", "--metadata", '{"depths": [0, 50, 100]}',
                     "--output_path", str(tmp_path), cache=long_smoke / "cache", module="lm_eval")
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = tmp_path.rglob("results_*.json")
    task = json.loads(path.read_text())["results"]["infini_passkey_1k"]
    grid = results(long_smoke, "single-memory")["passkey"]
    cells = grid["key_logprob"]["1024"]
    assert task["key_logprob,none"] == pytest.approx(sum(cells.values()) / len(cells), rel=1e-6)
    for depth in (0, 50, 100):
        assert task[f"acc_depth_{depth},none"] == pytest.approx(grid["accuracy"]["1024"][str(depth)])
