"""Intervals for the leaderboard: a bootstrap interval of one run's PPL, t-intervals over seeds."""

import numpy as np
from scipy import stats


def bootstrap_ppl_ci(nll: np.ndarray, resamples: int = 1000, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of a PPL from per-token losses [N, L - 1], resampling
    the N samples."""
    per_sample = nll.mean(1)
    rng = np.random.default_rng(seed)
    means = per_sample[rng.integers(0, len(per_sample), (resamples, len(per_sample)))].mean(1)
    return [float(np.exp(np.percentile(means, 2.5))), float(np.exp(np.percentile(means, 97.5)))]


def mean_ci(values) -> tuple[float, float, int]:
    """Mean, half-width of its 95% t-interval (nan for one value), n; None values are skipped."""
    values = np.asarray([v for v in values if v is not None], dtype=float)
    n = len(values)
    if n < 2:
        return (float(values.mean()) if n else float("nan")), float("nan"), n
    half = stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n)
    return float(values.mean()), float(half), n
