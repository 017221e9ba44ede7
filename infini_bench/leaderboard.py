"""Leaderboard: markdown tables (pandas + tabulate) and PNG plots, rebuilt from results.json files.

Every number shown is read from one run directory's results.json, so the leaderboard can be
rebuilt at any time (`python -m infini_bench.leaderboard <output-dir> <suite>`) and two runs
finishing together cannot lose each other's rows.
"""

import fcntl
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from .cli import ArgumentParser, fail
from .io import atomic_write_text
from .paths import find_config, source_commit
from .seeds import BOOTSTRAP, stream_seed
from .data.needles import LOCAL
from .stats import (MIN_BLOCKS, Metric, bootstrap_interval, cochran_q, holm, mcnemar_min_p, mean_ci, newcombe,
                    paired_binary, paired_bootstrap, paired_t, pairing_permutation, ratio_change, tarone_testable,
                    wilson)
from .suites import find_suite, read_suite


class RunsDisagree(ValueError):
    """Runs that would be pooled or compared differ (or are of an older format)."""


def has_results(runs_dir: Path) -> bool:
    return any(Path(runs_dir).glob("*/results.json"))


def load_results(runs_dir: Path, seeds=None, models=None) -> list[dict]:
    """Every results.json (of `seeds` and of the `models` named, if given: not runs of a model the
    suite has since dropped), each with `dir` (its run directory) added."""
    results = []
    for path in sorted(Path(runs_dir).glob("*/results.json")):
        r = json.loads(path.read_text())
        if (seeds is None or r["seed"] in seeds) and (models is None or r["model"] in models):
            results.append({**r, "dir": str(path.parent)})
    return sorted(results, key=lambda r: (r.get("order", 0), r["seed"]))


def _flat(d, prefix=""):
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# Fields of a run config's "run" part left out of its fingerprint: where the run was written and
# which other models the suite selected do not change what the run is.
UNHASHED_RUN_FIELDS = ("output_dir", "models", "shared_stage_model")


def _first_difference(a: dict, b: dict, skip=()) -> str:
    fa, fb = _flat(a), _flat(b)
    for key in sorted(set(fa) | set(fb)):
        if key not in skip and fa.get(key) != fb.get(key):
            return f"{key} ({fa.get(key)!r} vs {fb.get(key)!r})"
    return "their resolved configs"


def group_runs(results) -> dict:
    """Runs by model, pooled across seeds only when their configs agree (seed aside), and models
    compared only when their data agrees; ValueError naming the differing field otherwise."""
    groups = {}
    for r in results:
        if "config_fingerprint" not in r or not (Path(r["dir"]) / "per_item.json").is_file():
            raise RunsDisagree(f"runs: {r['dir']} was written by an older infini-bench (no config fingerprint or "
                             f"per_item.json); rerun the suite, which retrains it")
        groups.setdefault(r["model"], []).append(r)
    for name, runs in groups.items():
        for r in runs[1:]:
            if r["config_fingerprint"] != runs[0]["config_fingerprint"]:
                a, b = (json.loads((Path(x["dir"]) / "run_config.json").read_text()) for x in (runs[0], r))
                field = _first_difference(a, b, skip=("run.training.seed", *(f"run.{k}" for k in UNHASHED_RUN_FIELDS),
                                                           "fingerprint"))
                raise RunsDisagree(f"runs: {name} seed {r['seed']} and seed {runs[0]['seed']} differ in {field}; "
                                 f"runs are pooled across seeds only when their configs agree")
    first = results[0]
    for r in results[1:]:
        if r["data"]["config"] != first["data"]["config"]:
            field = _first_difference(first["data"]["config"], r["data"]["config"])
            raise RunsDisagree(f"runs: {r['model']} and {first['model']} differ in data.{field}; models are "
                             f"compared only on the same data")
    return groups


def _fmt(value, digits=1):
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _digits(width: float, at_least: int) -> int:
    """Decimals that show an interval of this width with two significant digits (never ± 0.00)."""
    if not width or width != width or width <= 0:
        return at_least
    return max(at_least, min(8, 1 - math.floor(math.log10(width))))


def _with_ci(value, ci, digits=2) -> str:
    if value is None or ci is None or any(c != c for c in ci):
        return _fmt(value, digits)
    if ci[0] == ci[1] == value:
        return f"{value:.{digits}f} (the same on every resample)"
    d = _digits((ci[1] - ci[0]) / 2, digits)
    return f"{value:.{d}f} [{ci[0]:.{d}f}, {ci[1]:.{d}f}]"


def _pm(mean, half, digits):
    if half != half:
        return _fmt(mean, digits)
    if half == 0:
        return f"{mean:.{digits}f} (no spread)"
    d = _digits(half, digits)
    return f"{mean:.{d}f} ± {half:.{d}f}"


def _run_commits(results) -> str:
    """The runs' commit, or, when runs of different commits are compared, which model ran at which."""
    commits = {}
    for r in results:
        commits.setdefault((r.get("git_commit") or "?")[:12], []).append(r["model"])
    if len(commits) == 1:
        return f"commit `{next(iter(commits))}`"
    return "runs of different commits: " + "; ".join(f"`{c}` ({', '.join(models)})" for c, models in commits.items())


def _written_by(results) -> str:
    """Names the commit that wrote the tables when it is not the runs' own (a rebuild by a later
    commit from the same results files)."""
    now = source_commit()
    runs = {r.get("git_commit") for r in results}
    shown = now[:12] + ("-dirty" if now and now.endswith("-dirty") else "") if now else ""
    return f" (tables written by commit `{shown}` from these runs)" if now and runs != {now} else ""


def _kilobytes(n):
    return "—" if not n else f"{n / 1000:.0f} KB"


def _items(r) -> dict:
    """The run's per_item.json, read once per rebuild (`_write_leaderboard` keeps it on the run)."""
    if "items" not in r:
        r["items"] = json.loads((Path(r["dir"]) / "per_item.json").read_text())
    return r["items"]


def _rng(r, what):
    return np.random.default_rng(stream_seed(r["data"]["config"]["seed"], BOOTSTRAP, what, r["slug"]))


# label: (part of per_item.json, numerator (a pair: the first minus the second), denominator or None,
# PPL?, digits, key of its value in results.json); a PPL is better lower, an accuracy higher.
ITEM_METRICS = {
    "test PPL": ("test", "nll", None, True, 2, ("test", "ppl")),
    "recall-token PPL": ("test", "recall_nll", "recall_tokens", True, 2, ("test", "recall_ppl")),
    "forward acc": ("reversal", "forward_correct", None, False, 3, ("reversal", "forward_acc")),
    "backward acc": ("reversal", "backward_correct", None, False, 3, ("reversal", "backward_acc")),
    "backward PPL": ("reversal", "backward_nll", None, True, 1, ("reversal", "backward_ppl")),
    # Trained fact i paired with control fact i (two independent sets of equal size, so resampling
    # the pairs resamples each set): the mean of the differences is the reversal effect.
    "reversal effect": ("reversal", ("backward_correct", "control_backward_correct"), None, False, 3,
                        ("reversal", "reversal_effect")),
}


def _per_item(part: dict, key) -> np.ndarray:
    """One per-item array of a part of per_item.json; a pair of keys: the first minus the second."""
    if isinstance(key, tuple):
        return np.asarray(part[key[0]], dtype=float) - np.asarray(part[key[1]], dtype=float)
    return np.asarray(part[key], dtype=float)


def item_metric(items: dict, label: str) -> Metric | None:
    part, num, den, log_scale = ITEM_METRICS[label][:4]
    if part not in items:
        return None
    numerator = _per_item(items[part], num)
    denominator = _per_item(items[part], den) if den else np.ones(len(numerator))
    return Metric(numerator, denominator, log_scale)


def _blocks(r, part) -> tuple[int, int]:
    """(block, align) of the run's resampling: test samples as its results.json says, facts one
    by one (each is scored with an empty memory)."""
    return (r["test"]["bootstrap_block"], r["test"]["bootstrap_align"]) if part == "test" else (1, 1)


