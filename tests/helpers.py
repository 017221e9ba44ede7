"""Builders shared by the tests: tiny models, the command-line runner, suite files, table readers."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from infini_bench import InfiniPythiaConfig, build_model

REPO = Path(__file__).resolve().parents[1]


def tiny_model(memory_type="single", num_memories=None, *, vocab: int, seed=0, **overrides):
    """A pythia-14m-dims model with a small vocabulary and 8-token segments (in eval mode):
    num_memories 1 for single (and the baseline), 2 otherwise unless given."""
    torch.manual_seed(seed)
    overrides.setdefault("segment_len", 8)
    if num_memories is None:
        num_memories = 1 if memory_type in ("single", "none") else 2
    config = InfiniPythiaConfig.from_preset("pythia-14m", vocab_size=vocab, memory_type=memory_type,
                                            num_memories=num_memories, **overrides)
    return build_model(config).eval()


def needle_tokenizer(cache):
    """The small byte-level BPE tokenizer that retrieval documents are built with in the tests,
    trained by the real data path on a corpus that mixes every retrieval family in."""
    from infini_bench.config import FAMILIES
    from infini_bench.data import DataConfig, prepare_data

    config = DataConfig(num_samples=60, sample_len=128, tokenizer="bpe", vocab_size=600, reversal_repeats=0,
                        retrieval_fraction=0.2, retrieval_mix={f: 1.0 for f in FAMILIES})
    return prepare_data(config, cache).tokenizer


def run_cli(*args, cache, cwd=REPO, module="infini_bench.run", env=None, python=sys.executable, timeout=900):
    """Run a command-line entry point in a fresh interpreter, as a user would (`env`: extra variables)."""
    env = {**os.environ, "INFINI_BENCH_CACHE": str(cache), "PYTHONUNBUFFERED": "1", **(env or {})}
    command = [str(python), "-m", module, *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def write_suite(tmp_path, copy_of="smoke", **changes) -> str:
    """tmp_path/suite.yaml: a copy of a shipped suite with dotted keys changed (e.g.
    "data.num_samples": 0); its path."""
    suite = yaml.safe_load((REPO / "configs" / "suites" / f"{copy_of}.yaml").read_text())
    for dotted, value in changes.items():
        node = suite
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return str(path)


def table_rows(markdown: str, heading: str) -> dict[str, list[str]]:
    """Rows of the first table under `## heading`, keyed by their first cell."""
    section = markdown.split(f"## {heading}\n", 1)[1]
    rows = {}
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("|:"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
        elif rows and not line.startswith("|"):
            break
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_env(cache: Path, **env) -> dict:
    """This interpreter's launchers (deepspeed, torchrun, ray) first on PATH, a free port."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "INFINI_BENCH_CACHE": str(cache), "MASTER_PORT": str(free_port()), **env}
