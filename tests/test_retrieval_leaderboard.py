"""The retrieval section says when a table cannot show a memory effect: a model whose local
control (needle in view) is at the guessing level has not learnt the task, whatever its memory.
Differences to the floor are tested only beyond its window, in a pre-specified primary family;
the recall-PPL section separates what a memory adds from what needs none."""

import math

import numpy as np
import pytest

from infini_bench.data.needles import LOCAL
from infini_bench.leaderboard import (floor_differences, learnt_locally, local_control_gaps, local_control_verdict,
                                      memory_count_table, recall_ppl_section, retrieval_section)
from infini_bench.stats import cochran_q


def run(model, limit, local, scored=0, family="single", n=20):
    cells = [{"family": family, "haystack": "filler", "length": length, "depth": depth,
              "correct": [1] * k + [0] * (n - k), "answer_logprob": [0.0] * n, "distance": [200] * n,
              "documents": [f"{length}-{depth}-{i}" for i in range(n)]}
             for length in (1024, 4096) for depth, k in (("0", scored), (LOCAL, local))]
    return {"model": model, "seed": 42, "retrieval": {"context_limit": limit, "depths": ["0", LOCAL],
                                                     "docs_per_cell": n, "needle_gap": 128, "cells": cells}}


def test_every_local_control_at_chance_means_no_table_can_show_memory(tmp_path):
    results = [run("Floor", 2048, 0), run("Single Memory", None, 0)]
    assert learnt_locally(results, "single", "filler") == {"Pythia (last 2,048)": False, "Single Memory": False}
    text = "\n".join(retrieval_section(results, tmp_path, "long"))
    assert "**This table cannot show a memory effect.**" in text
    assert "**No table of this section can show a memory effect**" in text


def test_a_learnt_local_control_leaves_the_table_unmarked(tmp_path):
    results = [run("Floor", 2048, 19), run("Single Memory", None, 17, scored=12)]
    assert all(learnt_locally(results, "single", "filler").values())
    text = "\n".join(retrieval_section(results, tmp_path, "long"))
    assert "cannot show a memory effect" not in text and "guessing level (95% Wilson lower bound) for" not in text


def test_the_models_at_chance_are_named():
    results = [run("Floor", 2048, 20), run("Single Memory", None, 1)]
    verdict = local_control_verdict(learnt_locally(results, "single", "filler"))
    assert verdict.startswith("Local control at the guessing level") and "Single Memory" in verdict
    assert "Pythia" not in verdict


def test_the_guessing_level_is_the_familys():
    # multikey: one of four keys, 1/4. 16/40 (0.40, Wilson lower bound 0.26) is above it; 12/40 is not.
    above = learnt_locally([run("Single Memory", None, 8, family="multikey")], "multikey", "filler")
    at = learnt_locally([run("Single Memory", None, 6, family="multikey")], "multikey", "filler")
    assert above == {"Single Memory": True} and at == {"Single Memory": False}


def test_without_a_local_control_the_table_says_nothing_checks_the_task():
    result = run("Single Memory", None, 0)
    result["retrieval"]["cells"] = [c for c in result["retrieval"]["cells"] if c["depth"] != LOCAL]
    assert "nothing here checks" in local_control_verdict(learnt_locally([result], "single", "filler"))


def test_a_local_control_kept_only_to_a_length_leaves_the_longer_cells_empty(tmp_path):
    """evaluation.local_control_max_length: the local-control table shows a dash past it and the
    heatmap cell is blank ("–"), while the scored depth is reported at every length."""
    results = [run("Floor", 2048, 19, scored=3), run("Single Memory", None, 17, scored=12)]
    for r in results:
        r["retrieval"]["cells"] = [c for c in r["retrieval"]["cells"] if (c["length"], c["depth"]) != (4096, LOCAL)]
    text = "\n".join(retrieval_section(results, tmp_path, "long"))
    local = text.split("Local control", 1)[1]
    (row,) = [line for line in local.splitlines() if line.startswith("| Single Memory")][:1]
    assert row.rstrip(" |").endswith("—") and "0.85 [" in row
    scored = [line for line in text.splitlines() if line.startswith("| Single Memory")][0]
    assert "—" not in scored and scored.count("0.60 [") == 2
    assert (tmp_path / "long-retrieval-single-filler.png").read_bytes()[:4] == b"\x89PNG"


def with_family(result, family, scored):
    """`result` with a second family's cells (scored documents right at depth 0)."""
    extra = run(result["model"], result["retrieval"]["context_limit"], 20, scored=scored, family=family)
    result["retrieval"]["cells"] += extra["retrieval"]["cells"]
    return result


