"""Several seeds: statistics from the per-seed result files, paired differences, determinism."""

import json
import re
import shutil

import numpy as np
import pytest

from helpers import run_cli, table_rows

pytestmark = pytest.mark.slow  # every test here runs the command line end to end


@pytest.fixture(scope="module")
def two_seeds(smoke, tmp_path_factory):
    """The smoke suite with seeds 42 and 43. Seed 42 of three models is the smoke run's, copied (a
    finished run with the same config is not retrained); Hierarchical (4) is trained again with
    seed 42, to compare with the smoke run's."""
    out = tmp_path_factory.mktemp("seeds")
    for slug in ("pythia-baseline", "single-memory", "multi-memory-4"):
        shutil.copytree(smoke[0] / "runs" / "smoke" / slug, out / "runs" / "smoke" / slug)
    result = run_cli("--suite", "smoke", "--seeds", "2", "--output-dir", str(out), cache=smoke[0] / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("already finished") == 3
    return out


def per_seed(out, slug):
    runs = out / "runs" / "smoke"
    return [json.loads((runs / name / "results.json").read_text()) for name in (slug, f"{slug}-seed43")]


MODELS = [("pythia-baseline", "Pythia baseline"), ("single-memory", "Single Memory"),
          ("multi-memory-4", "Multi Memory (4)"), ("hierarchical-4", "Hierarchical (4)")]
PARTS = {"test PPL": ("test", "nll", None, True), "recall-token PPL": ("test", "recall_nll", "recall_tokens", True),
         "forward acc": ("reversal", "forward_correct", None, False),
         "backward acc": ("reversal", "backward_correct", None, False),
         "backward PPL": ("reversal", "backward_nll", None, True),
         "reversal effect": ("reversal", ("backward_correct", "control_backward_correct"), None, False)}


def items(out, slug):
    runs = out / "runs" / "smoke"
    return [json.loads((runs / name / "per_item.json").read_text()) for name in (slug, f"{slug}-seed43")]


def aggregate(parts, label, index):
    part, num, den, log_scale = PARTS[label]
    per_item = (np.asarray(parts[part][num[0]], dtype=float) - np.asarray(parts[part][num[1]], dtype=float)
                if isinstance(num, tuple) else np.asarray(parts[part][num], dtype=float))
    numerator = per_item[index].sum(-1)
    denominator = np.asarray(parts[part][den], dtype=float)[index].sum(-1) if den else index.shape[-1]
    return np.exp(numerator / denominator) if log_scale else numerator / denominator


def shown(cell: str, *values):
    """The numbers of a cell are `values` at the cell's own number of decimals."""
    numbers = re.findall(r"-?\d+\.\d+", cell)
    assert len(numbers) == len(values), cell
    for text, value in zip(numbers, values):
        assert text == f"{value:.{len(text.split('.')[1])}f}", (cell, value)


def test_paired_bootstrap_and_holm_recomputed_from_the_per_item_files(two_seeds):
    """Every cell of the differences table, recomputed here with numpy and scipy from the runs'
    per_item.json files: circular block bootstrap with the leaderboard's seeds, Holm by hand."""
    from infini_bench.seeds import BOOTSTRAP, stream_seed

    markdown = (two_seeds / "leaderboard" / "smoke.md").read_text()
    table = markdown.split("## Differences vs Single Memory\n", 1)[1]
    reference = items(two_seeds, "single-memory")
    blocks = {slug: (per_seed(two_seeds, slug)[0]["test"]["bootstrap_block"],
                     per_seed(two_seeds, slug)[0]["test"]["bootstrap_align"]) for slug, _ in MODELS}
    rows = []
    for slug, name in MODELS:
        if name == "Single Memory":
            continue
        model = items(two_seeds, slug)
        for label, (part, num, _, _) in PARTS.items():
            n = len(reference[0][part][num[0] if isinstance(num, tuple) else num])
            block, align = max(blocks[slug], blocks["single-memory"]) if part == "test" else (1, 1)
            assert n >= 3 * block  # enough blocks for an interval
            rng = np.random.default_rng(stream_seed(42, BOOTSTRAP, f"paired-{label}", f"{name} - Single Memory"))
            starts = rng.integers(0, -(-n // align), (10_000, -(-n // block))) * align
            index = ((starts[:, :, None] + np.arange(block)) % n).reshape(10_000, -1)[:, :n]
            every = np.arange(n)
            observed = np.mean([aggregate(a, label, every) - aggregate(b, label, every)
                                for a, b in zip(model, reference)])
            resampled = np.mean([aggregate(a, label, index) - aggregate(b, label, index)
                                 for a, b in zip(model, reference)], axis=0)
            # The percentile bootstrap's own p: twice the smaller share on either side of 0 (nan on both).
            p = min(1.0, 2 * (min(np.sum(~(resampled > 0)), np.sum(~(resampled < 0))) + 1) / 10_001)
            rows.append((name, label, observed, np.nanpercentile(resampled, [2.5, 97.5]), p, n, block))
    order = np.argsort([r[4] for r in rows], kind="stable")
    holm, running = np.empty(len(rows)), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(rows) - rank) * rows[i][4]))
        holm[i] = running
    assert len(rows) == 18
    for (name, label, observed, (low, high), p, n, block), adjusted in zip(rows, holm):
        (line,) = [x for x in table.splitlines() if re.match(rf"\| {re.escape(name)} +\| {label} +\|", x)]
        cells = [c.strip() for c in line.strip("|").split("|")]
        if low == high == observed:  # the two models answer every resampled item alike
            assert cells[2].endswith(" (the same on every resample)")
            shown(cells[2], observed)
        else:
            shown(cells[2], observed, low, high)
        assert cells[3].startswith(f"{n} ") and cells[3].endswith(f"block {block}")
        assert cells[4] == f"{p:.4f} / {adjusted:.4f}"
        model_better = (observed < 0) == PARTS[label][3]  # a PPL is better lower, an accuracy higher
        verdict = (f"{name if model_better else 'Single Memory'} better" if adjusted < 0.05
                   else "no difference detected (not equivalence)")
        assert cells[5] == verdict
        assert cells[6] == "n = 2 seeds < 3: no t-interval"  # two seeds: no t-interval


