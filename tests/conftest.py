import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, cache, cwd=REPO, module="infini_bench.run", env=None):
    """Run a command-line entry point in a fresh interpreter, as a user would (`env`: extra variables)."""
    env = {**os.environ, "INFINI_BENCH_CACHE": str(cache), "PYTHONUNBUFFERED": "1", **(env or {})}
    command = [sys.executable, "-m", module, *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """The smoke suite, run once: (output folder, completed process)."""
    out = tmp_path_factory.mktemp("smoke")
    result = run_cli("--suite", "smoke", "--output-dir", str(out), cache=out / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result