def summary_table(results):
    rows = []
    for r in results:
        items = _items(r)
        test = r["test"]
        recall = item_metric(items, "recall-token PPL")
        recall_ci = bootstrap_interval(recall, *_blocks(r, "test"), _rng(r, "test-recall")) \
            if test.get("recall_ppl") is not None else None
        rows.append({
            "model": r["model"],
            "test PPL [95% CI]": _with_ci(test["ppl"], test["ppl_bootstrap_ci95"]),
            "recall-token PPL [95% CI]": _with_ci(test.get("recall_ppl"), recall_ci),
            "n": f"{test['samples']} samples, {test.get('recall_tokens', 0)} recall tokens",
            "val PPL (kept checkpoint)": _fmt(r["best_val_ppl"], 3),
            "best epoch": r["best_epoch"],
            "epochs run": r["epochs_trained"],
            "stop": r["stop"],
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
            f"{_fmt(by_epoch[e].get('train_ppl'), 3)} / {_fmt(by_epoch[e]['val_ppl'], 3)}" if e in by_epoch else "—"
            for e in epochs]
    return pd.DataFrame(table)


def _by_start(buckets):
    """Position-bucket labels "start-end" in numeric order (results files store keys sorted as text)."""
    return sorted(buckets, key=lambda b: int(b.split("-")[0]))


def position_table(results):
    bins = _by_start({b for r in results for b in r["test"]["position_ppl"]})
    table = {"positions": bins}
    for r in results:
        items = _items(r)["test"]["position_nll"]
        cells = []
        for b in bins:
            if b not in items:  # a windowed model (context limit) has other bins
                cells.append("—")
                continue
            values = np.asarray(items[b])
            ci = bootstrap_interval(Metric(values, np.ones(len(values)), True), *_blocks(r, "test"),
                                    _rng(r, f"test-position-{b}"))
            cells.append(_with_ci(r["test"]["position_ppl"][b], ci, 1))
        table[r["model"]] = cells
    return pd.DataFrame(table)


REVERSAL_ACCURACY = {  # column: per-item correctness in per_item.json's reversal part
    "forward, trained": "forward_correct",
    "forward, control": "control_forward_correct",
    "backward, trained": "backward_correct",
    "backward, control": "control_backward_correct",
}
KNOWN_FORWARD = 0.5  # lower 95% bound of forward (trained - control) above which the facts count as learned


def _reversal_parts(groups, seeds):
    """(row label, part of per_item.json, runs) for every model, and again with the warmed
    memory for the models that have it (stream scope)."""
    out = []
    for part, suffix in (("reversal", ""), ("reversal_warm", " (warmed memory)")):
        for name, runs in groups.items():
            runs = [r for r in runs if r["seed"] in seeds]
            if all(part in r for r in runs):
                if any("control_backward_scores" not in _items(r)[part] for r in runs):
                    raise RunsDisagree(f"runs: {runs[0]['dir']} was written by an older infini-bench (no control "
                                       f"facts or choice scores); rerun the suite, which retrains it")
                out.append((name + suffix, part, runs))
    return out


def _seed_mean(runs, part, key, log_scale=False, rng=None):
    """Seed-mean of a per-fact metric and its 95% bootstrap interval over facts (the same facts
    resampled for every seed: it covers the sampling of facts, not training randomness)."""
    metrics = [Metric(_per_item(_items(r)[part], key), np.ones(len(_items(r)[part][key])), log_scale) for r in runs]
    return float(np.mean([m.value() for m in metrics])), bootstrap_interval(metrics, 1, 1, rng)


def _accuracy(runs, part, key) -> float:
    return float(np.mean([np.mean(_items(r)[part][key]) for r in runs]))


def _pairing_test(runs, part, direction, rng):
    """`pairing_permutation` of the trained facts' questions in `direction`, over the seeds."""
    return pairing_permutation([_items(r)[part][f"{direction}_scores"] for r in runs],
                               _items(runs[0])[part][f"{direction}_candidates"], rng)


def _curse_verdict(forward_effect, forward_test, effect, backward_test) -> str:
    """The reversal curse in words: the facts learned forward (trained above control by more than
    KNOWN_FORWARD at the lower bound, and above a pairing-blind ranking), then whether backward
    answers beat a ranking blind to the pairing (permutation test) or the controls."""
    (f_value, f_ci), (e_value, e_ci) = forward_effect, effect
    forward_known = f_ci[0] > KNOWN_FORWARD and (forward_test is None or forward_test["p"] < 0.05)
    if not forward_known:
        return (f"cannot show a curse: forward not well above control ({f_value:+.2f}, lower bound "
                f"{f_ci[0]:+.2f} ≤ {KNOWN_FORWARD})")
    backward_known = backward_test["p"] < 0.05 if backward_test is not None else e_ci[0] > 0
    test = f"permutation p = {backward_test['p']:.2f}; " if backward_test is not None else ""
    if backward_known:
        return f"no full curse: backward above a pairing-blind ranking ({test}effect {e_value:+.3f})"
    return (f"consistent with the curse: learned forward ({f_value:+.2f} [{f_ci[0]:+.2f}, {f_ci[1]:+.2f}] over "
            f"control), backward not detectably above a pairing-blind ranking ({test}effect at most "
            f"{e_ci[1]:+.2f} at 95%)")


def reversal_table(groups, seeds):
    """Accuracy of the trained and control facts in both directions (seed-means, Wilson with n
    = facts), the reversal effect (Newcombe), the permutation test and the verdict."""
    rows = []
    for label, part, runs in _reversal_parts(groups, seeds):
        rev = runs[0][part]
        n = {"trained": rev["facts"], "control": rev["control_facts"]}
        acc = {column: _accuracy(runs, part, key) for column, key in REVERSAL_ACCURACY.items()}
        row = {"model": label}
        for column, value in acc.items():
            row[f"{column} [95% Wilson]"] = _with_ci(value, wilson(value, n[column.split(", ")[1]]), 3)
        row[f"chance ({rev['score']}, {rev['distractors']} distractors)"] = f"{1 / (rev['distractors'] + 1):.3f}"
        effects = {}
        for direction in ("forward", "backward"):
            a, b = acc[f"{direction}, trained"], acc[f"{direction}, control"]
            effects[direction] = (a - b, newcombe(a, n["trained"], b, n["control"]))
        row["reversal effect (backward trained − control) [95% Newcombe]"] = _with_ci(*effects["backward"], 3)
        tests = {d: _pairing_test(runs, part, d, _rng(runs[0], f"{part}-{d}-pairing")) for d in ("forward", "backward")}
        row["backward, trained: permutation p"] = f"{tests['backward']['p']:.3f}" if tests["backward"] else "—"
        row["n"] = f"{n['trained']} + {n['control']} facts × {len(runs)} seed(s)"
        row["curse"] = _curse_verdict(effects["forward"], tests["forward"], effects["backward"], tests["backward"])
        rows.append(row)
    return pd.DataFrame(rows)


def reversal_ppl_table(groups, seeds):
    """Sentence PPL of the trained facts (the reference's definition) and the reference's gap
    (backward - forward), seed-means with bootstrap intervals over facts."""
    rows = []
    for label, part, runs in _reversal_parts(groups, seeds):
        row = {"model": label}
        for direction in ("forward", "backward"):
            value, ci = _seed_mean(runs, part, f"{direction}_nll", True, _rng(runs[0], f"{part}-{direction}-ppl"))
            row[f"{direction} PPL [95% CI]"] = _with_ci(value, ci, 1)
        metrics_a, metrics_b = ([Metric(_per_item(_items(r)[part], key), np.ones(len(_items(r)[part][key])), True)
                                 for r in runs] for key in ("backward_nll", "forward_nll"))
        gap = paired_bootstrap(metrics_a, metrics_b, 1, 1, _rng(runs[0], f"{part}-ppl-gap"))
        row["gap (backward − forward) [95% CI]"] = _with_ci(gap["difference"], gap["ci95"], 1)
        rows.append(row)
    return pd.DataFrame(rows)


def reference_claim(rows, groups, seeds, reference: str) -> str:
    """One sentence on the reference's "16% improvement" (Multi (4) backward PPL 508.6 vs
    Single's 604.5): the measured Multi - Single difference in backward PPL as a share of
    Single's, with its Holm verdicts; judged on the across-seed interval (the claim is about the
    models, not these facts); empty without Multi and Single Memory."""
    multi = next((r for r in rows if r["metric"] == "backward PPL" and r["model"].startswith("Multi Memory")), None)
    if multi is None or reference != "Single Memory":
        return ""
    single = float(np.mean([_value(r, "backward PPL") for r in groups[reference] if r["seed"] in seeds]))
    boot, t = multi["bootstrap"], multi["t"]
    facts = [100 * v / single for v in [boot["difference"], *boot["ci95"]]]
    text = (f"**The reference's claim.** The reference reported {multi['model']} 16% below Single on backward "
            f"PPL (604.5 → 508.6, one seed). Here {multi['model']} − {reference} = {facts[0]:+.1f}% of "
            f"{reference}'s mean backward PPL over {len(seeds)} seed(s) (over the facts: {_pm_ci(facts)}, "
            f"{_verdict(boot, 'backward PPL', multi['model'], reference)}")
    if not t or t["half_width"] != t["half_width"]:
        return text + "). Fewer than 3 seeds (or no spread): no across-seed interval, so the claim about the " \
                      "models is not tested here."
    seeds_ci = [100 * v / single for v in (t["difference"], t["difference"] - t["half_width"],
                                           t["difference"] + t["half_width"])]
    verdict = _verdict(t, "backward PPL", multi["model"], reference)
    inside = seeds_ci[1] <= -16 <= seeds_ci[2]
    if verdict.startswith(multi["model"]):
        outcome = "the improvement is reproduced in direction (Holm-significant across seeds)"
    elif inside:
        outcome = "the improvement is neither confirmed nor excluded across seeds"
    else:
        outcome = "the improvement is excluded by the across-seed interval"
    return (text + f"; across seeds: {_pm_ci(seeds_ci)}, {verdict}). A 16% reduction lies "
            f"{'inside' if inside else 'outside'} the across-seed interval: {outcome}. Backward PPL here is that "
            "of invented facts with no control for the untrained backward form (the reversal effect above is "
            "the controlled measure), the reference's of its own 33 sentences: directions compare, magnitudes "
            "not.")


def _pm_ci(values) -> str:
    return f"95% CI [{values[1]:+.1f}%, {values[2]:+.1f}%]" if values[1] == values[1] else "no interval"


def _length_label(n: int) -> str:
    if n == 0:
        return "0"
    return f"{n // 1048576}M" if n % 1048576 == 0 else f"{n // 1024}K" if n % 1024 == 0 else str(n)


FAMILY_TEXT = {  # what a document asks, and the accuracy of guessing among its needles' answers
    "single": ("one pass key among five-digit distractor numbers",
               "about 0 (a five-digit key; one of the document's five-digit numbers: about 1 in 40 at 1K)"),
    "multikey": ("the pass key of one of four named keys, stated together in random order",
                 "1/4 (one of the document's keys; the first or last key stated: 1/4 too)"),
    "multivalue": ("all three pass keys of one name, in the order stated",
                   "1/6 for a model that has found the three keys (in some order), less otherwise"),
    "multiquery": ("the pass keys of two of four names (stated together in random order), in one answer",
                   "1/12 (an ordered pair of its keys)"),
    "vt": ("every variable bound to a value through a chain of three (a second chain is a decoy)",
           "1/120 (three of its six names, in order)"),
}
# The guessing level above, as a number (single: one of the ~40 five-digit numbers of a 1K document).
FAMILY_CHANCE = {"single": 1 / 40, "multikey": 1 / 4, "multivalue": 1 / 6, "multiquery": 1 / 12, "vt": 1 / 120}

HAYSTACK_TEXT = {
    "filler": "the training filler, with five-digit distractor numbers (number sentences and decoy codes)",
    "prose": "embedded-corpus documents (people, towns, numbers) with the same distractor sentences: prose, never a "
             "training haystack",
    "heldout": "weather-log text never in any training sample, five-digit log numbers as distractors (does "
               "retrieval generalise beyond the training haystack? Its words are outside the tokenizer's "
               "vocabulary, so a sentence takes about three times the tokens of a filler sentence)",
}


def _reader(r) -> str:
    """A row's name: the model, or for a windowed model the floor it is."""
    limit = r["retrieval"]["context_limit"] if "retrieval" in r else r["long_ppl"]["context_limit"]
    return r["model"] if limit is None else f"Pythia (last {limit:,})"


def _cells(r, family, haystack, length=None, depths=None) -> list[int]:
    """One model's outcomes (0/1 per document) of the cells that match, in document order."""
    return [x for c in r["retrieval"]["cells"] if (c["family"], c["haystack"]) == (family, haystack)
            and (length is None or c["length"] == length) and (depths is None or c["depth"] in depths)
            for x in c["correct"]]


def _scored_depths(r) -> list[str]:
    return [d for d in r["retrieval"]["depths"] if d != LOCAL]


def _wilson_cell(outcomes) -> str:
    if not outcomes:
        return "—"
    k, n = sum(outcomes), len(outcomes)
    low, high = wilson(k / n, n)
    return f"{k / n:.2f} [{low:.2f}, {high:.2f}]"


def retrieval_table(results, family, haystack, depths=None):
    """Accuracy per model and length [95% Wilson] over the scored depths (n = documents x
    depths), or over `depths` (e.g. the local control)."""
    lengths = sorted({c["length"] for c in results[0]["retrieval"]["cells"]
                      if (c["family"], c["haystack"]) == (family, haystack)})
    rows = []
    for r in results:
        row = {"model": _reader(r)}
        for length in lengths:
            row[_length_label(length)] = _wilson_cell(_cells(r, family, haystack, length,
                                                             depths or _scored_depths(r)))
        rows.append(row)
    return pd.DataFrame(rows), lengths


def _documents(r, family, haystack, length, depths) -> list[str]:
    return [x for c in r["retrieval"]["cells"] if (c["family"], c["haystack"], c["length"]) == (family, haystack, length)
            and c["depth"] in depths for x in c["documents"]]


# The pre-specified primary comparison: single NIAH on the training filler (the family the suites train
# most), each memory model against the floor at every length beyond the floor's window.
PRIMARY = ("single", "filler")


def floor_differences(results, cells) -> dict:
    """(model, family, haystack, length) -> memory model minus the floor, paired over the scored
    documents (`stats.paired_binary`), with its `family`: *in view* (the length fits the floor's
    window: every needle is readable without memory, so no test), *primary* (PRIMARY beyond the
    window) or *secondary* (every other cell beyond it). Holm within the primary and within the
    secondary family, over the comparisons that can reach p < 0.05 after correction (Tarone 1990:
    with few discordant documents McNemar's exact test cannot, so they are left out of the count)."""
    floor = next(r for r in results if r["retrieval"]["context_limit"] is not None)
    limit = floor["retrieval"]["context_limit"]
    out = {}
    for r in results:
        if r is floor:
            continue
        for family, haystack, length in cells:
            depths = _scored_depths(r)
            if _documents(r, family, haystack, length, depths) != _documents(floor, family, haystack, length, depths):
                raise RunsDisagree(f"runs: {r['model']} and the floor scored different {family}/{haystack}/{length} "
                                   f"documents; rerun both with the same data seed and tokenizer")
            test = paired_binary(_cells(r, family, haystack, length, depths), _cells(floor, family, haystack, length, depths))
            test["family"] = ("in view" if length <= limit else "primary" if (family, haystack) == PRIMARY
                              else "secondary")
            out[(r["model"], family, haystack, length)] = test
    for name in ("primary", "secondary"):
        family = [t for t in out.values() if t["family"] == name]
        tested = [family[i] for i in tarone_testable([mcnemar_min_p(t["discordant"]) for t in family])]
        for test, p in zip(tested, holm([t["p"] for t in tested])):
            test["holm_p"] = p
    return out


def difference_table(results, differences, family, haystack, lengths):
    rows = []
    for r in results:
        if r["retrieval"]["context_limit"] is not None:
            continue
        row = {"model": r["model"]}
        for length in lengths:
            t = differences[(r["model"], family, haystack, length)]
            mark = (" (in view)" if t["family"] == "in view" else " †" if "holm_p" not in t
                    else " *" if t["holm_p"] < 0.05 else "")
            row[_length_label(length)] = f"{t['difference']:+.2f} [{t['ci95'][0]:+.2f}, {t['ci95'][1]:+.2f}]{mark}"
        rows.append(row)
    return pd.DataFrame(rows)


def plot_retrieval(results, family, haystack, plot_dir: Path, suite: str) -> Path:
    """Heatmaps (depth x length) of one family and haystack, one panel per model; every cell
    says k/n (documents right / documents)."""
    panels = [r for r in results if any((c["family"], c["haystack"]) == (family, haystack)
                                        for c in r["retrieval"]["cells"])]
    grid = panels[0]["retrieval"]
    lengths = sorted({c["length"] for c in grid["cells"] if (c["family"], c["haystack"]) == (family, haystack)})
    depths = grid["depths"]
    fig = Figure(figsize=(1.0 * len(lengths) * len(panels) + 2, 0.5 * len(depths) + 1.8))
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    cmap = matplotlib.colormaps["RdYlGn"]
    for ax, r in zip(axes, panels):
        values = np.zeros((len(depths), len(lengths)))
        for i, depth in enumerate(depths):
            for j, length in enumerate(lengths):
                outcomes = _cells(r, family, haystack, length, [depth])  # none: a local control not scored there
                values[i, j] = np.mean(outcomes) if outcomes else np.nan
                ax.text(j, i, f"{sum(outcomes)}/{len(outcomes)}" if outcomes else "–", ha="center", va="center",
                        fontsize=7)
        image = ax.imshow(values, cmap=cmap, vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(lengths)), [_length_label(n) for n in lengths], fontsize=7)
        ax.set_yticks(range(len(depths)), [d if d == LOCAL else f"{d}%" for d in depths])
        ax.set_title(_reader(r), fontsize=8)
    axes[0].set_ylabel("needle depth")
    fig.supxlabel("haystack length (tokens)", fontsize=8)
    fig.suptitle(f"{suite}: {family}, {haystack} haystack", fontsize=9)
    fig.colorbar(image, ax=list(axes), label="accuracy")
    path = plot_dir / f"{suite}-retrieval-{family}-{haystack}.png"
    _save_png(fig, path)
    return path


