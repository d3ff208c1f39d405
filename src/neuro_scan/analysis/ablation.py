"""Single-layer ablation: skip each layer in turn and measure the damage to the probe score.

damage = baseline score - ablated score (mean answer log-prob, nats): positive means the layer
helped. Layers are ranked by damage, never by its absolute value; a layer whose removal
improves the score is listed separately.

Significance: each layer's damage is tested against zero (paired over samples, bootstrap-t), and
the L tests are corrected together (Benjamini-Hochberg, q = 0.05): a layer does significant damage
when its adjusted p-value is at most 0.05 and its mean damage is positive (docs/statistics.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from neuro_scan.frames import Framed
from neuro_scan.engine import Engine, Progress, Scored
from neuro_scan.scoring import SampleScores
from neuro_scan.statistics import Interval, mean_intervals


@dataclass
class ProbeScore:
    score: Interval  # mean answer log-prob
    accuracy: Interval
    log_odds: float
    expected_digit: float | None


class DamageVerdict:
    """What a removal's ``damage`` interval says, for every kind of removal (layers, components)."""

    damage: Interval

    @property
    def significant_damage(self) -> bool:
        return self.damage.significant and self.damage.mean > 0

    @property
    def significant_gain(self) -> bool:
        return self.damage.significant and self.damage.mean < 0

    @property
    def significant(self) -> bool:
        """Removing it changes the score significantly, either way."""
        return self.significant_damage or self.significant_gain


@dataclass
class LayerAblation(DamageVerdict):
    layer: int
    score: float
    damage: Interval  # baseline - ablated, paired over samples; p-values adjusted across the layers
    accuracy: float
    accuracy_drop: Interval
    log_odds: float
    expected_digit: float | None


@dataclass
class CategoryAccuracy:
    samples: int
    baseline: float
    per_layer: list[float]  # with each layer skipped


@dataclass
class AblationResult(Framed):
    baseline: ProbeScore
    layers: list[LayerAblation]
    important_layers: list[int]  # layers whose removal does significant damage, most damaging first
    improving_layers: list[int]  # layers whose removal significantly improves the score
    ranked_layers: list[int]  # every layer, most damaging first
    seconds: float
    ablated_logprob: np.ndarray  # [L, S] per-sample answer log-prob with each layer skipped
    baseline_logprob: np.ndarray  # [S]
    baseline_correct: np.ndarray  # [S]
    ablated_correct: np.ndarray  # [L, S]
    warnings: list[str] = field(default_factory=list)  # what may make it mislead (neuro_scan.caveats)

    def top_layers(self, k: int) -> list[int]:
        """The k most damaging layers; significant ones first, then the rest by damage."""
        significant = self.important_layers[:k]
        rest = [layer for layer in self.ranked_layers if layer not in significant and self.layers[layer].damage.mean > 0]
        return significant + rest[: k - len(significant)]

    def category_accuracy(self, categories: list[str]) -> dict[str, CategoryAccuracy]:
        """Accuracy per sample category (``categories``: each sample's), at baseline and with each layer skipped."""
        labels = np.array(categories)
        return {
            str(category): CategoryAccuracy(
                samples=int((labels == category).sum()),
                baseline=float(self.baseline_correct[labels == category].mean()),
                per_layer=[float(v) for v in self.ablated_correct[:, labels == category].mean(axis=1)])
            for category in sorted(set(labels.tolist()))
        }


def summarize(scores: SampleScores, seed: int) -> ProbeScore:
    score, accuracy = mean_intervals(np.stack([scores.answer_logprob, scores.correct.astype(float)]), seed)
    digit = float(scores.expected_digit.mean()) if scores.expected_digit is not None else None
    return ProbeScore(score=score, accuracy=accuracy, log_odds=scores.log_odds, expected_digit=digit)


def layer_ablations(baseline: SampleScores, ablated: list[SampleScores], seed: int) -> list[LayerAblation]:
    """Per-layer results, with damage intervals paired over the same samples and tested as one family."""
    damage = np.stack([baseline.answer_logprob - a.answer_logprob for a in ablated])
    accuracy_drop = np.stack([baseline.correct.astype(float) - a.correct.astype(float) for a in ablated])
    damage_ci = mean_intervals(damage, seed)
    drop_ci = mean_intervals(accuracy_drop, seed)
    return [
        LayerAblation(
            layer=i,
            score=a.score,
            damage=damage_ci[i],
            accuracy=a.accuracy,
            accuracy_drop=drop_ci[i],
            log_odds=a.log_odds,
            expected_digit=float(a.expected_digit.mean()) if a.expected_digit is not None else None,
        )
        for i, a in enumerate(ablated)
    ]


def run_ablation(engine: Engine, seed: int, progress: Progress | None = None,
                 on_scored: Scored | None = None) -> AblationResult:
    """``on_scored(layer, scores)`` as each skipped layer is scored (the live view of a scan)."""
    started = time.perf_counter()
    configurations = [frozenset({layer}) for layer in range(engine.num_layers)]
    ablated = engine.skip_scan(configurations, progress, on_scored)
    return ablation_result(engine.baseline, ablated, seed, time.perf_counter() - started)


def ablation_result(baseline: SampleScores, ablated: list[SampleScores], seed: int, seconds: float) -> AblationResult:
    """Intervals and rankings from the per-sample scores of the baseline and of each skipped layer
    (also used to rebuild a stored scan from a report's ``per_sample`` section)."""
    layers = layer_ablations(baseline, ablated, seed)
    ranked = sorted(range(len(layers)), key=lambda i: -layers[i].damage.mean)
    return AblationResult(
        baseline=summarize(baseline, seed),
        layers=layers,
        important_layers=[i for i in ranked if layers[i].significant_damage],
        improving_layers=[i for i in reversed(ranked) if layers[i].significant_gain],
        ranked_layers=ranked,
        seconds=seconds,
        ablated_logprob=np.stack([a.answer_logprob for a in ablated]),
        baseline_logprob=baseline.answer_logprob,
        baseline_correct=baseline.correct,
        ablated_correct=np.stack([a.correct for a in ablated]),
    )


def execute(session, options):
    """`ablate` (and the first phase of `map`): every layer skipped in turn -> AblationResult; with
    ``--granularity sublayer|head`` or ``--ablation mean``, the component scan -> ComponentResult."""
    if getattr(options, "granularity", "layer") != "layer" or getattr(options, "ablation", "zero") != "zero":
        from neuro_scan.analysis import components

        return components.execute(session, options)
    from neuro_scan.caveats import announce, scan_warnings
    from neuro_scan.events import ConfigurationScored

    engine = session.engine
    with session.phase("ablation", f"ablating {engine.num_layers} layers", engine.num_layers,
                       timing="ablation_seconds") as advance:
        baseline = engine.baseline

        def scored(layer: int, scores: SampleScores) -> None:
            """The live view: the layer's damage with the interval the report will give it (rows
            are resampled alike, so a row's interval does not depend on the other layers)."""
            damage = mean_intervals((baseline.answer_logprob - scores.answer_logprob)[None], options.seed)[0]
            session.sink(ConfigurationScored("ablation", layer, f"L{layer}", scores.score, damage.mean,
                                             scores.accuracy, scores.answer_logprob.tolist(), damage.low, damage.high))

        result = run_ablation(engine, seed=options.seed, progress=advance, on_scored=scored)
    result.warnings = announce(session, scan_warnings(result))
    return result
