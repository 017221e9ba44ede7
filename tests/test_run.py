"""`python -m infini_bench.run`: the smoke suite end to end, and bad input."""

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch
from scipy import stats
from transformers import AutoModelForCausalLM, AutoTokenizer

import infini_bench.models  # noqa: F401  (registers the Auto classes)
from helpers import run_cli, table_rows, write_suite
from infini_bench.leaderboard import main as leaderboard_main
from infini_bench.pipeline import run_dir, seeds_of
from infini_bench.run import main
from infini_bench.suites import load_run_config


@pytest.mark.slow
def test_smoke_suite_results_and_leaderboard_agree(smoke):
    out, result = smoke
    runs = sorted((out / "runs" / "smoke").iterdir())
    assert [r.name for r in runs] == ["hierarchical-4", "multi-memory-4", "pythia-baseline", "single-memory"]
    markdown = (out / "leaderboard" / "smoke.md").read_text()
    summary = table_rows(markdown, "Summary (seed 42)")
    positions = table_rows(markdown, "Test PPL by token position [95% CI]")
    reversal = table_rows(markdown, "Reversal curse")
    assert set(summary) == {"model", "Pythia baseline", "Single Memory", "Multi Memory (4)", "Hierarchical (4)"}
    for run in runs:
        r = json.loads((run / "results.json").read_text())
        items = json.loads((run / "per_item.json").read_text())
        row = summary[r["model"]]
        test = r["test"]
        low, high = test["ppl_bootstrap_ci95"]
        assert low < test["ppl"] < high and row[0].split(" [")[0] in {f"{test['ppl']:.{d}f}" for d in range(2, 9)}
        assert test["ppl"] == pytest.approx(np.exp(np.mean(items["test"]["nll"])))
        assert test["recall_ppl"] == pytest.approx(np.exp(sum(items["test"]["recall_nll"]) /
                                                          sum(items["test"]["recall_tokens"])))
        assert row[3] == f"{r['best_val_ppl']:.3f}" and row[4] == str(r["best_epoch"])
        assert row[6] == r["stop"] and row[8] == f"{r['parameters']:,}"
        column = positions["positions"].index(r["model"])
        assert [k for k in positions if k != "positions"] == list(test["position_ppl"])
        for bin_label, value in test["position_ppl"].items():
            assert positions[bin_label][column].split(" [")[0] in (f"{value:.1f}", f"{value:.2f}", f"{value:.3f}")
        assert reversal[r["model"]][0].startswith(f"{r['reversal']['forward_acc']:.3f}")
        assert test["recall_tokens"] > 0 and test["samples"] == r["data"]["test_samples"]
        assert r["eval_batch_size"] == (8 if r["memory_type"] != "none" else 32)  # stream scope: the training batch
        assert [c["epoch"] for c in r["curve"]] == list(range(1, r["epochs_trained"] + 1))
    assert (out / "leaderboard" / "plots" / "smoke-learning-curves.png").stat().st_size > 1000
    assert (out / "leaderboard" / "plots" / "smoke-position-ppl.png").stat().st_size > 1000


@pytest.mark.slow
def test_run_directory_records_everything(smoke):
    out, _ = smoke
    run = out / "runs" / "smoke" / "multi-memory-4"
    recorded = json.loads((run / "run_config.json").read_text())
    assert recorded["run"]["suite"] == "smoke" and recorded["model"]["num_memories"] == 4
    assert recorded["run"]["training"]["seed"] == 42
    env = json.loads((run / "environment.json").read_text())
    assert env["packages"]["torch"] and env["packages"]["transformers"] and "git_commit" in env
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == json.loads((run / "results.json").read_text())["epochs_trained"]
    assert list((run / "tensorboard").iterdir())
    assert (run / "model.safetensors").exists() and not list(run.glob("*.bin")) and not (run / "trainer").exists()
    auto_map = json.loads((run / "config.json").read_text())["auto_map"]  # it carries its own model code
    assert auto_map["AutoModelForCausalLM"] == "modeling_infini_pythia.InfiniPythiaForCausalLM"
    assert (run / "modeling_infini_pythia.py").exists() and (run / "memory.py").exists()