def learnt_locally(results, family, haystack) -> dict:
    """Reader -> whether its local control (pooled over lengths) is above the family's guessing
    level at the 95% Wilson lower bound; None without a local control. A model that cannot answer
    with the needle in view cannot show what its memory carries: its misses measure the task."""
    return {_reader(r): _above_chance(_cells(r, family, haystack, depths=[LOCAL]), family) for r in results}


def _above_chance(outcomes, family) -> bool | None:
    """Whether 0/1 outcomes are above the family's guessing level at the 95% Wilson lower bound."""
    return wilson(sum(outcomes) / len(outcomes), len(outcomes))[0] > FAMILY_CHANCE[family] if outcomes else None


def local_control_gaps(results, family, haystack) -> list[str]:
    """"<reader> at <length>" for every length where a reader that passed `learnt_locally` pooled has
    its local control at the guessing level: there its score cannot show its memory either."""
    pooled = learnt_locally(results, family, haystack)
    lengths = sorted({c["length"] for c in results[0]["retrieval"]["cells"] if (c["family"], c["haystack"]) == (family, haystack)})
    return [f"{_reader(r)} at {_length_label(n)}" for r in results if pooled[_reader(r)]
            for n in lengths if _above_chance(_cells(r, family, haystack, n, [LOCAL]), family) is False]


