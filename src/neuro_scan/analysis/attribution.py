"""Attribution: estimates of every node's ablation effect at once (AtP and AtP*), checked against
exact ablations of some of them.

Nodes are the targets of the exact scans (analysis/components.py): each layer, its attention and
MLP blocks, and each head. The estimated effect is the same quantity the exact scan measures:
damage = baseline - ablated probe score (mean answer log-prob, nats), with the same ablation
(zero, or the node's mean over the probe's real tokens).

- AtP (attribution patching): damage(n) ~ -grad(n) . (replacement - value), the first-order term,
  summed over real tokens and averaged over samples: one differentiable forward and one backward
  for every node (:meth:`Backend.gradient_pass`).
- AtP* (Kramár et al. 2024, arXiv 2403.00745) adds two corrections:
  GradDrop against cancellation: for each layer l the first-order term is recomputed with layer
  l's residual contribution cut from the backward, and a node's ranking score is the mean over
  samples of (1 / (L-1)) x sum over l != its layer of |estimate_l| (without GradDrop, and on a
  one-layer model, the mean over samples of |estimate|: AtP*'s c(n)); a node whose direct and
  indirect effects cancel in the full gradient shows up in the terms where one of them is cut. QK fix against attention saturation: a node's change reaches later layers'
  queries and keys, where the softmax can be flat at the baseline and steep a little away; for
  the layer right after the node, its attention probabilities are recomputed exactly from the
  exactly changed stream (the node's layer rerun with the node removed), and the softmax's
  linear term is replaced by the exact change. Later layers stay first order.
- Verification (AtP*'s diagnostic): the top-k nodes by ranking score and a random sample of the
  rest are ablated exactly. Reported: the Spearman correlation between estimated and exact damage
  over the verified nodes, the recall of the verified nodes' true top-10 (by |damage|) among the
  estimated top-k, and from the random sample a bound on what was missed: with 95% confidence at
  most a fraction 1 - 0.05^(1/m) of the unverified nodes have |damage| above the largest seen in
  the sample of m.
- Null check, every run: the gradient pass must reproduce the baseline's answer log-probs (the
  estimate of removing nothing is zero) and a fresh run through the scan's resume path must too
  (removing nothing measures zero); a warning says when either is off (a model left in training
  mode, dropout, or a nondeterministic kernel).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from neuro_scan.analysis.components import ComponentAblation, component_result
from neuro_scan.backend.base import ABLATIONS, Intervention, Target
from neuro_scan.engine import Engine, Progress
from neuro_scan.errors import UsageError
from neuro_scan.scoring import answer_logprobs, gather_pairs

log = logging.getLogger(__name__)

NODE_PARTS = ("layer", "attention", "mlp", "head")
TOP_TRUE = 10  # recall is of the verified nodes' true top-10
CONFIDENCE = 0.95  # of the missed-node bound


@dataclass
class NodeEstimate:
    target: Target
    atp: float  # first-order estimate of the damage (nats)
    estimate: float  # with the QK fix where it applies (= atp without it)
    ranking: float  # AtP* score: mean over samples of the GradDrop magnitude (of |estimate| without GradDrop)
    exact: ComponentAblation | None = None  # when verified
    verified: str = ""  # "top-k", "random" or "" (not verified)


@dataclass
class Verification:
    top_k: int
    sample_size: int
    spearman: float | None  # estimate vs exact damage over the verified nodes
    recall_top10: float | None  # share of the verified nodes' true top-10 (|damage|) in the estimated top-k
    missed_effect_bound: float | None  # largest |exact damage| in the random sample
    missed_fraction_bound: float | None  # with 95% confidence, at most this share of unverified nodes exceed it
    missed_count_bound: int | None


@dataclass
class NullCheck:
    estimate: float  # max over samples |gradient pass - baseline| answer log-prob (nats)
    measured: float  # max over samples |fresh run - baseline|
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.estimate <= self.tolerance and self.measured <= self.tolerance


@dataclass
class AttributionResult:
    ablation: str
    graddrop: bool
    qk_fix: bool
    nodes: list[NodeEstimate]  # by layer, then part and head
    verification: Verification
    null_check: NullCheck
    num_layers: int
    num_heads: int
    seconds: dict[str, float] = field(default_factory=dict)  # estimate, verification
    warnings: list[str] = field(default_factory=list)  # what may make it mislead (neuro_scan.caveats)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{
            "node": str(n.target), "layer": n.target.layer, "part": n.target.part,
            "head": n.target.head if n.target.part == "head" else None,
            "atp": n.atp, "estimate": n.estimate, "ranking": n.ranking, "verified": n.verified or None,
            "exact": n.exact.damage.mean if n.exact else None, "exact_ci_low": n.exact.damage.low if n.exact else None,
            "exact_ci_high": n.exact.damage.high if n.exact else None,
            "exact_p_value_adjusted": n.exact.damage.p_value_adjusted if n.exact else None,
        } for n in self.nodes])


@dataclass
class Estimates:
    """Per node, probe-level estimates of the damage (nats) and the per-sample first-order terms."""

    targets: list[Target]
    atp: np.ndarray  # [N]
    estimate: np.ndarray  # [N] with the QK fix
    ranking: np.ndarray  # [N]
    graddrop: np.ndarray | None  # [N, L]: the estimate with each layer cut from the backward (GradDrop)
    per_sample: np.ndarray  # [N, S]: each sample's estimated damage (with the QK fix)
    objective: np.ndarray  # [S] answer log-probs at the point of linearisation


def check_attribution(ablation: str, top_k: int, sample: int) -> None:
    if ablation not in ABLATIONS:
        raise UsageError(f"--ablation: '{ablation}' is not one of {', '.join(ABLATIONS)}")
    if top_k < 1 or sample < 0:
        raise UsageError(f"--verify-top-k must be >= 1 and --verify-sample >= 0, got {top_k} and {sample}")


def node_targets(engine: Engine, parts: tuple[str, ...] = NODE_PARTS) -> list[Target]:
    return [t for layer in range(engine.num_layers) for t in engine.backend.targets_in(layer) if t.part in parts]


def estimate(engine: Engine, ablation: str = "zero", targets: list[Target] | None = None, *, graddrop: bool = True,
             qk_fix: bool = True) -> Estimates:
    """First-order (AtP) estimates of every node's damage, with the AtP* corrections asked for."""
    targets = node_targets(engine) if targets is None else targets
    replacements = engine.means(targets) if ablation == "mean" else dict.fromkeys(targets)
    plan, backend = engine.plan, engine.backend
    samples, layers = plan.num_samples, engine.num_layers
    answer_rows = plan.pair_rows[plan.first_answer_pair]  # each sample's answer is read in one row
    change = {t: np.zeros(samples) for t in targets}
    dropped = {t: np.zeros((layers, samples)) for t in targets}
    softmax = {t: np.zeros(samples) for t in targets}
    objective = np.zeros(samples)
    for block in engine.blocks:
        def score(final: torch.Tensor, block=block) -> torch.Tensor:
            reads = gather_pairs(final, plan, block.rows, block.pairs)[0]
            return answer_logprobs(plan, backend.unembed(reads, differentiable=True), block.pairs)

        passed = backend.gradient_pass(block.batch, replacements, score, drop_layers=graddrop, attention=qk_fix)
        objective += passed.objective.double().cpu().numpy()
        inside = (answer_rows >= block.rows.start) & (answer_rows < block.rows.stop)
        local = (answer_rows[inside] - block.rows.start).to(passed.objective.device)
        for target in targets:
            change[target][inside.numpy()] = passed.change[target][local].double().cpu().numpy()
            if graddrop:
                dropped[target][:, inside.numpy()] = passed.dropped[target][:, local].double().cpu().numpy()
        if qk_fix:
            for target, rows in _softmax_corrections(engine, block, passed.attention, targets, replacements).items():
                softmax[target][inside.numpy()] = rows[local].double().cpu().numpy()
    per_sample = np.array([-(change[t] + softmax[t]) for t in targets])  # damage, [N, S]
    if graddrop:  # [N, L, S]: with each layer cut from the backward
        cut = -(np.stack([dropped[t] for t in targets]) + np.stack([softmax[t] for t in targets])[:, None, :])
    ranking = np.abs(per_sample).mean(axis=1)  # AtP*'s c(n) = E|estimate| over samples
    if graddrop and layers > 1:  # E over samples of the mean over the other layers of |estimate with the layer cut|
        ranking = np.array([np.abs(np.delete(cut[i], t.layer, axis=0)).mean() for i, t in enumerate(targets)])
    atp = np.array([-change[t].mean() for t in targets])
    return Estimates(list(targets), atp, per_sample.mean(axis=1), ranking, cut.mean(axis=2) if graddrop else None,
                     per_sample, objective)


