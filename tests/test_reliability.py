"""Reliability: resume after SIGKILL, nothing unpickles."""

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, run_cli

PACKAGE = REPO / "infini_bench"


def without_times(markdown: str) -> str:
    return re.sub(r"\d+\.\d min", "<time>", markdown)


def run_until(out: Path, cache: Path, condition, timeout=600) -> str:
    """Start the smoke suite and SIGKILL it as soon as `condition()` holds; returns what it printed."""
    env = {**os.environ, "INFINI_BENCH_CACHE": str(cache)}
    log = out.parent / "killed-run.log"
    with log.open("w") as stdout:
        process = subprocess.Popen([sys.executable, "-m", "infini_bench.run", "--suite", "smoke", "--output-dir",
                                    str(out)], cwd=REPO, env=env, stdout=stdout, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not condition():
            assert process.poll() is None, "the run ended before the kill point"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
    return log.read_text()


@pytest.mark.slow
def test_killed_three_times_then_resumed_equals_uninterrupted(smoke, tmp_path):
    reference, _ = smoke
    out, cache = tmp_path / "out", tmp_path / "cache"
    runs = out / "runs" / "smoke"

    def checkpoints(slug):
        return list((runs / slug / "trainer").glob("checkpoint-*/trainer_state.json"))

    # 1: while the first model trains, before its first checkpoint is complete.
    run_until(out, cache, lambda: (runs / "pythia-baseline" / "metrics.jsonl").exists())
    # 2: the second model has a checkpoint (an epoch done), so it must resume from it.
    run_until(out, cache, lambda: bool(checkpoints("single-memory")))
    assert not (runs / "single-memory" / "results.json").exists()
    # 3: right after the third model's results are written; the second continued from its checkpoint.
    printed = run_until(out, cache, lambda: (runs / "multi-memory-4" / "results.json").exists())
    assert re.search(r"resuming from .*single-memory/trainer/checkpoint-\d+ \(epoch 1\)", printed)
    finished = {slug: (runs / slug / "results.json").stat().st_mtime_ns
                for slug in ("pythia-baseline", "single-memory", "multi-memory-4")}

    final = run_cli("--suite", "smoke", "--output-dir", str(out), cache=cache)
    assert final.returncode == 0, final.stderr[-3000:]
    for slug, mtime in finished.items():  # finished models are not retrained
        assert (runs / slug / "results.json").stat().st_mtime_ns == mtime
    assert final.stdout.count("already finished") == 3
    for slug in finished | {"hierarchical-4": 0}:
        ours = json.loads((runs / slug / "results.json").read_text())
        theirs = json.loads((reference / "runs" / "smoke" / slug / "results.json").read_text())
        for key in ("best_val_ppl", "validation", "test", "reversal", "curve", "best_epoch", "epochs_trained"):
            assert ours[key] == theirs[key], (slug, key)
    assert without_times((out / "leaderboard" / "smoke.md").read_text()) == \
        without_times((reference / "leaderboard" / "smoke.md").read_text())


def test_no_loading_path_unpickles():
    """Every torch.load in the package passes weights_only=True; YAML loads are safe; no pickle."""
    for path in list(PACKAGE.rglob("*.py")) + list((REPO / "tasks").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert all(a.name not in ("pickle", "dill", "cloudpickle") for a in node.names), path
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = getattr(node.func.value, "id", None)
                if (owner, node.func.attr) == ("torch", "load"):
                    weights_only = [k for k in node.keywords if k.arg == "weights_only"]
                    assert weights_only and getattr(weights_only[0].value, "value", None) is True, path
                if owner == "yaml":
                    assert node.func.attr in ("safe_load", "safe_dump", "dump"), (path, node.func.attr)


@pytest.mark.slow
def test_two_runs_finishing_together_both_appear(smoke, tmp_path):
    reference, _ = smoke
    out, cache = tmp_path / "out", tmp_path / "cache"
    env = {**os.environ, "INFINI_BENCH_CACHE": str(cache), "OMP_NUM_THREADS": "1"}  # a core each, not 2 x 2 threads
    processes = [subprocess.Popen([sys.executable, "-m", "infini_bench.run", "--suite", "smoke", "--output-dir",
                                   str(out), "--models", slug], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
                 for slug in ("single-memory", "multi-memory-4")]
    for process in processes:
        assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]
    markdown = (out / "leaderboard" / "smoke.md").read_text()
    for slug, name in (("single-memory", "Single Memory"), ("multi-memory-4", "Multi Memory (4)")):
        ppl = json.loads((reference / "runs" / "smoke" / slug / "results.json").read_text())["test"]["ppl"]
        assert re.search(rf"\| {re.escape(name)} +\| {ppl:.2f}\d* \[", markdown)
    assert not list((out / "leaderboard").glob("*.tmp")) and not list((out / "leaderboard").glob(".*.png"))


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    import torch

    from infini_bench import InfiniPythiaConfig, build_model
    from infini_bench.config import DataConfig, EvalConfig, TrainConfig
    from infini_bench.data import prepare_data
    from infini_bench.training import NonFiniteLoss, train

    data = prepare_data(DataConfig(num_samples=40, sample_len=32, tokenizer="bpe", vocab_size=300,
                                   reversal_facts=12, reversal_repeats=0), tmp_path / "cache")
    model = build_model(InfiniPythiaConfig.from_preset("pythia-14m", vocab_size=384, memory_type="single",
                                                       segment_len=16))
    steps_per_epoch = -(-len(data.train) // 8)
    forward, calls = model.forward, []

    def forward_with_nan_at_step(*args, **kwargs):
        out = forward(*args, **kwargs)
        if model.training:
            calls.append(1)
            if len(calls) == steps_per_epoch + 2:
                out.loss = out.loss * torch.nan
        return out

    model.forward = forward_with_nan_at_step
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLoss, match=rf"^training: loss is nan at step {steps_per_epoch + 2} .*"
                                            rf"checkpoint-{steps_per_epoch}$"):
        train(model, data, run_dir, TrainConfig(batch_size=8, max_epochs=3, lr=1e-3), EvalConfig(),
              torch.device("cpu"))
    kept = run_dir / "trainer" / f"checkpoint-{steps_per_epoch}"
    assert (kept / "model.safetensors").exists() and (kept / "trainer_state.json").exists()
    assert not (run_dir / "model.safetensors").exists()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