def local_control_verdict(checked: dict) -> str:
    """What a family table can show, from `learnt_locally`: a sentence, empty when every reader passed."""
    if not checked or all(v is None for v in checked.values()):
        return ("No local control was scored, so nothing here checks that the task was learnt: a score at "
                "chance may mean the task, not the memory, failed.")
    failed = [name for name, ok in checked.items() if ok is False]
    if len(failed) == len(checked):
        return ("**This table cannot show a memory effect.** No model's local control (needles right before "
                "the question, pooled over lengths) is above the guessing level at its 95% Wilson lower bound: "
                "with the needle in view they fail as well, so these scores say the task was not learnt, not how "
                "far a memory carries. The protocol must change before they mean anything.")
    if failed:
        return (f"Local control at the guessing level (95% Wilson lower bound) for {', '.join(failed)}: "
                f"{'its' if len(failed) == 1 else 'their'} scores cannot separate a memory that fails from a task "
                f"not learnt.")
    return ""


def retrieval_section(results, plot_dir: Path, suite: str) -> list[str]:
    grid = results[0]["retrieval"]
    pairs = list(dict.fromkeys((c["family"], c["haystack"]) for c in grid["cells"]))
    cells = list(dict.fromkeys((c["family"], c["haystack"], c["length"]) for c in grid["cells"]))
    has_floor = any(r["retrieval"]["context_limit"] is not None for r in results)
    differences = floor_differences(results, cells) if has_floor else {}
    n = grid["docs_per_cell"]
    scored = [d for d in grid["depths"] if d != LOCAL]
    lines = [f"## Long-context retrieval (seed {results[0]['seed']})", "",
             f"RULER-style needle-in-a-haystack documents (`data/needles.py`, the documents of the `infini_niah_*` "
             f"and `infini_vt_*` lm-eval tasks). {n} document(s) per cell (length x depth). Every needle the "
             f"answer depends on ends at least {grid['needle_gap']:,} tokens before the question, "
             f"so local attention cannot read it; depth d% puts the first of them after d% of the haystack "
             f"before that limit. Accuracy = every answer token is the greedy continuation of the question "
             f"(exact match), shown as the mean over the scored depths ({', '.join(d + '%' for d in scored)}; "
             f"n = {n * len(scored)} documents a length) with its 95% Wilson interval. The *local control* "
             f"puts the needles right before the question (no memory needed; the old depth 100%) and is never "
             f"part of a memory score: it checks that a model can answer with the needle in view, and a family "
             f"whose local control is at the guessing level (95% Wilson lower bound, pooled over lengths) for a "
             f"model cannot show that model's memory. It is not an upper bound: a model that has learnt to "
             f"copy keys out of its memory can score lower with the needle in view than far from it."]
    unusable = [f"{family}/{haystack}" for family, haystack in pairs
                if not any(learnt_locally(results, family, haystack).values())]
    if len(unusable) == len(pairs):
        lines += ["", "**No table of this section can show a memory effect**: in every family and haystack the "
                  "local control of every model is at the guessing level or was not scored (see each table)."]
    elif unusable:
        lines += ["", f"Tables that cannot show a memory effect (no model's local control above the guessing "
                  f"level): {', '.join(unusable)}."]
    if has_floor:
        counts = {name: sum(1 for t in differences.values() if t["family"] == name and "holm_p" in t)
                  for name in ("primary", "secondary")}
        limit = next(r for r in results if r["retrieval"]["context_limit"] is not None)["retrieval"]["context_limit"]
        lines += ["", f"*Pythia (last N)* is the baseline reading only the last N tokens of every input (its "
                  f"context): the floor of a model without memory. At lengths up to N ({limit:,}) every needle is "
                  f"in the floor's view, so what it scores there is how well it learnt the task, and a difference "
                  f"to it there, marked *(in view)*, is not a memory comparison and is not tested. *Difference to "
                  f"the floor*: the memory model's accuracy minus the floor's on the same documents, with "
                  f"Newcombe's 95% score interval for paired proportions; * = McNemar exact p < 0.05 after Holm "
                  f"within its family. The primary family, fixed before any run: {PRIMARY[0]} NIAH on the "
                  f"{PRIMARY[1]} haystack beyond N, every memory model; the secondary family: every other cell "
                  f"beyond N. A comparison with few discordant documents cannot reach p < 0.05 at all (McNemar's "
                  f"smallest p is 2 / 2^d for d discordant documents), so each family is cut, as Tarone (1990) "
                  f"does, to the K comparisons that could reach 0.05 / K: {counts['primary']} primary and "
                  f"{counts['secondary']} secondary comparisons are tested, the others are shown without a test "
                  f"(marked †). "
                  f"The intervals are not adjusted for multiplicity. That difference is what the memory adds; "
                  f"an interval that holds 0 is not evidence that it adds nothing."]
    for family, haystack in pairs:
        table, lengths = retrieval_table(results, family, haystack)
        asks, chance = FAMILY_TEXT[family]
        local, _ = retrieval_table(results, family, haystack, [LOCAL])
        notes = [local_control_verdict(learnt_locally(results, family, haystack))]
        gaps = local_control_gaps(results, family, haystack)
        if gaps:
            notes.append(f"Local control at the guessing level at a length although above it pooled: {', '.join(gaps)}; "
                         f"there the score cannot separate a memory that fails from a task not learnt at that length.")
        if has_floor and max(lengths) <= limit:
            notes.append(f"Every length of this table is within the floor's view ({limit:,} tokens): it shows how "
                         f"well the task was learnt, not what a memory carries.")
        unchecked = [n for n in lengths if not any(_cells(r, family, haystack, n, [LOCAL]) for r in results)]
        if unchecked and LOCAL in grid["depths"]:
            notes.append(f"No local control at {', '.join(map(_length_label, unchecked))}: a miss there cannot be "
                         f"told from a task not learnt at that length.")
        verdict = " ".join(note for note in notes if note)
        lines += ["", f"### {family}, {haystack} haystack", "",
                  f"Asks for {asks}; haystack: {HAYSTACK_TEXT[haystack]}. Guessing among the document's "
                  f"answers: {chance}.", "", *([verdict, ""] if verdict else []), _markdown(table), "",
                  f"Local control (needles right before the question; n = {n} a length; — = not scored at that "
                  f"length):", "", _markdown(local), ""]
        if has_floor:
            lines += ["Difference to the floor:", "",
                      _markdown(difference_table(results, differences, family, haystack, lengths)), ""]
        path = plot_retrieval(results, family, haystack, plot_dir, suite)
        lines += [f"![{family}, {haystack}](plots/{path.name})"]
    return lines + [""]


def _recall_metric(r, low, high) -> Metric | None:
    inside = [x for x in r["long_ppl"]["recalls"] if low <= x["distance"] < high]
    if not inside:
        return None
    return Metric(np.array([x["nll"] for x in inside]), np.array([x["tokens"] for x in inside], dtype=float), True)