@pytest.mark.slow
def test_checkpoint_reloads_to_the_reported_validation_and_test_ppl(smoke):
    from infini_bench.data import DataConfig, prepare_data
    from infini_bench.evaluation import lm_metrics, sample_token_nll

    out, _ = smoke
    run = out / "runs" / "smoke" / "hierarchical-4"
    results = json.loads((run / "results.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(run)
    model = AutoModelForCausalLM.from_pretrained(run)
    data = prepare_data(DataConfig(**results["data"]["config"]), out / "cache")
    assert tokenizer.get_vocab() == data.tokenizer.get_vocab()
    for split, recorded in (("validation", results["best_val_ppl"]), ("test", results["test"]["ppl"])):
        nll = sample_token_nll(model, getattr(data, split)["input_ids"], results["eval_batch_size"],
                               torch.device("cpu"))
        assert lm_metrics(nll, None)["ppl"] == pytest.approx(recorded, rel=1e-5)


@pytest.mark.slow
def test_prints_choices_at_start(smoke):
    _, result = smoke
    first = result.stdout.splitlines()[0]
    for piece in ("suite smoke", "on cpu", "preset pythia-14m", "data embedded", "seed 42"):
        assert piece in first


BAD_INPUTS = [
    (lambda t: ["--suite", "nonexistent"], "suite: unknown 'nonexistent'"),
    (lambda t: ["--suite", "smoke", "--preset", "pythia-1b"], "preset: unknown 'pythia-1b'"),
    (lambda t: ["--suite", "smoke", "--data", "wikipedia"], "data: 'wikipedia' is not a known source"),
    (lambda t: ["--suite", "smoke", "--data", str(t / "missing" / "corpus.txt")], "data: "),
    (lambda t: ["--suite", write_suite(t, **{"model_defaults.segment_len": 128})], "segment_len: 128"),
    (lambda t: ["--suite", write_suite(t, **{"data.num_samples": 0})], "data.num_samples: expected a positive"),
    (lambda t: ["--suite", write_suite(t, **{"data.sample_len": -5})], "data.sample_len: expected a positive"),
    (lambda t: ["--suite", write_suite(t, **{"training.batch_size": 0})], "training.batch_size"),
    (lambda t: ["--suite", write_suite(t, **{"training.lr": -1e-4})], "training.lr"),
    (lambda t: ["--suite", write_suite(t, **{"data.num_sample": 10})], "data.num_sample: unknown key"),
    (lambda t: ["--suite", write_suite(t, **{"training.batch_size": "eight"})], "training.batch_size: expected int"),
    (lambda t: ["--suite", write_suite(t, models=[{"name": "x", "memory_type": "dual"}])], "memory_type: expected"),
    (lambda t: ["--suite", write_suite(t, models=[{"name": "x", "num_memory": 4}])], "models.x.num_memory: unknown"),
    (lambda t: ["--suite", write_suite(t, models=[{"name": "x", "memory_type": "multi", "num_memories": 0}])],
     "num_memories: expected a positive integer"),
    (lambda t: ["--suite", "smoke", "--output-dir", str(t / "a_file" / "out")], "output-dir:"),
    (lambda t: ["--suite", "smoke", "--device", "tpu"], "argument --device: invalid choice"),
    (lambda t: ["--suite", "smoke", "--deepspeed", str(t / "nope.json")], "training.deepspeed: file"),
    (lambda t: ["--suite", "smoke", "--deepspeed", "zero9"],
     "training.deepspeed: unknown DeepSpeed config 'zero9'; accepted: zero1, zero2, zero3, zero3_offload"),
    (lambda t: ["--suite", "smoke", "--deepspeed", bad_deepspeed_json(t)], "is not valid JSON"),
    (lambda t: ["--suite", "smoke", "--reevaluate"], "reevaluate: model 'pythia-baseline' has no finished run"),
    (lambda t: ["--suite", "smoke", "--models", "dual-memory"], "models: unknown 'dual-memory'; accepted: "),
    (lambda t: ["--suite", "smoke", "--max-epochs", "0"], "training.max_epochs: expected a positive integer"),
    (lambda t: ["--suite", "smoke", "--seed", "forty-two"], "argument --seed: invalid int value"),
    (lambda t: ["--suite", write_suite(t, **{"data.val_fraction": 1.5})], "data.val_fraction"),
    (lambda t: ["--suite", write_suite(t, **{"evaluation.position_bins": [16, 32]})], "evaluation.position_bins"),
    (lambda t: ["--suite", write_suite(t, unknown_section={})], "suite.unknown_section: unknown key"),
    (lambda t: ["--suite", write_suite(t, **{"data.retrieval_fraction": 1.5})], "data.retrieval_fraction: expected"),
    (lambda t: ["--suite", write_suite(t, **{"training.curriculum": [{"sample_len": 64}]})],
     "training.curriculum[0]: expected a mapping with the keys sample_len, num_samples, max_epochs and optionally "
     "retrieval_fraction, retrieval_mix"),
    (lambda t: ["--suite", write_suite(t, **{"training.curriculum": [
        {"sample_len": 64, "num_samples": 8, "max_epochs": 1, "retrieval_mix": {"needle": 1.0}}]})],
     "training.curriculum[0].retrieval_mix: expected a mapping of families"),
    (lambda t: ["--suite", write_suite(t, **{"training.curriculum": [
        {"sample_len": 64, "num_samples": 0, "max_epochs": 1}]})], "training.curriculum[0].num_samples"),
    (lambda t: ["--suite", write_suite(t, **{"training.curriculum": [
        {"sample_len": 32, "num_samples": 8, "max_epochs": 1}]})], "segment_len: 64"),
    (lambda t: ["--suite", write_suite(t, **{"evaluation.retrieval": {"single": {"filler": [16]}}})],
     "evaluation.retrieval.single.filler"),
    (lambda t: ["--suite", write_suite(t, **{"evaluation.retrieval_depths": [150]})], "evaluation.retrieval_depths"),
    (lambda t: ["--suite", write_suite(t, **{"evaluation.retrieval": {"single": {"filler": [1024]}},
                                             "evaluation.needle_gap": 100})],
     "evaluation.needle_gap: 100 tokens would leave a needle within two segments"),
    (lambda t: ["--suite", write_suite(t, **{"evaluation.long_ppl_length": 4096, "evaluation.long_ppl_bins": [9]})],
     "evaluation.long_ppl_bins"),
    (lambda t: ["--suite", write_suite(t, models=[{"name": "x", "bptt_segments": -2}])], "bptt_segments: expected"),
    (lambda t: ["--suite", broken_checkpoint(t, truncate=True)], "checkpoint: "),
    (lambda t: ["--suite", broken_checkpoint(t, truncate=False)], "is truncated or corrupted"),
    # Found by trying the commands as a new user would:
    (lambda t: ["--suite", "smoke", "--output-dir", "/proc/infini-bench-out"],
     "output-dir: '/proc/infini-bench-out' is not writable"),
    (lambda t: ["--suite", "smoke", "--data", binary_file(t, "corpus.txt")], "data: "),
    (lambda t: ["--suite", "smoke", "--data", binary_file(t, "corpus.txt")], "corpus.txt is not UTF-8 text"),
    (lambda t: ["--suite", "smoke", "--data", binary_file(t, "corpus.parquet")], "is not a Parquet file"),
    (lambda t: ["--suite", "smoke", "--seed", "-1"], "data.seed: expected a non-negative integer, got -1"),
    (lambda t: ["leaderboard", str(t / "missing"), "smoke"], "output_dir: no results of suite 'smoke' in "),
    (lambda t: ["leaderboard", str(t / "a_file"), "smoke"], "output_dir: no results of suite 'smoke' in "),
    (lambda t: ["--suite", write_suite(t, base="nope")], "suite.base: unknown 'nope'"),
    (lambda t: ["--suite", write_suite(t, base="suite.yaml")], "suite.yaml' extends itself"),
    (lambda t: ["--suite", write_suite(t, **{"data.reversal_facts": 36, "evaluation.num_distractors": 12})],
     "data.reversal_facts: expected at least 39 (3 relations, each with 12 distractors from 12 other facts of its "
     "relation), got 36"),
    (lambda t: ["--suite", write_suite(t, **{"data.reversal_relations": 9})],
     "data.reversal_relations: expected at most 8, got 9"),
]


def binary_file(tmp_path, name) -> str:
    """Random bytes under a text or Parquet file name."""
    path = tmp_path / name
    path.write_bytes(bytes(range(256)) * 64)
    return str(path)


def bad_deepspeed_json(tmp_path) -> str:
    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 2,}}')
    return str(path)


