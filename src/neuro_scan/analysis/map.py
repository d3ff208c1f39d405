"""`map`: the lens (logit or tuned) and block influence, the single-layer ablation, labels, the
proxy audit and attention entropy from one baseline pass, run as phases in that order.

The lens comes right after the baseline, so that a live view shows its heatmap while the longer
ablation runs. What has finished is saved before the next phase starts
(``session.save_progress``), and a lens, proxy-audit or attention phase that fails (out of
memory, say) is named with its error while every other phase is still reported. A failure in the
baseline or the ablation stops the command: everything else is built on them.

The proxy audit asks how far the cheap stand-ins for the ablation -- block influence and the
whole-layer AtP estimate (:func:`neuro_scan.analysis.attribution.proxy_audit`) -- rank the layers
as their exact damage does, and warns when they do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from neuro_scan.frames import Framed
from neuro_scan.analysis.ablation import AblationResult, summarize
from neuro_scan.analysis.attention import AttentionResult
from neuro_scan.analysis.attribution import ProxyAudit
from neuro_scan.analysis.labels import LayerLabel
from neuro_scan.analysis.lens import LensResult
from neuro_scan.analysis.tuned_lens import LensRecord
from neuro_scan.scoring import SampleScores
from neuro_scan.session import Phase

LENS_TOP_TOKENS = 5  # top tokens the map's lens records per layer and sample


@dataclass
class MapResult(Framed):
    ablation: AblationResult  # no layers yet while the ablation phase is pending
    phases: dict[str, Phase] = field(default_factory=dict)
    lens: LensResult | None = None
    block_influence: list[float] | None = None
    labels: list[LayerLabel] | None = None
    attention: AttentionResult | None = None
    tuned: LensRecord | None = None
    plain_lens: LensResult | None = None  # beside a tuned lens: the logit lens, for the side-by-side chart
    proxy_audit: ProxyAudit | None = None
    proxy_audit_phase: Phase = field(default_factory=Phase)  # kept apart from ``phases``, whose keys are fixed
    warnings: list[str] = field(default_factory=list)  # what may make it mislead (neuro_scan.caveats)


def pending_ablation(baseline: SampleScores, seed: int) -> AblationResult:
    """The ablation before its phase has run: the baseline, and no layer scored yet."""
    samples = len(baseline.answer_logprob)
    return AblationResult(summarize(baseline, seed), [], [], [], [], 0.0, np.empty((0, samples)),
                          baseline.answer_logprob, baseline.correct, np.empty((0, samples), dtype=bool))


def execute(session, options) -> MapResult:
    from neuro_scan.analysis import ablation, attention
    from neuro_scan.analysis.attribution import proxy_audit
    from neuro_scan.analysis.influence import block_influence
    from neuro_scan.analysis.labels import label_layers
    from neuro_scan.analysis.lens import lens_units, read_lenses
    from neuro_scan.caveats import announce, lens_warnings

    translator, record = session.tuned_lens()
    engine = session.engine  # the baseline phase
    result = MapResult(pending_ablation(engine.baseline, options.seed), tuned=record,
                       phases={"baseline": Phase("done"), "lens": Phase(), "ablation": Phase(), "attention": Phase()})

    def lens_phase() -> None:
        with session.phase("lens", "logit lens, block influence", lens_units(engine, translator) + 1,
                           timing="lens_and_influence_seconds") as advance:
            lens, plain = read_lenses(engine, translator, LENS_TOP_TOKENS, options.seed, advance)
            influence = block_influence(engine)
            advance(1)
        result.lens, result.plain_lens, result.block_influence = lens, plain, influence
        result.warnings += announce(session, lens_warnings(lens))

    session.guarded("lens", result.phases, lens_phase)
    session.save_progress(result)

    result.ablation = ablation.execute(session, options)
    result.phases["ablation"] = Phase("done")
    result.warnings = list(result.ablation.warnings) + result.warnings
    if result.lens is not None:  # the labels read the lens, block influence and the damage
        result.labels = session.guarded("lens", result.phases,
                                        lambda: label_layers(result.ablation, result.block_influence, result.lens))

    def audit_phase() -> ProxyAudit:
        with session.phase("proxy_audit", "proxies (block influence, whole-layer AtP) against the exact damage", 1,
                           timing="proxy_audit_seconds") as advance:
            audit = proxy_audit(engine, result.ablation, result.block_influence)
            advance(1)
        return audit

    status: dict[str, Phase] = {}
    result.proxy_audit = session.guarded("proxy_audit", status, audit_phase)
    result.proxy_audit_phase = status["proxy_audit"]
    if result.proxy_audit is not None:
        result.warnings += announce(session, result.proxy_audit.warnings)
    session.save_progress(result)
    result.attention = session.guarded("attention", result.phases, lambda: attention.scan(session))
    return result
