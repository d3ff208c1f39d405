"""Intervals and tests for mean paired differences, and the false-discovery-rate correction.

Every comparison in neuro-scan is paired: two runs scored on the same samples (the model and the
model with a layer skipped, say) give one difference per sample, and the question is the mean
difference. Rows of such differences become, per row:

- the mean with its 95% studentized-bootstrap (bootstrap-t) interval and its standard error;
- the two-sided p-value of "the mean is zero", read from the same bootstrap distribution, so that
  p <= 0.05 exactly when the interval excludes zero (ties aside);
- the Benjamini-Hochberg adjusted p-value across the rows: the rows of one call are one family of
  tests (every layer of a scan, every pair of a circuit), and a mean is *significant* when its
  adjusted p-value is at most FDR_LEVEL.

Why these methods, and what they were measured to do: docs/statistics.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95
FDR_LEVEL = 0.05  # Benjamini-Hochberg q
ROW_BLOCK = 256  # rows bootstrapped together: bounds memory at ROW_BLOCK x RESAMPLES numbers
# A resample whose standard error is below this share of the sample's has (nearly) lost the spread,
# and its t* is mostly a division by ~0; when more of them than a tail holds, the bootstrap-t
# quantiles are theirs and the row gets the percentile interval (docs/statistics.md).
DEGENERATE_SE = 0.05


@dataclass(frozen=True)
class Interval:
    """A mean with its 95% interval, standard error and, when tested, its p-values."""

    mean: float
    low: float
    high: float
    stderr: float
    p_value: float | None = None  # two-sided, "the mean is zero"
    p_value_adjusted: float | None = None  # Benjamini-Hochberg, across the rows it was computed with

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def significant(self) -> bool:
        """Adjusted p-value at most FDR_LEVEL (which implies the interval excludes zero; both are
        required, so a tie in the bootstrap can never make a significant mean whose interval
        touches zero). An interval built without a test is significant when it excludes zero."""
        if self.p_value_adjusted is None:
            return self.excludes_zero
        return self.p_value_adjusted <= FDR_LEVEL and self.excludes_zero

    def as_list(self) -> list[float]:
        return [self.low, self.high]


def mean_intervals(values: np.ndarray, seed: int, resamples: int = RESAMPLES) -> list[Interval]:
    """One tested Interval per row of ``values`` ([rows, S] or [S]): the mean over the S samples.

    Every row is resampled with the same sample indices (one seeded set of draws), so rows that
    are paired over samples stay paired and the same inputs give the same intervals.
    """
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    num_samples = values.shape[-1]
    means = values.mean(axis=-1)
    if num_samples < 2:  # one sample: no spread to test against
        return [Interval(float(m), float(m), float(m), 0.0, 1.0, 1.0) for m in means]
    counts = resample_counts(num_samples, seed, resamples)
    rows = [_bootstrap_t(values[start:start + ROW_BLOCK], counts) for start in range(0, len(values), ROW_BLOCK)]
    low, high, stderr, p_values = (np.concatenate(parts) for parts in zip(*rows))
    adjusted = benjamini_hochberg(p_values)
    return [Interval(*(float(v) for v in row)) for row in zip(means, low, high, stderr, p_values, adjusted)]


def resample_counts(num_samples: int, seed: int, resamples: int = RESAMPLES) -> np.ndarray:
    """[resamples, S]: how many times each sample is drawn in each bootstrap resample."""
    draws = np.random.default_rng(seed).integers(0, num_samples, size=(resamples, num_samples))
    flat = draws + num_samples * np.arange(resamples)[:, None]
    return np.bincount(flat.ravel(), minlength=resamples * num_samples).reshape(resamples, num_samples).astype(float)


def _bootstrap_t(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Bootstrap-t intervals and p-values for the row means: (low, high, stderr, p_value).

    The statistic is t = (mean - true mean) / standard error; its distribution is estimated by
    t* = (resample mean - mean) / resample standard error, and the interval is
    [mean - t*_hi * se, mean - t*_lo * se] with t*_lo, t*_hi the ((B+1) * 2.5%)-th smallest and
    largest t*. The p-value of "the true mean is zero" counts the t* at least as extreme as the
    observed mean / se, in the nearer tail: 2 * (1 + count) / (B + 1).

    Rows whose resample standard errors are degenerate -- more than 2.5% of the resamples with
    se* < DEGENERATE_SE * se, as when a few samples carry all the difference and the rest are
    (nearly) equal -- get the percentile interval [mean + shift_lo, mean + shift_hi] of the
    resample means instead, and its p-value: 2 * (1 + count) / (B + 1), counting the resample
    shifts at or beyond -mean in the nearer tail (so again p <= 0.05 exactly when the interval
    excludes zero). Their bootstrap-t interval would be set by divisions by ~0: one such head on
    the demo model read 0.06..857 nats with every per-sample damage at most 7.1. Resamples that
    draw one sample n times are not counted: at n = 2 half of them do, and the percentile test
    would call any two samples of one sign significant.
    """
    resamples, num_samples = counts.shape
    means = values.mean(axis=-1, keepdims=True)
    centred = values - means
    stderr = np.sqrt((centred ** 2).sum(axis=-1) / (num_samples - 1) / num_samples)
    shift = centred @ counts.T / num_samples  # resample mean - mean, [rows, B]
    spread = (centred ** 2) @ counts.T / num_samples - shift ** 2  # resample variance (1/S)
    boot_se = np.sqrt(np.maximum(spread, 0.0) * num_samples / (num_samples - 1) / num_samples)
    with np.errstate(divide="ignore", invalid="ignore"):
        # a resample with no spread (every draw the same sample) has t* = +-inf, or 0 with no shift
        t_star = np.where(boot_se > 0, shift / boot_se, np.sign(shift) * np.inf)
        t_star = np.nan_to_num(t_star, nan=0.0, posinf=np.inf, neginf=-np.inf)
        observed = np.where(stderr > 0, means[:, 0] / stderr, np.sign(means[:, 0]) * np.inf)
    rank = max(int(np.floor((resamples + 1) * (1 - LEVEL) / 2)), 1)
    ordered = np.sort(t_star, axis=-1)
    t_low, t_high = ordered[:, rank - 1], ordered[:, resamples - rank]
    mean = means[:, 0]
    low, high = mean - t_high * stderr, mean - t_low * stderr
    tail = np.minimum((t_star >= observed[:, None]).sum(axis=-1), (t_star <= observed[:, None]).sum(axis=-1))
    # rows whose t* tails are infinite (few distinct values, e.g. 0/1 accuracy): the percentile interval
    percentile = ~(np.isfinite(t_low) & np.isfinite(t_high))
    # rows whose t* tails are set by resamples that lost their spread (not counting those that drew
    # one sample n times, as most do at n = 2): the percentile interval and its own p-value
    one_sample = counts.max(axis=-1) == num_samples
    degenerate = ((boot_se < DEGENERATE_SE * stderr[:, None]) & ~one_sample).mean(axis=-1) > (1 - LEVEL) / 2
    percentile |= degenerate
    shifts = np.sort(shift[percentile], axis=-1)
    low[percentile] = mean[percentile] + shifts[:, rank - 1]
    high[percentile] = mean[percentile] + shifts[:, resamples - rank]
    shifts = np.sort(shift[degenerate], axis=-1)
    zero = -mean[degenerate, None]  # the shift that would put the resample mean at zero
    tail[degenerate] = np.minimum((shifts <= zero).sum(axis=-1), (shifts >= zero).sum(axis=-1))
    # rows with no spread at all: the mean is exact
    exact = stderr == 0
    low[exact] = high[exact] = mean[exact]
    p_value = np.minimum(2 * (1 + tail) / (resamples + 1), 1.0)
    p_value[exact] = np.where(mean[exact] == 0, 1.0, 0.0)
    return low, high, stderr, p_value


def benjamini_hochberg(p_values: np.ndarray | list[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values, in the input order.

    With the m p-values sorted, p_(1) <= ... <= p_(m), the adjusted value of p_(i) is
    min over j >= i of p_(j) * m / j (at most 1). Rejecting every hypothesis whose adjusted
    p-value is at most q is the step-up procedure: reject the k smallest, for the largest k with
    p_(k) <= k q / m; it keeps the expected share of false discoveries at most q.
    """
    p = np.asarray(p_values, dtype=np.float64)
    count = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * count / np.arange(1, count + 1)
    adjusted = np.empty(count)
    adjusted[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return adjusted