def test_floor_differences_in_view_are_not_tested_and_holm_runs_within_each_family(tmp_path):
    # Floor: 3/20 single, 0/20 multikey. A: 12/20 single, 12/20 multikey. B: 12/20 single, 0/20 multikey.
    results = [with_family(run("Floor", 2048, 19, scored=3), "multikey", 0),
               with_family(run("A", None, 17, scored=12), "multikey", 12),
               with_family(run("B", None, 17, scored=12), "multikey", 0)]
    cells = [(f, "filler", n) for f in ("single", "multikey") for n in (1024, 4096)]
    tests = floor_differences(results, cells)
    assert {t["family"] for k, t in tests.items() if k[3] == 1024} == {"in view"}
    assert not any("holm_p" in t for k, t in tests.items() if k[3] == 1024)  # in view: never tested
    primary = [tests[(m, "single", "filler", 4096)] for m in ("A", "B")]
    assert all(t["family"] == "primary" for t in primary)
    # Two primary tests, each 9 discordant documents one way: McNemar p = 2 / 2^9, Holm x2.
    assert [t["holm_p"] for t in primary] == pytest.approx([2 * 2 / 2 ** 9] * 2)
    # Secondary: A's multikey (12 discordant) is the only test with a discordant document; B's 0 vs 0 is left out.
    a, b = tests[("A", "multikey", "filler", 4096)], tests[("B", "multikey", "filler", 4096)]
    assert a["family"] == b["family"] == "secondary" and a["holm_p"] == pytest.approx(a["p"]) and "holm_p" not in b
    text = "\n".join(retrieval_section(results, tmp_path, "long"))
    differences = text.split("### single, filler haystack")[1].split("Difference to the floor:")[1].split("![")[0]
    (row,) = [line for line in differences.splitlines() if line.startswith("| A ")]
    assert "(in view)" in row.split("|")[2] and row.split("|")[3].strip().endswith("*")
    assert "2 primary and 1 secondary comparisons are tested" in text


def test_an_untested_difference_is_marked_and_unchecked_lengths_are_named(tmp_path):
    """B's multikey 0 vs the floor's 0 has no discordant document: shown with a dagger, not as a
    failed test; a length without a local control is named; a table within the floor's view says so."""
    results = [with_family(run("Floor", 2048, 19, scored=3), "multikey", 0),
               with_family(run("A", None, 17, scored=12), "multikey", 12),
               with_family(run("B", None, 17, scored=12), "multikey", 0)]
    for r in results:
        r["retrieval"]["cells"] = [c for c in r["retrieval"]["cells"]
                                   if (c["family"], c["length"], c["depth"]) != ("multikey", 4096, LOCAL)]
    text = "\n".join(retrieval_section(results, tmp_path, "long"))
    multikey = text.split("### multikey, filler haystack")[1]
    (row,) = [line for line in multikey.split("Difference to the floor:")[1].splitlines() if line.startswith("| B ")]
    assert row.split("|")[3].strip().endswith("†") and "(marked †)" in text
    assert "No local control at 4K" in multikey and "No local control" not in text.split("### multikey")[0]
    inside = [run("Floor", 2048, 19, scored=3), run("A", None, 17, scored=12)]
    for r in inside:
        r["retrieval"]["cells"] = [c for c in r["retrieval"]["cells"] if c["length"] == 1024]
    assert "Every length of this table is within the floor's view" in "\n".join(retrieval_section(inside, tmp_path, "long"))
    assert "within the floor's view" not in text


def test_a_local_control_at_chance_at_one_length_is_named_even_when_it_passes_pooled(tmp_path):
    results = [run("Floor", 2048, 19, scored=3), run("Single Memory", None, 17, scored=12)]
    for c in results[1]["retrieval"]["cells"]:
        if (c["length"], c["depth"]) == (4096, LOCAL):
            c["correct"] = [1] + [0] * 19  # 1/20: Wilson lower bound 0.009, below 1/40
    assert learnt_locally(results, "single", "filler") == {"Pythia (last 2,048)": True, "Single Memory": True}
    assert local_control_gaps(results, "single", "filler") == ["Single Memory at 4K"]
    text = "\n".join(retrieval_section(results, tmp_path, "long"))
    assert "at a length although above it pooled: Single Memory at 4K" in text


