"""Leaderboard: markdown tables (pandas + tabulate) and PNG plots, rebuilt from results.json files.

Every number shown is read from one run directory's results.json, so the leaderboard can be
rebuilt at any time (`python -m infini_bench.leaderboard <output-dir> <suite>`) and two runs
finishing together cannot lose each other's rows.
"""

import fcntl
import json
import os
import sys
import tempfile
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .cli import ArgumentParser, fail
from .io import atomic_write_text
from .stats import mean_ci
from .suites import find_suite, read_suite


def has_results(runs_dir: Path) -> bool:
    return any(Path(runs_dir).glob("*/results.json"))


def load_results(runs_dir: Path) -> list[dict]:
    results = []
    for path in sorted(Path(runs_dir).glob("*/results.json")):
        results.append(json.loads(path.read_text()))
    return sorted(results, key=lambda r: r.get("order", 0))


def _fmt(value, digits=1):
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _kilobytes(n):
    return "—" if not n else f"{n / 1000:.0f} KB"


def summary_table(results):
    rows = []
    for r in results:
        ci = r["validation"].get("ppl_bootstrap_ci95")
        rows.append({
            "model": r["model"],
            "best val PPL": _fmt(r["best_val_ppl"], 2),
            "95% CI (bootstrap)": f"{ci[0]:.2f}–{ci[1]:.2f}" if ci else "—",
            "best epoch": r["best_epoch"],
            "epochs run": r["epochs_trained"],
            "recall-token PPL": _fmt(r["validation"].get("recall_ppl"), 2),
            "memory state": _kilobytes(r["memory_bytes"]),
            "parameters": f"{r['parameters']:,}",
            "train time": f"{r['train_time_s'] / 60:.1f} min",
        })
    return pd.DataFrame(rows)


def curves_table(results):
    epochs = sorted({c["epoch"] for r in results for c in r["curve"]})
    table = {"epoch": epochs}
    lengths = {c["epoch"]: c["sample_len"] for r in results for c in r["curve"] if "sample_len" in c}
    if lengths:  # a length curriculum: which stage each epoch belongs to
        table["sample length"] = [lengths.get(e, "—") for e in epochs]
    for r in results:
        by_epoch = {c["epoch"]: c for c in r["curve"]}
        table[f"{r['model']} (train / val)"] = [
            f"{_fmt(by_epoch[e].get('train_ppl'), 2)} / {_fmt(by_epoch[e]['val_ppl'], 2)}" if e in by_epoch else "—"
            for e in epochs]
    return pd.DataFrame(table)


def _by_start(buckets):
    """Position-bucket labels "start-end" in numeric order (results files store keys sorted as text)."""
    return sorted(buckets, key=lambda b: int(b.split("-")[0]))


def position_table(results):
    bins = _by_start({b for r in results for b in r["validation"]["position_ppl"]})
    table = {"positions": bins}
    for r in results:
        table[r["model"]] = [_fmt(r["validation"]["position_ppl"].get(b)) for b in bins]
    return pd.DataFrame(table)


def reversal_table(results):
    rows = []
    for r in results:
        rev = r["reversal"]
        rows.append({
            "model": r["model"],
            "forward PPL": _fmt(rev["forward_ppl"]),
            "backward PPL": _fmt(rev["backward_ppl"]),
            "gap": _fmt(rev["ppl_gap"]),
            "forward acc": f"{rev['forward_acc']:.3f} ± {rev['forward_acc_stderr']:.3f}",
            "backward acc": f"{rev['backward_acc']:.3f} ± {rev['backward_acc_stderr']:.3f}",
        })
    return pd.DataFrame(rows)


def _length_label(n: int) -> str:
    return f"{n // 1048576}M" if n % 1048576 == 0 else f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _beyond(limit) -> str:
    return f"n/a (context {limit:,})"


def passkey_summary_table(results, metric="accuracy"):
    """Mean over depths of pass-key accuracy (or the key's log-probability), per model and length."""
    rows = []
    for r in results:
        grid = r["passkey"]
        row = {"model": r["model"]}
        for length in grid["lengths"]:
            cells = list(grid[metric][str(length)].values())
            row[_length_label(length)] = (_beyond(grid["context_limit"]) if None in cells
                                          else f"{sum(cells) / len(cells):.2f}")
        rows.append(row)
    return pd.DataFrame(rows)


