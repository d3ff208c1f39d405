"""`map` on the demo: the proxy audit (block influence and whole-layer AtP against the exact
damage) in report.json, its charts, its warnings; and the phase order that lets a live view show
the lens before the ablation has finished."""

from __future__ import annotations

import html
import json
import math

import pytest

from neuro_scan import events
from neuro_scan.analysis import attribution
from neuro_scan.analysis import lens as lens_module
from neuro_scan.api import run
from neuro_scan.report.read import read_report

REFERENCE_KEYS = {  # what the report had before the audit (and layer-scan reads): still there
    "baseline_score", "baseline_uncertainty", "ablation_results", "top_important_layers", "layer_labels",
    "layer_label_details", "logit_lens_trajectory", "logit_lens", "block_influence", "attention_entropy",
    "warnings", "phases", "per_sample", "samples", "ranked_layers", "significantly_important_layers"}


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            result[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return result


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's rho by hand: Pearson's correlation of the ranks."""
    ra, rb = ranks(a), ranks(b)
    mean_a, mean_b = sum(ra) / len(ra), sum(rb) / len(rb)
    covariance = sum((x - mean_a) * (y - mean_b) for x, y in zip(ra, rb))
    return covariance / math.sqrt(sum((x - mean_a) ** 2 for x in ra) * sum((y - mean_b) ** 2 for y in rb))


def test_rank_correlation_by_hand():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # no ties: 1 - 6 sum d^2 / (n (n^2 - 1)); d = (0, 0, 1, -1) -> 1 - 12 / 60
    assert rank_correlation([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(0.8)
    assert ranks([5, 1, 5, 2]) == [3.5, 1, 3.5, 2]


def map_run(tmp_path, probe: str = "arith") -> tuple[dict, list[events.Event]]:
    seen: list[events.Event] = []
    outcome = run("map", model="demo", probe=probe, device="cpu", output=str(tmp_path), sink=seen.append)
    return outcome.document, seen


@pytest.fixture(scope="module")
def demo_map(tmp_path_factory):
    folder = tmp_path_factory.mktemp("map")
    report, seen = map_run(folder)
    return report, seen, folder


def test_the_report_has_the_audit_and_its_correlations_are_right(demo_map):
    report, seen, folder = demo_map
    assert REFERENCE_KEYS <= set(report)
    audit = report["proxy_audit"]
    assert audit["status"] == "done"
    damage = [row["score_delta"] for row in report["ablation_results"]]
    atp = audit["atp_estimate"]
    assert len(atp) == report["total_layers"] and all(math.isfinite(v) for v in atp)
    assert audit["spearman_atp"] == pytest.approx(rank_correlation(atp, damage), abs=1e-12)
    assert audit["spearman_block_influence"] == pytest.approx(rank_correlation(report["block_influence"], damage),
                                                              abs=1e-12)
    # a warning exactly for each proxy below the threshold, in the report and announced
    notices = [e.message for e in seen if isinstance(e, events.Notice) and e.level == "warning"]
    for name, key in (("AtP", "spearman_atp"), ("block influence", "spearman_block_influence")):
        low = audit[key] < audit["low_correlation"]
        assert any(w.startswith(f"{name} ranks the layers unlike") for w in report["warnings"]) == low
        assert any(w.startswith(f"{name} ranks the layers unlike") for w in notices) == low
    # the block-influence page draws the AtP estimate beside the exact damage; the dashboard the figures
    page = (folder / "block_influence.html").read_text(encoding="utf-8")
    assert "damage (AtP estimate)" in page and "Spearman with the exact damage" in page
    assert "proxies vs exact damage" in (folder / "index.html").read_text(encoding="utf-8")
    written = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    assert written["proxy_audit"] == audit


def test_lens_runs_right_after_the_baseline_and_is_on_disk_before_the_ablation(tmp_path):
    """The live view (issue 17): the report written before the ablation starts holds the lens, is
    readable, and says the ablation is still to come."""
    seen: dict = {}
    order: list[str] = []

    def sink(event: events.Event) -> None:
        if isinstance(event, events.PhaseStarted):
            order.append(event.phase)
            if event.phase == "ablation":
                seen["report"] = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
                seen["read"] = read_report(tmp_path / "report.json", "the partial report")

    final = run("map", model="demo", probe="arith", device="cpu", output=str(tmp_path), sink=sink).document
    assert order == ["load", "baseline", "lens", "ablation", "proxy_audit", "attention"]
    partial = seen["report"]
    assert {name: phase["status"] for name, phase in partial["phases"].items()} == {
        "baseline": "done", "lens": "done", "ablation": "pending", "attention": "pending"}
    assert partial["logit_lens_trajectory"] == final["logit_lens_trajectory"]
    assert partial["block_influence"] == final["block_influence"]
    assert partial["baseline_score"] == final["baseline_score"] and partial["ablation_results"] == []
    assert partial["proxy_audit"]["status"] == "pending" and partial["proxy_audit"]["atp_estimate"] == []
    assert seen["read"].rows == () and seen["read"].baseline_score == final["baseline_score"]


@pytest.mark.slow  # whole demo maps, one per case
def test_a_low_correlation_warns_everywhere(tmp_path, monkeypatch):
    """Forced: with the threshold above 1 every proxy is 'low'; both warnings reach the report,
    the terminal's notices and the dashboard."""
    monkeypatch.setattr(attribution, "LOW_CORRELATION", 1.01)
    report, seen = map_run(tmp_path)
    notices = [e.message for e in seen if isinstance(e, events.Notice) and e.level == "warning"]
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    for name in ("AtP", "block influence"):
        warning, = [w for w in report["warnings"] if w.startswith(f"{name} ranks the layers unlike")]
        assert f"< {report['proxy_audit']['low_correlation']}" in warning and warning in notices
        assert html.escape(warning) in page


@pytest.mark.slow  # whole demo maps, one per case
def test_a_failed_audit_or_lens_leaves_the_rest(tmp_path, monkeypatch):
    def fail(*_args, **_kwargs):
        raise RuntimeError("no gradients here")

    monkeypatch.setattr(attribution, "proxy_audit", fail)
    report, seen = map_run(tmp_path / "audit")
    assert report["proxy_audit"]["status"] == "failed" and "no gradients here" in report["proxy_audit"]["error"]
    assert report["proxy_audit"]["spearman_atp"] is None
    assert {name: phase["status"] for name, phase in report["phases"].items()} == {
        "baseline": "done", "lens": "done", "ablation": "done", "attention": "done"}
    assert len(report["ablation_results"]) == 4 and len(report["attention_entropy"]) == 4
    assert any("the proxy_audit phase failed" in e.message for e in seen if isinstance(e, events.Notice))
    monkeypatch.undo()

    monkeypatch.setattr(lens_module, "run_lens", fail)
    report, _ = map_run(tmp_path / "lens")
    assert report["phases"]["lens"]["status"] == "failed" and report["block_influence"] == []
    audit = report["proxy_audit"]  # no block influence to audit; AtP still is
    assert audit["status"] == "done" and audit["spearman_block_influence"] is None
    assert len(audit["atp_estimate"]) == 4
