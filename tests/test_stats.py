"""The leaderboard's statistics against plain computations: bootstraps, paired tests, Holm."""

import math

import numpy as np
import pytest
from scipy import stats

from infini_bench.pipeline import stopping
from infini_bench.stats import (Metric, cochran_q, block_indices, block_length, bootstrap_interval, holm, mean_ci, newcombe,
                                mcnemar_min_p, paired_bootstrap, paired_t, pairing_permutation, ratio_change,
                                tarone_testable, wilson)


def test_holm_matches_the_step_down_definition():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert holm(p)[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and np.isnan(holm(p)[4])
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_circular_blocks_are_contiguous_and_cover_every_item_equally():
    rng = np.random.default_rng(0)
    index = block_indices(10, 4, 1, rng, resamples=20_000)
    assert index.shape == (20_000, 10)
    steps = np.diff(index[:, :4], axis=1) % 10
    assert (steps == 1).all()  # a block is consecutive items, wrapping around the end
    counts = np.bincount(index.ravel(), minlength=10) / index.size
    assert counts == pytest.approx(np.full(10, 0.1), abs=0.005)
    batches = block_indices(40, 16, 8, rng, resamples=1000)  # blocks of two whole batches of 8
    assert (batches[:, ::16] % 8 == 0).all()
    assert block_length(160) == 5 and block_length(160, 8) == 8 * 3  # 160^(1/3) samples; 20 batches -> 3
    assert block_length(4) == 1  # too few for blocks of several
    assert block_length(40, 8) == 8  # 5 batches: blocks of one batch, so that there are at least 3


def test_too_few_blocks_give_no_interval():
    metric = Metric(np.arange(16, dtype=float), np.ones(16), False)
    assert np.isnan(bootstrap_interval(metric, 8, 8, np.random.default_rng(0))).all()
    result = paired_bootstrap([metric], [metric], 8, 8, np.random.default_rng(0))
    assert np.isnan(result["p"]) and result["difference"] == 0


def test_bootstrap_interval_of_a_ppl_matches_a_plain_loop():
    rng = np.random.default_rng(1)
    nll = rng.gamma(2.0, 1.0, 200)
    metric = Metric(nll, np.ones(200), True)
    low, high = bootstrap_interval(metric, 1, 1, np.random.default_rng(5))
    plain = np.random.default_rng(5).integers(0, 200, (10_000, 200))
    values = np.exp(nll[plain].mean(1))
    assert [low, high] == pytest.approx(np.percentile(values, [2.5, 97.5]))
    assert low < np.exp(nll.mean()) < high


def test_paired_bootstrap_finds_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(2)
    base = rng.gamma(2.0, 1.0, 300)
    same = Metric(base, np.ones(300), True)
    better = Metric(base - 0.05 + rng.normal(0, 0.01, 300), np.ones(300), True)
    noisy = Metric(base + rng.normal(0, 0.3, 300), np.ones(300), True)
    found = paired_bootstrap([better], [same], 1, 1, np.random.default_rng(0))
    assert found["difference"] < 0 and found["ci95"][1] < 0 and found["p"] < 0.001
    null = paired_bootstrap([noisy], [same], 1, 1, np.random.default_rng(0))
    assert null["ci95"][0] < 0 < null["ci95"][1] or null["p"] > 0.01
    # p and the interval are one bootstrap: an interval that holds 0 never comes with p < 0.05.
    for shift in np.linspace(0, 0.06, 13):
        t = paired_bootstrap([Metric(base - shift + rng.normal(0, 0.3, 300), np.ones(300), True)], [same], 1, 1,
                             np.random.default_rng(1))
        assert (t["ci95"][0] < 0 < t["ci95"][1]) == (t["p"] >= 0.05) or abs(t["p"] - 0.05) < 0.003
    # Pairing matters: an unpaired view of `better` vs `same` would not see a 0.05-nat shift.
    assert stats.ttest_ind(better.numerator, same.numerator).pvalue > 0.05


def test_paired_t_matches_scipy():
    a, b = np.array([7.51, 7.55, 7.49]), np.array([7.55, 7.58, 7.56])
    t = paired_t(a - b)
    assert t["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue) and t["seeds"] == 3
    assert t["half_width"] == pytest.approx(stats.t.ppf(0.975, 2) * np.std(a - b, ddof=1) / np.sqrt(3))


def test_stopping_says_capped_only_when_still_improving():
    curve = lambda *v: [{"epoch": i + 1, "val_ppl": x} for i, x in enumerate(v)]  # noqa: E731
    assert stopping(curve(8.0, 7.6, 7.61), 10, 0.01) == "early stop"
    assert stopping(curve(8.0, 7.6, 7.5), 3, 0.01) == "capped"
    assert stopping(curve(8.0, 7.6, 7.595), 3, 0.01) == "max epochs"  # improved by less than min_delta
    assert stopping(curve(8.0), 1, 0.01) == "one epoch"


def test_wilson_and_newcombe_match_their_definitions():
    for k, n in [(0, 33), (3, 33), (33, 33), (17, 40)]:
        ci = stats.binomtest(k, n).proportion_ci(method="wilson")
        assert wilson(k / n, n) == pytest.approx([ci.low, ci.high])
    assert wilson(0.0, 20)[0] == 0.0 and wilson(1.0, 20)[1] == 1.0   # never "-0.00" in a table
    low, high = newcombe(30 / 33, 33, 3 / 33, 33)   # Newcombe (1998), method 10, from the Wilson limits
    (l1, u1), (l2, u2) = wilson(30 / 33, 33), wilson(3 / 33, 33)
    d = 27 / 33
    assert low == pytest.approx(d - np.hypot(30 / 33 - l1, u2 - 3 / 33))
    assert high == pytest.approx(d + np.hypot(u1 - 30 / 33, 3 / 33 - l2))
    assert newcombe(0.5, 40, 0.5, 40)[0] < 0 < newcombe(0.5, 40, 0.5, 40)[1]


def relations(groups=3, size=11):
    """Candidates of each fact's question: its relation's facts, its own first."""
    return [[i] + [j for j in range(size * (i // size), size * (i // size + 1)) if j != i]
            for i in range(groups * size)]


def test_pairing_permutation_tells_knowledge_from_pairing_blind_rankings():
    candidates, rng = relations(), np.random.default_rng(0)
    knows = [[[1.0] + [0.0] * 10 for _ in candidates]]
    blind = [[[-float(c) for c in row] for row in candidates]]     # the same order whatever the question
    noise = [[list(np.random.default_rng(s).normal(size=11)) for _ in candidates] for s in range(3)]
    assert pairing_permutation(knows, candidates, rng)["p"] < 0.001
    exact = pairing_permutation(blind, candidates, rng)
    assert exact["accuracy"] == pytest.approx(1 / 11) and exact["p"] == 1.0   # one right per relation, always
    random = pairing_permutation(noise, candidates, rng)
    assert random["null_mean"] == pytest.approx(1 / 11, abs=0.005) and random["p"] > 0.05
    tied = [[[0.0] * 11 for _ in candidates]]
    assert pairing_permutation(tied, candidates, rng)["accuracy"] == pytest.approx(1 / 11)  # a tie is 1/k
    assert pairing_permutation(knows, [row[:10] for row in candidates], rng) is None  # not every fact a candidate


def test_equal_values_have_no_spread():
    """Five seeds with the same accuracy: a half-width of exactly 0 (shown as "no spread"), not
    the 1e-17 that np.std gives for equal floats (which printed as ± 0.00000000)."""
    assert mean_ci([3 / 33] * 5) == (3 / 33, 0.0, 5)


def test_paired_binary_is_newcombes_method_10_and_never_degenerate():
    from infini_bench.stats import paired_binary

    # Newcombe (1998), Stat Med 17:2635, the example with 36 / 12 / 2 / 0 pairs: 0.0569 to 0.3404.
    a, b = [1] * 48 + [0] * 2, [1] * 36 + [0] * 12 + [1] * 2
    out = paired_binary(a, b)
    assert out["difference"] == pytest.approx(0.2) and out["ci95"] == pytest.approx([0.0569, 0.3404], abs=5e-4)
    assert out["p"] == pytest.approx(2 * sum(math.comb(14, k) for k in range(0, 3)) / 2 ** 14)
    for same in ([0] * 40, [1] * 40):   # no item differs: an interval around 0, not [0, 0]
        out = paired_binary(same, same)
        assert out["p"] == 1.0 and out["ci95"][0] < -0.05 and out["ci95"][1] > 0.05


def test_ratio_change_is_one_for_the_same_advantage_and_below_one_when_it_grows_with_distance():
    rng = np.random.default_rng(0)
    near_b = Metric(rng.uniform(1, 3, 200), np.ones(200), True)
    far_b = Metric(rng.uniform(1, 3, 200), np.ones(200), True)
    # a is better than b by the same factor e^0.5 on every item, near and far: no distance effect.
    same = ratio_change(Metric(near_b.numerator - 0.5, near_b.denominator, True), near_b,
                        Metric(far_b.numerator - 0.5, far_b.denominator, True), far_b, rng)
    assert same["ratio"] == pytest.approx(1.0) and same["ci95"] == pytest.approx([1.0, 1.0])
    # a equals b near and beats it by e^0.5 far, with noise: the ratio is about e^-0.5 and its interval excludes 1.
    grows = ratio_change(near_b, near_b, Metric(far_b.numerator - 0.5 + rng.normal(0, 0.3, 200), far_b.denominator,
                                                True), far_b, rng)
    assert grows["ratio"] == pytest.approx(math.exp(-0.5), rel=0.1) and grows["ci95"][1] < 1
    # The observed value is the plain formula.
    a, b = Metric(np.array([1.0, 2.0]), np.ones(2), True), Metric(np.array([2.0, 2.0]), np.ones(2), True)
    assert ratio_change(a, b, b, a, rng)["ratio"] == pytest.approx(math.exp(0.5) / math.exp(-0.5))


def test_tarone_keeps_the_comparisons_that_can_reach_the_level_after_correction():
    assert mcnemar_min_p(0) == 1.0 and mcnemar_min_p(6) == pytest.approx(2 / 64)
    # Discordant documents of seven McNemar tests: six can reach 0.05 alone (d >= 6), but only the
    # three with d >= 7 can reach 0.05 / 3, and three <= 3: K = 3.
    assert tarone_testable([mcnemar_min_p(d) for d in [10, 6, 11, 10, 2, 3, 1]]) == [0, 2, 3]
    assert tarone_testable([mcnemar_min_p(d) for d in [0, 1, 2]]) == []
    assert tarone_testable([0.001]) == [0]


def test_cochran_q_is_mcnemar_for_two_conditions_and_zero_without_differences():
    a = [1] * 12 + [0] * 3 + [1] * 5 + [0] * 10
    b = [0] * 12 + [1] * 3 + [1] * 5 + [0] * 10
    q = cochran_q([a, b])
    assert q["q"] == pytest.approx((12 - 3) ** 2 / (12 + 3)) and q["df"] == 1
    assert q["p"] == pytest.approx(stats.chi2.sf((12 - 3) ** 2 / 15, 1))
    assert cochran_q([a, a, a])["p"] == 1.0 and cochran_q([[0] * 5, [0] * 5])["q"] == 0.0
    # Three conditions: Q from its definition, (k - 1)(k sum C_j^2 - N^2) / (k N - sum R_i^2).
    x = np.array([[1, 1, 0, 1, 0], [1, 0, 0, 1, 1], [0, 0, 0, 1, 1]])
    c, r = x.sum(1), x.sum(0)
    assert cochran_q(x)["q"] == pytest.approx(2 * (3 * (c ** 2).sum() - r.sum() ** 2) / (3 * r.sum() - (r ** 2).sum()))
