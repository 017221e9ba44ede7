"""Intervals and tests for the leaderboard.

- A metric of one run is an aggregate of per-item parts (items: test samples or facts): the
  sum of numerators over the sum of denominators, through exp for a PPL. `Metric` says which.
- Items are resampled in contiguous blocks (circular block bootstrap, Politis & Romano 1992:
  blocks wrap around the end, so every item is equally likely). Test samples are consecutive
  cuts of one token stream, so neighbours share documents and are not independent (in `core`
  the lag-1 autocorrelation of per-sample losses is about -0.3): a block is several
  consecutive samples, and in stream scope, where the memory also links consecutive
  evaluation batches, several whole batches. Facts are scored one by one: a block is one fact.
- Two models are compared on the same items, paired: every resample draws one set of item
  indices for both models and every seed, and the statistic is the seed-mean of the
  differences. Its interval covers the sampling of test items, not training randomness; the
  across-seed paired t-interval covers that.
- Reversal questions of one relation rank the same candidates (the answers of its facts), so
  their outcomes are not independent; `pairing_permutation` tests knowledge of the pairing
  itself, exactly, against rankings that ignore it. Wilson and Newcombe intervals for
  accuracies, with n the number of facts.
- Retrieval documents are scored by every model, so a model's difference to the floor is
  paired per document: Newcombe's paired score interval and McNemar's exact test
  (`paired_binary`).
- Holm's step-down adjustment over a leaderboard's family of comparisons.
"""

from dataclasses import dataclass

import numpy as np
from scipy import stats

RESAMPLES = 10_000


