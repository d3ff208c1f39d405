"""`map`: report.json, ablation.csv, one page per chart and index.html holding them all.

report.json keeps every key of the reference tool's report (so ``layer-scan annotate`` and other
consumers keep working: ``layer_labels`` is an object with a string key per layer,
``top_important_layers`` a list of ints) and adds ours. It is written after each phase: a phase
that failed or has not run yet leaves its keys empty (the reference's hold [], ``layer_labels``
"" for every layer; ours null) and has no chart page, and the dashboard says why.
"""

from __future__ import annotations

from neuro_scan.analysis.labels import LayerLabel
from neuro_scan.analysis.map import MapResult
from neuro_scan.report import ReportFiles, ablation, attention, lens
from neuro_scan.report.document import failed_phases, finished, header, phases_section, running
from neuro_scan.report.read import FORMATS
from neuro_scan.session import RunInfo

FORMAT = FORMATS["map"]
PAGES = {  # page -> (the phase it shows, its figure); the dashboard titles them from dashboard.TITLES
    "ablation.html": ("ablation", ablation.figure),
    "logit_lens.html": ("lens", lens.answer_figure),
    "entropy_profile.html": ("lens", lens.entropy_figure),
    "attention.html": ("attention", attention.figure),
}


def files(result: MapResult, run: RunInfo) -> ReportFiles:
    return files_of(document(result, run))


def files_of(report: dict) -> ReportFiles:
    """Every file of a map from its report.json: the table, the pages of the phases that finished
    and the dashboard. While a phase is still to run, report.json alone (what has finished so far)."""
    if running(report):
        return ReportFiles({"report.json": report}, "report.json")
    return ReportFiles({"report.json": report}, "report.json", {"ablation.csv": ablation.table(report)},
                       {page: figure(report) for page, (phase, figure) in PAGES.items() if finished(report, phase)},
                       dashboard=True, failed_phases=failed_phases(report))


def document(result: MapResult, run: RunInfo) -> dict:
    report = {**header(run, "map", FORMAT), **phases_section(result.phases), **ablation.section(result.ablation, run),
              **_labels(result.labels, run.model.num_layers)}
    report["logit_lens_trajectory"] = lens.trajectory(result.lens) if result.lens is not None else []
    report["logit_lens"] = lens.section(result.lens, result.tuned) if result.lens is not None else None
    report["tuned_lens_file"] = run.lens_file
    report.update(attention.section(result.attention))
    report["block_influence"] = result.block_influence if result.block_influence is not None else []
    report["block_influence_definition"] = "1 - cos(layer input, layer output), mean over every non-pad probe token"
    return report


def _labels(labels: list[LayerLabel] | None, num_layers: int) -> dict:
    if labels is None:
        return {"layer_labels": {str(layer): "" for layer in range(num_layers)}, "layer_label_details": {}}
    return {
        "layer_labels": {str(lab.layer): lab.label for lab in labels},
        "layer_label_details": {str(lab.layer): {"label": lab.label, "reason": lab.reason, "signals": lab.signals}
                                for lab in labels},
    }


summary = ablation.summary  # the run, the baseline and the top layers with their labels
