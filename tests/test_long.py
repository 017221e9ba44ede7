"""The long suite end to end at toy size (lengths <= 4K): curriculum, retrieval grid of every
family, recall PPL, heatmaps; the baseline scored as the last-window floor; the suite and the
lm-eval tasks (infini_pythia and hf) agree."""

import json
import math
import re

import pytest

from helpers import run_cli, table_rows

pytestmark = pytest.mark.slow  # every test here runs the command line end to end


@pytest.fixture(scope="module")
def long_smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("long")
    result = run_cli("--suite", "long-smoke", "--output-dir", str(out), cache=out / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def results(out, slug):
    return json.loads((out / "runs" / "long-smoke" / slug / "results.json").read_text())


GRID = [("single", "filler", 512), ("single", "filler", 1024), ("single", "filler", 4096), ("single", "prose", 512),
        ("single", "heldout", 512), ("multikey", "filler", 512), ("multikey", "filler", 1024),
        ("multivalue", "filler", 512), ("multiquery", "filler", 512), ("vt", "filler", 512)]


def test_leaderboard_has_retrieval_tables_heatmaps_and_recall_ppl(long_smoke):
    text = (long_smoke / "leaderboard" / "long-smoke.md").read_text()
    for heading in ("## Long-context retrieval", "## Long-document recall PPL by distance since statement",
                    *{f"### {family}, {haystack} haystack" for family, haystack, _ in GRID}):
        assert heading in text
    assert "## Reversal curse" not in text  # the long suite does not train reversal facts
    assert "2 document(s) per cell" in text and "Difference to the floor:" in text
    for family, haystack in {(f, h) for f, h, _ in GRID}:
        png = long_smoke / "leaderboard" / "plots" / f"long-smoke-retrieval-{family}-{haystack}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and f"plots/{png.name}" in text
    table = table_rows(text, "multikey, filler haystack")
    assert table.pop("model") == ["512", "1K"]
    assert list(table) == ["Pythia (last 128)", "Single Memory", "Hierarchical (4)"]
    assert all(re.fullmatch(r"\d\.\d\d \[\d\.\d\d, \d\.\d\d\]", v) for row in table.values() for v in row)
    assert "Local control (needles right before the question; n = 2 a length; — = not scored at that length)" in text
    # Memory probes: the memory models only, three lengths each, a plot each.
    assert "## Memory probes" in text
    probes = text.split("## Memory probes\n", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in probes.splitlines()
            if line.startswith(("| Single Memory", "| Hierarchical (4)"))]
    assert [(row[0], row[3]) for row in rows] == [(model, length) for model in ("Single Memory", "Hierarchical (4)")
                                                  for length in ("512", "1K", "4K")]
    for slug in ("single-memory", "hierarchical-4"):
        assert (long_smoke / "leaderboard" / "plots" / f"long-smoke-probes-{slug}.png").read_bytes()[:4] == b"\x89PNG"
    assert "probes" not in results(long_smoke, "pythia-baseline")


def test_every_model_scores_every_cell_and_the_baseline_is_the_floor(long_smoke):
    for slug in ("single-memory", "hierarchical-4", "pythia-baseline"):
        grid = results(long_smoke, slug)["retrieval"]
        assert grid["depths"] == ["0", "50", "local"] and grid["needle_gap"] == 128
        assert grid["reader"] == ("last 128" if slug == "pythia-baseline" else "memory")
        cells = {(c["family"], c["haystack"], c["length"], c["depth"]): c for c in grid["cells"]}
        assert set(cells) == {(*cell, d) for cell in GRID for d in grid["depths"]}
        for (_, _, _, depth), c in cells.items():
            assert len(c["correct"]) == 2 and set(c["correct"]) <= {0, 1} and all(v < 0 for v in c["answer_logprob"])
            assert all(d >= 128 if depth != "local" else d < 64 for d in c["distance"])
        long = results(long_smoke, slug)["long_ppl"]
        assert long["tokens"] == 4096 and set(long["recall_ppl"]) == {"0-256", "256-1024", "1024-4096"}
        assert all(math.isfinite(v) for v in long["recall_ppl"].values())
    assert results(long_smoke, "pythia-baseline")["long_ppl"]["context_limit"] == 128


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


def test_the_shared_first_stage_is_trained_once_and_every_model_starts_from_it(long_smoke):
    runs = long_smoke / "runs" / "long-smoke"
    shared = runs / "shared-first-stage"
    stage = json.loads((shared / "run_config.json").read_text())
    assert stage["fingerprint"] == json.loads((shared / "stage.json").read_text())["fingerprint"]
    first_epoch = json.loads((shared / "metrics.jsonl").read_text().splitlines()[0])
    for slug in ("single-memory", "hierarchical-4", "pythia-baseline"):
        assert not (runs / slug / "stages" / "1-128").exists()
        recorded = json.loads((runs / slug / "run_config.json").read_text())
        assert recorded["shared_first_stage"] == stage["fingerprint_seed_aside"]  # the seed is the model's own
        assert results(long_smoke, slug)["curve"][0]["val_ppl"] == first_epoch["eval_ppl"]
    assert stage["model_name"] == "Single Memory"


def test_the_shared_first_stage_is_the_best_of_its_candidates_on_validation_documents(long_smoke):
    shared = long_smoke / "runs" / "long-smoke" / "shared-first-stage"
    stage = json.loads((shared / "stage.json").read_text())
    candidates = stage["candidates"]
    assert [c["seed"] for c in candidates] == [42, 43]
    assert all(c["documents"] == 20 and c["length"] == 1024 and c["trial_steps"] == 2 for c in candidates)
    best = max(candidates, key=lambda c: (c["correct"], c["answer_logprob"]))
    assert stage["kept_seed"] == best["seed"] and stage["train_time_s"] == best["train_time_s"]
    kept = shared / "candidates" / f"seed-{best['seed']}"
    assert (shared / "model.safetensors").read_bytes() == (kept / "model.safetensors").read_bytes()
    assert (shared / "metrics.jsonl").read_text() == (kept / "metrics.jsonl").read_text()
    text = (long_smoke / "leaderboard" / "long-smoke.md").read_text()
    assert (f"2 candidates trained, each then trained 2 steps of the second stage and scored on 20 validation "
            f"documents" in text and f"Kept: seed {best['seed']}" in text)
    # The candidates differ (their seeds), so which one is kept matters.
    other = shared / "candidates" / f"seed-{85 - best['seed']}"
    assert (other / "model.safetensors").read_bytes() != (kept / "model.safetensors").read_bytes()


def task_results(long_smoke, tmp_path, model, slug, task):
    run_dir = long_smoke / "runs" / "long-smoke" / slug
    result = run_cli("--model", model, "--model_args", f"pretrained={run_dir}", "--tasks", task, "--include_path",
                     "tasks", "--output_path", str(tmp_path), cache=long_smoke / "cache", module="lm_eval")
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = tmp_path.rglob("results_*.json")
    return json.loads(path.read_text())["results"][task]


def suite_cells(long_smoke, slug, family, length):
    cells = results(long_smoke, slug)["retrieval"]["cells"]
    return {c["depth"]: c for c in cells if (c["family"], c["haystack"], c["length"]) == (family, "filler", length)}


def assert_task_scores_the_cells(task, cells, rel):
    """The task's metrics equal the suite's cells (depths 0% and 50%, 2 documents each, and the
    local control)."""
    scored = [cells["0"], cells["50"]]
    assert task["acc,none"] == pytest.approx(sum(sum(c["correct"]) for c in scored) / 4)
    assert task["answer_logprob,none"] == pytest.approx(sum(sum(c["answer_logprob"]) for c in scored) / 4, rel=rel)
    assert task["acc_local,none"] == pytest.approx(sum(cells["local"]["correct"]) / 2)
    for depth in ("0", "50"):
        assert task[f"acc_depth_{depth},none"] == pytest.approx(sum(cells[depth]["correct"]) / 2)


def test_suite_retrieval_equals_the_lm_eval_task(long_smoke, tmp_path):
    """The suite's 1K single-NIAH cells are the infini_niah_single_1k task's documents (the run's
    depths, documents and gap), scored the same way."""
    task = task_results(long_smoke, tmp_path, "infini_pythia", "single-memory", "infini_niah_single_1k")
    assert_task_scores_the_cells(task, suite_cells(long_smoke, "single-memory", "single", 1024), rel=1e-6)


def test_hf_model_runs_the_tasks_on_the_baseline_run_dir(long_smoke, tmp_path):
    """`--model hf` on the baseline's run directory (a plain GPT-NeoX checkpoint): lm-eval cuts
    each request to the model's context from the left, as the floor does, so it scores the
    suite's floor, log-probabilities included."""
    task = task_results(long_smoke, tmp_path, "hf", "pythia-baseline", "infini_niah_multikey_1k")
    assert_task_scores_the_cells(task, suite_cells(long_smoke, "pythia-baseline", "multikey", 1024), rel=1e-4)
