"""Results that cannot mislead: every report carries the warnings that apply to it, the terminal
and the dashboard show them, and only layers whose damage is significant are starred or named
top layers (the rest are listed as not significant).

The cases: the demo on a probe it cannot do (its own facts with wrong answers: accuracy 0, the
answer never emerges in the lens), a 2-sample probe (too few samples, nothing significant), and
the demo on a probe it does (no warning of either kind)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neuro_scan.analysis.ablation import ablation_result
from neuro_scan.caveats import MIN_SAMPLES, probe_warnings, scan_warnings
from neuro_scan.probes import load_builtin
from neuro_scan.scoring import SampleScores

COLOURS = [" red.", " blue.", " green.", " yellow.", " purple.", " orange.", " white.", " black."]


def write_probe(path: Path, name: str, samples: list[dict]) -> str:
    path.write_text(json.dumps({"name": name, "description": "a test probe", "samples": samples}), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def wrong_facts(tmp_path_factory) -> str:
    """The demo's own facts with every answer moved three colours on: it cannot answer any."""
    facts = load_builtin("facts").samples[:16]
    samples = [{"prompt": s.prompt, "answer": COLOURS[(COLOURS.index(s.answer) + 3) % 8], "category": s.category}
               for s in facts]
    return write_probe(tmp_path_factory.mktemp("probe") / "wrong.json", "wrong-facts", samples)


@pytest.fixture(scope="module")
def two_samples(tmp_path_factory) -> str:
    samples = [{"prompt": "18+27=", "answer": "45."}, {"prompt": "91+85=", "answer": "176."}]
    return write_probe(tmp_path_factory.mktemp("probe") / "two.json", "two", samples)


