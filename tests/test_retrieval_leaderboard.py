"""The retrieval section says when a table cannot show a memory effect: a model whose local
control (needle in view) is at the guessing level has not learnt the task, whatever its memory."""

from infini_bench.data.needles import LOCAL
from infini_bench.leaderboard import learnt_locally, local_control_verdict, retrieval_section


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