def recall_ppl_section(results, rng) -> list[str]:
    """Recall-token PPL of the fact-recall document by distance since statement [95% bootstrap
    over recalls]; each memory model's difference to the floor (paired over recalls), and how that
    advantage changes from the bins the floor can see to the ones it cannot (`stats.ratio_change`)."""
    doc = results[0]["long_ppl"]
    edges = sorted(tuple(map(int, b.split("-"))) for b in doc["recall_ppl"])
    bins = [f"{_length_label(low)}–{_length_label(high)}" for low, high in edges]
    table, differences, changes = [], [], []
    floor = next((r for r in results if r["long_ppl"]["context_limit"] is not None), None)
    limit = floor["long_ppl"]["context_limit"] if floor is not None else None
    in_view = [(label, edge) for label, edge in zip(bins, edges) if limit is not None and edge[1] <= limit]
    for r in results:
        row = {"model": _reader(r)}
        for label, (low, high) in zip(bins, edges):
            metric = _recall_metric(r, low, high)
            row[label] = ("— (no recall)" if metric is None else
                          f"{_with_ci(metric.value(), bootstrap_interval(metric, 1, 1, rng))} "
                          f"(n = {len(metric.numerator)})")
        table.append(row)
        if floor is None or r is floor:
            continue
        row, change = {"model": r["model"]}, {"model": r["model"]}
        near = (_recall_metric(r, *in_view[0][1]), _recall_metric(floor, *in_view[0][1])) if in_view else (None,)
        for label, (low, high) in zip(bins, edges):
            mine, theirs = _recall_metric(r, low, high), _recall_metric(floor, low, high)
            if mine is None:
                row[label] = "—"
                continue
            t = paired_bootstrap([mine], [theirs], 1, 1, rng)
            row[label] = f"{t['difference']:+.2f} [{t['ci95'][0]:+.2f}, {t['ci95'][1]:+.2f}]"
            if near[0] is not None and high > limit:
                c = ratio_change(*near, mine, theirs, rng)
                change[label] = f"{c['ratio']:.2f} [{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}]"
        differences.append(row)
        if len(change) > 1:
            changes.append(change)
    if changes:  # what a model that never uses the statements, and so keeps one PPL at every distance, gets
        near = _recall_metric(floor, *in_view[0][1]).value()
        changes.append({"model": "(a model blind to the statements: floor near / floor far)",
                        **{label: f"{near / _recall_metric(floor, low, high).value():.2f}"
                           for label, (low, high) in zip(bins, edges) if label in changes[0]}})
    lines = ["## Long-document recall PPL by distance since statement", "",
             f"One document of {doc['tokens']:,} tokens in which each fact (a person's number, in the corpus's "
             f"words) is stated once and recalled once later; PPL of the recalled number's tokens, binned by the "
             f"tokens between the statement and the recall, as many recalls drawn in each bin. Memory models read "
             f"the whole document through their memory; the floor predicts each recall from the last tokens of "
             f"its window. 95% percentile bootstrap over recalls; n = recalls in the bin. One document, one draw "
             f"of facts: the intervals cover the recalls within it, not other documents.", "",
             _markdown(pd.DataFrame(table)), ""]
    if differences:
        lines += ["Difference to the floor (PPL, memory model minus floor; paired bootstrap over recalls): "
                  "negative = lower PPL than the floor. "
                  + (f"The {in_view[0][0]} bin is in the floor's view (its window, {limit:,} tokens, holds the "
                     f"statement), so a difference there is not the memory's alone: it is also how well each model "
                     f"predicts a recalled number in this document at all. A model far above the floor there too, "
                     f"but not on the test samples of the Summary, is degraded by reading a document "
                     f"this long, not by the recall tokens." if in_view else ""), "",
                  _markdown(pd.DataFrame(differences)), ""]
    if changes:
        lines += [f"The advantage over the floor beyond its window against within it: (memory / floor PPL in the "
                  f"bin) ÷ (memory / floor PPL in the {in_view[0][0]} bin), a difference in differences on the ratio "
                  f"scale, with a 95% bootstrap interval (each bin's recalls resampled on their own, as if "
                  f"independent, paired between the models; n = the recalls of the two bins, the same "
                  f"{in_view[0][0]} bin in every column; one document, so nothing covers other documents). The "
                  f"floor loses the statement beyond its window, so a model that never uses the statements (one "
                  f"PPL at every distance) scores the last row, not 1: only a value below that row says a model "
                  f"uses statements the floor cannot see. Whether a statement helps at all needs a control "
                  f"document without the statements, which is not scored yet.", "",
                  _markdown(pd.DataFrame(changes)), ""]
    return lines


PROBE_COLUMNS = (  # (probe, column, the level it is read against or None)
    ("needle_read_share", "needle's share of the read", None),
    ("control_read_share", "control's share of the read", None),
    ("needle_norm_share", "needle's share of σ(q)·z", "segment_share"),
    ("memory_norm", "‖M_i‖ (mean over i)", None),
    ("norm_norm", "‖z_i‖ (mean over i)", None),
    ("selection_entropy", "selection entropy", "entropy_uniform"),
    ("needle_weight", "weight on the needle's memories", "needle_weight_uniform"),
    ("expansion_gate", "p (fine read)", None),
    ("memory_gate", "g (memory vs local)", None),
)


def _probe_summary(values) -> tuple[float, float, int]:
    """Mean, 95% t half-width and n over documents of one probe (a per-memory probe: its mean over memories)."""
    return mean_ci([float(np.mean(v)) for v in values])


def _probe_cell(values, level=None) -> str:
    mean, half, n = _probe_summary(values)
    cell = f"{mean:.3g}" if math.isnan(half) else f"{mean:.3g} ± {half:.2g}"
    return cell if level is None else f"{cell} ({_probe_summary(level)[0]:.3g})"


def probes_table(results):
    """One row per model, Infini layer and probed length: each probe's mean ± 95% t half-width
    over the documents, and in brackets the level it is read against."""
    rows = []
    for r in results:
        for length, layers in sorted(r["probes"]["lengths"].items(), key=lambda item: int(item[0])):
            for layer, values in layers.items():
                row = {"model": r["model"], "rule": r["probes"]["memory_rule"], "layer": layer,
                       "length": _length_label(int(length)),
                       "tokens written": f"{_probe_summary(values['tokens_written'])[0]:,.0f}"}
                for probe, column, level in PROBE_COLUMNS:
                    row[column] = (_probe_cell(values[probe], values[level] if level else None)
                                   if probe in values else "—")
                rows.append(row)
    return pd.DataFrame(rows)


def plot_probes(r, plot_dir: Path, suite: str) -> Path:
    """One model's probes against tokens written, a line per Infini layer (and memory)."""
    lengths = sorted(r["probes"]["lengths"], key=int)
    layers = list(r["probes"]["lengths"][lengths[0]])
    fig = Figure(figsize=(13, 7))
    axes = fig.subplots(2, 3).ravel()

    def series(layer, probe, memory=None):
        values = [r["probes"]["lengths"][n][layer].get(probe) for n in lengths]
        if values[0] is None:
            return None
        return [float(np.mean([v if memory is None else v[memory] for v in doc])) for doc in values]

    for layer in layers:
        x = series(layer, "tokens_written")
        line, = axes[0].plot(x, series(layer, "needle_read_share"), marker="o", label=f"layer {layer}: needle")
        axes[0].plot(x, series(layer, "control_read_share"), marker="x", linestyle=":", color=line.get_color(),
                     label=f"layer {layer}: control (haystack after the needle)")
        y = series(layer, "needle_norm_share")
        if y is not None:
            line, = axes[1].plot(x, y, marker="o", label=f"layer {layer}")
            axes[1].plot(x, series(layer, "segment_share"), linestyle="--", color=line.get_color(),
                         label=f"layer {layer}: the needle's segments' share of tokens")
        for ax, probe in zip(axes[2:4], ("memory_norm", "norm_norm")):
            first = r["probes"]["lengths"][lengths[0]][layer].get(probe)
            for memory in range(len(first[0]) if first else 0):
                ax.plot(x, series(layer, probe, memory), marker=".", label=f"layer {layer}, memory {memory}")
        for probe, style in (("selection_entropy", "-"), ("needle_weight", ":")):
            y = series(layer, probe)
            if y is not None:
                axes[4].plot(x, y, linestyle=style, marker="o", label=f"layer {layer}: {probe.replace('_', ' ')}")
        for probe, style in (("expansion_gate", "-"), ("memory_gate", ":")):
            y = series(layer, probe)
            if y is not None:
                axes[5].plot(x, y, linestyle=style, marker="o", label=f"layer {layer}: {probe.replace('_', ' ')}")
    titles = ("needle's share of the memory read", "needle's share of σ(q)·z", "‖M_i‖", "‖z_i‖",
              "selection over memories (nats / weight)", "gates")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
        if ax.lines:
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "not part of this memory", ha="center", va="center", transform=ax.transAxes)
    for ax in axes[:4]:
        if ax.lines:
            ax.set_yscale("log")
    fig.supxlabel("tokens written before the question's segment", fontsize=9)
    docs = r["probes"]["docs_per_length"]
    fig.suptitle(f"{suite}: memory probes, {r['model']} ({r['probes']['memory_rule']}; seed {r['seed']}, "
                 + ("one document a length)" if docs == 1 else f"means over {docs} documents)"), fontsize=10)
    path = plot_dir / f"{suite}-probes-{r['slug']}.png"
    _save_png(fig, path)
    return path


def _probe_spread(docs: int) -> str:
    """How a probe cell summarises its documents (one document has no interval)."""
    if docs == 1:
        return ("One document a length: each cell is that document's value, with no interval (a description "
                "of these checkpoints, not a test).")
    return f"Mean ± half-width of the 95% t-interval over the n = {docs} documents (bracketed levels: means)."


def probes_section(results, plot_dir: Path, suite: str) -> list[str]:
    probes = results[0]["probes"]
    plots = [plot_probes(r, plot_dir, suite) for r in results]
    return ["## Memory probes", "",
            f"What each memory holds at the question of single-NIAH documents (seed {results[0]['seed']}, "
            f"{probes['docs_per_length']} document(s) per length, {probes['haystack']} haystack, the needle at "
            f"depth {probes['depth']}%: in the first segments), per Infini layer, averaged over heads "
            f"(infini_bench/probes.py). A span's *trace* is what its segments wrote, carried through every later "
            f"write (a delta rule erases part of it). *Needle's share of the read*: |A(T)| / (|A(T)| + |A(M − T)|) "
            f"for the needle's trace T, the memory read at the question's last token (its segment as the answer is "
            f"scored) split with its weights fixed. *Control's share*: the same for as many haystack segments "
            f"right after the needle's: a memory that keeps the needle better than haystack gives needle > "
            f"control. *Needle's share of σ(q)·z*: its part of the read's normaliser in the memories holding it; "
            f"in brackets the needle's segments' share of the tokens written, which it follows when z only adds "
            f"(the paper's rule). Brackets of the selection columns: ln N (uniform entropy) and the uniform weight "
            f"on the memories holding the needle. {_probe_spread(probes['docs_per_length'])} — = not part of "
            f"this memory.", "",
            _markdown(probes_table(results)), "",
            *[f"![memory probes, {r['model']}](plots/{path.name})" for r, path in zip(results, plots)], ""]


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
        bins = _by_start(r["test"]["position_ppl"])
        ax.plot(bins, [r["test"]["position_ppl"][b] for b in bins], marker="o", label=r["model"])
    ax.set(xlabel="token positions in the sample", ylabel="test PPL", title=f"{suite}: PPL by position")
    ax.legend(fontsize=8)
    paths.append(plot_dir / f"{suite}-position-ppl.png")
    _save_png(fig, paths[-1])
    return paths


