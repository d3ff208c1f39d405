"""`neuro-scan map --model demo` end to end: the shipped model through the ordinary loading path."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from neuro_scan.backend.loading import demo_model_dir, resolve_source
from neuro_scan.backend import open_backend
from neuro_scan.backend.transformers import TransformersBackend
from neuro_scan.cli import app


def test_demo_is_an_ordinary_model_folder():
    source = resolve_source("demo")
    assert source.kind == "folder" and source.location == str(demo_model_dir())
    backend = open_backend("demo", device="cpu")
    assert type(backend) is TransformersBackend
    assert backend.info.architecture == "llama" and backend.num_layers == 4 and backend.info.dtype == "float32"


@pytest.mark.slow
def test_demo_map_shows_real_structure(tmp_path):
    result = CliRunner().invoke(app, ["map", "--model", "demo", "--probe", "arith", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["baseline"]["accuracy"] >= 0.9
    damage = [row["score_delta"] for row in report["ablation_results"]]
    assert max(damage) > 10 * min(damage) > 0  # not every layer equally important
    assert report["significantly_important_layers"][0] == 0
    assert set(report["layer_labels"].values()) >= {"early_processing", "reasoning"}
    assert report["model"] == "demo" and report["probe"] == "arith" and report["sample_count"] == 32
    assert report["tool"]["name"] == "neuro-scan" and report["device"] == "cpu"


@pytest.mark.slow
def test_same_inputs_give_the_same_report(tmp_path):
    reports = []
    for run in ("a", "b"):
        result = CliRunner().invoke(app, ["map", "--model", "demo", "--probe", "facts", "--output", str(tmp_path / run)])
        assert result.exit_code == 0, result.output
        report = json.loads((tmp_path / run / "report.json").read_text())
        for volatile in ("created_at", "timings", "scan_time_seconds"):
            report.pop(volatile)
        reports.append(report)
    assert reports[0] == reports[1]