def test_across_seed_table_gives_values_not_intervals_below_three_seeds(two_seeds):
    markdown = (two_seeds / "leaderboard" / "smoke.md").read_text()
    across = table_rows(markdown, "Across seeds (2: 42, 43)")
    for slug, name in MODELS:
        runs = per_seed(two_seeds, slug)
        assert [r["seed"] for r in runs] == [42, 43]
        assert runs[0]["test"]["ppl"] != runs[1]["test"]["ppl"]  # the seed changes training
        assert across[name][0] == "2" and "±" not in " ".join(across[name])
        shown(across[name][1], *[r["test"]["ppl"] for r in runs])
    assert "± 0.00 " not in markdown and "± 0.000 " not in markdown


def test_same_seed_gives_identical_metrics(two_seeds, smoke):
    """Hierarchical (4), the model with the most random parts, trained twice with seed 42."""
    reference, _ = smoke
    for slug in ("hierarchical-4",):
        again = json.loads((two_seeds / "runs" / "smoke" / slug / "results.json").read_text())
        first = json.loads((reference / "runs" / "smoke" / slug / "results.json").read_text())
        for key in ("best_val_ppl", "validation", "test", "reversal", "curve", "parameters"):
            assert again[key] == first[key], (slug, key)


def test_seed_zero_with_two_seeds_keeps_both_runs(tmp_path):
    result = run_cli("--suite", "smoke", "--seed", "0", "--seeds", "2", "--models", "single-memory",
                     "--max-epochs", "1", "--output-dir", str(tmp_path), cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = tmp_path / "runs" / "smoke"
    seeds = {p.parent.name: json.loads(p.read_text())["seed"] for p in runs.glob("*/results.json")}
    assert seeds == {"single-memory": 0, "single-memory-seed1": 1}


def test_runs_whose_configs_differ_are_not_pooled(two_seeds, tmp_path, capsys):
    """A seed run trained with another learning rate is refused with one line naming the field."""
    from infini_bench.leaderboard import main as leaderboard_main

    runs = tmp_path / "runs" / "smoke"
    shutil.copytree(two_seeds / "runs" / "smoke", runs, ignore=shutil.ignore_patterns("*.safetensors", "tensorboard"))
    changed = runs / "multi-memory-4-seed43"
    for name, edit in (("run_config.json", lambda c: c["run"]["training"].update(lr=0.003)),
                       ("results.json", lambda r: r.update(config_fingerprint="0" * 16))):
        record = json.loads((changed / name).read_text())
        edit(record)
        (changed / name).write_text(json.dumps(record))
    with pytest.raises(SystemExit) as exit_info:
        leaderboard_main([str(tmp_path), "smoke"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: runs: Multi Memory (4) seed 43 and seed 42 differ in run.training.lr (0.001 vs 0.003)")
    assert not (tmp_path / "leaderboard" / "smoke.md").exists()


def test_a_shared_first_stage_is_per_seed_and_leaves_the_seeds_poolable(tmp_path):
    """Each seed trains its own shared first stage (its own folder and fingerprint), and what a
    model records of it is the same for every seed, so that a model's seeds still pool."""
    import dataclasses
    from types import SimpleNamespace

    from infini_bench.pipeline import shared_first_stage
    from infini_bench.suites import load_run_config

    config = load_run_config("long-smoke", "cpu", output_dir=str(tmp_path))
    data, stages = SimpleNamespace(tokenizer=[0] * 300), [SimpleNamespace(info={"sample_len": 128})]
    seen = []
    for seed in (42, 43):
        seeded = dataclasses.replace(config, training=dataclasses.replace(config.training, seed=seed))
        directory, resolved = shared_first_stage(seeded, data, stages, suite_seed=42)
        seen.append((directory.name, resolved["fingerprint"], resolved["fingerprint_seed_aside"]))
    assert [s[0] for s in seen] == ["shared-first-stage", "shared-first-stage-seed43"]
    assert seen[0][1] != seen[1][1] and seen[0][2] == seen[1][2]


def test_a_rebuild_keeps_the_suites_models_and_names_every_commit(two_seeds, tmp_path):
    """A run left from a model the suite has dropped stays off the page; runs of different commits
    are named, model by model, in the header."""
    from infini_bench.leaderboard import write_leaderboard

    runs = tmp_path / "runs" / "smoke"
    shutil.copytree(two_seeds / "runs" / "smoke", runs, ignore=shutil.ignore_patterns("*.safetensors", "tensorboard"))
    for path in runs.glob("hierarchical-4*/results.json"):
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "git_commit": "0123456789abcdef"}))
    kept = [name for _, name in MODELS[:3]]
    page = write_leaderboard(runs, tmp_path / "leaderboard", "smoke", models=kept).read_text()
    assert "| Hierarchical (4)" not in page and "runs of different commits" not in page
    page = write_leaderboard(runs, tmp_path / "leaderboard", "smoke").read_text()
    assert "| Hierarchical (4)" in page and "`0123456789ab` (Hierarchical (4))" in page