def _softmax_corrections(engine: Engine, block, attention: list, targets: list[Target],
                         replacements: dict) -> dict[Target, torch.Tensor]:
    """QK fix, per node and row: the exact change of the next layer's attention probabilities
    (from the stream after the node's layer, rerun with the node removed) weighted by the
    objective's gradient, minus the linear term the first-order estimate already holds for it."""
    corrections: dict[Target, torch.Tensor] = {}
    mask = block.batch.attention_mask.float()
    size = block.batch.size
    per_forward = max(2, engine.batch_size // size)
    for layer in range(engine.num_layers - 1):
        after = attention[layer + 1]
        nodes = [t for t in targets if t.layer == layer]
        if after is None or not nodes:
            continue
        reference = None
        for start in range(0, len(nodes), per_forward - 1):
            chunk = nodes[start:start + per_forward - 1]
            configurations = [None, *chunk]  # the first removes nothing: the reference
            flags = {t: torch.tensor([c == t for c in configurations]).repeat_interleave(size) for t in chunk}
            interventions = {t: Intervention(rows=flags[t].to(mask.device),
                                             value=None if replacements[t] is None else replacements[t].to(mask.device))
                             for t in chunk}
            stream = engine.block_stream(block, layer).repeat(len(configurations), 1, 1) if layer else None
            streams, weights = engine.backend.attention_after(block.batch.repeat(len(configurations)), layer, stream,
                                                               interventions)
            streams, weights = streams.float().unflatten(0, (len(configurations), size)), weights.unflatten(0, (len(configurations), size))
            if reference is None:
                reference = streams[0], weights[0]
            pairs = mask[:, None, :, None] * mask[:, None, None, :]
            for index, target in enumerate(chunk, start=1):
                exact = ((weights[index] - reference[1]) * after.grad * pairs).sum(dim=(1, 2, 3))
                linear = ((streams[index] - reference[0]) * after.input_grad).sum(dim=-1).mul(mask).sum(dim=-1)
                corrections[target] = exact - linear
    return corrections


def null_check(engine: Engine, objective: np.ndarray) -> NullCheck:
    """Removing nothing must estimate and measure zero: the gradient pass's answer log-probs
    (``objective``) and a fresh run's (every layer run again, nothing removed) against the baseline."""
    fresh = engine.repeat_scan([(0, 0)])[0]  # a block of no layers repeated: the model as it is
    baseline = engine.baseline.answer_logprob
    tolerance = 1e-3 if engine.backend.info.dtype in ("float32", "float64") else 5e-2
    check = NullCheck(float(np.abs(objective - baseline).max()), float(np.abs(fresh.answer_logprob - baseline).max()),
                      tolerance)
    if not check.ok:
        log.warning("removing nothing does not give the baseline (estimate off by %.2g, measurement by %.2g nats, "
                    "tolerance %.2g): is the model in eval mode, without dropout, on deterministic kernels?",
                    check.estimate, check.measured, tolerance)
    return check


def attribute(engine: Engine, ablation: str = "zero", *, top_k: int = 20, sample: int = 20, seed: int = 0,
              graddrop: bool = True, qk_fix: bool = True, parts: tuple[str, ...] = NODE_PARTS,
              progress: Progress | None = None) -> AttributionResult:
    """Estimate every node's damage (AtP, AtP* corrections), then verify: exact ablation of the
    ``top_k`` nodes by ranking score and of ``sample`` random others (seeded)."""
    check_attribution(ablation, top_k, sample)
    started = time.perf_counter()
    targets = node_targets(engine, parts)
    found = estimate(engine, ablation, targets, graddrop=graddrop, qk_fix=qk_fix)
    estimated = time.perf_counter()
    order = list(np.argsort(-found.ranking, kind="stable"))
    top = order[:top_k]
    rest = order[top_k:]
    rng = np.random.default_rng(seed)
    drawn = sorted(rng.choice(len(rest), size=min(sample, len(rest)), replace=False).tolist()) if rest else []
    chosen = [int(i) for i in top] + [int(rest[i]) for i in drawn]
    scores = engine.ablation_scan([frozenset({targets[i]}) for i in chosen], ablation, progress)
    exact = component_result(engine.baseline, [targets[i] for i in chosen], scores, "node", ablation, seed,
                             engine.num_layers, engine.backend.info.num_heads, 0.0).components
    nodes = [NodeEstimate(t, float(found.atp[i]), float(found.estimate[i]), float(found.ranking[i]))
             for i, t in enumerate(targets)]
    for position, index in enumerate(chosen):
        nodes[index].exact = exact[position]
        nodes[index].verified = "top-k" if position < len(top) else "random"
    verification = verify(nodes, top_k, len(drawn), len(targets))
    check = null_check(engine, found.objective)
    return AttributionResult(ablation, graddrop, qk_fix, nodes, verification, check, engine.num_layers,
                             engine.backend.info.num_heads,
                             {"estimate": estimated - started, "verification": time.perf_counter() - estimated})


def verify(nodes: list[NodeEstimate], top_k: int, sample_size: int, total: int) -> Verification:
    """AtP*'s diagnostic figures from the verified nodes."""
    checked = [n for n in nodes if n.exact is not None]
    estimated_top = {n.target for n in checked if n.verified == "top-k"}
    true_top = sorted(checked, key=lambda n: -abs(n.exact.damage.mean))[:TOP_TRUE]
    recall = sum(n.target in estimated_top for n in true_top) / len(true_top) if true_top else None
    sampled = [abs(n.exact.damage.mean) for n in checked if n.verified == "random"]
    fraction = 1 - (1 - CONFIDENCE) ** (1 / len(sampled)) if sampled else None
    unverified = total - len(estimated_top)
    return Verification(
        top_k=top_k, sample_size=sample_size,
        spearman=spearman([n.estimate for n in checked], [n.exact.damage.mean for n in checked]),
        recall_top10=recall, missed_effect_bound=max(sampled) if sampled else None, missed_fraction_bound=fraction,
        missed_count_bound=math.ceil(fraction * unverified) if sampled else None)


def spearman(a, b) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None for fewer than 3 pairs or a constant side."""
    if len(a) < 3:
        return None
    ranks = [pd.Series(np.asarray(x, dtype=float)).rank().to_numpy() for x in (a, b)]
    if ranks[0].std() == 0 or ranks[1].std() == 0:
        return None
    return float(np.corrcoef(*ranks)[0, 1])


# -- the proxy audit of `map` -------------------------------------------------------------------------

LOW_CORRELATION = 0.5  # a proxy whose Spearman correlation with the exact damage is below this is flagged


@dataclass
class ProxyAudit:
    """How well cheap proxies rank the layers as the exact single-layer scan does."""

    atp: list[float]  # whole-layer AtP estimate of each layer's damage (skip = zero ablation)
    spearman_atp: float | None
    spearman_block_influence: float | None
    warnings: list[str]


def proxy_audit(engine: Engine, ablation_result, block_influence: list[float] | None) -> ProxyAudit:
    """The whole-layer AtP estimate (one differentiable forward and backward) and the Spearman
    correlation of each proxy -- block influence (None: not measured), AtP -- with the exact damage
    of ``ablation_result``."""
    layers = [Target(layer) for layer in range(engine.num_layers)]
    found = estimate(engine, "zero", layers, graddrop=False, qk_fix=False)
    exact = [layer.damage.mean for layer in ablation_result.layers]
    audit = ProxyAudit([float(v) for v in found.atp], spearman(found.atp, exact),
                       None if block_influence is None else spearman(block_influence, exact), [])
    for name, value in (("AtP", audit.spearman_atp), ("block influence", audit.spearman_block_influence)):
        if value is not None and value < LOW_CORRELATION:
            audit.warnings.append(f"{name} ranks the layers unlike their exact damage (Spearman {value:.2f} < "
                                  f"{LOW_CORRELATION}): do not use it as a stand-in for the ablation scan on this probe")
    return audit


def execute(session, options) -> AttributionResult:
    """`attribute` (``options.ablation``, ``options.verify_top_k``, ``options.verify_sample``, ``options.seed``,
    ``options.graddrop``, ``options.qk_fix``)."""
    from neuro_scan.caveats import announce, attribution_warnings

    engine = session.engine
    with session.phase("attribution", f"estimating every node, then verifying {options.verify_top_k} + "
                       f"{options.verify_sample}", options.verify_top_k + options.verify_sample,
                       timing="attribution_seconds") as advance:
        result = attribute(engine, options.ablation, top_k=options.verify_top_k, sample=options.verify_sample,
                           seed=options.seed, graddrop=options.graddrop, qk_fix=options.qk_fix, progress=advance)
    result.warnings = announce(session, attribution_warnings(result, engine.baseline.accuracy,
                                                             len(engine.baseline.answer_logprob)))
    return result
