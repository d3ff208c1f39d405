"""Exact component scans: remove each layer, each attention or MLP block, or each attention head in
turn, and measure the damage to the probe score (baseline - ablated mean answer log-prob, nats).

What "removed" means (the targets of :mod:`neuro_scan.backend.components`):

- layer: the layer's residual update is zero (the stream passes through it), or with mean ablation
  it is replaced by its mean over the probe's real tokens in the baseline run;
- sublayer: the attention block's or the MLP block's output -- what the block adds to the residual
  stream -- is zero (or its mean). In a sequential layer (``x + attn``, then ``+ mlp``) the MLP then
  reads the stream without the attention's contribution. In a parallel-attention layer (GPT-NeoX,
  Phi-1/2, GPT-J: ``x + attn(ln1 x) + mlp(ln2 x)``) both blocks read the layer's input, so removing
  one leaves the other's output exactly as in the baseline: the layer's output is the input plus
  the other block's baseline output (tested);
- head: the head's slice of the attention output projection's input is zero (or its mean), so
  its contribution through that projection is zero.

Every configuration resumes from the baseline's cached stream at the target's layer (the engine,
:meth:`Engine.ablation_scan`), and several share one forward. Removing a target in layer l costs
L - l layer passes, so a scan of one target per layer costs (L+1)/2 forwards: sublayers
2 x (L+1)/2, heads H x (L+1)/2 (whole layers one layer less each, (L-1)/2: a skipped layer is not
run at all). Damage intervals are paired over samples (bootstrap-t) and the components of one
scan are one family of tests (Benjamini-Hochberg), as for layers (docs/statistics.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from neuro_scan.analysis.ablation import DamageVerdict, ProbeScore, summarize
from neuro_scan.backend.base import ABLATIONS, Target
from neuro_scan.engine import Engine, Progress
from neuro_scan.errors import UsageError
from neuro_scan.scoring import SampleScores
from neuro_scan.statistics import Interval, mean_intervals

GRANULARITIES = ("layer", "sublayer", "head")
PARTS = {"layer": ("layer",), "sublayer": ("attention", "mlp"), "head": ("head",)}


def check_choices(granularity: str, ablation: str) -> None:
    """``--granularity`` and ``--ablation``, before any model loads."""
    if granularity not in GRANULARITIES:
        raise UsageError(f"--granularity: '{granularity}' is not one of {', '.join(GRANULARITIES)}")
    if ablation not in ABLATIONS:
        raise UsageError(f"--ablation: '{ablation}' is not one of {', '.join(ABLATIONS)}")


@dataclass
class ComponentAblation(DamageVerdict):
    target: Target
    score: float  # mean answer log-prob with the component removed
    damage: Interval  # baseline - ablated, paired over samples; p-values adjusted across the scan
    accuracy: float
    accuracy_drop: Interval


@dataclass
class ComponentResult:
    granularity: str
    ablation: str
    baseline: ProbeScore
    components: list[ComponentAblation]  # in scan order: by layer, then part / head
    num_layers: int
    num_heads: int
    seconds: float
    baseline_logprob: np.ndarray  # [S]
    ablated_logprob: np.ndarray  # [N, S] per component
    warnings: list[str] = field(default_factory=list)  # what may make it mislead (neuro_scan.caveats)

    @property
    def ranked(self) -> list[ComponentAblation]:
        """Most damaging first (by damage, never its absolute value)."""
        return sorted(self.components, key=lambda c: -c.damage.mean)

    def damage_by_target(self) -> dict[Target, float]:
        return {c.target: c.damage.mean for c in self.components}

    def to_frame(self) -> pd.DataFrame:
        """One row per component: where it is, its damage with interval and p-values, accuracy."""
        return pd.DataFrame([{
            "component": str(c.target), "layer": c.target.layer, "part": c.target.part,
            "head": c.target.head if c.target.part == "head" else None,
            "score": c.score, "damage": c.damage.mean, "damage_ci_low": c.damage.low, "damage_ci_high": c.damage.high,
            "damage_stderr": c.damage.stderr, "p_value": c.damage.p_value, "p_value_adjusted": c.damage.p_value_adjusted,
            "significant": c.significant_damage or c.significant_gain, "accuracy": c.accuracy,
            "accuracy_drop": c.accuracy_drop.mean,
        } for c in self.components])


def component_targets(engine: Engine, granularity: str) -> list[Target]:
    """Every target of one granularity the model has, by layer (a layer without attention has no
    attention block and no heads)."""
    parts = PARTS[granularity]
    return [t for layer in range(engine.num_layers) for t in engine.backend.targets_in(layer) if t.part in parts]


def cost_bound(granularity: str, num_layers: int, num_heads: int) -> float:
    """The scan's cost in forwards of the whole probe, baseline included, when every configuration
    resumes at its layer: per target kind (L+1)/2 forwards."""
    kinds = {"layer": 1, "sublayer": 2, "head": num_heads}[granularity]
    return kinds * (num_layers + 1) / 2


def run_components(engine: Engine, granularity: str = "head", ablation: str = "zero", seed: int = 0,
                   progress: Progress | None = None, targets: list[Target] | None = None) -> ComponentResult:
    """Remove each component of ``granularity`` in turn (``ablation``: zero or mean) and measure the
    damage; ``targets`` narrows the scan to some of them."""
    check_choices(granularity, ablation)
    started = time.perf_counter()
    chosen = component_targets(engine, granularity) if targets is None else list(targets)
    if not chosen:
        raise UsageError(f"--granularity {granularity}: this {engine.backend.info.architecture} model has no such "
                         "components neuro-scan can find")
    scores = engine.ablation_scan([frozenset({t}) for t in chosen], ablation, progress)
    return component_result(engine.baseline, chosen, scores, granularity, ablation, seed, engine.num_layers,
                            engine.backend.info.num_heads, time.perf_counter() - started)


def component_result(baseline: SampleScores, targets: list[Target], ablated: list[SampleScores], granularity: str,
                     ablation: str, seed: int, num_layers: int, num_heads: int, seconds: float) -> ComponentResult:
    damage = mean_intervals(np.stack([baseline.answer_logprob - a.answer_logprob for a in ablated]), seed)
    drop = mean_intervals(np.stack([baseline.correct.astype(float) - a.correct.astype(float) for a in ablated]), seed)
    components = [ComponentAblation(t, a.score, damage[i], a.accuracy, drop[i])
                  for i, (t, a) in enumerate(zip(targets, ablated))]
    return ComponentResult(granularity, ablation, summarize(baseline, seed), components, num_layers, num_heads, seconds,
                           baseline.answer_logprob, np.stack([a.answer_logprob for a in ablated]))


def execute(session, options) -> ComponentResult:
    """`ablate --granularity sublayer|head` (``options.granularity``, ``options.ablation``, ``options.seed``)."""
    from neuro_scan.caveats import announce, component_warnings

    engine = session.engine
    targets = component_targets(engine, options.granularity)
    with session.phase("components", f"removing {len(targets)} components ({options.granularity}, "
                       f"{options.ablation} ablation)", len(targets), timing="components_seconds") as advance:
        result = run_components(engine, options.granularity, options.ablation, options.seed, advance, targets)
    result.warnings = announce(session, component_warnings(result))
    return result
