"""`map`: the single-layer ablation, the lens (logit or tuned), block influence, labels and attention
entropy from one baseline pass, run as phases in that order.

What has finished is saved before the next phase starts (``session.save_progress``), and a lens
or attention phase that fails (out of memory, say) is named in ``phases`` with its error while
every other phase is still reported. A failure in the baseline or the ablation stops the
command: everything else is built on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from neuro_scan.frames import Framed
from neuro_scan.analysis.ablation import AblationResult
from neuro_scan.analysis.attention import AttentionResult
from neuro_scan.analysis.labels import LayerLabel
from neuro_scan.analysis.lens import LensResult
from neuro_scan.analysis.tuned_lens import LensRecord
from neuro_scan.session import Phase

LENS_TOP_TOKENS = 5  # top tokens the map's lens records per layer and sample


@dataclass
class MapResult(Framed):
    ablation: AblationResult
    phases: dict[str, Phase] = field(default_factory=dict)
    lens: LensResult | None = None
    block_influence: list[float] | None = None
    labels: list[LayerLabel] | None = None
    attention: AttentionResult | None = None
    tuned: LensRecord | None = None
    plain_lens: LensResult | None = None  # beside a tuned lens: the logit lens, for the side-by-side chart
    warnings: list[str] = field(default_factory=list)  # what may make it mislead (neuro_scan.caveats)


def execute(session, options) -> MapResult:
    from neuro_scan.analysis import ablation, attention
    from neuro_scan.caveats import announce, lens_warnings
    from neuro_scan.analysis.influence import block_influence
    from neuro_scan.analysis.labels import label_layers
    from neuro_scan.analysis.lens import lens_units, read_lenses

    translator, record = session.tuned_lens()
    result = MapResult(ablation.execute(session, options), tuned=record,
                       phases={"baseline": Phase("done"), "ablation": Phase("done"), "lens": Phase(),
                               "attention": Phase()})
    result.warnings = list(result.ablation.warnings)
    session.save_progress(result)

    def lens_phase() -> None:
        with session.phase("lens", "logit lens, block influence, labels", lens_units(session.engine, translator) + 1,
                           timing="lens_and_influence_seconds") as advance:
            lens, plain = read_lenses(session.engine, translator, LENS_TOP_TOKENS, options.seed, advance)
            influence = block_influence(session.engine)
            advance(1)
            labels = label_layers(result.ablation, influence, lens)
        result.lens, result.plain_lens, result.block_influence, result.labels = lens, plain, influence, labels
        result.warnings += announce(session, lens_warnings(lens))

    session.guarded("lens", result.phases, lens_phase)
    session.save_progress(result)
    result.attention = session.guarded("attention", result.phases, lambda: attention.scan(session))
    return result