def test_recall_ppl_sets_the_memory_against_a_model_blind_to_the_statements():
    rng = np.random.default_rng(0)
    edges = [(0, 2048), (2048, 16384)]

    def doc(limit, far_shift):
        recalls = [{"distance": low + 10, "nll": 3.0 + (far_shift if low else 0.0) + 0.1 * (i % 5), "tokens": 1}
                   for low, _ in edges for i in range(30)]
        return {"model": "M" if limit is None else "Floor",
                "long_ppl": {"context_limit": limit, "tokens": 1 << 20, "recalls": recalls,
                             "recall_ppl": {f"{low}-{high}": 1.0 for low, high in edges}}}

    floor, memory = doc(2048, 1.0), doc(None, 0.0)  # the floor is worse far away; the memory is not
    text = "\n".join(recall_ppl_section([floor, memory], rng))
    assert "| 0–2K " in text and "0M" not in text
    assert "The 0–2K bin is in the floor's view" in text
    change = text.split("The advantage over the floor beyond its window")[1]
    (row,) = [line for line in change.splitlines() if line.startswith("| M ")]
    assert f"{math.exp(-1.0):.2f} [" in row
    # A model blind to the statements gets floor near / floor far: here e^-1 too (the memory model is flat).
    (blind,) = [line for line in change.splitlines() if line.startswith("| (a model blind")]
    assert f"{math.exp(-1.0):.2f}" in blind


def test_memory_counts_are_compared_on_the_same_documents_per_lr_and_holm_skips_tests_without_differences():
    trials, runs = [], {}
    for m, lr, k in [(1, 3e-3, 15), (2, 3e-3, 5), (4, 3e-3, 10), (1, 1e-3, 0), (2, 1e-3, 0)]:
        name = f"m{m}-lr{lr:g}"
        trials.append({"trial": name, "num_memories": m, "lr": lr, "error": None})
        runs[name] = run(name, None, 20, scored=k)
    table, tested = memory_count_table(trials, runs)
    assert tested == 2  # single filler 1K and 4K at lr 3e-3; lr 1e-3 is 0 against 0 everywhere
    rows = table[table["lr"] == 3e-3]
    expected = cochran_q([[1] * k + [0] * (20 - k) for k in (15, 5, 10)])
    assert list(rows["correct by num_memories"]) == ["1: 15, 2: 5, 4: 10"] * 2
    assert all(f"{expected['q']:.2f} (df 2)" == q for q in rows["Cochran's Q"])
    assert all(h.endswith(" *") for h in rows["Holm p"])  # Q = 10, p = 0.0067, x2
    assert list(table[table["lr"] == 1e-3]["Holm p"]) == ["— (no document differs)"] * 2


def test_a_sweep_accuracy_heatmap_says_k_of_n_on_a_fixed_scale(tmp_path, monkeypatch):
    import infini_bench.leaderboard as leaderboard

    drawn = {}
    monkeypatch.setattr(leaderboard, "_save_png", lambda fig, path: drawn.__setitem__(path.name, fig))
    trials, runs = [], {}
    for m, k in ((1, 15), (2, 5)):
        name = f"m{m}-lr0.003"
        trials.append({"trial": name, "num_memories": m, "lr": 3e-3, "error": None})
        runs[name] = {**run(name, None, 20, scored=k), "best_val_ppl": 4.0 + m, "test": {"ppl": 4.1}}
    leaderboard.plot_sweep(trials, runs, tmp_path, "s")
    (ax, _colorbar) = drawn["s-retrieval-single-filler-1024.png"].axes
    assert sorted(t.get_text() for t in ax.texts) == ["15/20", "5/20"]
    assert ax.images[0].get_clim() == (0, 1)


def test_the_first_stage_paragraph_says_when_no_candidate_answered():
    from infini_bench.leaderboard import first_stage_lines

    def stage(correct):
        candidates = [{"seed": 42 + i, "correct": k, "documents": 20, "answer_logprob": -12.0 - i, "length": 1024,
                       "trial_steps": 250} for i, k in enumerate(correct)]
        return [{"seed": 42, "shared_first_stage": {"sample_len": 64, "candidates": candidates, "kept_seed": 42,
                                                     "train_time_s": 600.0, "model_name": "Single Memory"}}]
    tied = first_stage_lines(stage([0, 0]))[0]
    assert "Kept: seed 42, on log-prob alone: every candidate answered 0 of 20, so none is known to read" in tied
    assert "first by accuracy" in first_stage_lines(stage([1, 0]))[0]
    assert "counts the kept first stage's 10.0 minutes" in tied
