"""Where shipped files live (suite, sweep and DeepSpeed configs; lm-eval tasks), and output checks.

    python -m infini_bench.paths tasks     # the folder to give lm_eval as --include_path
    python -m infini_bench.paths configs   # the shipped configs (suites/, sweeps/, deepspeed/)

In a checkout they are the repository's `configs/` and `tasks/`; an installed wheel carries
copies inside the package (`infini_bench/configs`, `infini_bench/tasks`). A `configs/<kind>`
folder in the working directory comes first, so users can add their own.
No torch import: used while a command line is still being checked.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .cli import ArgumentParser

PACKAGE = Path(__file__).resolve().parent


def shipped(name: str) -> Path:
    """The installed copy of a shipped folder ("configs" or "tasks"), else the checkout's."""
    installed = PACKAGE / name
    return installed if installed.is_dir() else PACKAGE.parent / name


def config_dirs(kind: str) -> list[Path]:
    """Where configs of a kind ("suites", "sweeps", "deepspeed") are looked up, in order."""
    return [Path.cwd() / "configs" / kind, shipped("configs") / kind]


def find_config(kind: str, name: str, field: str, what: str, suffixes=(".yaml", ".yml")) -> Path:
    """The file for `name` (a name under configs/<kind>/ or a path ending in one of `suffixes`);
    ValueError naming `field` and the accepted names otherwise."""
    if name.endswith(suffixes):
        if not Path(name).is_file():
            raise ValueError(f"{field}: file {name!r} does not exist")
        return Path(name)
    for d in config_dirs(kind):
        if (d / f"{name}{suffixes[0]}").is_file():
            return d / f"{name}{suffixes[0]}"
    known = sorted({p.stem for d in config_dirs(kind) for p in d.glob(f"*{suffixes[0]}")})
    raise ValueError(f"{field}: unknown {what}{name!r}; accepted: {', '.join(known) or '(none found)'} "
                     f"or a {suffixes[0]} path")


def source_commit() -> str | None:
    """The git commit of this checkout, with -dirty for uncommitted changes to anything but the
    leaderboards (they are outputs: regenerating them does not make the code dirty); None
    outside a git checkout."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!leaderboard"],
                               cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def check_writable(path: Path, field: str = "output-dir"):
    """ValueError unless a folder can be made at `path`: tried for real in its nearest existing
    parent (a permission check alone passes for root, even under /proc), then removed."""
    path = Path(path)
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{field}: {str(path)!r} is not writable ({existing} is not a folder)")
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".infini-bench-check-"))
    except OSError as error:
        raise ValueError(f"{field}: {str(path)!r} is not writable ({error.strerror or error})") from None


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m infini_bench.paths", description="Print where a shipped folder is")
    parser.add_argument("folder", choices=["tasks", "configs"])
    args = parser.parse_args(argv)
    print(shipped(args.folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
