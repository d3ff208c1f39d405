"""cross-probe: one model, several probes: each probe's scan equals its own ablate run; universal and
probe-specific layers from significance; correlations; output files; option errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuro_scan.analysis.ablation import ablation_result, run_ablation
from neuro_scan.analysis.cross_probe import ProbeAblation, run_cross_probe, summarize
from neuro_scan.engine import Engine
from neuro_scan.probes import Probe, Sample
from neuro_scan.scoring import SampleScores
from test_engine import PROBE
from tiny_models import make_backend

OTHER = Probe(name="other", description="more tiny samples",
              samples=(Sample("xyz", "w"), Sample("12", "3"), Sample("ab", "c", choices=("c", "d")), Sample("qq", "rr")))


def synthetic(name: str, damage: list[float], spread: float = 0.05, samples: int = 30) -> ProbeAblation:
    """A probe whose layer l does damage[l] nats on average (sample noise ``spread``)."""
    rng = np.random.default_rng(len(name))
    baseline = SampleScores(np.zeros(samples), np.ones(samples, dtype=bool))
    ablated = [SampleScores(-(d + rng.normal(0, spread, samples)), np.ones(samples, dtype=bool)) for d in damage]
    probe = Probe(name, "", tuple(Sample(f"p{i}", "a") for i in range(samples)))
    return ProbeAblation(probe, ablation_result(baseline, ablated, seed=0, seconds=0.0), 0.0)


def test_universal_and_specific_layers_need_significance():
    a = synthetic("a", [2.0, 0.5, 0.0, 0.4, 0.0])
    b = synthetic("bb", [1.5, 0.6, 0.3, 0.0, 0.0])
    c = synthetic("ccc", [1.0, 0.0, 0.0, 0.0, 0.0])
    result = summarize([a, b, c], seconds=0.0)
    assert result.universal_layers == [0]
    assert result.specific_layers == {"a": [3], "bb": [2], "ccc": []}  # layer 1 is in two probes: neither
    assert result.names == ["a", "bb", "ccc"]
    assert result.pearson[0][0] == pytest.approx(1.0)
    assert result.pearson[0][1] == pytest.approx(float(np.corrcoef(
        [x.damage.mean for x in a.ablation.layers], [x.damage.mean for x in b.ablation.layers])[0, 1]))


def test_flat_profile_has_no_correlation():
    result = summarize([synthetic("a", [1.0, 0.0, 0.5]), synthetic("flat", [0.0, 0.0, 0.0], spread=0.0)], seconds=0.0)
    assert result.pearson[0][1] is None and result.spearman[1][1] is None
    assert result.universal_layers == []


def test_each_probe_equals_its_own_scan():
    backend = make_backend("qwen2")
    advanced = []
    result = run_cross_probe(backend, [PROBE, OTHER], batch_size=4, seed=0, progress=advanced.append)
    assert sum(advanced) == pytest.approx(2 * backend.num_layers)
    for entry, probe in zip(result.per_probe, (PROBE, OTHER)):
        alone = run_ablation(Engine(backend, probe, batch_size=64), seed=0)
        np.testing.assert_allclose(entry.ablation.ablated_logprob, alone.ablated_logprob, atol=1e-4)
        np.testing.assert_allclose(entry.ablation.baseline_logprob, alone.baseline_logprob, atol=1e-4)


def test_cross_probe_cli_with_a_builtin_and_a_custom_probe(cli, tmp_path):
    custom = tmp_path / "colours.json"
    custom.write_text(json.dumps({"name": "colours", "samples": [
        {"prompt": "mira is", "answer": " yellow."}, {"prompt": "tolan is", "answer": " orange."},
        {"prompt": "mira is", "answer": " yellow.", "choices": [" red.", " yellow."]}]}))
    out = tmp_path / "out"
    result = cli(["cross-probe", "--model", "demo", "--probes", f"arith, {custom}", "--max-samples", "6",
                  "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "cross_probe.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    reference_keys = ["model", "probes", "total_layers", "universal_layers", "probe_specific_layers",
                      "correlation_matrix", "per_probe"]
    assert all(key in report for key in reference_keys)
    assert report["probes"] == ["arith", "colours"] and report["total_layers"] == 4
    assert [p["sample_count"] for p in report["per_probe"]] == [6, 3]
    for entry in report["per_probe"]:
        assert len(entry["ablation_deltas"]) == len(entry["ablation_deltas_ci"]) == 4
        assert set(entry) >= {"probe", "baseline", "top_layers", "ablation_deltas"}
    significant = [set(p["significant_layers"]) for p in report["per_probe"]]
    assert set(report["universal_layers"]) == significant[0] & significant[1]
    assert set(report["probe_specific_layers"]["arith"]) == significant[0] - significant[1]
    multi = json.loads((out / "multi_probe.json").read_text())
    assert [r["probe"] for r in multi["reports"]] == ["arith", "colours"]
    assert multi["reports"][1]["sample_count"] == 3 and multi["reports"][1]["probe_info"]["source"] == str(custom)
    html = (out / "cross_probe.html").read_text()
    assert "cdn.plot.ly" not in html and (out / "plotly.min.js").is_file()


@pytest.mark.parametrize("probes, fragment", [
    ("arith", "--probes: give two or more probes"),
    ("arith,,facts", "--probes: give two or more probes"),
    ("arith,nosuchprobe", "--probe: unknown probe 'nosuchprobe'"),
    ("arith,arith", "--probes: two of the probes are named 'arith'"),
])
def test_cross_probe_errors_come_before_loading(cli, no_model_loading, probes, fragment, tmp_path):
    result = cli(["cross-probe", "--model", "demo", "--probes", probes, "-o", str(tmp_path / "out")])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and fragment in lines[0], result.output
    assert not (tmp_path / "out").exists()