def run_map(cli, probe_args: list[str], out: Path):
    result = cli(["map", "--model", "demo", *probe_args, "--output", str(out)])
    assert result.exit_code == 0, result.output
    return result, json.loads((out / "report.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def unsolved(cli, wrong_facts, tmp_path_factory):
    out = tmp_path_factory.mktemp("unsolved")
    return (*run_map(cli, ["--custom-probe", wrong_facts], out), out)


@pytest.fixture(scope="module")
def tiny(cli, two_samples, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    return (*run_map(cli, ["--custom-probe", two_samples], out), out)


def has(warnings: list[str], *fragments: str) -> bool:
    return any(all(fragment in warning for fragment in fragments) for warning in warnings)


# ------------------------------------------------------------------------------ the rules themselves


def scan(baseline_correct: list[bool], damage: np.ndarray, seed: int = 0):
    """A single-layer scan from per-sample scores: ``damage`` [L, S] nats lost per sample."""
    samples = len(baseline_correct)
    base = SampleScores(np.full(samples, -0.5), np.array(baseline_correct))
    ablated = [SampleScores(base.answer_logprob - row, np.array(baseline_correct)) for row in damage]
    return ablation_result(base, ablated, seed, 0.0)


def test_each_rule_fires_exactly_when_it_applies():
    rng = np.random.default_rng(0)
    solved = [True] * 20
    clear = np.stack([rng.normal(3.0, 0.5, 20), rng.normal(0.0, 0.5, 20)])  # layer 0 clearly damages
    assert scan_warnings(scan(solved, clear)) == []

    unsolved = scan([False] * 18 + [True] * 2, clear)
    assert has(scan_warnings(unsolved), "answers 10% of the samples correctly", "cannot do this probe")

    noise = rng.normal(0.0, 1.0, (3, 20))
    quiet = scan(solved, noise)
    assert quiet.important_layers == [] and has(scan_warnings(quiet), "no layer's removal does significant damage")

    few = scan([True] * 4, clear[:, :4])
    assert has(scan_warnings(few), "only 4 samples", f"from {MIN_SAMPLES} samples up")
    assert has(probe_warnings(1.0, 1), "one sample")
    assert probe_warnings(1.0, MIN_SAMPLES) == [] and probe_warnings(0.5, 100) == []
    assert has(scan_warnings(few, "arith"), "probe arith: only 4 samples")


# ------------------------------------------------------------------------------------ map on the demo


def test_a_probe_the_model_cannot_do_is_flagged_everywhere(unsolved):
    result, report, out = unsolved
    assert report["baseline"]["accuracy"] == 0.0
    warnings = report["warnings"]
    assert has(warnings, "answers 0% of the samples correctly", "cannot do this probe")
    assert report["logit_lens"]["emergence_layer"] is None
    assert has(warnings, "never becomes top-1 in the logit lens")
    assert not has(warnings, "95% intervals")  # 16 samples are enough for the intervals
    for warning in warnings:  # the terminal (stderr) and the dashboard say the same
        assert f"warning: {warning}" in " ".join(result.stderr.split())
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "Read this report with care" in page
    assert page.index("Read this report with care") < page.index("class=\"numbers\"")  # on top
    assert "cannot do this probe" in page


def test_too_few_samples_and_nothing_significant(tiny):
    result, report, out = tiny
    warnings = report["warnings"]
    assert has(warnings, "only 2 samples")
    assert has(warnings, "no layer's removal does significant damage")
    assert not any(row["significant"] for row in report["ablation_results"])
    # no layer is named a top layer or starred; the most damaging are listed as not significant
    assert report["top_important_layers"] == []
    damaging = [r["layer_idx"] for r in sorted(report["ablation_results"], key=lambda r: -r["score_delta"])
                if r["score_delta"] > 0]
    assert report["top_layers_not_significant"] == damaging
    assert "significant damage: no layer" in result.stdout
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "most damaging, not significant: " + ", ".join(map(str, damaging)) in page


def test_top_layers_are_the_significant_ones(cli, tmp_path):
    """A probe the demo does: no warning; every top layer's damage is significant, the stars are
    on exactly those layers, and the others among the most damaging are listed apart."""
    result = cli(["ablate", "--model", "demo", "--probe", "arith", "--top-k", "3", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ablation.json").read_text(encoding="utf-8"))
    assert report["warnings"] == [] and "warning:" not in result.stderr
    rows = {r["layer_idx"]: r for r in report["ablation_results"]}
    top, rest = report["top_important_layers"], report["top_layers_not_significant"]
    assert top and len(top) + len(rest) <= 3
    assert all(rows[layer]["significant"] and rows[layer]["score_delta"] > 0 for layer in top)
    assert not any(rows[layer]["significant"] for layer in rest)
    assert top == report["significantly_important_layers"][:3]


def test_every_command_writes_its_warnings(cli, wrong_facts, two_samples, tmp_path):
    lens = cli(["logit-lens", "--model", "demo", "--custom-probe", wrong_facts, "--output", str(tmp_path / "lens")])
    assert lens.exit_code == 0, lens.output
    lens_report = json.loads((tmp_path / "lens" / "logit_lens.json").read_text(encoding="utf-8"))
    assert has(lens_report["warnings"], "never becomes top-1 in the logit lens")

    cross = cli(["cross-probe", "--model", "demo", "--probes", f"arith,{two_samples}", "--output",
                 str(tmp_path / "cross")])
    assert cross.exit_code == 0, cross.output
    cross_report = json.loads((tmp_path / "cross" / "cross_probe.json").read_text(encoding="utf-8"))
    assert has(cross_report["warnings"], "probe two: only 2 samples")
    assert not has(cross_report["warnings"], "probe arith")
    multi = json.loads((tmp_path / "cross" / "multi_probe.json").read_text(encoding="utf-8"))
    assert [has(r["warnings"], "only 2 samples") for r in multi["reports"]] == [False, True]


# ------------------------------------------------------------------------- component scans, attribute


def component_scan(baseline_correct: list[bool], damage: np.ndarray):
    """A head scan from per-sample scores: ``damage`` [N, S] nats lost per sample, one row per head."""
    from neuro_scan.analysis.components import component_result
    from neuro_scan.backend.base import Target

    samples = len(baseline_correct)
    base = SampleScores(np.full(samples, -0.5), np.array(baseline_correct))
    ablated = [SampleScores(base.answer_logprob - row, np.array(baseline_correct)) for row in damage]
    targets = [Target(0, "head", head) for head in range(len(damage))]
    return component_result(base, targets, ablated, "head", "zero", 0, 1, len(damage), 0.0)


def test_component_rules_fire_exactly_when_they_apply():
    from neuro_scan.caveats import component_warnings

    rng = np.random.default_rng(1)
    clear = np.stack([rng.normal(3.0, 0.5, 20), rng.normal(0.0, 0.5, 20)])  # head 0 clearly damages
    assert component_warnings(component_scan([True] * 20, clear)) == []
    quiet = component_warnings(component_scan([True] * 20, rng.normal(0.0, 1.0, (3, 20))))
    assert quiet == ["no component's removal does significant damage (Benjamini-Hochberg adjusted p <= 0.05): the "
                     "damage ranking is within noise, so no component stands out"]
    unsolved = component_warnings(component_scan([False] * 15 + [True] * 5, clear))
    assert has(unsolved, "answers 25% of the samples correctly") and len(unsolved) == 1
    assert has(component_warnings(component_scan([True] * 4, clear[:, :4])), "only 4 samples")


def test_component_scans_and_attribute_write_their_warnings(cli, wrong_facts, two_samples, tmp_path):
    blocks = cli(["ablate", "--model", "demo", "--custom-probe", two_samples, "--granularity", "sublayer",
                  "--output", str(tmp_path / "blocks")])
    assert blocks.exit_code == 0, blocks.output
    report = json.loads((tmp_path / "blocks" / "components.json").read_text(encoding="utf-8"))
    assert has(report["warnings"], "only 2 samples")
    assert has(report["warnings"], "no component's removal does significant damage")
    assert not any(row["significant"] for row in report["components"])
    for warning in report["warnings"]:
        assert f"warning: {warning}" in " ".join(blocks.stderr.split())

    solved = cli(["ablate", "--model", "demo", "--probe", "arith", "--granularity", "head", "--output",
                  str(tmp_path / "heads")])
    assert solved.exit_code == 0, solved.output
    assert json.loads((tmp_path / "heads" / "components.json").read_text(encoding="utf-8"))["warnings"] == []

    attribute = cli(["attribute", "--model", "demo", "--custom-probe", wrong_facts, "--verify-top-k", "4",
                     "--verify-sample", "2", "--output", str(tmp_path / "attribute")])
    assert attribute.exit_code == 0, attribute.output
    document = json.loads((tmp_path / "attribute" / "attribution.json").read_text(encoding="utf-8"))
    assert has(document["warnings"], "answers 0% of the samples correctly", "cannot do this probe")
    assert document["null_check"]["ok"] and not has(document["warnings"], "removing nothing")
    assert "warning: the model answers 0%" in " ".join(attribute.stderr.split())