def passkey_table(result):
    """One model's accuracy by needle depth (rows) and length (columns)."""
    grid = result["passkey"]
    table = {"depth": [f"{d}%" for d in grid["depths"]]}
    for length in grid["lengths"]:
        cells = grid["accuracy"][str(length)]
        table[_length_label(length)] = [_beyond(grid["context_limit"]) if cells[str(d)] is None
                                        else f"{cells[str(d)]:.2f}" for d in grid["depths"]]
    return pd.DataFrame(table)


def long_ppl_table(results):
    buckets = _by_start(results[0]["long_ppl"]["position_ppl"])
    table = {"positions": buckets}
    for r in results:
        long = r["long_ppl"]
        table[r["model"]] = [_beyond(long["context_limit"]) if long["position_ppl"][b] is None
                             else _fmt(long["position_ppl"][b], 2) for b in buckets]
    return pd.DataFrame(table)


def _markdown(df):
    return df.to_markdown(index=False, disable_numparse=True)


def _figure(figsize) -> tuple[Figure, object]:
    """A figure with one axes, drawn off screen (no pyplot, no global backend)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _save_png(fig, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def plot(results, plot_dir: Path, suite: str) -> list[Path]:
    paths = []
    fig, ax = _figure((7, 4.5))
    for r in results:
        epochs = [c["epoch"] for c in r["curve"]]
        line, = ax.plot(epochs, [c["val_ppl"] for c in r["curve"]], marker="o", label=f"{r['model']} val")
        ax.plot(epochs, [c.get("train_ppl") for c in r["curve"]], linestyle="--", color=line.get_color(),
                label=f"{r['model']} train")
    ax.set(xlabel="epoch", ylabel="PPL (log scale)", yscale="log", title=f"{suite}: learning curves")
    ax.legend(fontsize=7)
    paths.append(plot_dir / f"{suite}-learning-curves.png")
    _save_png(fig, paths[-1])

    fig, ax = _figure((7, 4.5))
    for r in results:
        bins = _by_start(r["validation"]["position_ppl"])
        ax.plot(bins, [r["validation"]["position_ppl"][b] for b in bins], marker="o", label=r["model"])
    ax.set(xlabel="token positions in the sample", ylabel="validation PPL", title=f"{suite}: PPL by position")
    ax.legend(fontsize=8)
    paths.append(plot_dir / f"{suite}-position-ppl.png")
    _save_png(fig, paths[-1])
    return paths


def plot_passkey(results, plot_dir: Path, suite: str) -> dict:
    """A needle-in-a-haystack heatmap per model (depth x length, accuracy); grey = beyond context."""
    paths = {}
    for r in results:
        grid = r["passkey"]
        values = np.array([[grid["accuracy"][str(n)][str(d)] if grid["accuracy"][str(n)][str(d)] is not None
                            else np.nan for n in grid["lengths"]] for d in grid["depths"]], dtype=float)
        fig, ax = _figure((1.1 * len(grid["lengths"]) + 2, 0.55 * len(grid["depths"]) + 1.5))
        cmap = matplotlib.colormaps["RdYlGn"].copy()
        cmap.set_bad("lightgrey")
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(grid["lengths"])), [_length_label(n) for n in grid["lengths"]])
        ax.set_yticks(range(len(grid["depths"])), [f"{d}%" for d in grid["depths"]])
        limit = f" (context {grid['context_limit']:,})" if grid["context_limit"] else ""
        ax.set(xlabel="haystack length (tokens)", ylabel="needle depth", title=f"{r['model']}{limit}: pass key")
        fig.colorbar(image, ax=ax, label="accuracy")
        paths[r["model"]] = plot_dir / f"{suite}-passkey-{r['slug']}.png"
        _save_png(fig, paths[r["model"]])
    return paths


def plot_long_ppl(results, plot_dir: Path, suite: str) -> Path:
    fig, ax = _figure((7, 4.5))
    for r in results:
        buckets = r["long_ppl"]["position_ppl"]
        points = [(int(b.split("-")[1]), buckets[b]) for b in _by_start(buckets) if buckets[b] is not None]
        ax.plot(*zip(*points), marker="o", label=r["model"])
    ax.set(xscale="log", xlabel="position in the document (end of bucket, tokens)", ylabel="PPL",
           title=f"{suite}: PPL by position in one long document")
    ax.legend(fontsize=8)
    path = plot_dir / f"{suite}-long-ppl.png"
    _save_png(fig, path)
    return path


def write_leaderboard(runs_dir: Path, leaderboard_dir: Path, suite: str, description: str = "") -> Path | None:
    """Rebuild `leaderboard/<suite>.md` and its plots from every results.json of the suite.

    Reading the results and writing the files happen under an exclusive lock, so of two runs
    finishing together the later rebuild sees both results. None (and nothing written) if the
    suite has no results yet."""
    if not has_results(runs_dir):
        return None
    leaderboard_dir = Path(leaderboard_dir)
    leaderboard_dir.mkdir(parents=True, exist_ok=True)
    with open(leaderboard_dir / f".{suite}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _write_leaderboard(runs_dir, leaderboard_dir, suite, description)


SEED_METRICS = {  # label: (getter, digits)
    "best val PPL": (lambda r: r["best_val_ppl"], 2),
    "recall-token PPL": (lambda r: r["validation"].get("recall_ppl"), 2),
    "forward acc": (lambda r: r.get("reversal", {}).get("forward_acc"), 3),
    "backward acc": (lambda r: r.get("reversal", {}).get("backward_acc"), 3),
    "backward PPL": (lambda r: r.get("reversal", {}).get("backward_ppl"), 1),
}


def _pm(mean, half, digits):
    return _fmt(mean, digits) if half != half else f"{mean:.{digits}f} ± {half:.{digits}f}"


def seeds_table(groups):
    rows = []
    for name, runs in groups.items():
        row = {"model": name, "n": len(runs)}
        for label, (get, digits) in SEED_METRICS.items():
            mean, half, _ = mean_ci([get(r) for r in runs])
            row[label] = _pm(mean, half, digits)
        rows.append(row)
    return pd.DataFrame(rows)


def differences_table(groups, reference: str):
    """Each model minus the reference, paired by seed: mean difference, 95% CI, significance."""
    base = {r["seed"]: r for r in groups[reference]}
    rows = []
    for name, runs in groups.items():
        if name == reference:
            continue
        for label, (get, digits) in SEED_METRICS.items():
            diffs = [get(r) - get(base[r["seed"]]) for r in runs
                     if r["seed"] in base and get(r) is not None and get(base[r["seed"]]) is not None]
            mean, half, n = mean_ci(diffs)
            verdict = ("—" if n < 2 else "undetermined (no spread)" if half == 0 else
                       "not significant" if abs(mean) <= half else "significant")
            rows.append({"model": name, "metric": label, f"difference vs {reference}": _pm(mean, half, digits),
                         "n (paired seeds)": n, "": verdict})
    return pd.DataFrame(rows)


def _write_leaderboard(runs_dir, leaderboard_dir, suite, description, reference="Single Memory"):
    every_run = load_results(runs_dir)
    groups = {}
    for r in sorted(every_run, key=lambda r: (r.get("order", 0), r["seed"])):
        groups.setdefault(r["model"], []).append(r)
    results = [runs[0] for runs in groups.values()]  # the suite's own seed: per-run tables
    several_seeds = any(len(runs) > 1 for runs in groups.values())
    plots = plot(results, leaderboard_dir / "plots", suite)
    first = results[0]
    lines = [f"# {suite}", ""]
    if description:
        lines += [description.strip(), ""]
    lines += [f"Preset `{first['preset']}`, data `{first['data']['source']}` "
              f"({first['data']['train_samples']} train / {first['data']['validation_samples']} validation samples "
              f"of {first['data']['sample_len']} tokens, tokenizer `{first['data']['tokenizer']}`), "
              f"device `{first['device']}`, seed {first['seed']}, commit `{(first.get('git_commit') or '?')[:12]}`. "
              f"Each row comes from `runs/{suite}/<model>/results.json`.", ""]
    lines += ["## Summary", "", _markdown(summary_table(results)), ""]
    lines += ["## Learning curves (PPL)", "", _markdown(curves_table(results)), "",
              f"![learning curves](plots/{plots[0].name})", ""]
    lines += ["## Validation PPL by token position", "", _markdown(position_table(results)), "",
              f"![position-wise PPL](plots/{plots[1].name})", ""]
    if several_seeds:
        reference = reference if reference in groups else next(iter(groups))
        lines += ["## Across seeds", "",
                  "Mean ± half-width of the 95% t-interval over seeds (one run per seed: initialisation "
                  "and data order; the same validation set), from every `results.json` of the suite. "
                  "The tables above and below show the lowest seed.", "",
                  _markdown(seeds_table(groups)), "",
                  f"## Differences vs {reference} (paired by seed)", "",
                  "A difference whose interval contains zero is not significant; with identical "
                  "differences on every seed the interval has no width and nothing can be concluded.", "",
                  _markdown(differences_table(groups, reference)), ""]
    with_passkey = [r for r in results if "passkey" in r]
    if with_passkey:
        heatmaps = plot_passkey(with_passkey, leaderboard_dir / "plots", suite)
        grid = with_passkey[0]["passkey"]
        lines += ["## Pass-key retrieval", "",
                  f"A five-digit key hidden at each depth of a filler haystack; accuracy = the whole key is "
                  f"the greedy continuation of the question ({grid['docs_per_cell']} document(s) per cell; "
                  f"the documents of the `infini_passkey` lm-eval tasks). A model with a context limit is "
                  f"not scored past it (n/a), never on a cut haystack.", "",
                  "Accuracy, mean over depths:", "", _markdown(passkey_summary_table(with_passkey)), "",
                  "Log-probability of the whole key (nats), mean over depths: it rises before accuracy does "
                  "when the memory retrieves part of the key.", "",
                  _markdown(passkey_summary_table(with_passkey, "key_logprob")), ""]
        for r in with_passkey:
            lines += [f"### {r['model']}", "", _markdown(passkey_table(r)), "",
                      f"![{r['model']} pass key](plots/{heatmaps[r['model']].name})", ""]
    with_long = [r for r in results if "long_ppl" in r]
    if with_long:
        curve = plot_long_ppl(with_long, leaderboard_dir / "plots", suite)
        lines += ["## Long-document PPL by position", "",
                  f"One embedded-corpus document of {with_long[0]['long_ppl']['tokens']:,} tokens (its people "
                  f"are stated at the start and recalled throughout), read whole through the memory; PPL of "
                  f"the predictions made from each bucket of positions.", "",
                  _markdown(long_ppl_table(with_long)), "", f"![long-document PPL](plots/{curve.name})", ""]
    with_reversal = [r for r in results if "reversal" in r]
    if with_reversal:
        lines += ["## Reversal curse", "",
                  f"PPL of whole fact sentences (forward = as trained, backward = reversed; the reference's "
                  f"definition) and accuracy of ranking the right answer first among "
                  f"{with_reversal[0]['reversal']['distractors']} distractors "
                  f"({with_reversal[0]['reversal']['facts']} facts).", "",
                  _markdown(reversal_table(with_reversal)), ""]
    path = leaderboard_dir / f"{suite}.md"
    atomic_write_text(path, "\n".join(lines))
    return path


SWEEP_METRICS = {  # file-name stem: (label, getter, digits, lower is better)
    "val-ppl": ("best val PPL", lambda r: r["best_val_ppl"], 2, True),
    "recall-ppl": ("recall-token PPL", lambda r: r["validation"].get("recall_ppl"), 2, True),
    "backward-acc": ("backward acc", lambda r: r.get("reversal", {}).get("backward_acc"), 3, False),
}


def sweep_table(trials, runs: dict):
    """One row per trial; the best validation PPL per memory count (and type) in bold."""
    best = {}
    for t in trials:
        r = runs.get(t["trial"])
        if r is not None:
            group = (t.get("memory_type"), t.get("num_memories"))
            if group not in best or r["best_val_ppl"] < runs[best[group]]["best_val_ppl"]:
                best[group] = t["trial"]
    rows = []
    for t in trials:
        r = runs.get(t["trial"])
        status = (f"failed: {t['error']}" if t["error"] else "finished" if r is not None else
                  f"stopped early (epoch {t['last_reported'].get('epoch', '?')}, val PPL "
                  f"{_fmt(t['last_reported'].get('val_ppl'), 2)})")
        row = {"trial": t["trial"], **{k: t[k] for k in ("memory_type", "num_memories", "lr") if k in t},
               "status": status}
        for label, get, digits, _ in SWEEP_METRICS.values():
            row[label] = _fmt(get(r), digits) if r is not None else "—"
        row["epochs run"] = r["epochs_trained"] if r is not None else "—"
        row["train time"] = f"{r['train_time_s'] / 60:.1f} min" if r is not None else "—"
        if best.get((t.get("memory_type"), t.get("num_memories"))) == t["trial"]:
            row = {k: f"**{v}**" for k, v in row.items()}
        rows.append(row)
    return pd.DataFrame(rows)


def plot_sweep(trials, runs: dict, plot_dir: Path, name: str) -> list[Path]:
    """A heatmap per metric over (num_memories, lr), one panel per memory type; blank = no result."""
    memories = sorted({t.get("num_memories") for t in trials}, key=lambda v: (v is None, v))
    rates = sorted({t.get("lr") for t in trials}, key=lambda v: (v is None, v))
    types = sorted({t.get("memory_type") or "" for t in trials})
    paths = []
    for stem, (label, get, digits, lower) in SWEEP_METRICS.items():
        fig = Figure(figsize=(1.3 * len(rates) + 2.5, 0.5 * len(memories) + 1.8))
        axes = fig.subplots(1, len(types), squeeze=False)
        for ax, kind in zip(axes[0], types):
            values = np.full((len(memories), len(rates)), np.nan)
            for t in trials:
                r = runs.get(t["trial"])
                value = get(r) if r is not None else None
                if (t.get("memory_type") or "") == kind and value is not None:
                    values[memories.index(t.get("num_memories")), rates.index(t.get("lr"))] = value
            cmap = matplotlib.colormaps["viridis_r" if lower else "viridis"].copy()
            cmap.set_bad("lightgrey")
            image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto")
            for (i, j), v in np.ndenumerate(values):
                ax.text(j, i, "—" if np.isnan(v) else f"{v:.{digits}f}", ha="center", va="center", fontsize=8,
                        color="white")
            ax.set_xticks(range(len(rates)), [f"{lr:g}" if lr is not None else "—" for lr in rates])
            ax.set_yticks(range(len(memories)), [str(m) for m in memories])
            ax.set(xlabel="learning rate", ylabel="num_memories", title=f"{kind or name}: {label}")
            fig.colorbar(image, ax=ax)
        paths.append(plot_dir / f"{name}-{stem}.png")
        _save_png(fig, paths[-1])
    return paths


def write_sweep_leaderboard(trials, root: Path, leaderboard_dir: Path, name: str, description: str = "") -> Path:
    """leaderboard/sweeps/<name>.md and heatmaps: every trial of the sweep, with the numbers of
    its own results.json (failed and early-stopped trials say so)."""
    runs = {r["slug"]: r for r in load_results(root)}
    leaderboard_dir = Path(leaderboard_dir)
    plots = plot_sweep(trials, runs, leaderboard_dir / "plots", name)
    failed = [t for t in trials if t["error"]]
    lines = [f"# Sweep: {name}", ""]
    if description:
        lines += [description.strip(), ""]
    first = next(iter(runs.values()), None)
    if first is not None:
        lines += [f"Suite `{first['suite']}`, preset `{first['preset']}`, device `{first['device']}`, seed "
                  f"{first['seed']}, commit `{(first.get('git_commit') or '?')[:12]}`. {len(trials)} trials, "
                  f"{len(runs)} finished, {len(failed)} failed; each row's numbers come from "
                  f"`runs/sweeps/{name}/<trial>/results.json`. Bold: the best validation PPL for each "
                  f"memory count.", ""]
    lines += [_markdown(sweep_table(trials, runs)), ""]
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    path = leaderboard_dir / f"{name}.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m infini_bench.leaderboard",
                            description="Rebuild a suite's leaderboard from its results.json files")
    parser.add_argument("output_dir", help="the folder a suite run wrote (its runs/ and leaderboard/)")
    parser.add_argument("suite", help="suite name (runs/<suite>/)")
    args = parser.parse_args(argv)
    root = Path(args.output_dir)
    runs = root / "runs" / args.suite
    if not has_results(runs):
        fail(f"output_dir: no results of suite {args.suite!r} in {runs} (no <model>/results.json)")
    try:  # the suite file's description, as a suite run writes it
        description = read_suite(find_suite(args.suite)).get("description", "")
    except ValueError:
        description = ""
    print(write_leaderboard(runs, root / "leaderboard", args.suite, description))
    return 0


if __name__ == "__main__":
    sys.exit(main())
