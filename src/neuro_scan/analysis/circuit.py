"""Layers that work together: pairwise ablation, with each pair's interaction and its interval.

For layers i < j, per sample, with damage = baseline - ablated answer log-prob (nats):

    interaction = damage(i and j skipped) - (damage(i skipped) + damage(j skipped))

averaged over samples, with a paired 95% bootstrap-t interval (every pair, every single layer and
the baseline are scored on the same samples) and the p-value of "no interaction". The pairs
tested are one family: their p-values are adjusted together (Benjamini-Hochberg, q = 0.05;
docs/statistics.md). A pair is

- synergistic when its interaction is significant (adjusted p <= 0.05) and positive: skipping
  both hurts more than the two alone;
- redundant when it is significant and negative: skipping both hurts less than the sum (the
  layers overlap, or the first removal already did most of the harm: log-probs saturate);
- independent otherwise.

Without the correction, about 5% of the pairs tested would come out significant with no
interaction at all (the report keeps that count for comparison); with it, the expected share of
false discoveries among the significant pairs is at most 5%.

Phases: A, the single-layer scan (or a stored one for the same model, probe and samples);
B (``thorough`` only), similarity of the layers' outputs; C, the pairs, through
:meth:`Engine.skip_scan`, which resumes each pair (i, j) after j from the run with i skipped
(cached once for all pairs with that i) or after i from the baseline's cached stream, and
stacks pairs in one forward.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from neuro_scan.frames import Framed
from neuro_scan.analysis.ablation import AblationResult, ablation_result
from neuro_scan.engine import Engine, Progress, Scored
from neuro_scan.errors import UsageError
from neuro_scan.report.read import Report, read_report, read_scan
from neuro_scan.scoring import SampleScores
from neuro_scan.statistics import FDR_LEVEL, LEVEL, Interval, mean_intervals

STRATEGIES = ("fast", "thorough", "exhaustive")
SIMILAR_PER_CANDIDATE = 3  # thorough: partners added per candidate layer, most similar outputs first
REUSE_TOLERANCE = 1e-3  # nats: a stored scan is reused only if its baseline matches this closely


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise UsageError(f"--strategy: '{strategy}' is not one of {', '.join(STRATEGIES)}")


@dataclass
class PairPlan:
    strategy: str
    candidates: list[int]  # the top-K single layers
    pairs: list[tuple[int, int]]  # (i, j), i < j, in order
    reasons: dict[tuple[int, int], str]  # why each pair is tested: top-k, adjacent, similar, all
    similarity: np.ndarray | None  # [L, L] (thorough only)


@dataclass
class PairInteraction:
    first: int
    second: int
    reason: str
    joint_damage: Interval
    interaction: Interval  # p-values adjusted across the pairs tested

    @property
    def kind(self) -> str:
        if not self.interaction.significant:
            return "independent"
        return "synergistic" if self.interaction.mean > 0 else "redundant"


@dataclass
class CircuitResult(Framed):
    plan: PairPlan
    singles: AblationResult
    pairs: list[PairInteraction]
    seconds: float  # phase C

    @property
    def synergistic(self) -> list[PairInteraction]:
        return sorted((p for p in self.pairs if p.kind == "synergistic"), key=lambda p: -p.interaction.mean)

    @property
    def redundant(self) -> list[PairInteraction]:
        return sorted((p for p in self.pairs if p.kind == "redundant"), key=lambda p: p.interaction.mean)

    @property
    def expected_false_positives(self) -> float:
        """Pairs an uncorrected 5% test would call significant if no pair interacted."""
        return (1 - LEVEL) * len(self.pairs)

    @property
    def expected_false_discoveries(self) -> float:
        """About this many of the significant pairs may be false discoveries: the false-discovery
        rate Benjamini-Hochberg keeps (q = 0.05) times their count."""
        return FDR_LEVEL * (len(self.synergistic) + len(self.redundant))


def stored_singles(report: Report | dict, engine: Engine, seed: int) -> AblationResult | None:
    """The single-layer scan of an earlier ``map``/``ablate`` report (read by ``report.read``, or a
    document's dict, of which only the run and ``per_sample`` are read), if it was made on the same
    model, probe and samples: same model id, probe name, layer and sample counts, and per-sample
    baseline log-probs equal to this run's within REUSE_TOLERANCE. Otherwise None."""
    scan = report.scan if isinstance(report, Report) else read_scan(report)
    info, probe = engine.backend.info, engine.probe
    if scan is None or (scan.model, scan.probe, scan.total_layers, scan.sample_count) != (
            info.model_id, probe.name, engine.num_layers, len(probe.samples)):
        return None
    baseline = np.asarray(scan.baseline_logprob, dtype=np.float64)
    ablated = np.asarray(scan.ablated_logprob, dtype=np.float64)
    correct = np.asarray(scan.ablated_correct, dtype=bool)
    shape = (engine.num_layers, len(probe.samples))
    if baseline.shape != shape[1:] or ablated.shape != shape or correct.shape != shape:
        return None
    if np.abs(baseline - engine.baseline.answer_logprob).max() > REUSE_TOLERANCE:
        return None
    # damages are taken against this run's baseline, the one the pairs are scored against
    scores = [SampleScores(answer_logprob=lp, correct=ok) for lp, ok in zip(ablated, correct)]
    return ablation_result(engine.baseline, scores, seed, seconds=0.0)


def layer_similarity(engine: Engine) -> np.ndarray:
    """[L, L]: cosine of two layers' outputs at the same token, averaged over every real token."""
    outputs = torch.stack([engine.real_tokens_at(layer + 1).float() for layer in range(engine.num_layers)], dim=1)
    unit = torch.nn.functional.normalize(outputs, dim=-1)  # [tokens, L, d]
    return (torch.einsum("tld,tmd->lm", unit, unit).double().cpu() / unit.shape[0]).numpy()


def plan_pairs(strategy: str, singles: AblationResult, top_k: int, similarity: np.ndarray | None = None) -> PairPlan:
    """The pairs a strategy tests.

    - fast: every pair among the top-K layers (most damaging, significant first) and each of
      those layers with its neighbours;
    - thorough: fast, plus each top-K layer with the SIMILAR_PER_CANDIDATE layers not yet paired
      with it whose outputs are most similar to its own (needs ``similarity``);
    - exhaustive: all L(L-1)/2 pairs.
    """
    check_strategy(strategy)
    num_layers = len(singles.layers)
    candidates = sorted(singles.top_layers(top_k))
    reasons: dict[tuple[int, int], str] = {}
    if strategy == "exhaustive":
        reasons = {pair: "all" for pair in combinations(range(num_layers), 2)}
    else:
        for pair in combinations(candidates, 2):
            reasons[pair] = "top-k"
        for layer in candidates:
            for neighbour in (layer - 1, layer + 1):
                if 0 <= neighbour < num_layers:
                    reasons.setdefault(_ordered(layer, neighbour), "adjacent")
    if strategy == "thorough":
        if similarity is None:
            raise ValueError("the thorough strategy needs the layer similarity matrix")
        for layer in candidates:
            partners = [other for other in np.argsort(-similarity[layer], kind="stable")
                        if other != layer and _ordered(layer, int(other)) not in reasons]
            for other in partners[:SIMILAR_PER_CANDIDATE]:
                reasons[_ordered(layer, int(other))] = "similar"
    return PairPlan(strategy, candidates, sorted(reasons), reasons, similarity)


def _ordered(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


def run_circuit(engine: Engine, singles: AblationResult, plan: PairPlan, seed: int,
                progress: Progress | None = None, on_scored: Scored | None = None) -> CircuitResult:
    """``on_scored(pair index, scores)`` as each pair is scored."""
    started = time.perf_counter()
    if not plan.pairs:  # e.g. no layer whose removal hurts: no candidates
        return CircuitResult(plan, singles, [], 0.0)
    joint = engine.skip_scan([frozenset(pair) for pair in plan.pairs], progress, on_scored)
    baseline = engine.baseline.answer_logprob
    single_damage = baseline - singles.ablated_logprob  # [L, S]
    joint_damage = np.stack([baseline - scores.answer_logprob for scores in joint])  # [P, S]
    interaction = joint_damage - np.stack([single_damage[i] + single_damage[j] for i, j in plan.pairs])
    joint_ci = mean_intervals(joint_damage, seed)
    interaction_ci = mean_intervals(interaction, seed)
    pairs = [PairInteraction(i, j, plan.reasons[(i, j)], joint_ci[n], interaction_ci[n])
             for n, (i, j) in enumerate(plan.pairs)]
    return CircuitResult(plan, singles, pairs, time.perf_counter() - started)


@dataclass
class CircuitRun(Framed):
    """The `circuit` command's result, and where its single-layer scan came from."""

    result: CircuitResult
    singles_source: str
    warnings: list[str] = field(default_factory=list)  # the single-layer scan's (neuro_scan.caveats)


def stored_scan_in(folder: Path, engine: Engine, seed: int) -> tuple[AblationResult, str] | None:
    """A matching single-layer scan from report.json or ablation.json in ``folder`` -> (scan, its
    file); a file that is missing or not a valid report is passed over."""
    for name in ("report.json", "ablation.json"):
        path = folder / name
        try:
            singles = stored_singles(read_report(path, str(path)), engine, seed) if path.is_file() else None
        except UsageError:
            continue
        if singles is not None:
            return singles, str(path)
    return None


def execute(session, options) -> CircuitRun:
    from neuro_scan.analysis import ablation
    from neuro_scan.events import ConfigurationScored
    from neuro_scan.caveats import announce, scan_warnings

    engine = session.engine
    stored = stored_scan_in(session.output, engine, options.seed) if session.output is not None else None
    singles, source = (stored[0], f"reused from {stored[1]}") if stored else (ablation.execute(session, options), "computed")
    if stored:  # a computed scan announced its warnings already
        singles.warnings = announce(session, scan_warnings(singles))
    similarity = None
    if options.strategy == "thorough":
        with session.phase("similarity", "layer output similarity", 1, timing="similarity_seconds"):
            similarity = layer_similarity(engine)
    plan = plan_pairs(options.strategy, singles, options.top_k_pairs, similarity)
    session.notice(f"circuit ({options.strategy}): {len(plan.pairs)} pair evaluations on {len(session.probe.samples)} "
                   f"samples; single-layer scan {source}")
    with session.phase("pairs", f"ablating {len(plan.pairs)} layer pairs", len(plan.pairs),
                       timing="pairs_seconds") as advance:
        def scored(index: int, scores: SampleScores) -> None:
            i, j = plan.pairs[index]
            joint = mean_intervals((engine.baseline.answer_logprob - scores.answer_logprob)[None], options.seed)[0]
            session.sink(ConfigurationScored("pairs", index, f"L{i}+L{j}", scores.score, joint.mean, scores.accuracy,
                                             scores.answer_logprob.tolist(), joint.low, joint.high))

        result = run_circuit(engine, singles, plan, options.seed, advance, scored)
    return CircuitRun(result, source, singles.warnings)
