"""What can make a result mislead, said in words: the warnings every report carries.

A run can finish without error and still mean little:

- the model cannot do the probe (baseline accuracy below 0.5): removing a layer then measures how
  much less likely its wrong answers become, not lost ability;
- too few samples: the intervals and p-values are checked from 12 samples up (docs/statistics.md);
- no layer's removal does significant damage: the damage ranking is within noise, so no layer is
  starred or named a top layer (and no component's, or verified node's, in a component scan or
  `attribute`);
- removing nothing does not measure zero (`attribute`'s null check);
- the answer never emerges in the lens: nothing marks where it forms, and the labels that need
  that fall back to depth;
- a proxy (block influence, whole-layer AtP) ranks the layers unlike their exact damage: worded
  by the proxy audit itself (:func:`neuro_scan.analysis.attribution.proxy_audit`), announced by `map`.

Each analysis derives its warnings here from its result, keeps them on the result
(``result.warnings``), announces them as warning notices (terminal, web app) with
:func:`announce`, and its report module writes them as the document's ``warnings`` list, which
the dashboard shows on top. (The module is called caveats so that it never shadows the standard
library's ``warnings``.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from neuro_scan.analysis.labels import SOLVED_ACCURACY
from neuro_scan.statistics import FDR_LEVEL

if TYPE_CHECKING:
    from neuro_scan.analysis.ablation import AblationResult
    from neuro_scan.analysis.attribution import AttributionResult
    from neuro_scan.analysis.components import ComponentResult
    from neuro_scan.analysis.compare import Comparison
    from neuro_scan.analysis.lens import LensResult

MIN_SAMPLES = 12  # the smallest probe on which the intervals' coverage was measured


def _named(probe: str | None, message: str) -> str:
    """A warning of one probe among several says which."""
    return message if probe is None else f"probe {probe}: {message}"


def probe_warnings(accuracy: float, samples: int, probe: str | None = None) -> list[str]:
    """A model that mostly fails the probe, and too few samples for the intervals."""
    found = []
    if accuracy < SOLVED_ACCURACY:
        found.append(_named(probe, f"the model answers {accuracy:.0%} of the samples correctly (baseline accuracy "
                                   f"{accuracy:.3f} < {SOLVED_ACCURACY}): it cannot do this probe, so removing a layer "
                                   "measures how much less likely its wrong answers become, not lost ability"))
    if samples < 2:
        found.append(_named(probe, "one sample: no interval or test is possible, and no change can be significant"))
    elif samples < MIN_SAMPLES:
        found.append(_named(probe, f"only {samples} samples: the 95% intervals and p-values are checked from "
                                   f"{MIN_SAMPLES} samples up (docs/statistics.md); with fewer they are rough, and "
                                   "even a real effect is rarely significant"))
    return found


def _nothing_significant(what: str, consequence: str) -> str:
    return (f"no {what}'s removal does significant damage (Benjamini-Hochberg adjusted p <= {FDR_LEVEL}): the damage "
            f"ranking is within noise, {consequence}")


def scan_warnings(scan: AblationResult, probe: str | None = None) -> list[str]:
    """A single-layer scan's warnings: its probe's, and no layer doing significant damage."""
    found = probe_warnings(scan.baseline.accuracy.mean, len(scan.baseline_logprob), probe)
    if not scan.important_layers:
        found.append(_named(probe, _nothing_significant("layer", "so no layer is starred or named a top layer")))
    return found


def component_warnings(scan: ComponentResult) -> list[str]:
    """A component scan's (``ablate --granularity sublayer|head``): its probe's, and no component
    doing significant damage."""
    found = probe_warnings(scan.baseline.accuracy.mean, len(scan.baseline_logprob))
    if not any(c.significant_damage for c in scan.components):
        found.append(_nothing_significant("component", "so no component stands out"))
    return found


def attribution_warnings(result: AttributionResult, accuracy: float, samples: int) -> list[str]:
    """`attribute`'s: its probe's (``accuracy``: the baseline's, over ``samples``), no verified node
    doing significant damage, and removing nothing not measuring zero."""
    found = probe_warnings(accuracy, samples)
    verified = [n.exact for n in result.nodes if n.exact is not None]
    if verified and not any(exact.significant_damage for exact in verified):
        found.append(_nothing_significant("verified node", "so the estimates are checked against noise"))
    if not result.null_check.ok:
        found.append("removing nothing does not give the baseline (null_check in attribution.json): is the model in "
                     "eval mode, without dropout, on deterministic kernels? The estimates and damages are suspect")
    return found


def lens_warnings(lens: LensResult) -> list[str]:
    """An answer that never becomes the lens's top-1 token for half the samples."""
    if lens.probe_emergence is not None:
        return []
    return [f"the answer never becomes top-1 in the {lens.lens} lens for half the samples: nothing marks where it "
            "forms, so the layer labels that need it fall back to depth (evidence 'weak')"]


def comparison_warnings(comparison: Comparison) -> list[str]:
    """Profiles that cannot be correlated, and mean damages that cannot be ranked."""
    found = [f"{profile.name}: the damage profile is flat, so its correlations are undefined (null)"
             for profile in comparison.profiles if profile.flat]
    if not comparison.comparable_means:
        found.append("the reports differ in probe or score unit: their mean damages are not comparable, and the "
                     "ranking is only listed")
    return found


def announce(session, warnings: list[str]) -> list[str]:
    """Send each warning to the session's event sink (the terminal, the web app) -> ``warnings``."""
    for message in warnings:
        session.notice(message, "warning")
    return warnings
