"""A plain install works: a wheel installed into a fresh virtualenv runs the smoke suite and an
lm-eval task from a folder outside the checkout, with the configs and tasks it carries."""

import json
import subprocess
import sys

import pytest

from helpers import REPO, run_cli


@pytest.mark.slow
def test_wheel_in_a_fresh_virtualenv_runs_the_smoke_suite_and_a_task(tmp_path):
    # The virtualenv sees this environment's packages (torch, transformers, ... as a package
    # index would install them) but gets infini-bench only from the wheel: its own
    # site-packages come first on sys.path, before the editable checkout.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("infini_bench-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(tmp_path / "venv")], check=True)
    python = tmp_path / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    user = tmp_path / "user"
    user.mkdir()
    where = subprocess.run([str(python), "-c", "import infini_bench; print(infini_bench.__file__)"], cwd=user,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(tmp_path / "venv")) and not where.startswith(str(REPO))

    suite = run_cli("--suite", "smoke", "--models", "single-memory", "--output-dir", "out", cache=tmp_path / "cache",
                    cwd=user, python=python)
    assert suite.returncode == 0, suite.stderr[-3000:]
    assert f"({tmp_path / 'venv'}" in suite.stdout.splitlines()[0]  # the suite file the wheel carries
    assert (user / "out" / "leaderboard" / "smoke.md").exists()

    tasks = run_cli("tasks", cache=tmp_path / "cache", cwd=user, python=python, module="infini_bench.paths")
    include = tasks.stdout.strip()
    assert include.startswith(str(tmp_path / "venv")) and include.endswith("infini_bench/tasks")
    run_dir = user / "out" / "runs" / "smoke" / "single-memory"
    lm_eval = run_cli("--model", "infini_pythia", "--model_args", f"pretrained={run_dir}", "--tasks",
                      "infini_reversal_forward", "--include_path", include, "--output_path", str(tmp_path / "lm"),
                      cache=tmp_path / "cache", cwd=user, python=python, module="lm_eval")
    assert lm_eval.returncode == 0, lm_eval.stderr[-3000:]
    (results,) = (tmp_path / "lm").rglob("results_*.json")
    accuracy = json.loads(results.read_text())["results"]["infini_reversal_forward"]["acc,none"]
    recorded = json.loads((run_dir / "results.json").read_text())["reversal"]["forward_acc"]
    assert accuracy == pytest.approx(recorded, abs=1e-9)  # the task and the leaderboard agree



def test_paths_prints_the_shipped_folders(capsys):
    """In a checkout the shipped folders are the repository's (a wheel: inside the package)."""
    from infini_bench.paths import main

    assert main(["tasks"]) == 0 and main(["configs"]) == 0
    assert capsys.readouterr().out.split() == [str(REPO / "tasks"), str(REPO / "configs")]
