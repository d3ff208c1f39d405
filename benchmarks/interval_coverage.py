"""Coverage of nominal 95% intervals for a mean, by simulation: the table in docs/statistics.md.

    python benchmarks/interval_coverage.py [--probes 20000] [--resamples 2000] [--seed 11]

For each distribution and sample count n (12, 30), draws ``--probes`` samples of n values and
counts how often each method's interval contains the true mean:
- t: mean +- t(0.975, n-1) * s / sqrt(n);
- percentile: 2.5% and 97.5% quantiles of the bootstrap means (neuro-scan before bootstrap-t);
- BCa: bias-corrected and accelerated percentiles (acceleration from the jackknife);
- bootstrap-t: neuro_scan.statistics.mean_intervals, what neuro-scan uses.
Also prints each method's median interval width relative to the t-interval. Takes a few minutes
on two cores at the default size.

    python benchmarks/interval_coverage.py --reports a/report.json b/report.json [--probes 2000]

uses measured damage instead: every layer's per-sample damage in each `map`/`ablate` report is
taken as a population (its mean the true mean), probes of n samples are drawn from it with
replacement, and the coverage per method is summarised over the layers.
"""

from __future__ import annotations

import argparse
import json
import math
from statistics import NormalDist

import numpy as np

from neuro_scan.statistics import mean_intervals, resample_counts

DISTRIBUTIONS = {  # name: (draw(rng, shape), true mean)
    "normal": (lambda rng, shape: rng.normal(1.0, 1.0, shape), 1.0),
    "gamma k=2 (skew 1.4)": (lambda rng, shape: rng.gamma(2.0, 1.0, shape), 2.0),
    "normal + exponential (skew 1.4)": (lambda rng, shape: rng.normal(0, 0.5, shape) + rng.exponential(1.0, shape), 1.0),
    "lognormal sigma=0.5 (skew 1.8)": (lambda rng, shape: rng.lognormal(0, 0.5, shape), math.exp(0.125)),
    "exponential (skew 2)": (lambda rng, shape: rng.exponential(1.0, shape), 1.0),
    "75/25 mixture N(0.2,0.2), N(2,0.7) (skew 1.5)": (
        lambda rng, shape: np.where(rng.random(shape) < 0.25, rng.normal(2, 0.7, shape), rng.normal(0.2, 0.2, shape)),
        0.75 * 0.2 + 0.25 * 2),
    "lognormal sigma=1 (skew 6.2)": (lambda rng, shape: rng.lognormal(0, 1.0, shape), math.exp(0.5)),
    "85/15 mixture N(0.3,0.4), 1+Exp(3) (skew 4.4)": (
        lambda rng, shape: np.where(rng.random(shape) < 0.15, 1 + rng.exponential(3, shape), rng.normal(0.3, 0.4, shape)),
        0.85 * 0.3 + 0.15 * 4),
}
NORMAL = NormalDist()


def t_quantile(df: int) -> float:
    """t(0.975, df) by its Cornish-Fisher series in 1/df (within 2e-4 for df >= 10)."""
    z = NORMAL.inv_cdf(0.975)
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def other_methods(values: np.ndarray, resamples: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rows, n = values.shape
    mean = values.mean(axis=1)
    half = t_quantile(n - 1) * values.std(axis=1, ddof=1) / math.sqrt(n)
    boot = np.sort((values - mean[:, None]) @ resample_counts(n, seed, resamples).T / n, axis=1)  # mean* - mean
    percentile = (mean + boot[:, int(0.025 * resamples)], mean + boot[:, int(0.975 * resamples) - 1])
    cdf, ppf = np.vectorize(NORMAL.cdf), np.vectorize(NORMAL.inv_cdf)
    bias = ppf(np.clip((boot < 0).mean(axis=1) + 0.5 * (boot == 0).mean(axis=1), 1e-6, 1 - 1e-6))
    jack = (values.sum(axis=1, keepdims=True) - values) / (n - 1)
    spread = jack.mean(axis=1, keepdims=True) - jack
    accel = (spread ** 3).sum(axis=1) / (6 * ((spread ** 2).sum(axis=1)) ** 1.5)

    def bca(z: float) -> np.ndarray:
        level = cdf(bias + (bias + z) / (1 - accel * (bias + z)))
        index = np.clip(np.round(level * (resamples - 1)).astype(int), 0, resamples - 1)
        return mean + boot[np.arange(rows), index]

    z = NORMAL.inv_cdf(0.975)
    return {"t": (mean - half, mean + half), "percentile": percentile, "BCa": (bca(-z), bca(z))}


def coverage(values: np.ndarray, true_mean: float, resamples: int) -> dict[str, tuple[float, float]]:
    """method -> (coverage, median width / the t-interval's)."""
    methods = other_methods(values, resamples, seed=0)
    ours = mean_intervals(values, seed=0, resamples=resamples)
    methods["bootstrap-t"] = (np.array([i.low for i in ours]), np.array([i.high for i in ours]))
    t_width = methods["t"][1] - methods["t"][0]
    return {method: (float(np.mean((low <= true_mean) & (true_mean <= high))), float(np.median((high - low) / t_width)))
            for method, (low, high) in methods.items()}


def measured_damage(paths: list[str], probes: int, resamples: int, rng: np.random.Generator) -> None:
    populations = []
    for path in paths:
        per_sample = json.loads(open(path).read())["per_sample"]
        populations += list(np.asarray(per_sample["baseline"]["answer_logprob"])
                            - np.asarray(per_sample["ablated"]["answer_logprob"]))
    print(f"{len(populations)} measured damage profiles as populations, {probes} probes each")
    for n in (12, 30):
        results = [coverage(rng.choice(pop, size=(probes, n)), float(pop.mean()), resamples) for pop in populations]
        cells = [f"{method} mean {np.mean([r[method][0] for r in results]):.3f} "
                 f"(10th percentile {np.percentile([r[method][0] for r in results], 10):.3f})" for method in results[0]]
        print(f"n={n:2d}  " + "  ".join(cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=20000)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--reports", nargs="*", help="map/ablate report.json files: use their measured damage")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    if args.reports:
        measured_damage(args.reports, args.probes, args.resamples, rng)
        return
    print(f"coverage of nominal 95% intervals, {args.probes} simulated probes each "
          f"(standard error about {math.sqrt(0.95 * 0.05 / args.probes):.4f}); width: median / t-interval's")
    for n in (12, 30):
        for name, (draw, true_mean) in DISTRIBUTIONS.items():
            results = coverage(draw(rng, (args.probes, n)), true_mean, args.resamples)
            cells = [f"{method} {share:.3f} (width {width:.2f})" for method, (share, width) in results.items()]
            print(f"n={n:2d}  {name:46s} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
