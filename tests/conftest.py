import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from helpers import run_cli  # noqa: E402  (after the path and the offline switches are set)


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """The smoke suite, run once: (output folder, completed process)."""
    out = tmp_path_factory.mktemp("smoke")
    result = run_cli("--suite", "smoke", "--output-dir", str(out), cache=out / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result
