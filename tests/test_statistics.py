"""statistics: interval coverage by simulation, p-values against normal theory and against their own
intervals, Benjamini-Hochberg against the step-up rule and a worked example, and the significance
decisions of a scan built on them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neuro_scan.analysis.ablation import ablation_result
from neuro_scan.scoring import SampleScores
from neuro_scan.statistics import Interval, benjamini_hochberg, mean_intervals

# Skewed distributions like per-sample layer damage (on SmolLM2, 119 of 120 layer x probe damage
# profiles have |skewness| <= 1.8; see docs/statistics.md), each with its true mean.
SKEWED = {
    "gamma k=2 (skewness 1.4)": (lambda rng, size: rng.gamma(2.0, 1.0, size), 2.0),
    "normal + exponential (skewness 1.4)": (lambda rng, size: rng.normal(0, 0.5, size) + rng.exponential(1.0, size), 1.0),
    "lognormal sigma=0.5 (skewness 1.8)": (lambda rng, size: rng.lognormal(0, 0.5, size), math.exp(0.125)),
    "exponential (skewness 2)": (lambda rng, size: rng.exponential(1.0, size), 1.0),
}
PROBES = 4000  # simulated probes per setting: the coverage estimate's standard error is about 0.0035


@pytest.mark.slow
@pytest.mark.parametrize("num_samples", [12, 30])
def test_nominal_95_intervals_cover_the_true_mean(num_samples):
    """Every simulated probe's interval is computed as a scan computes a layer's (one row each).
    2000 resamples instead of the default 10000: the coverage does not depend on it (measured:
    within 0.002), and the test stays fast."""
    rng = np.random.default_rng(num_samples)
    coverage = {}
    for name, (draw, true_mean) in SKEWED.items():
        intervals = mean_intervals(draw(rng, (PROBES, num_samples)), seed=0, resamples=2000)
        coverage[name] = np.mean([i.low <= true_mean <= i.high for i in intervals])
    assert all(0.93 <= c <= 0.97 for c in coverage.values()), coverage


def test_large_samples_agree_with_normal_theory():
    """With 400 normal samples the bootstrap-t interval is the textbook mean +- 1.96 se, and the
    p-value the two-sided normal one (an independent computation)."""
    rng = np.random.default_rng(1)
    values = rng.normal(0.0, 1.0, (6, 400)) + np.array([0.0, 0.05, 0.1, 0.12, 0.15, 0.3])[:, None]
    for row, interval in zip(values, mean_intervals(values, seed=3)):
        se = row.std(ddof=1) / math.sqrt(len(row))
        assert interval.mean == pytest.approx(row.mean(), abs=1e-12) and interval.stderr == pytest.approx(se)
        assert interval.low == pytest.approx(row.mean() - 1.96 * se, abs=0.08 * se)
        assert interval.high == pytest.approx(row.mean() + 1.96 * se, abs=0.08 * se)
        normal_p = math.erfc(abs(row.mean() / se) / math.sqrt(2))
        assert interval.p_value == pytest.approx(normal_p, abs=0.006 + 0.1 * normal_p)


def test_p_value_at_most_five_percent_exactly_when_the_interval_excludes_zero():
    rng = np.random.default_rng(2)
    values = rng.exponential(1.0, (400, 12)) - rng.uniform(0.0, 2.0, (400, 1))
    intervals = mean_intervals(values, seed=0)
    assert 50 < sum(i.excludes_zero for i in intervals) < 350  # both kinds are tested
    assert all((i.p_value <= 0.05) == i.excludes_zero for i in intervals)


def test_rows_without_spread_and_binary_rows():
    values = np.array([[2.0] * 6, [0.0] * 6, [1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1.0]])
    exact, zero, mostly_one, mostly_zero = mean_intervals(values, seed=0)
    assert (exact.low, exact.high, exact.stderr, exact.p_value) == (2.0, 2.0, 0.0, 0.0)
    assert (zero.low, zero.high, zero.p_value) == (0.0, 0.0, 1.0)
    for row in (mostly_one, mostly_zero):  # many resamples have no spread: finite, inside the data's range
        assert 0.0 <= row.low <= row.mean <= row.high <= 1.0
    one_sample = mean_intervals(np.array([[3.0], [-1.0]]), seed=0)
    assert [(i.low, i.high, i.p_value) for i in one_sample] == [(3.0, 3.0, 1.0), (-1.0, -1.0, 1.0)]


def test_same_seed_same_intervals_and_rows_resampled_together():
    values = np.random.default_rng(4).normal(size=(3, 15))
    assert mean_intervals(values, seed=7) == mean_intervals(values, seed=7)
    # a row's interval does not depend on the other rows (only its adjusted p-value does)
    alone = mean_intervals(values[1], seed=7)[0]
    together = mean_intervals(values, seed=7)[1]
    assert (alone.low, alone.high, alone.p_value) == pytest.approx((together.low, together.high, together.p_value))


# ------------------------------------------------------------------------------- Benjamini-Hochberg


def test_benjamini_hochberg_on_the_papers_example():
    """The 15 p-values of Benjamini & Hochberg (1995), section 4.

    By hand: sorted p_(i) * 15 / i = .0015, .003, .0095, .035625, .0603, .0695, .063857, .0645,
    .0765, .486, .581182, .714875, .753231, .813214, 1; the adjusted value is the running minimum
    from the right, so the sixth becomes .063857 (the seventh's). At q = 0.05 the first four are
    discoveries, as in the paper (p_(4) = .0095 <= 4 * .05 / 15 = .0133; no later p_(k) <= k q / m).
    """
    p = [0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459, 0.3240, 0.4262, 0.5719, 0.6528,
         0.7590, 1.0000]
    by_hand = [0.0015, 0.003, 0.0095, 0.035625, 0.0603, 0.063857, 0.063857, 0.0645, 0.0765, 0.486, 0.581182,
               0.714875, 0.753231, 0.813214, 1.0]
    np.testing.assert_allclose(benjamini_hochberg(p), by_hand, atol=1e-6)
    shuffled = np.random.default_rng(0).permutation(15)
    np.testing.assert_allclose(benjamini_hochberg(np.array(p)[shuffled]), np.array(by_hand)[shuffled], atol=1e-6)
    assert list(np.flatnonzero(benjamini_hochberg(p) <= 0.05)) == [0, 1, 2, 3]


def step_up(p: np.ndarray, q: float) -> set[int]:
    """The procedure as the paper states it: reject the k smallest, k the largest with p_(k) <= k q / m."""
    order = np.argsort(p)
    passing = [k for k in range(1, len(p) + 1) if p[order[k - 1]] <= k * q / len(p)]
    return set(order[: max(passing)].tolist()) if passing else set()


def test_adjusted_p_values_reject_what_the_step_up_rule_rejects():
    rng = np.random.default_rng(5)
    for _ in range(300):
        count = int(rng.integers(1, 40))
        p = np.where(rng.random(count) < 0.3, rng.uniform(0, 0.01, count), rng.uniform(0, 1, count))
        for q in (0.05, 0.1):
            assert set(np.flatnonzero(benjamini_hochberg(p) <= q).tolist()) == step_up(p, q)


# ------------------------------------------------------------------------------------ decisions


def test_a_scan_decides_significance_by_the_adjusted_p_value():
    """Eight layers on 12 samples: clear damage, clear gain, nothing, and borderline damage.
    Significant layers are exactly those the step-up rule rejects among the layers' own p-values."""
    rng = np.random.default_rng(8)
    samples = 12
    shifts = [3.0, -2.0, 0.0, 0.0, 0.3, 0.35, 0.4, 0.0]
    damage = np.array([s + rng.exponential(0.5, samples) - 0.5 for s in shifts])
    baseline = SampleScores(np.zeros(samples), np.ones(samples, dtype=bool))
    ablated = [SampleScores(-row, np.ones(samples, dtype=bool)) for row in damage]
    scan = ablation_result(baseline, ablated, seed=0, seconds=0.0)
    raw = np.array([layer.damage.p_value for layer in scan.layers])
    rejected = step_up(raw, 0.05)
    assert {0, 1} <= rejected and not rejected & {2, 3, 7}
    assert set(scan.important_layers) == {i for i in rejected if damage[i].mean() > 0}
    assert scan.improving_layers == [1]
    # the correction matters here: some layer's interval excludes zero without being significant
    uncorrected = {i for i, layer in enumerate(scan.layers) if layer.damage.excludes_zero}
    assert uncorrected > rejected


def test_an_interval_given_without_a_test_is_judged_by_its_interval():
    assert Interval(1.0, 0.5, 1.5, 0.1).significant and not Interval(0.2, -0.1, 0.5, 0.1).significant
    assert not Interval(1.0, 0.5, 1.5, 0.1, p_value=0.01, p_value_adjusted=0.08).significant


# ------------------------------------------------------------------------- degenerate resample spread


def few_carry_everything(rng, rows: int, samples: int = 32, carriers: int = 3) -> np.ndarray:
    """Per-sample damages where a few samples carry it all and the rest are float32 noise around 0:
    a head's damage on the demo model (0.55 nats mean, three samples at 5-7 nats)."""
    values = rng.normal(0.0, 3e-7, (rows, samples))
    values[:, :carriers] = rng.uniform(4.0, 8.0, (rows, carriers))
    return values


def bootstrap_t_by_hand(row: np.ndarray, rng, resamples: int = 4000) -> tuple[float, float]:
    """The plain bootstrap-t interval, drawn independently of statistics.py."""
    n, mean = len(row), row.mean()
    se = row.std(ddof=1) / np.sqrt(n)
    draws = row[rng.integers(0, n, (resamples, n))]
    t = (draws.mean(axis=1) - mean) / (draws.std(axis=1, ddof=1) / np.sqrt(n))
    t_low, t_high = np.quantile(t[np.isfinite(t)], [0.025, 0.975])
    return mean - t_high * se, mean - t_low * se


def test_a_few_samples_carrying_everything_give_a_percentile_interval_not_an_explosion():
    rng = np.random.default_rng(11)
    values = few_carry_everything(rng, 1)[0]
    _, exploded = bootstrap_t_by_hand(values, rng)
    assert exploded > 20 * values.max()  # what the bootstrap-t gave: far beyond any sample
    interval, = mean_intervals(values, seed=0)
    assert values.min() <= interval.low <= interval.mean <= interval.high <= values.max()
    # the percentile interval of the resample means, drawn independently
    means = values[rng.integers(0, len(values), (20000, len(values)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    assert interval.high == pytest.approx(high, rel=0.1) and interval.low == pytest.approx(low, abs=0.05)


def test_degenerate_rows_keep_their_p_values_in_step_with_their_intervals():
    """Rows of that shape moved up or down so that zero falls anywhere in them: p <= 0.05 exactly
    when the (percentile) interval excludes zero; and ordinary rows are left to the bootstrap-t."""
    rng = np.random.default_rng(12)
    values = few_carry_everything(rng, 300, samples=20, carriers=2) - rng.uniform(-0.3, 2.0, (300, 1))
    intervals = mean_intervals(values, seed=0)
    assert 30 < sum(i.excludes_zero for i in intervals) < 270
    assert all((i.p_value <= 0.05) == i.excludes_zero for i in intervals)
    assert all(row.min() <= i.low and i.high <= row.max() for row, i in zip(values, intervals))
    ordinary = rng.gamma(2.0, 1.0, 12)
    rows = mean_intervals(np.stack([ordinary, few_carry_everything(rng, 1)[0][:12]]), seed=0)
    assert rows[0].high > ordinary.mean() + 1.5 * rows[0].stderr  # the bootstrap-t's width, not clipped
    # two samples of one sign: half the resamples draw one sample twice, which is no evidence
    assert mean_intervals(np.array([1.0, 1.5]), seed=0)[0].p_value > 0.05