@dataclass(frozen=True)
class Metric:
    numerator: np.ndarray      # [items]
    denominator: np.ndarray    # [items]
    log_scale: bool            # a PPL: exp(sum(numerator) / sum(denominator))

    def value(self, index=None):
        """The metric over all items, or over each row of resampled indices [resamples, items]."""
        if index is None:
            num, den = self.numerator.sum(), self.denominator.sum()
        else:
            num, den = self.numerator[index].sum(-1), self.denominator[index].sum(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = num / den
        return np.exp(ratio) if self.log_scale else ratio


MIN_BLOCKS = 3  # fewer blocks than this and a resample is little more than a rotation: no interval


def block_length(items: int, unit: int = 1) -> int:
    """Items per resampled block: whole units (an evaluation batch in stream scope, a sample
    otherwise), about (number of units)^(1/3) of them (the usual order for a block bootstrap),
    and few enough that the items hold at least MIN_BLOCKS blocks."""
    units = -(-items // unit)
    return unit * max(1, min(round(units ** (1 / 3)), units // MIN_BLOCKS))


def block_indices(items: int, block: int, align: int, rng: np.random.Generator,
                  resamples: int = RESAMPLES) -> np.ndarray:
    """[resamples, items] indices of a circular block bootstrap: blocks of `block` consecutive
    items (wrapping around the end), each starting at a uniformly drawn multiple of `align`
    (an evaluation batch's first sample in stream scope, any item otherwise), joined and cut
    to `items`."""
    blocks = -(-items // block)
    starts = rng.integers(0, -(-items // align), (resamples, blocks)) * align
    return ((starts[:, :, None] + np.arange(block)) % items).reshape(resamples, -1)[:, :items]


def _enough(items: int, block: int) -> bool:
    return items >= MIN_BLOCKS * block


def bootstrap_interval(metric: Metric | list[Metric], block: int, align: int, rng: np.random.Generator) -> list[float]:
    """95% percentile-bootstrap interval of one run's metric, or of the seed-mean of several
    runs on the same items (one set of indices for all), nan if the items hold fewer than
    MIN_BLOCKS blocks; resamples where the metric is undefined, e.g. no recall token, are left out."""
    metrics = metric if isinstance(metric, list) else [metric]
    items = len(metrics[0].numerator)
    if not _enough(items, block):
        return [float("nan"), float("nan")]
    index = block_indices(items, block, align, rng)
    values = np.mean([m.value(index) for m in metrics], axis=0)
    return [float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))]


def paired_bootstrap(runs_a: list[Metric], runs_b: list[Metric], block: int, align: int,
                     rng: np.random.Generator) -> dict:
    """Seed-mean of metric(a) - metric(b) over paired runs (same seed, same items), its 95%
    percentile interval and the two-sided p-value of the same percentile bootstrap: twice the
    smaller share of resampled differences on either side of zero, an undefined resample counting
    on both sides, so that p < 0.05 exactly when the interval leaves out 0 (up to the +1 of each
    count). Interval and p are nan if the items hold fewer than MIN_BLOCKS blocks."""
    items = len(runs_a[0].numerator)
    if any(len(m.numerator) != items for m in runs_a + runs_b):
        raise ValueError("paired bootstrap: the runs do not score the same items")
    observed = float(np.mean([a.value() - b.value() for a, b in zip(runs_a, runs_b)]))
    result = {"difference": observed, "items": items, "block": block, "seeds": len(runs_a)}
    if not _enough(items, block):
        return {**result, "ci95": [float("nan"), float("nan")], "p": float("nan")}
    index = block_indices(items, block, align, rng)
    resampled = np.mean([a.value(index) - b.value(index) for a, b in zip(runs_a, runs_b)], axis=0)
    below, above = np.sum(~(resampled > 0)), np.sum(~(resampled < 0))  # nan counts on both sides
    return {**result, "ci95": [float(np.nanpercentile(resampled, 2.5)), float(np.nanpercentile(resampled, 97.5))],
            "p": float(min(1.0, 2 * (min(below, above) + 1) / (len(resampled) + 1)))}


def ratio_change(near_a: Metric, near_b: Metric, far_a: Metric, far_b: Metric, rng: np.random.Generator) -> dict:
    """How much more model a beats model b on far items than on near ones: (a / b on the far items) /
    (a / b on the near items), each set scored by both models. A difference in differences on the
    ratio scale, for a PPL; 1 = the same advantage on both. 95% percentile bootstrap: each set
    resampled on its own (item by item), paired between the models within it."""
    near = block_indices(len(near_a.numerator), 1, 1, rng)
    far = block_indices(len(far_a.numerator), 1, 1, rng)
    observed = (far_a.value() / far_b.value()) / (near_a.value() / near_b.value())
    resampled = (far_a.value(far) / far_b.value(far)) / (near_a.value(near) / near_b.value(near))
    return {"ratio": float(observed), "ci95": [float(np.nanpercentile(resampled, 2.5)),
                                               float(np.nanpercentile(resampled, 97.5))]}


def mean_ci(values) -> tuple[float, float, int]:
    """Mean, half-width of its 95% t-interval (nan for one value), n; None values are skipped."""
    values = np.asarray([v for v in values if v is not None], dtype=float)
    n = len(values)
    if n < 2:
        return (float(values.mean()) if n else float("nan")), float("nan"), n
    if values.min() == values.max():   # no spread (np.std of equal floats can be 1e-17, not 0)
        return float(values[0]), 0.0, n
    half = stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n)
    return float(values.mean()), float(half), n


def paired_t(differences) -> dict:
    """Across-seed paired t: mean difference, 95% half-width, two-sided p (nan if no spread)."""
    mean, half, n = mean_ci(differences)
    p = float(stats.ttest_1samp(differences, 0.0).pvalue) if n >= 2 else float("nan")
    return {"difference": mean, "half_width": half, "p": p, "seeds": n}


def holm(p_values) -> list[float]:
    """Holm-Bonferroni adjusted p-values (nan entries are left out of the family and stay nan)."""
    p = np.asarray(p_values, dtype=float)
    keep = np.flatnonzero(~np.isnan(p))
    adjusted = np.full(len(p), np.nan)
    order = keep[np.argsort(p[keep], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def cochran_q(outcomes) -> dict:
    """Cochran's Q test that k conditions have the same accuracy on the same n items (outcomes: k
    lists of n 0/1 values): chi-square with k - 1 degrees of freedom (for k = 2 it is McNemar's
    chi-square without continuity correction); p = 1 when no item differs between conditions."""
    x = np.asarray(outcomes, dtype=float)  # [k, n]
    k = x.shape[0]
    columns, rows = x.sum(axis=1), x.sum(axis=0)
    denominator = k * rows.sum() - np.sum(rows ** 2)
    if denominator == 0:
        return {"q": 0.0, "df": k - 1, "p": 1.0, "n": x.shape[1]}
    q = (k - 1) * (k * np.sum(columns ** 2) - rows.sum() ** 2) / denominator
    return {"q": float(q), "df": k - 1, "p": float(stats.chi2.sf(q, k - 1)), "n": x.shape[1]}


def mcnemar_min_p(discordant: int) -> float:
    """The smallest two-sided p McNemar's exact test can give with this many discordant items."""
    return min(1.0, 2 * 0.5 ** discordant)


def tarone_testable(min_p_values, alpha: float = 0.05) -> list[int]:
    """Indices of the tests of a family of discrete tests that can reach `alpha` after correction
    (Tarone 1990): the smallest K such that at most K tests have a smallest attainable p <= alpha / K;
    those tests form the family to adjust (here with Holm), the others cannot be significant."""
    for k in range(1, len(min_p_values) + 1):
        testable = [i for i, p in enumerate(min_p_values) if p <= alpha / k]
        if len(testable) <= k:
            return testable
    return []


def wilson(accuracy: float, n: int) -> list[float]:
    """95% Wilson score interval of a proportion `accuracy` of `n` items."""
    z = stats.norm.ppf(0.975)
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    # Exactly 0 and 1 at the ends (rounding gives -1e-17 at k = 0, shown as "-0.00").
    return [float(max(centre - half, 0.0)), float(min(centre + half, 1.0))]


def newcombe(a: float, n_a: int, b: float, n_b: int) -> list[float]:
    """95% interval of a - b for two independent proportions (Newcombe's hybrid score method,
    from the two Wilson intervals)."""
    (la, ua), (lb, ub) = wilson(a, n_a), wilson(b, n_b)
    d = a - b
    return [float(d - np.sqrt((a - la) ** 2 + (ub - b) ** 2)), float(d + np.sqrt((ua - a) ** 2 + (b - lb) ** 2))]


def pairing_permutation(scores: list, candidates: list, rng: np.random.Generator,
                        resamples: int = RESAMPLES) -> dict | None:
    """Seed-mean accuracy of multiple-choice questions and its one-sided permutation p-value
    against rankings blind to which answer belongs to which question.

    scores[s][q]: seed s's scores of question q's choices; candidates[q]: the item of each
    choice (the right one first). The questions fall into groups that rank the same candidates,
    which must be the group's own items (every relation's facts, each asking for its own);
    under the null the right item of each question is a random permutation of its group, the
    same for every seed. A tie for the top counts 1/k. None if the groups are not closed."""
    groups = {}
    for q, items in enumerate(candidates):
        groups.setdefault(frozenset(items), []).append(q)
    if any(set(members) != set(key) for key, members in groups.items()):
        return None
    n = len(candidates)
    credit = np.zeros((len(scores), n, n))    # credit[s, q, item]: what question q earns if item is right
    for s, seed_scores in enumerate(scores):
        for q, (row, items) in enumerate(zip(seed_scores, candidates)):
            top = [items[c] for c in np.flatnonzero(np.asarray(row) == np.max(row))]
            credit[s, q, top] = 1 / len(top)
    observed = float(credit[:, np.arange(n), np.arange(n)].mean())
    right = np.empty((resamples, n), dtype=int)
    for members in groups.values():
        members = np.asarray(members)
        right[:, members] = rng.permuted(np.tile(members, (resamples, 1)), axis=1)
    null = credit[:, np.arange(n)[None, :], right].mean(axis=(0, 2))   # [resamples]
    return {"accuracy": observed, "null_mean": float(null.mean()),
            "p": float((np.sum(null >= observed - 1e-12) + 1) / (resamples + 1))}


def paired_binary(a, b) -> dict:
    """Mean of a - b for two models' 0/1 outcomes on the same items: Newcombe's (1998) score
    interval for a difference of paired proportions (his method 10: the two Wilson intervals
    combined with the phi correlation of the pairs; it stays informative when no item differs)
    and McNemar's exact two-sided p (a binomial test on the discordant items; 1 if none)."""
    a, b = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    n = len(a)
    both, only_a, only_b = int(np.sum(a & b)), int(np.sum(a & ~b & 1)), int(np.sum(~a & 1 & b))
    neither = n - both - only_a - only_b
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    (l1, u1), (l2, u2) = wilson(p1, n), wilson(p2, n)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / np.sqrt(margins) if margins else 0.0
    below = np.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    above = np.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    p = float(stats.binomtest(only_a, only_a + only_b).pvalue) if only_a + only_b else 1.0
    return {"difference": p1 - p2, "n": n, "p": p, "discordant": only_a + only_b,
            "ci95": [float(p1 - p2 - below), float(p1 - p2 + above)]}
