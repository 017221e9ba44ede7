"""Ray Tune sweeps on CPU: one row per trial with the trial's own numbers, a failing trial,
an interrupted sweep resumed without retraining finished trials."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from infini_bench.stats import wilson

from helpers import REPO, launcher_env, run_cli

pytestmark = pytest.mark.slow  # every test here runs the command line end to end


def write_sweep(tmp_path, **changes) -> str:
    sweep = yaml.safe_load((REPO / "configs" / "sweeps" / "smoke.yaml").read_text())
    sweep.update(changes)
    path = tmp_path / f"{sweep['name']}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return str(path)


def sweep_cli(*args, cache):
    return run_cli(*args, cache=cache, module="infini_bench.sweep")


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    result = sweep_cli("--config", "smoke", "--output-dir", str(out), cache=out / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_one_row_per_trial_with_the_trials_own_numbers(smoke_sweep):
    root = smoke_sweep / "runs" / "sweeps" / "smoke"
    trials = json.loads((root / "trials.json").read_text())
    assert [(t["num_memories"], t["lr"]) for t in trials] == [(1, 1e-3), (1, 3e-3), (2, 1e-3), (2, 3e-3)]
    assert all(t["error"] is None for t in trials)
    text = (smoke_sweep / "leaderboard" / "sweeps" / "smoke.md").read_text()
    rows = {line.split("|")[1].strip("* "): line for line in text.splitlines() if line.startswith("| ")}
    best = {}
    for t in trials:
        run_dir = root / t["trial"]
        results = json.loads((run_dir / "results.json").read_text())
        recorded = json.loads((run_dir / "run_config.json").read_text())
        assert recorded["run"]["training"]["lr"] == t["lr"] and recorded["model"]["num_memories"] == t["num_memories"]
        row = rows[t["trial"]]
        assert f"{results['best_val_ppl']:.3f}" in row and f"{results['test']['ppl']:.3f}" in row and f"{results['reversal']['backward_acc']:.3f}" in row
        scored = [x for c in results["retrieval"]["cells"] if c["depth"] != "local" for x in c["correct"]]
        assert len(scored) == 6 and f"{sum(scored) / 6:.2f} [" in row and "(n = 6)" in row
        # Every epoch was reported to Tune with the trial's own validation PPL.
        epochs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        (tune_dir,) = (root / "tune").glob(f"{t['trial']}*")
        reported = [json.loads(x) for x in (tune_dir / "result.json").read_text().splitlines()]
        assert [r["val_ppl"] for r in reported if not r.get("final")] == pytest.approx([e["eval_ppl"] for e in epochs])
        if t["num_memories"] not in best or results["best_val_ppl"] < best[t["num_memories"]][1]:
            best[t["num_memories"]] = (t["trial"], results["best_val_ppl"])
    for trial, _ in best.values():
        assert rows[trial].count("**") >= 2  # the best of each memory count is bold
    assert "Retrieval targets: multikey on the filler haystack at 512 tokens." in text
    assert "multikey filler 512 [95% Wilson]" in text and "multikey filler 512 local control" in text
    # The leaderboard says the sweep cannot show a memory-count effect exactly when no trial's local
    # control is above the guessing level (multikey: 1/4) at its Wilson lower bound.
    learnt = []
    for t in trials:
        cells = json.loads((root / t["trial"] / "results.json").read_text())["retrieval"]["cells"]
        local = [x for c in cells if c["depth"] == "local" for x in c["correct"]]
        learnt.append(wilson(sum(local) / len(local), len(local))[0] > 1 / 4)
    assert ("cannot show what memory count does to retrieval" in text) == (not any(learnt))
    assert "## Does memory count matter?" in text and "Cochran's Q" in text
    # The leaderboard command rebuilds the same page from the trials' results.
    from infini_bench.leaderboard import main as leaderboard_main

    assert leaderboard_main([str(smoke_sweep), "sweeps/smoke"]) == 0
    assert (smoke_sweep / "leaderboard" / "sweeps" / "smoke.md").read_text() == text
    for stem in ("val-ppl", "recall-ppl", "backward-acc", "retrieval-multikey-filler-512"):
        png = smoke_sweep / "leaderboard" / "sweeps" / "plots" / f"smoke-{stem}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and f"plots/{png.name}" in text


def test_a_failing_trial_is_reported_and_the_others_finish(tmp_path):
    path = write_sweep(tmp_path, name="failing", grid={"num_memories": [1], "lr": [1.0e-3, 1.0e9]}, max_epochs=1)
    result = sweep_cli("--config", path, "--output-dir", str(tmp_path), cache=tmp_path / "cache")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "error: 1 of 2 trials failed" in result.stderr
    trials = json.loads((tmp_path / "runs" / "sweeps" / "failing" / "trials.json").read_text())
    assert trials[0]["error"] is None and "training: loss is" in trials[1]["error"]
    text = (tmp_path / "leaderboard" / "sweeps" / "failing.md").read_text()
    (row,) = [line for line in text.splitlines() if "m1-lr1e09" in line]
    assert "failed: " in row and "loss is" in row
    assert (tmp_path / "runs" / "sweeps" / "failing" / "m1-lr0p001" / "results.json").exists()


def test_interrupted_sweep_resumes_without_retraining_finished_trials(tmp_path):
    # Two one-epoch trials, one at a time (2 CPUs per trial), so that the interrupt falls between
    # the finished and the unfinished trial.
    path = write_sweep(tmp_path, name="resumed", grid={"num_memories": [1, 2], "lr": [1.0e-3]}, max_epochs=1,
                       resources={"cpu": 2, "gpu": 0})
    env = {**os.environ, "INFINI_BENCH_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "infini_bench.sweep", "--config", path, "--output-dir", str(tmp_path)]
    root = tmp_path / "runs" / "sweeps" / "resumed"
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while not list(root.glob("*/results.json")) and time.time() < deadline and process.poll() is None:
        time.sleep(1)
    finished = {p.parent.name: p.stat().st_mtime_ns for p in root.glob("*/results.json")}
    assert finished and process.poll() is None
    process.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves the experiment state and stops
    process.communicate(timeout=300)
    done_before = {p.parent.name for p in root.glob("*/results.json")}
    assert len(done_before) < 2
    result = sweep_cli("--config", path, "--output-dir", str(tmp_path), "--resume", cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    trials = json.loads((root / "trials.json").read_text())
    assert len(trials) == 2 and all(t["error"] is None for t in trials)
    assert all((root / t["trial"] / "results.json").exists() for t in trials)
    for name, mtime in finished.items():  # finished trials were not retrained
        assert (root / name / "results.json").stat().st_mtime_ns == mtime


def test_bad_sweep_files_give_one_line_errors(tmp_path, capsys):
    from infini_bench.sweep import main

    for changes, message in [({"grid": {"num_memory": [1]}}, "sweep.grid: expected a mapping of lists"),
                             ({"grid": {"lr": [-1]}}, "sweep.grid.lr: expected positive numbers"),
                             ({"suite": "nope"}, "suite: unknown 'nope'"),
                             ({"scheduler": {"type": "pbt"}}, "sweep.scheduler: expected"),
                             ({"model": {"memory_type": "dual"}}, "memory_type: expected one of"),
                             # long-smoke shares its first stage, which has no lr of its own
                             ({"suite": "long-smoke"}, "sweep.grid: the suite's shared first stage would differ")]:
        code = main(["--config", write_sweep(tmp_path, **changes), "--output-dir", str(tmp_path / "out")])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), lines
        assert not (tmp_path / "out").exists()
    # The same through the real command line.
    result = sweep_cli("--config", "smoke", "--resume", "--output-dir", str(tmp_path / "out"), cache=tmp_path / "cache")
    assert result.returncode == 2 and "resume: no sweep 'smoke' to resume" in result.stderr
    assert not (tmp_path / "out").exists()


def ray_cli(*args, env):
    return subprocess.run(["ray", *args], env=env, capture_output=True, text=True, timeout=180)


def test_two_node_ray_cluster_runs_the_smoke_sweep_through_ray_address(smoke_sweep, tmp_path):
    """A head and a worker node (one CPU each) started with `ray start` on this machine;
    launch/ray_sweep.sh with RAY_ADDRESS set runs two trials of the smoke sweep on that cluster:
    they spread over both nodes and give the numbers of the local sweep."""
    # Ray 2.60's `ray start --head` turns token authentication on; the worker and the driver
    # read the same token (~/.ray/auth_token) in token mode.
    env = launcher_env(tmp_path / "cache", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token")
    port = env["MASTER_PORT"]
    try:
        head = ray_cli("start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", env=env)
        assert head.returncode == 0, head.stderr[-3000:]
        worker = ray_cli("start", f"--address=127.0.0.1:{port}", "--num-cpus=1", env=env)
        assert worker.returncode == 0, worker.stderr[-3000:]
        path = write_sweep(tmp_path, name="two-nodes", grid={"num_memories": [1, 2], "lr": [1.0e-3]})
        result = subprocess.run(["bash", "launch/ray_sweep.sh", path, str(tmp_path)], cwd=REPO,
                                env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert f"Ray at 127.0.0.1:{port}" in result.stdout
    finally:
        ray_cli("stop", "--force", env=env)
    trials = json.loads((tmp_path / "runs" / "sweeps" / "two-nodes" / "trials.json").read_text())
    assert len(trials) == 2 and len({t["last_reported"]["node"] for t in trials}) == 2  # both nodes ran trials
    local = {t["trial"]: t for t in json.loads((smoke_sweep / "runs" / "sweeps" / "smoke" / "trials.json").read_text())}
    for ours in trials:
        assert ours["error"] is None
        assert ours["last_reported"]["val_ppl"] == pytest.approx(local[ours["trial"]]["last_reported"]["val_ppl"],
                                                                 rel=1e-9)
