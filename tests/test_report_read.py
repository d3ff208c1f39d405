"""report/read.py, the one reader of reports: every kind our commands write (real runs on the demo
model), the files written before the tags per kind, the reference tool's report.json and Hub
dataset rows, read to the same typed Report; the numbers it returns agree with the CSV the same
run wrote; a stored scan read back is the scan a new run computes; bad files are one line."""

from __future__ import annotations

import copy
import csv
import importlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from neuro_scan.analysis.circuit import stored_singles
from neuro_scan.analysis.compare import profile_from_report
from neuro_scan.cli import app
from neuro_scan.errors import UsageError
from neuro_scan.report.read import (FORMATS, LEGACY_FORMAT, READABLE_FORMATS, REFERENCE, ReportError, annotatable,
                                    read_report)

SAMPLES = "4"
COMMANDS = {  # folder -> the command line that writes it (demo model, arith probe, 4 samples)
    "map": ["map"],
    "ablate": ["ablate"],
    "lens": ["logit-lens"],
    "attention": ["attention"],
    "circuit": ["circuit", "--top-k-pairs", "2"],
    "cross": ["cross-probe", "--probes", "arith,facts"],
    "repeat": ["prompt-repeat", "--repeat-counts", "1,2", "--dup-sizes", "1"],
}
KINDS = {  # file -> the kind it is read as
    "map/report.json": "map",
    "ablate/ablation.json": "ablation",
    "lens/logit_lens.json": "lens",
    "attention/attention.json": "attention",
    "circuit/circuit.json": "circuit",
    "cross/cross_probe.json": "cross-probe",
    "cross/multi_probe.json": "multi-probe",
    "repeat/prompt_repeat.json": "prompt-repeat",
    "compared/comparison.json": "comparison",
}