def broken_checkpoint(tmp_path, truncate: bool):
    """An output folder whose single-memory run has a damaged newest checkpoint."""
    from safetensors.torch import save_file

    checkpoint = tmp_path / "out" / "runs" / "smoke" / "single-memory" / "trainer" / "checkpoint-50"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    save_file({"w": torch.zeros(1000)}, checkpoint / "model.safetensors")
    data = (checkpoint / "model.safetensors").read_bytes()
    (checkpoint / "model.safetensors").write_bytes(data[:len(data) // 2] if truncate else b"\x00garbage" * 50)
    return "smoke"


def tree(path):
    """Every path below `path`, with size and modification time for files (a folder's own time
    changes when the writability probe makes and removes a folder in it)."""
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (str(p),)
                  for p in path.rglob("*")) if path.exists() else []


@pytest.mark.parametrize("make_args,message", BAD_INPUTS)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, make_args, message):
    """`python -m infini_bench.run ...` (or `python -m infini_bench.leaderboard ...` for rows
    starting with "leaderboard"): exit status 2, one `error: <field>: ...` line, and nothing
    written anywhere under the test's folder (which holds the output folder)."""
    (tmp_path / "a_file").write_text("not a folder")
    args = make_args(tmp_path)
    entry = leaderboard_main if args[0] == "leaderboard" else main
    args = args[1:] if entry is leaderboard_main else args
    if entry is main and "--output-dir" not in args:
        args += ["--output-dir", str(tmp_path / "out")]
    before = tree(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(entry(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert tree(tmp_path) == before


@pytest.mark.slow
def test_bad_input_through_the_real_command(tmp_path):
    result = run_cli("--suite", "smoke", "--preset", "pythia-1b", "--output-dir", str(tmp_path / "out"),
                     cache=tmp_path / "cache")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: preset: unknown 'pythia-1b'; accepted: pythia-14m, pythia-70m, pythia-160m, pythia-410m"]
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_unknown_suite_lists_the_accepted_ones(capsys, tmp_path, monkeypatch):
    """Every shipped suite is listed, wherever the command runs (no ./configs here)."""
    monkeypatch.chdir(tmp_path)
    assert main(["--suite", "nope", "--output-dir", str(tmp_path / "out")]) == 2
    assert "accepted: core, core-seq, long, long-smoke, long-sweep, smoke or a .yaml path" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("suite", ["core", "core-seq", "smoke"])
def test_shipped_suites_resolve(suite, device, tmp_path):
    config = load_run_config(suite, device, output_dir=str(tmp_path))
    assert [m.name for m in config.models] == ["Pythia baseline", "Single Memory", "Multi Memory (4)",
                                               "Hierarchical (4)"]
    scopes = {config.model_config(m).memory_scope for m in config.models}
    if suite == "core":
        assert scopes == {"stream"} and config.training.lr == (1e-4 if device == "cuda" else 1e-3)
        if device == "cuda":  # the reference sizes
            assert (config.preset, config.data.num_samples, config.data.sample_len) == ("pythia-70m", 5000, 256)
            assert config.data.tokenizer == "pythia" and config.training.max_epochs == 30
    if suite == "core-seq":
        assert scopes == {"sequence"} and {config.model_config(m).segment_len for m in config.models} == {64}


@pytest.mark.parametrize("suite_seed", [0, 42])
def test_every_seed_gets_its_own_run_directory(tmp_path, suite_seed):
    """--seed 0 --seeds 2 once wrote both seeds into one folder (0 was taken for "no seed")."""
    config = load_run_config("smoke", "cpu", output_dir=str(tmp_path), seed=suite_seed, num_seeds=2)
    spec = config.models[1]
    names = [run_dir(dataclasses.replace(config, training=dataclasses.replace(config.training, seed=s)), spec,
                     suite_seed=config.training.seed).name for s in seeds_of(config)]
    assert names == ["single-memory", f"single-memory-seed{suite_seed + 1}"]


def test_a_suite_extends_its_base(tmp_path):
    """core-seq names `base: core` and holds only its differences."""
    core = load_run_config("core", "cpu", output_dir=str(tmp_path))
    seq = load_run_config("core-seq", "cpu", output_dir=str(tmp_path))
    assert (seq.data, seq.training, seq.evaluation, seq.preset) == (core.data, core.training, core.evaluation,
                                                                     core.preset)
    assert [m.name for m in seq.models] == [m.name for m in core.models]
    for a, b in zip(core.models, seq.models):
        assert b.overrides == {**a.overrides, "memory_scope": "sequence", "segment_len": 64}
    assert seq.suite == "core-seq" and seq.description != core.description


@pytest.mark.slow
def test_a_tiny_suite_learns_its_facts_forward_and_not_backward(tmp_path):
    """End to end (data, training, scoring, leaderboard): a tiny model trained on the forward
    sentences of 22 facts knows them forward, far above the never-trained controls, while its
    backward accuracy stays within the controls' 95% Wilson interval."""
    suite = write_suite(tmp_path, **{"models": [{"name": "Single Memory", "memory_type": "single"}],
                                     "data.num_samples": 60, "data.reversal_facts": 22, "data.reversal_relations": 2,
                                     "data.reversal_repeats": 100, "training.lr": 3.0e-3, "training.max_epochs": 4,
                                     "training.patience": 4})
    result = run_cli("--suite", suite, "--output-dir", str(tmp_path), cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads((tmp_path / "runs" / "smoke" / "single-memory" / "results.json").read_text())
    rev, n = r["reversal"], r["reversal"]["facts"]
    wilson = {key: stats.binomtest(round(rev[key] * n), n).proportion_ci(method="wilson")
              for key in ("control_forward_acc", "control_backward_acc")}
    assert rev["forward_acc"] >= 0.9 and rev["forward_acc"] > wilson["control_forward_acc"].high
    assert rev["backward_acc"] <= wilson["control_backward_acc"].high
    markdown = (tmp_path / "leaderboard" / "smoke.md").read_text()
    assert table_rows(markdown, "Reversal curse")["Single Memory"][-1].startswith("consistent with the curse")