def write_leaderboard(runs_dir: Path, leaderboard_dir: Path, suite: str, description: str = "",
                      seeds=None, models=None) -> Path | None:
    """Rebuild `leaderboard/<suite>.md` and its plots from every results.json of the suite (of
    `seeds` and `models` only, if given: a suite run's own seeds and models, not runs left from
    other invocations or from a model the suite no longer has).

    Reading the results and writing the files happen under an exclusive lock, so of two runs
    finishing together the later rebuild sees both results. None (and nothing written) if the
    suite has no results yet; ValueError if runs that would be pooled or compared disagree."""
    if not has_results(runs_dir):
        return None
    leaderboard_dir = Path(leaderboard_dir)
    leaderboard_dir.mkdir(parents=True, exist_ok=True)
    with open(leaderboard_dir / f".{suite}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _write_leaderboard(runs_dir, leaderboard_dir, suite, description, seeds, models)


def common_seeds(groups) -> list[int]:
    """The seeds every model has finished: the only ones pooled or compared (ValueError if none)."""
    seeds = set.intersection(*({r["seed"] for r in runs} for runs in groups.values()))
    if not seeds:
        raise RunsDisagree("runs: no seed has finished runs of every model; accepted: a suite run to its end")
    return sorted(seeds)


def _value(r, label):
    section, key = ITEM_METRICS[label][5]
    return r.get(section, {}).get(key)


def _labels(groups):
    return [label for label in ITEM_METRICS
            if all(_value(r, label) is not None for runs in groups.values() for r in runs)]


def seeds_table(groups, seeds):
    rows = []
    for name, runs in groups.items():
        runs = [r for r in runs if r["seed"] in seeds]
        row = {"model": name, "seeds": len(runs)}
        for label in _labels(groups):
            values = [_value(r, label) for r in runs]
            digits = ITEM_METRICS[label][4]
            if len(values) >= 3:
                row[label] = _pm(*mean_ci(values)[:2], digits)
            else:
                row[label] = ", ".join(_fmt(v, digits + 1) for v in values) + " (per seed)"
        rows.append(row)
    return pd.DataFrame(rows)


def comparisons(groups, reference: str, seeds) -> list[dict]:
    """Every model minus the reference on every metric: the paired bootstrap over test items
    (seed-mean difference) and the across-seed paired t, each with Holm-adjusted p-values over
    the whole family (one family per test)."""
    by_seed = {name: {r["seed"]: r for r in runs} for name, runs in groups.items()}
    items = {(name, s): _items(by_seed[name][s]) for name in groups for s in seeds}
    rows = []
    for name in groups:
        if name == reference:
            continue
        for label in _labels(groups):
            part = ITEM_METRICS[label][0]
            a = [item_metric(items[name, s], label) for s in seeds]
            b = [item_metric(items[reference, s], label) for s in seeds]
            if len(a[0].numerator) != len(b[0].numerator):  # a windowed model scores other items
                continue
            block, align = max(_blocks(by_seed[name][seeds[0]], part), _blocks(by_seed[reference][seeds[0]], part))
            rng = np.random.default_rng(stream_seed(by_seed[name][seeds[0]]["data"]["config"]["seed"], BOOTSTRAP,
                                                    f"paired-{label}", f"{name} - {reference}"))
            boot = paired_bootstrap(a, b, block, align, rng)
            t = paired_t([_value(by_seed[name][s], label) - _value(by_seed[reference][s], label) for s in seeds]) \
                if len(seeds) >= 3 else None
            rows.append({"model": name, "metric": label, "bootstrap": boot, "t": t})
    for key in ("bootstrap", "t"):
        adjusted = holm([r[key]["p"] if r[key] else float("nan") for r in rows])
        for r, p in zip(rows, adjusted):
            if r[key]:
                r[key]["p_holm"] = p
    return rows


def _verdict(test, label, model, reference) -> str:
    """Which of the two is better (Holm p < 0.05), by the metric's own direction."""
    if test is None or test["p"] != test["p"]:
        return "—"
    if test["p_holm"] < 0.05:
        lower_is_better = ITEM_METRICS[label][3]
        return f"{model if (test['difference'] < 0) == lower_is_better else reference} better"
    return "no difference detected (not equivalence)"


def differences_table(rows, reference: str):
    out = []
    for r in rows:
        boot, t, digits = r["bootstrap"], r["t"], ITEM_METRICS[r["metric"]][4]
        unit = "facts" if ITEM_METRICS[r["metric"]][0] == "reversal" else "test samples"
        out.append({
            "model": r["model"], "metric": r["metric"],
            f"difference vs {reference} [95% paired bootstrap]": _with_ci(boot["difference"], boot["ci95"], digits),
            "n (items, block)": f"{boot['items']} {unit}, block {boot['block']}",
            "p / Holm p": f"{boot['p']:.4f} / {boot['p_holm']:.4f}" if boot["p"] == boot["p"] else
                          f"— (fewer than {MIN_BLOCKS} blocks)",
            "verdict (test items)": _verdict(boot, r["metric"], r["model"], reference),
            "across seeds [95% paired t]": (_pm(t["difference"], t["half_width"], digits) + f" (n = {t['seeds']})"
                                            if t else f"n = {boot['seeds']} seeds < 3: no t-interval"),
            "t p / Holm p": f"{t['p']:.4f} / {t['p_holm']:.4f}" if t and t["p"] == t["p"] else "—",
            "verdict (seeds)": _verdict(t, r["metric"], r["model"], reference),
        })
    return pd.DataFrame(out)


def first_stage_lines(results) -> list[str]:
    """How the shared first stage was chosen, when it was chosen among candidates."""
    stage = next((r["shared_first_stage"] for r in results if r.get("shared_first_stage")), None)
    if not stage or "candidates" not in stage:
        return []
    c0 = stage["candidates"][0]
    tried = "; ".join(f"seed {c['seed']}: {c['correct']}/{c['documents']} {_wilson_cell([1] * c['correct'] + [0] * (c['documents'] - c['correct']))} "
                      f"({c['answer_logprob']:.1f})" for c in stage["candidates"])
    return [f"Shared first stage ({stage['sample_len']}-token samples, every model starts its second stage from it): "
            f"{len(stage['candidates'])} candidates trained, each then trained {c0['trial_steps']} steps of the "
            f"second stage and scored on {c0['documents']} validation documents (single NIAH, "
            f"{_length_label(c0['length'])} tokens, needle at depth 0%, training filler's validation split; correct, "
            f"mean answer log-prob; 95% Wilson): {tried}. Kept: seed {stage['kept_seed']}, "
            f"{_kept_by(stage['candidates'])}. It is made by {stage.get('model_name', 'the model training.shared_first_stage names')}, "
            f"a memory model, on the primary task: every model, the floor included, inherits it. "
            f"The choice is made on validation documents only, never on the scored grid below. Every later stage, the data "
            f"and the tables' seed stay the suite's seed ({results[0]['seed']}); only the first stage's weights come from "
            f"seed {stage['kept_seed']}. Every model's train time counts the kept first stage's "
            f"{stage['train_time_s'] / 60:.1f} minutes (trained once), not the other candidates' or the trials'.", ""]


def _kept_by(candidates) -> str:
    """How the kept first stage was told from the others: accuracy, or log-prob alone when every
    candidate answered alike."""
    if len({c["correct"] for c in candidates}) == 1:
        return (f"on log-prob alone: every candidate answered {candidates[0]['correct']} of "
                f"{candidates[0]['documents']}, so none is known to read")
    return "first by accuracy, then log-prob (the intervals overlap: the choice is a noisy one)"


def _own_documents(r) -> str:
    """The protocol sentence's list of the metrics scored on items of their own, as the run has them."""
    parts = (["the reversal metrics score trained and control facts"] if "reversal" in r else []) + \
            [f"the {' and '.join(x for x, key in (('retrieval', 'retrieval'), ('long-document', 'long_ppl')) if key in r)} "
             f"metrics score documents of their own"] * any(key in r for key in ("retrieval", "long_ppl"))
    return "; " + ", ".join(parts) if parts else ""


def _other_intervals(r) -> str:
    """The protocol sentence's intervals for facts and accuracies, as the run has them."""
    parts = (["over facts", "Wilson (Newcombe for differences) for reversal accuracies"] if "reversal" in r else []) + \
            (["Wilson (Newcombe for differences) for retrieval accuracies"] if "retrieval" in r else [])
    return ", or " + "; ".join(parts) if parts else ""


def _write_leaderboard(runs_dir, leaderboard_dir, suite, description, seeds=None, models=None,
                       reference="Single Memory"):
    groups = group_runs(load_results(runs_dir, seeds, models))
    seeds = common_seeds(groups)
    results = [next(r for r in runs if r["seed"] == seeds[0]) for runs in groups.values()]  # per-run tables
    plots = plot(results, leaderboard_dir / "plots", suite)
    first = results[0]
    data = first["data"]
    lines = [f"# {suite}", ""]
    if description:
        lines += [description.strip(), ""]
    lines += [f"Preset `{first['preset']}`, data `{data['source']}` ({data['train_samples']} train / "
              f"{data['validation_samples']} validation / {data['test_samples']} test samples of {data['sample_len']} "
              f"tokens, tokenizer `{data['tokenizer']}`, data seed {data['config']['seed']}), "
              f"device `{first['device']}`, {_run_commits(results)}{_written_by(results)}. "
              f"Each row comes from `runs/{suite}/<model>/results.json` "
              f"(per-item losses: `per_item.json`).", "",
              "Protocol: early stopping and the kept checkpoint are chosen on the validation split; every "
              "held-out language-modelling number below (PPL, recall-token PPL, PPL by position) is on the "
              f"test split, which nothing is selected on{_own_documents(first)}. Samples are consecutive cuts of "
              "each split's token stream (documents EOS-joined, the first cut at an arbitrary offset), so a "
              "sample starts anywhere in a document. Intervals: 95% percentile bootstrap (10,000 resamples) "
              "over test samples in circular blocks of consecutive samples (neighbours share documents; in "
              "stream scope the blocks are whole evaluation batches, since the memory links them too)"
              f"{_other_intervals(first)}.", ""]
    lines += first_stage_lines(results)
    lines += [f"## Summary (seed {first['seed']})", "", _markdown(summary_table(results)), "",
              "stop: *early stop* = patience ran out; *capped* = reached max_epochs while its last epoch still "
              "improved validation PPL by more than min_delta (more epochs might have helped); *max epochs* = "
              "reached max_epochs, no longer improving; *one epoch* = a stage of one epoch (nothing to compare). "
              "*val PPL (kept checkpoint)*: the kept checkpoint's validation PPL, scored again after training by "
              "the evaluation's reader, so it can differ slightly from the learning curve's value at that epoch.",
              ""]
    lines += ["## Learning curves (train / validation PPL)", "", _markdown(curves_table(results)), "",
              f"![learning curves](plots/{plots[0].name})", ""]
    lines += ["## Test PPL by token position [95% CI]", "",
              f"Position p = the loss of predicting token p + 1 from the p + 1 tokens before it in the sample; "
              f"n = {first['data']['test_samples']} test samples a cell, 95% block bootstrap over them.", "",
              _markdown(position_table(results)), "", f"![position-wise PPL](plots/{plots[1].name})", ""]
    if len(groups) > 1:
        reference = reference if reference in groups else next(iter(groups))
        rows = comparisons(groups, reference, seeds)
        lines += [f"## Across seeds ({len(seeds)}: {', '.join(map(str, seeds))})", "",
                  "Each seed is one run per model (initialisation and data order; the same data and test "
                  "split). Mean ± half-width of the 95% t-interval over seeds; with fewer than 3 seeds no "
                  "t-interval is given, only the values."
                  + (f" Chance accuracy of the reversal questions: "
                     f"{1 / (results[0]['reversal']['distractors'] + 1):.3f}." if "reversal" in results[0] else ""),
                  "", _markdown(seeds_table(groups, seeds)), "",
                  f"## Differences vs {reference}", "",
                  "Paired on the same test items and seeds. *Paired bootstrap*: the seed-mean difference, "
                  "items resampled together for both models (it covers the sampling of test items, not "
                  "training randomness); its p is the same percentile bootstrap's (twice the smaller share of "
                  "resamples on either side of 0), so it agrees with the interval. *Across seeds*: paired t-interval of the per-seed differences (it "
                  "covers training randomness; needs 3 or more seeds). p-values are two-sided and "
                  f"Holm-adjusted over the {len(rows)} comparisons of this table, separately for each test; "
                  "a verdict needs Holm p < 0.05. A test-item verdict holds for these trained runs only; a "
                  "finding about the models needs the across-seed verdict as well. \"No difference detected\" "
                  "is not evidence of equivalence.",
                  "", _markdown(differences_table(rows, reference)), ""]
    with_retrieval = [r for r in results if "retrieval" in r]
    if with_retrieval:
        lines += retrieval_section(with_retrieval, leaderboard_dir / "plots", suite)
    with_long = [r for r in results if "long_ppl" in r]
    if with_long:
        lines += recall_ppl_section(with_long, _rng(first, "long-ppl"))
    with_probes = [r for r in results if "probes" in r]
    if with_probes:
        lines += probes_section(with_probes, leaderboard_dir / "plots", suite)
    if "reversal" in results[0]:
        rev = results[0]["reversal"]
        lines += ["## Reversal curse", "",
                  f"{rev['facts']} trained facts (their forward sentences only are trained) and {rev['control_facts']} "
                  f"control facts built the same way and never trained. A question asks for the end of a "
                  f"sentence (forward: the thing, backward: the name) and is right when the answer has the "
                  f"highest {rev['score']} among itself and {rev['distractors']} distractors of its type "
                  f"(the same question's answers of other facts of the same relation and set), so chance is "
                  f"1/{rev['distractors'] + 1} = {1 / (rev['distractors'] + 1):.3f} (a tie for the top counts "
                  f"1/k). Accuracies are seed-means over {len(seeds)} seed(s) of the same facts, with 95% "
                  f"Wilson intervals taking n = the facts (they cover the facts, not training randomness: the "
                  f"across-seed intervals are in the tables above). *Reversal effect* = backward accuracy of "
                  f"the trained facts minus that of the controls (Newcombe interval): what training the "
                  f"forward sentence taught about the backward question. The questions of one relation rank "
                  f"the same candidates, so their outcomes are not independent (a ranking blind to the "
                  f"question gets exactly one right per relation) and the Wilson and Newcombe intervals, which "
                  f"treat the facts as independent, are descriptive; the *permutation p* tests "
                  f"backward knowledge exactly: it is the share of 10,000 random re-pairings of questions and "
                  f"answers within each relation (the same for every seed) whose accuracy reaches the "
                  f"observed one, i.e. how often a ranking blind to which name belongs to which thing does as "
                  f"well. Verdict: the facts count as learned when forward (trained − control) exceeds "
                  f"{KNOWN_FORWARD} at its lower bound and beats the re-pairings (p < 0.05); then *consistent "
                  f"with the curse* when backward does not (p ≥ 0.05; not proof of no backward knowledge: the "
                  f"effect's upper bound is given), *no full curse* when it does. Stream-scope models are "
                  f"scored with an empty memory per question and again with the memory training carries "
                  f"(*warmed memory*: the validation split read first, batch by batch as training reads; the "
                  f"questions read it and their writes are dropped).", "",
                  _markdown(reversal_table(groups, seeds)), "",
                  "Sentence PPL of the trained facts (the reference's definition: exp of the mean over "
                  "sentences of each sentence's mean token loss, after its first token; bootstrap over facts, "
                  "which covers the facts, not training randomness: see the across-seed table). Backward PPL has "
                  "no control here, so it measures the untrained backward form as well as any reversal. "
                  "The controls' PPL is not shown: the tokenizer, trained on training text only, has merged "
                  "the trained facts' words but not theirs, so it would measure tokenization.", "",
                  _markdown(reversal_ppl_table(groups, seeds)), ""]
        if len(groups) > 1:
            claim = reference_claim(rows, groups, seeds, reference)
            if claim:
                lines += [claim, ""]
    path = leaderboard_dir / f"{suite}.md"
    atomic_write_text(path, "\n".join(lines))
    return path


SWEEP_METRICS = {  # file-name stem: (label, getter, digits, lower is better)
    "val-ppl": ("best val PPL (selection)", lambda r: r["best_val_ppl"], 3, True),
    "test-ppl": ("test PPL", lambda r: r["test"]["ppl"], 3, True),
    "recall-ppl": ("test recall-token PPL", lambda r: r["test"].get("recall_ppl"), 2, True),
    "backward-acc": ("backward acc", lambda r: r.get("reversal", {}).get("backward_acc"), 3, False),
}


def sweep_targets(runs: dict) -> list[tuple]:
    """The retrieval targets of a sweep's trials: (family, haystack, length), in order."""
    return sorted({(c["family"], c["haystack"], c["length"]) for r in runs.values() if "retrieval" in r
                   for c in r["retrieval"]["cells"]})


def _target_label(target) -> str:
    family, haystack, length = target
    return f"{family} {haystack} {_length_label(length)}"


def _target(r, target, depths=None) -> list[int]:
    """A sweep trial's outcomes on one retrieval target at the scored depths, or at `depths`."""
    if r is None or "retrieval" not in r:
        return []
    family, haystack, length = target
    return _cells(r, family, haystack, length, depths or _scored_depths(r))


def _target_stem(target) -> str:
    """A retrieval target's metric key and plot-file stem."""
    return f"retrieval-{'-'.join(map(str, target))}"


def _sweep_metrics(runs: dict) -> dict:
    """SWEEP_METRICS and an accuracy heatmap per retrieval target."""
    return {**SWEEP_METRICS, **{
        _target_stem(t): (f"{_target_label(t)} acc",
                                                lambda r, t=t: float(np.mean(_target(r, t))) if _target(r, t) else None,
                                                2, False)
        for t in sweep_targets(runs)}}


def sweep_table(trials, runs: dict):
    """One row per trial; the best validation PPL per memory count (and type) in bold (its trial
    name and PPL only: the other columns are not what it was chosen on)."""
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
            if any(get(x) is not None for x in runs.values()):
                row[label] = _fmt(get(r), digits) if r is not None else "—"
        for target in sweep_targets(runs):
            outcomes = _target(r, target)
            row[f"{_target_label(target)} [95% Wilson]"] = (f"{_wilson_cell(outcomes)} (n = {len(outcomes)})"
                                                            if outcomes else "—")
            if any(_target(x, target, [LOCAL]) for x in runs.values()):
                row[f"{_target_label(target)} local control"] = _wilson_cell(_target(r, target, [LOCAL]))
        row["epochs run"] = r["epochs_trained"] if r is not None else "—"
        row["train time"] = f"{r['train_time_s'] / 60:.1f} min" if r is not None else "—"
        if best.get((t.get("memory_type"), t.get("num_memories"))) == t["trial"]:
            row = {k: f"**{v}**" if k in ("trial", SWEEP_METRICS["val-ppl"][0]) else v for k, v in row.items()}
        rows.append(row)
    return pd.DataFrame(rows)


def _p(p: float) -> str:
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def memory_count_table(trials, runs: dict):
    """Whether accuracy differs between memory counts: per retrieval target, learning rate (and
    memory type), Cochran's Q over the finished trials' outcomes on the same documents, Holm over
    the tests in which some document differs between trials (the others cannot reach any level)."""
    rows, tests = [], []
    for target in sweep_targets(runs):
        groups = {}
        for t in trials:
            r = runs.get(t["trial"])
            if r is not None and _target(r, target):
                groups.setdefault((t.get("memory_type"), t.get("lr")), []).append((t.get("num_memories"), r))
        for (kind, lr), members in groups.items():
            if len(members) < 2:
                continue
            family, haystack, length = target
            documents = {tuple(_documents(r, family, haystack, length, _scored_depths(r))) for _, r in members}
            if len(documents) > 1:
                raise RunsDisagree(f"runs: the trials at lr {lr} scored different {_target_label(target)} documents")
            outcomes = [_target(r, target) for _, r in sorted(members, key=lambda m: m[0])]
            test = cochran_q(outcomes)
            row = {"target": _target_label(target), **({"memory_type": kind} if kind else {}), "lr": lr,
                   "correct by num_memories": ", ".join(f"{m}: {sum(_target(r, target))}" for m, r in
                                                         sorted(members, key=lambda m: m[0])),
                   "n": test["n"], "Cochran's Q": f"{test['q']:.2f} (df {test['df']})", "p": test["p"]}
            rows.append(row)
            if any(len(set(column)) > 1 for column in zip(*outcomes)):
                tests.append(row)
    for row, adjusted in zip(tests, holm([row["p"] for row in tests])):
        row["Holm p"] = adjusted
    for row in rows:
        row["p"] = _p(row["p"])
        row["Holm p"] = _p(row["Holm p"]) + (" *" if row["Holm p"] < 0.05 else "") if "Holm p" in row else \
            "— (no document differs)"
    return pd.DataFrame(rows), len(tests)


def plot_sweep(trials, runs: dict, plot_dir: Path, name: str) -> list[Path]:
    """A heatmap per metric over (num_memories, lr), one panel per memory type; blank = no result.
    An accuracy cell says k/n (documents right / documents) on a fixed 0-1 colour scale."""
    memories = sorted({t.get("num_memories") for t in trials}, key=lambda v: (v is None, v))
    rates = sorted({t.get("lr") for t in trials}, key=lambda v: (v is None, v))
    types = sorted({t.get("memory_type") or "" for t in trials})
    targets = {_target_stem(t): t for t in sweep_targets(runs)}
    paths = []
    for stem, (label, get, digits, lower) in _sweep_metrics(runs).items():
        if not any(get(r) is not None for r in runs.values()):
            continue
        fig = Figure(figsize=(1.3 * len(rates) + 2.5, 0.5 * len(memories) + 1.8))
        axes = fig.subplots(1, len(types), squeeze=False)
        for ax, kind in zip(axes[0], types):
            values = np.full((len(memories), len(rates)), np.nan)
            texts = np.full(values.shape, "—", dtype=object)
            for t in trials:
                r = runs.get(t["trial"])
                value = get(r) if r is not None else None
                if (t.get("memory_type") or "") == kind and value is not None:
                    at = memories.index(t.get("num_memories")), rates.index(t.get("lr"))
                    values[at] = value
                    outcomes = _target(r, targets[stem]) if stem in targets else None
                    texts[at] = f"{sum(outcomes)}/{len(outcomes)}" if outcomes else f"{value:.{digits}f}"
            cmap = matplotlib.colormaps["viridis_r" if lower else "viridis"].with_extremes(bad="lightgrey")
            image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto",
                              **({"vmin": 0, "vmax": 1} if stem in targets else {}))
            for (i, j), text in np.ndenumerate(texts):
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white")
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
                  f"{first['seed']}, commit `{(first.get('git_commit') or '?')[:12]}`{_written_by(runs.values())}. "
                  f"{len(trials)} trials, "
                  f"{len(runs)} finished, {len(failed)} failed; each row's numbers come from "
                  f"`runs/sweeps/{name}/<trial>/results.json`. Bold: the best validation PPL for each "
                  f"memory count (trial name and that PPL only).", ""]
        targets = sweep_targets(runs)
        if targets:
            grid = first["retrieval"]
            lines += [f"Retrieval targets: {'; '.join(f'{f} on the {h} haystack at {_length_label(n)} tokens' for f, h, n in targets)}. "
                      f"Accuracy = exact match over the scored depths ({', '.join(d + '%' for d in _scored_depths(first))}, "
                      f"{grid['docs_per_cell']} documents each; needles at least {grid['needle_gap']} tokens before the "
                      f"question), with its 95% Wilson interval and n; the local control (needles right before the "
                      f"question) apart. Guessing: {'; '.join(f'{f} {FAMILY_TEXT[f][1]}' for f in dict.fromkeys(t[0] for t in targets))}. "
                      f"Trials are selected on nothing here: every one is shown; no two are tested against each other "
                      f"(overlapping intervals are not evidence of equal accuracy), and memory count as a whole is "
                      f"tested below.", ""]
            for target in targets:
                learnt = [_above_chance(_target(r, target, [LOCAL]), target[0]) for r in runs.values()]
                if all(v is None for v in learnt):
                    lines += [f"{_target_label(target)}: no local control was scored, so nothing here checks that "
                              f"the task was learnt: a trial at the guessing level may mean the task, not the "
                              f"memories, failed.", ""]
                elif not any(learnt):
                    lines += [f"**{_target_label(target)} cannot show what memory count does to retrieval.** No "
                              f"trial's local control (needles right before the question) is above the guessing "
                              f"level at its 95% Wilson lower bound: the task was not learnt, so these accuracies "
                              f"measure that, not the memories.", ""]
    lines += [_markdown(sweep_table(trials, runs)), ""]
    counts, tested = memory_count_table(trials, runs)
    if not counts.empty:
        lines += ["## Does memory count matter?", "",
                  "Per retrieval target and learning rate: documents answered right by each memory count (the "
                  "same documents for every trial, over the scored depths), and Cochran's Q test that every "
                  f"memory count has the same accuracy on them; Holm over the {tested} tests in which some "
                  "document differs between trials (* = Holm p < 0.05). It covers the sampling of documents, "
                  "not training randomness (one training seed a trial), and a Q that is not significant is "
                  "not evidence that memory count does not matter.", "", _markdown(counts), ""]
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    path = leaderboard_dir / f"{name}.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m infini_bench.leaderboard",
                            description="Rebuild a suite's leaderboard from its results.json files")
    parser.add_argument("output_dir", help="the folder a suite run wrote (its runs/ and leaderboard/)")
    parser.add_argument("suite", help="suite name (runs/<suite>/), or sweeps/<name> for a sweep's leaderboard")
    args = parser.parse_args(argv)
    root = Path(args.output_dir)
    runs = root / "runs" / args.suite
    if args.suite.startswith("sweeps/"):
        if not (runs / "trials.json").is_file():
            fail(f"output_dir: no finished sweep {args.suite!r} in {runs} (no trials.json)")
        trials = json.loads((runs / "trials.json").read_text())
        name = args.suite.split("/", 1)[1]
        try:  # the sweep file's description, as a sweep run writes it
            description = yaml.safe_load(find_config("sweeps", name, "suite", "sweep ").read_text()).get("description", "")
        except ValueError:
            description = ""
        print(write_sweep_leaderboard(trials, runs, root / "leaderboard" / "sweeps", name, description))
        return 0
    if not has_results(runs):
        fail(f"output_dir: no results of suite {args.suite!r} in {runs} (no <model>/results.json)")
    try:  # the suite file's description, as a suite run writes it
        description = read_suite(find_suite(args.suite)).get("description", "")
    except ValueError:
        description = ""
    try:
        print(write_leaderboard(runs, root / "leaderboard", args.suite, description))
    except ValueError as error:
        fail(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