def invoke(args: list[str]):
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Every command that writes a report, run once on the demo model."""
    base = tmp_path_factory.mktemp("runs")
    for folder, command in COMMANDS.items():
        args = [*command, "--model", "demo", "--max-samples", SAMPLES, "-o", str(base / folder)]
        if command[0] != "cross-probe":
            args += ["--probe", "arith"]
        result = invoke(args)
        assert result.exit_code == 0, result.output
    result = invoke(["compare", str(base / "map" / "report.json"), str(base / "ablate" / "ablation.json"),
                     "-o", str(base / "compared")])
    assert result.exit_code == 0, result.output
    return base


def document(runs: Path, name: str) -> dict:
    return json.loads((runs / name).read_text(encoding="utf-8"))


def test_every_report_module_writes_its_own_readable_tag():
    tags = {}
    for kind, module in (("map", "map"), ("ablation", "ablation"), ("lens", "lens"), ("attention", "attention"),
                         ("circuit", "circuit"), ("cross-probe", "cross_probe"), ("comparison", "comparison"),
                         ("prompt-repeat", "prompt_repeat")):
        tags[kind] = importlib.import_module(f"neuro_scan.report.{module}").FORMAT
        assert tags[kind] == f"neuro-scan-{kind}/1" and tags[kind] in READABLE_FORMATS
    assert len(set(tags.values())) == len(tags)
    assert LEGACY_FORMAT in READABLE_FORMATS  # files written before the tags per kind


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_document_our_commands_write_is_read_as_its_kind(name, runs):
    data = document(runs, name)
    report = read_report(runs / name, name)
    assert report.kind == KINDS[name] and report.flavour == FORMATS[KINDS[name]] == data["format"]
    assert report.document == data and report.tool_version == data["tool"]["version"]
    if report.kind == "comparison":  # of several models: no model of its own
        assert report.model is None and report.total_layers is None
    else:
        assert (report.model, report.total_layers) == ("demo", 4)
    assert report.probe == (data["probe"] if "probe" in data else None)
    # the old tag, read by the document's command, gives the same report (comparisons had no tag)
    old = {**data, "format": LEGACY_FORMAT} if report.kind != "comparison" else \
        {k: v for k, v in data.items() if k != "format"}
    legacy = read_report(old, name)
    assert (legacy.kind, legacy.flavour, legacy.rows, legacy.labels) == \
        (report.kind, LEGACY_FORMAT, report.rows, report.labels)


@pytest.mark.parametrize("folder, name, table", [("map", "report.json", "ablation.csv"),
                                                 ("ablate", "ablation.json", "ablation.csv")])
def test_a_profile_read_back_agrees_with_the_csv_of_the_same_run(folder, name, table, runs):
    report = read_report(runs / folder / name, name)
    rows = list(csv.DictReader(io.StringIO((runs / folder / table).read_text(encoding="utf-8"))))
    assert [row.layer for row in report.rows] == [int(r["layer_idx"]) for r in rows] == [0, 1, 2, 3]
    np.testing.assert_allclose(report.profile(), [float(r["score_delta"]) for r in rows], rtol=1e-12)
    np.testing.assert_allclose(report.profile_intervals(),
                               [(float(r["score_delta_ci_low"]), float(r["score_delta_ci_high"])) for r in rows])
    assert {layer: label for layer, label in report.labels.items() if label} == \
        {int(r["layer_idx"]): r["label"] for r in rows if r["label"]}
    data = document(runs, f"{folder}/{name}")
    assert [row.layer for row in report.top_layers] == data["top_important_layers"]
    assert report.baseline_score == data["baseline"]["score"] and report.baseline_accuracy == data["baseline"]["accuracy"]
    assert report.sample_count == int(SAMPLES)
    assert (folder == "map") == bool(report.labels)  # ablate writes no labels


def test_a_stored_scan_read_back_is_the_scan_a_new_run_computes(runs):
    from neuro_scan.analysis.ablation import run_ablation
    from neuro_scan.backend import open_backend
    from neuro_scan.engine import Engine
    from neuro_scan.probes import resolve_probe

    report = read_report(runs / "map" / "report.json", "report.json")
    engine = Engine(open_backend("demo", device="cpu"), resolve_probe("arith").limited(int(SAMPLES)), batch_size=64)
    fresh = run_ablation(engine, seed=0)
    reused = stored_singles(report, engine, seed=0)
    assert reused is not None
    np.testing.assert_allclose(reused.ablated_logprob, fresh.ablated_logprob, atol=1e-5)
    assert reused.ranked_layers == fresh.ranked_layers
    # a scan of other samples is not reused
    other = Engine(engine.backend, resolve_probe("arith").limited(int(SAMPLES) - 1), batch_size=64)
    assert stored_singles(report, other, seed=0) is None


# ------------------------------------------------------------------- the reference tool, the Hub


def reference_of(data: dict) -> dict:
    """Our report as the reference tool writes it: its keys only, no format, a NaN delta, labels for some layers."""
    keys = ("model", "probe", "total_layers", "baseline_score", "baseline_uncertainty", "scan_time_seconds",
            "ablation_results", "top_important_layers", "layer_labels")
    reference = {key: copy.deepcopy(data[key]) for key in keys}
    reference["ablation_results"] = [{k: row[k] for k in ("layer_idx", "score", "score_delta", "uncertainty",
                                                          "log_odds", "accuracy")} for row in data["ablation_results"]]
    reference["ablation_results"][1]["score_delta"] = float("nan")
    reference["layer_labels"] = {"0": "early_processing", "2": "reasoning", "3": "reasoning"}
    return reference


def test_the_reference_format_and_a_hub_row_read_alike(runs):
    data = document(runs, "map/report.json")
    reference = read_report(reference_of(data), "reference.json")
    assert (reference.kind, reference.flavour, reference.made_by) == ("map", REFERENCE, "the reference tool")
    assert [row.score_delta for row in reference.rows][0] == data["ablation_results"][0]["score_delta"]
    assert reference.rows[1].score_delta is None and reference.profile() is None  # NaN is no number
    assert reference.label_runs() == [(0, 0, "early_processing"), (2, 3, "reasoning")]
    row = {"model_id": data["model"], **{key: json.dumps(value) if isinstance(value, (list, dict)) else value
                                        for key, value in reference_of(data).items() if key != "model"}}
    hub_row = read_report(json.loads(json.dumps(row, allow_nan=True)), "row.json")
    assert (hub_row.model, hub_row.rows[0], hub_row.labels, hub_row.top_layers) == \
        (reference.model, reference.rows[0], reference.labels, reference.top_layers)


def test_what_the_hub_holds_is_a_map_report_with_labels(runs):
    assert annotatable(read_report(runs / "map" / "report.json", "r.json")).kind == "map"
    with pytest.raises(ReportError, match="r.json is not a valid neuro-scan report: it is a 'ablation' report"):
        annotatable(read_report(runs / "ablate" / "ablation.json", "r.json"))
    unlabelled = {k: v for k, v in reference_of(document(runs, "map/report.json")).items() if k != "layer_labels"}
    assert read_report(unlabelled, "r.json").labels == {}  # compare reads it
    with pytest.raises(ReportError, match="'layer_labels' must be an object mapping .* it is missing"):
        annotatable(read_report(unlabelled, "r.json"))


# ------------------------------------------------------------------------------------ bad files


def test_bad_files_are_one_line_naming_the_file_and_the_key(runs, tmp_path):
    data = document(runs, "map/report.json")
    cases = {
        "newer": ({**data, "format": "neuro-scan-map/2"}, "its format 'neuro-scan-map/2' is not one this neuro-scan "
                                                          "reads (it reads neuro-scan-map/1); upgrade neuro-scan"),
        "manifest": ({**data, "format": "neuro-scan-files/1"}, "'format' is 'neuro-scan-files/1', not a neuro-scan "
                                                               "report format"),
        "command": ({**data, "format": LEGACY_FORMAT, "command": "probes"}, "'command' is 'probes'"),
        "labels": ({**data, "layer_labels": {"0": "syntax"}}, "'layer_labels' has 1 entries for 4 layers"),
        "no_model": ({k: v for k, v in document(runs, "circuit/circuit.json").items() if k != "model"},
                     "'model' is missing"),
    }
    for name, (content, fragment) in cases.items():
        with pytest.raises(ReportError) as raised:
            read_report(content, f"report file {name}.json")
        message = str(raised.value)
        assert message.startswith(f"report file {name}.json is not a valid neuro-scan report: {fragment}"), message
        assert "\n" not in message
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ReportError, match=r"^report file deep.json is not a neuro-scan report \(its JSON is nested "
                                          r"too deeply to read\)$"):
        read_report(deep, "report file deep.json")
    with pytest.raises(ReportError, match=r"^r: no such file$") as missing:
        read_report(tmp_path / "nope.json", "r")
    assert missing.value.missing
    with pytest.raises(ReportError, match=r"^r is a folder; give the report.json inside it$"):
        read_report(tmp_path, "r")


def test_compare_names_a_report_without_a_profile(runs):
    with pytest.raises(UsageError, match=r"^c.json: not a neuro-scan report \(it is a circuit report, with no "
                                         r"'ablation_results' list: give a map or ablate report\)$"):
        profile_from_report(runs / "circuit" / "circuit.json", "c.json")
    profile = profile_from_report(read_report(runs / "map" / "report.json", "m.json"), "m.json")
    assert profile.damage.tolist() == read_report(runs / "map" / "report.json", "m.json").profile()


def test_a_map_written_while_it_runs_is_its_report_alone(runs):
    from neuro_scan.report import map as map_report

    data = document(runs, "map/report.json")
    done = map_report.files_of(data)
    assert set(done.tables) == {"ablation.csv"} and done.dashboard
    assert {"ablation.html", "logit_lens.html", "entropy_profile.html", "attention.html"} <= set(done.figures)
    running = map_report.files_of({**data, "phases": {**data["phases"], "attention": {"status": "pending"}}})
    assert (set(running.documents), running.tables, running.figures, running.dashboard) == ({"report.json"}, {}, {}, False)
    failed = map_report.files_of({**data, "phases": {**data["phases"], "attention": {"status": "failed", "error": "E"}}})
    assert set(failed.figures) == set(done.figures) - {"attention.html"} and failed.failed_phases == {"attention": "E"}
