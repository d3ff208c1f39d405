"""``fetch`` and ``publish`` against a local Hub: the real huggingface_hub client, the real CLI.

huggingface_hub reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` when it is imported, so every CLI run
here is a subprocess with ``HF_ENDPOINT`` pointing at :class:`hub_server.LocalHub` (a thread of
this process on 127.0.0.1) and ``HF_HOME`` in the test's own folder: nothing can reach the real
Hub, and each test starts with an empty cache. The reports served are real: ``neuro-scan map`` on
the built-in demo model, once per session.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import LocalHub
from test_cli_errors import assert_usage_error, cli_command

from neuro_scan.errors import UsageError
from neuro_scan.hub.layout import INDEX_FORMAT, HubIndex, IndexEntry, match_models, report_path
from neuro_scan.report.read import READABLE_FORMATS, REFERENCE, read_report as validate_report

REPO = "acme/layer-maps"
TOKEN = "hf_test_token"
REFERENCE_KEYS = ["model", "probe", "total_layers", "baseline_score", "baseline_uncertainty", "scan_time_seconds",
                  "ablation_results", "top_important_layers", "layer_labels", "logit_lens_trajectory",
                  "attention_entropy", "block_influence"]
REFERENCE_ROW_KEYS = ["layer_idx", "score", "score_delta", "uncertainty", "log_odds", "accuracy"]


# ---------------------------------------------------------------------------------------- helpers


def _env(home: Path, hub: LocalHub | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "NEURO_SCAN_HUB_REPO", "HF_ENDPOINT")}
    env.update(HF_HOME=str(home), NO_COLOR="1", COLUMNS="200", **extra)
    if hub is not None:
        env["HF_ENDPOINT"] = hub.url
    return env


def run(args: list[str], home: Path, hub: LocalHub | None, timeout: float = 120, **extra: str) -> tuple[int, str, str]:
    proc = subprocess.run([*cli_command(), *args], capture_output=True, text=True, env=_env(home, hub, **extra),
                          cwd=home, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def ok(result: tuple[int, str, str]) -> str:
    rc, stdout, stderr = result
    assert rc == 0 and "Traceback" not in stderr and "error:" not in stderr, \
        f"rc={rc}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    return stdout


def one_error(result: tuple[int, str, str], fragments: list[str]) -> str:
    return assert_usage_error(*result, fragments, None)


def dataset_requests(hub: LocalHub) -> list[str]:
    """Requests about the dataset (huggingface_hub also asks for its own telemetry registry)."""
    return [r for r in hub.requests if "/datasets/" in r]


def as_model(report: dict, model: str) -> dict:
    return {**report, "model": model}


def reference_format(report: dict) -> dict:
    """The report as the reference tool writes it: its keys only, no 'format'."""
    data = {key: copy.deepcopy(report[key]) for key in REFERENCE_KEYS}
    data["ablation_results"] = [{k: row[k] for k in REFERENCE_ROW_KEYS} for row in report["ablation_results"]]
    return data


def index_json(reports: dict[str, dict]) -> bytes:
    """index.json written out by hand, as docs/hub.md describes it."""
    entries = [{"model": r["model"], "probe": r["probe"], "path": path, "layers": r["total_layers"],
                "scan_date": r.get("created_at"), "tool_version": r.get("tool", {}).get("version"),
                "format": r.get("format", "reference")} for path, r in reports.items()]
    return json.dumps({"format": INDEX_FORMAT, "reports": entries}).encode()


def dump(data) -> bytes:
    return json.dumps(data).encode()


# --------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def demo_report(tmp_path_factory) -> dict:
    """A real report.json: ``neuro-scan map`` on the built-in demo model (about 15 s)."""
    folder = tmp_path_factory.mktemp("demo_map")
    ok(run(["map", "--model", "demo", "--probe", "arith", "--output", str(folder / "out")], folder, None,
           timeout=600, HF_HUB_OFFLINE="1"))
    return json.loads((folder / "out" / "report.json").read_text(encoding="utf-8"))


@pytest.fixture
def served(demo_report) -> dict[str, dict]:
    """What the local Hub's dataset holds: path -> report."""
    return {
        "reports/acme__Tiny-Demo/arith.json": as_model(demo_report, "acme/Tiny-Demo"),
        "reports/acme__Demo-4L/arith.json": as_model(demo_report, "acme/Demo-4L"),
        "reports/other__demo-4l/arith.json": as_model(demo_report, "other/demo-4l"),
        "reports/legacy__Ref-Model/math.json": {**reference_format(as_model(demo_report, "legacy/Ref-Model")),
                                                "probe": "math"},
    }


@pytest.fixture
def hub(served):
    with LocalHub(token=TOKEN, lifetime=300) as local:
        local.add_dataset(REPO, {**{path: dump(r) for path, r in served.items()}, "index.json": index_json(served)})
        yield local


@pytest.fixture
def home(tmp_path) -> Path:
    """HF_HOME (and the working folder) of the CLI runs: an empty cache."""
    folder = tmp_path / "hf_home"
    folder.mkdir()
    return folder


# ------------------------------------------------------------------------------------------ fetch


@pytest.mark.slow
def test_fetch_prints_the_summary_and_saves_a_real_report(hub, home, served, demo_report, tmp_path):
    saved = tmp_path / "fetched" / "report.json"
    stdout = ok(run(["fetch", "--model", "acme/Tiny-Demo", "--probe", "arith", "--repo", REPO, "-o", str(saved)],
                    home, hub))
    expected = served["reports/acme__Tiny-Demo/arith.json"]
    assert json.loads(saved.read_text(encoding="utf-8")) == expected
    first = stdout.splitlines()[0]
    for fragment in ("acme/Tiny-Demo", "probe arith", "4 layers", demo_report["created_at"],
                     f"neuro-scan {demo_report['tool']['version']}"):
        assert fragment in first, stdout
    assert f"baseline score: {demo_report['baseline_score']:.3f}" in stdout
    for layer in demo_report["top_important_layers"]:
        assert f"{demo_report['ablation_results'][layer]['score_delta']:.4f}" in stdout
    assert f"labels: 0 {demo_report['layer_labels']['0']}" in stdout
    assert f"wrote {saved}" in stdout
    # only that report was downloaded: no index, no other file
    assert dataset_requests(hub) == [f"{method} /datasets/{REPO}/resolve/main/reports/acme__Tiny-Demo/arith.json"
                                     for method in ("HEAD", "GET")]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-demo", "TINY-DEMO", "ACME/tiny-demo"])
def test_fetch_matches_a_unique_name_ignoring_case(name, hub, home):
    stdout = ok(run(["fetch", "--model", name, "--probe", "arith", "--repo", REPO], home, hub))
    assert stdout.startswith("acme/Tiny-Demo · probe arith")


@pytest.mark.slow
def test_fetch_ambiguous_name_lists_the_candidates(hub, home):
    line = one_error(run(["fetch", "--model", "demo-4l", "--probe", "arith", "--repo", REPO], home, hub),
                     ["'demo-4l'", "matches several models", "acme/Demo-4L", "other/demo-4l", "full id"])
    assert "Tiny-Demo" not in line


@pytest.mark.slow
def test_fetch_exact_id_wins_over_a_name_match(hub, home):
    assert ok(run(["fetch", "--model", "other/demo-4l", "--probe", "arith", "--repo", REPO], home, hub)) \
        .startswith("other/demo-4l · probe arith")


@pytest.mark.slow
def test_fetch_an_org_qualified_name_never_matches_another_org(hub, home):
    one_error(run(["fetch", "--model", "someone/Tiny-Demo", "--probe", "arith", "--repo", REPO], home, hub),
              ["no report for model 'someone/Tiny-Demo'", REPO])


@pytest.mark.slow
def test_fetch_missing_probe_says_what_the_model_has(hub, home, tmp_path):
    saved = tmp_path / "report.json"
    one_error(run(["fetch", "--model", "tiny-demo", "--probe", "math", "--repo", REPO, "-o", str(saved)], home, hub),
              ["no 'math' report for acme/Tiny-Demo", REPO, "its reports: arith"])
    assert not saved.exists()


@pytest.mark.slow
def test_fetch_unknown_model_suggests_names(hub, home):
    one_error(run(["fetch", "--model", "acme/Tiny-Dem", "--probe", "arith", "--repo", REPO], home, hub),
              ["no report for model 'acme/Tiny-Dem'", "did you mean acme/Tiny-Demo"])
    one_error(run(["fetch", "--model", "zzz", "--probe", "arith", "--repo", REPO], home, hub),
              ["no report for model 'zzz'", "4 models have reports", "fetch --list"])


@pytest.mark.slow
def test_fetch_repository_missing(hub, home):
    one_error(run(["fetch", "--model", "acme/Tiny-Demo", "--probe", "arith", "--repo", "acme/nope"], home, hub),
              ["dataset acme/nope not found", hub.url, "--repo", "NEURO_SCAN_HUB_REPO"])


@pytest.mark.slow
def test_fetch_repo_from_the_environment(hub, home):
    stdout = ok(run(["fetch", "--model", "tiny-demo", "--probe", "arith"], home, hub, NEURO_SCAN_HUB_REPO=REPO))
    assert f"from {REPO}: reports/acme__Tiny-Demo/arith.json" in stdout


@pytest.mark.slow
def test_fetch_hub_unreachable(hub, home, tmp_path):
    """Server stopped, empty cache: huggingface_hub retries for about 20 s, then one clear line."""
    hub.stop()
    saved = tmp_path / "report.json"
    line = one_error(run(["fetch", "--model", "acme/Tiny-Demo", "--probe", "arith", "--repo", REPO, "-o", str(saved)],
                         home, hub),
                     ["cannot reach the Hugging Face Hub", hub.url, "not in the local cache", "HF_HUB_OFFLINE=1"])
    assert "not found" not in line
    assert not saved.exists()


@pytest.mark.slow
def test_offline_fetch_reuses_the_cache(hub, home, tmp_path):
    ok(run(["fetch", "--model", "acme/Tiny-Demo", "--probe", "arith", "--repo", REPO], home, hub))
    ok(run(["fetch", "--model", "acme/demo-4l", "--probe", "arith", "--repo", REPO], home, hub))  # by name
    hub.stop()  # nothing can be downloaded any more
    saved = tmp_path / "report.json"
    stdout = ok(run(["fetch", "--model", "acme/Tiny-Demo", "--probe", "arith", "--repo", REPO, "-o", str(saved)],
                    home, hub, HF_HUB_OFFLINE="1"))
    assert stdout.startswith("acme/Tiny-Demo · probe arith")
    assert json.loads(saved.read_text(encoding="utf-8"))["model"] == "acme/Tiny-Demo"
    # a name resolves through the cached index
    assert ok(run(["fetch", "--model", "acme/demo-4l", "--probe", "arith", "--repo", REPO], home, hub,
                  HF_HUB_OFFLINE="1")).startswith("acme/Demo-4L · probe arith")
    one_error(run(["fetch", "--model", "tiny-demo", "--probe", "math", "--repo", REPO], home, hub, HF_HUB_OFFLINE="1"),
              ["no 'math' report for acme/Tiny-Demo", "cached index.json", "HF_HUB_OFFLINE"])


@pytest.mark.slow
def test_offline_fetch_without_a_cached_copy(hub, home):
    one_error(run(["fetch", "--model", "acme/Tiny-Demo", "--probe", "arith", "--repo", REPO], home, hub,
                  HF_HUB_OFFLINE="1"),
              ["HF_HUB_OFFLINE is set", "reports/acme__Tiny-Demo/arith.json", "not in the local cache"])
    assert dataset_requests(hub) == []


CORRUPT = {
    # id: (file content, fragments of the error)
    "not_json": (b"<html>Bad gateway</html>", ["is not valid JSON"]),
    "truncated": (b'{"model": "acme/Tiny-Demo", "total_la', ["is not valid JSON"]),
    "labels_string": (None, ["is not a valid neuro-scan report", "'layer_labels'", "string"]),
    "no_rows": (None, ["is not a valid neuro-scan report", "'ablation_results'"]),
    "other_model": (None, ["holds a report of 'acme/Other'", "not the one its path names"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_fetch_corrupt_report(case, hub, home, served, tmp_path):
    path = "reports/acme__Tiny-Demo/arith.json"
    content, fragments = CORRUPT[case]
    report = served[path]
    if content is None:
        content = dump({"labels_string": {**report, "layer_labels": "reasoning"},
                        "no_rows": {**report, "ablation_results": []},
                        "other_model": as_model(report, "acme/Other")}[case])
    hub.put(REPO, path, content)
    saved = tmp_path / "report.json"
    one_error(run(["fetch", "--model", "acme/Tiny-Demo", "--probe", "arith", "--repo", REPO, "-o", str(saved)],
                  home, hub), [path, f"dataset {REPO}", *fragments])
    assert not saved.exists()


BAD_INDEXES = {
    "not_an_index": ({"reports": "everything"}, ["not a neuro-scan report index"]),
    "entry_without_layers": ({"format": INDEX_FORMAT, "reports": [{"model": "a/b", "probe": "p", "path": "x"}]},
                             ["reports[0] needs", "'layers'"]),
    "path_outside_the_layout": ({"format": INDEX_FORMAT, "reports": [{"model": "acme/Tiny-Demo", "probe": "arith",
                                                                      "path": "../../secret.json", "layers": 4}]},
                                ["reports[0] does not follow the layout", "'../../secret.json'"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_INDEXES))
def test_fetch_corrupt_index(case, hub, home):
    content, fragments = BAD_INDEXES[case]
    hub.put(REPO, "index.json", dump(content))
    one_error(run(["fetch", "--model", "tiny-demo", "--probe", "arith", "--repo", REPO], home, hub),
              [f"index.json of dataset {REPO}", *fragments])


@pytest.mark.slow
def test_fetch_bad_repository_id(hub, home):
    one_error(run(["fetch", "--model", "acme/Tiny-Demo", "--repo", "not a repo"], home, hub),
              ["--repo", "'not a repo'", "not a Hub repository id"])
    assert hub.requests == []


@pytest.mark.slow
def test_fetch_reference_format_report(hub, home, tmp_path):
    saved = tmp_path / "ref.json"
    stdout = ok(run(["fetch", "--model", "ref-model", "--probe", "math", "--repo", REPO, "-o", str(saved)], home, hub))
    assert stdout.startswith("legacy/Ref-Model · probe math · 4 layers · scanned on an unrecorded date by the reference tool")
    assert "format" not in json.loads(saved.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_fetch_list(hub, home):
    stdout = ok(run(["fetch", "--list", "--repo", REPO], home, hub))
    rows = [line for line in stdout.splitlines() if line.count("│") > 2]
    assert [row.split("│")[1].strip() for row in rows] == ["acme/Demo-4L", "acme/Tiny-Demo", "legacy/Ref-Model",
                                                            "other/demo-4l"]
    stdout = ok(run(["fetch", "--list", "--model", "demo-4l", "--repo", REPO], home, hub))
    assert "acme/Demo-4L" in stdout and "other/demo-4l" in stdout and "Tiny-Demo" not in stdout


@pytest.mark.slow
def test_fetch_needs_a_model(hub, home):
    one_error(run(["fetch", "--repo", REPO], home, hub), ["--model is required", "--list"])


@pytest.mark.slow
def test_fetch_output_is_not_a_file_name(hub, home, tmp_path):
    one_error(run(["fetch", "--model", "acme/Tiny-Demo", "--repo", REPO, "-o", str(tmp_path)], home, hub),
              ["--output", str(tmp_path), "is a folder"])
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep\n", encoding="utf-8")
    one_error(run(["fetch", "--model", "acme/Tiny-Demo", "--repo", REPO, "-o", str(a_file / "report.json")], home, hub),
              ["--output", str(a_file), "is a file, not a folder"])
    assert dataset_requests(hub) == []


# ---------------------------------------------------------------------------------- downstream tools


@pytest.mark.slow
def test_fetched_report_feeds_layer_scan_annotate(hub, home, served, tmp_path):
    saved = tmp_path / "report.json"
    ok(run(["fetch", "--model", "tiny-demo", "--probe", "arith", "--repo", REPO, "-o", str(saved)], home, hub))
    results = {"model": "acme/Tiny-Demo", "baseline_score": 0.5,
               "top_configs": [{"rank": 1, "i": 1, "j": 3, "score": 0.6, "delta": 0.1}],
               "all_results": [{"i": 1, "j": 3, "score": 0.6}, {"i": 0, "j": 2, "score": 0.4}]}
    (tmp_path / "results.json").write_text(json.dumps(results), encoding="utf-8")
    html = tmp_path / "annotated.html"
    layer_scan = Path(sys.executable).parent / "layer-scan"
    proc = subprocess.run([str(layer_scan) if layer_scan.exists() else "layer-scan", "annotate", "--results",
                           str(tmp_path / "results.json"), "--neuro-report", str(saved), "--output", str(html)],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and html.is_file()
    labels = served["reports/acme__Tiny-Demo/arith.json"]["layer_labels"]
    assert labels["1"] in proc.stdout + html.read_text(encoding="utf-8")


@pytest.mark.slow
def test_fetched_reports_feed_compare(hub, home, tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    ok(run(["fetch", "--model", "tiny-demo", "--probe", "arith", "--repo", REPO, "-o", str(first)], home, hub))
    ok(run(["fetch", "--model", "ref-model", "--probe", "math", "--repo", REPO, "-o", str(second)], home, hub))
    out = tmp_path / "compared"
    stdout = ok(run(["compare", str(first), str(second), "--output", str(out)], home, None))
    assert "acme/Tiny-Demo" in stdout and "legacy/Ref-Model" in stdout
    comparison = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    # the same damage profile under two names: perfectly correlated
    assert comparison["similarity_matrix"][0][1] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------- publish


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.slow
def test_publish_opens_a_pull_request(hub, home, demo_report, served, tmp_path):
    report_file = _write(tmp_path / "report.json", demo_report)  # model "demo", as `map --model demo` wrote it
    stdout = ok(run(["publish", str(report_file), "--model", "acme/Published", "--repo", REPO], home, hub,
                    HF_TOKEN=TOKEN))
    assert "opened a pull request" in stdout and f"{hub.url}/datasets/{REPO}/discussions/1" in stdout
    [commit] = hub.commits
    assert commit.pull_request and commit.revision == "refs/pr/1"
    assert commit.authorization == f"Bearer {TOKEN}"
    assert commit.summary == "Add report: acme/Published on arith"
    path = "reports/acme__Published/arith.json"
    assert sorted(commit.files) == sorted([path, "index.json"])
    assert json.loads(commit.files[path]) == as_model(demo_report, "acme/Published")
    index = json.loads(commit.files["index.json"])
    assert index["format"] == INDEX_FORMAT
    new = {"model": "acme/Published", "probe": "arith", "path": path, "layers": 4,
           "scan_date": demo_report["created_at"], "tool_version": demo_report["tool"]["version"],
           "format": demo_report["format"]}
    assert new in index["reports"]
    assert {(e["model"], e["probe"]) for e in index["reports"]} == \
        {(r["model"], r["probe"]) for r in served.values()} | {("acme/Published", "arith")}
    # main is untouched until the pull request is merged
    assert path not in hub.datasets[REPO].branches["main"]
    assert dataset_requests(hub)[-2:] == [f"POST /api/datasets/{REPO}/preupload/main?create_pr=1",
                                          f"POST /api/datasets/{REPO}/commit/main?create_pr=1"]


@pytest.mark.slow
def test_publish_to_main_then_fetch_it_back(hub, home, demo_report, tmp_path):
    ok(run(["fetch", "--model", "acme/Tiny-Demo", "--probe", "arith", "--repo", REPO], home, hub))  # now cached
    rescanned = {**as_model(demo_report, "acme/Tiny-Demo"), "created_at": "2030-01-01T00:00:00+00:00"}
    report_file = _write(tmp_path / "report.json", rescanned)
    stdout = ok(run(["publish", str(report_file), "--no-pr", "--repo", REPO], home, hub, HF_TOKEN=TOKEN))
    assert "committed" in stdout and "replacing the earlier report" in stdout
    [commit] = hub.commits
    assert not commit.pull_request and commit.revision == "main"
    assert commit.summary == "Update report: acme/Tiny-Demo on arith"
    index = json.loads(hub.file(REPO, "index.json"))
    assert [e["scan_date"] for e in index["reports"] if e["model"] == "acme/Tiny-Demo"] == [rescanned["created_at"]]
    saved = tmp_path / "back.json"
    stdout = ok(run(["fetch", "--model", "acme/Tiny-Demo", "--probe", "arith", "--repo", REPO, "-o", str(saved)],
                    home, hub))
    assert "scanned 2030-01-01" in stdout  # the new version, not the cached one
    assert json.loads(saved.read_text(encoding="utf-8")) == rescanned


@pytest.mark.slow
def test_publish_into_a_repository_without_index(home, demo_report, tmp_path):
    report_file = _write(tmp_path / "report.json", as_model(demo_report, "acme/First"))
    with LocalHub(token=TOKEN, lifetime=120) as empty_hub:
        empty_hub.add_dataset("acme/fresh")
        ok(run(["publish", str(report_file), "--repo", "acme/fresh"], home, empty_hub, HF_TOKEN=TOKEN))
        [commit] = empty_hub.commits
    index = HubIndex.parse(commit.files["index.json"], "index.json")
    assert [(e.model, e.probe, e.path) for e in index.entries] == [("acme/First", "arith", "reports/acme__First/arith.json")]


PUBLISH_REFUSALS = {
    # id: (report change, extra args, fragments)
    "labels_not_an_object": ({"layer_labels": ["reasoning"]}, [], ["not a valid neuro-scan report", "'layer_labels'"]),
    "layer_out_of_range": ({"top_important_layers": [0, 9]}, [], ["'top_important_layers'", "0..3"]),
    "local_path_model": ({"model": "/home/me/models/my-llama"}, [], ["'/home/me/models/my-llama'",
                                                                    "not a Hugging Face model id", "--model"]),
    "bad_model_option": ({}, ["--model", "../../etc"], ["'../../etc'", "not a Hugging Face model id"]),
    "probe_with_space": ({"probe": "my probe"}, ["--model", "acme/x"], ["probe 'my probe'", "file name"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(PUBLISH_REFUSALS))
def test_publish_refuses_an_invalid_report_before_any_request(case, hub, home, demo_report, tmp_path):
    change, extra, fragments = PUBLISH_REFUSALS[case]
    report_file = _write(tmp_path / "report.json", {**demo_report, **change})
    one_error(run(["publish", str(report_file), "--repo", REPO, *extra], home, hub, HF_TOKEN=TOKEN),
              [str(report_file), *fragments])
    assert hub.requests == [] and hub.commits == []


@pytest.mark.slow
def test_publish_refuses_a_file_that_is_not_json(hub, home, tmp_path):
    report_file = tmp_path / "report.json"
    report_file.write_text("{oops", encoding="utf-8")
    one_error(run(["publish", str(report_file), "--repo", REPO], home, hub, HF_TOKEN=TOKEN),
              [f"report file {report_file}", "not valid JSON"])
    one_error(run(["publish", str(tmp_path / "missing.json"), "--repo", REPO], home, hub, HF_TOKEN=TOKEN),
              ["missing.json", "no such file"])
    assert hub.requests == []


@pytest.mark.slow
def test_publish_needs_a_token(hub, home, demo_report, tmp_path):
    report_file = _write(tmp_path / "report.json", as_model(demo_report, "acme/x"))
    one_error(run(["publish", str(report_file), "--repo", REPO], home, hub), ["needs a Hugging Face token", "HF_TOKEN"])
    assert hub.requests == []


@pytest.mark.slow
def test_publish_with_a_rejected_token(hub, home, demo_report, tmp_path):
    report_file = _write(tmp_path / "report.json", as_model(demo_report, "acme/x"))
    one_error(run(["publish", str(report_file), "--repo", REPO], home, hub, HF_TOKEN="hf_wrong"),
              ["rejected the token", "HTTP 401", "HF_TOKEN"])
    assert hub.commits == []


@pytest.mark.slow
def test_publish_to_a_missing_repository(hub, home, demo_report, tmp_path):
    report_file = _write(tmp_path / "report.json", as_model(demo_report, "acme/x"))
    one_error(run(["publish", str(report_file), "--repo", "acme/nope"], home, hub, HF_TOKEN=TOKEN),
              ["dataset acme/nope not found", "--repo"])


@pytest.mark.slow
def test_publish_while_offline(hub, home, demo_report, tmp_path):
    report_file = _write(tmp_path / "report.json", as_model(demo_report, "acme/x"))
    one_error(run(["publish", str(report_file), "--repo", REPO], home, hub, HF_TOKEN=TOKEN, HF_HUB_OFFLINE="1"),
              ["HF_HUB_OFFLINE is set", "publishing needs the network"])
    assert hub.requests == []


# ------------------------------------------------------------------------------------- import cost

PRINT_HEAVY_IMPORTS = """
import atexit, sys
atexit.register(lambda: print("HEAVY:" + ",".join(m for m in ("torch", "transformers") if m in sys.modules)))
sys.argv[0] = "neuro-scan"
from neuro_scan.cli import main
main()
"""


@pytest.mark.slow
def test_fast_commands_never_import_torch_or_transformers(hub, home, demo_report, tmp_path):
    report_file = _write(tmp_path / "report.json", as_model(demo_report, "acme/x"))
    commands = {
        "fetch --help": ["fetch", "--help"],
        "fetch": ["fetch", "--model", "tiny-demo", "--probe", "arith", "--repo", REPO, "-o", str(tmp_path / "a.json")],
        "fetch (reference format)": ["fetch", "--model", "ref-model", "--probe", "math", "--repo", REPO,
                                     "-o", str(tmp_path / "b.json")],
        "fetch --list": ["fetch", "--list", "--repo", REPO],
        "publish": ["publish", str(report_file), "--repo", REPO],
        "probes": ["probes"],
        "compare": ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "-o", str(tmp_path / "c")],
    }
    def heavy_imports(args: list[str]) -> str:
        proc = subprocess.run([sys.executable, "-c", PRINT_HEAVY_IMPORTS, *args], capture_output=True, text=True,
                              env=_env(home, hub, HF_TOKEN=TOKEN), cwd=home, timeout=300)
        assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
        return proc.stdout.splitlines()[-1]

    for name, args in commands.items():
        assert heavy_imports(args) == "HEAVY:", f"`neuro-scan {name}` imported torch or transformers"
    assert len(hub.commits) == 1
    # the check can fail: a command that loads a model imports both
    assert heavy_imports(["ablate", "--model", "demo", "--probe", "arith", "--max-samples", "2",
                          "-o", str(tmp_path / "scan")]) == "HEAVY:torch,transformers"


# ------------------------------------------------------------------------------ layout and validation


def test_report_path_and_matching():
    assert report_path("Qwen/Qwen2-7B", "math") == "reports/Qwen__Qwen2-7B/math.json"
    models = ["Qwen/Qwen2-7B", "Qwen/Qwen2-7B-Instruct", "a/Mini", "b/mini", "gpt2"]
    assert match_models("Qwen/Qwen2-7B", models) == ["Qwen/Qwen2-7B"]
    assert match_models("qwen2-7b", models) == ["Qwen/Qwen2-7B"]
    assert match_models("qwen/QWEN2-7B", models) == ["Qwen/Qwen2-7B"]
    assert match_models("mini", models) == ["a/Mini", "b/mini"]
    assert match_models("GPT2", models) == ["gpt2"]
    assert match_models("other/qwen2-7b", models) == []
    assert match_models("qwen2", models) == []


def test_index_replaces_the_entry_of_the_same_model_and_probe():
    def entry(model, probe, layers=4):
        return IndexEntry(model, probe, report_path(model, probe), layers, None, None, REFERENCE)

    index = HubIndex((entry("b/x", "math"), entry("a/y", "eq")))
    added, replaced = index.with_entry(entry("a/y", "math"))
    assert not replaced and [(e.model, e.probe) for e in added.entries] == [("a/y", "eq"), ("a/y", "math"), ("b/x", "math")]
    updated, replaced = added.with_entry(entry("b/x", "math", layers=8))
    assert replaced and len(updated.entries) == 3 and updated.find("b/x", "math").layers == 8
    assert HubIndex.parse(json.dumps(updated.to_json()), "index.json") == updated


def test_validator_accepts_ours_and_the_reference_format(demo_report):
    from neuro_scan.report.map import FORMAT as REPORT_FORMAT

    assert REPORT_FORMAT in READABLE_FORMATS  # what `map` writes, `fetch`/`publish` read
    ours = validate_report(demo_report, "ours")
    assert ours.flavour == REPORT_FORMAT and ours.probe == "arith" and ours.total_layers == 4
    assert ours.tool_version == demo_report["tool"]["version"] and ours.created_at == demo_report["created_at"]
    assert [t.layer for t in ours.top_layers] == demo_report["top_important_layers"]
    reference = reference_format(demo_report)
    # the reference's leniencies: no probe, a NaN delta, labels and rows for some layers only
    del reference["probe"]
    reference["ablation_results"] = reference["ablation_results"][:3]
    reference["ablation_results"][1]["score_delta"] = math.nan
    reference["layer_labels"] = {"0": "early_processing", "2": "reasoning", "3": "reasoning"}
    info = validate_report(reference, "reference")
    assert info.flavour == REFERENCE and info.probe is None and info.made_by == "the reference tool"
    assert info.label_runs() == [(0, 0, "early_processing"), (2, 3, "reasoning")]
    assert info.top_layers[1].score_delta is None  # NaN is no number to print


INVALID = {
    # id: (change to the report (None: remove the key), fragment)
    "list": ("whole", "top level is a JSON list"),
    "newer_format": ({"format": "neuro-scan-report/2"}, "'neuro-scan-report/2' is not one this neuro-scan reads"),
    "foreign_format": ({"format": "something-else"}, "not a neuro-scan report format"),
    "no_model": ({"model": None}, "'model' is missing"),
    "empty_model": ({"model": ""}, "'model' must be a non-empty string"),
    "no_probe_ours": ({"probe": None}, "'probe' is missing"),
    "layers_string": ({"total_layers": "4"}, "'total_layers' must be a positive integer"),
    "layers_bool": ({"total_layers": True}, "'total_layers' must be a positive integer"),
    "rows_missing": ({"ablation_results": None}, "'ablation_results' must be a non-empty list"),
    "row_not_object": ({"ablation_results": [1, 2]}, "ablation_results[0] is a number"),
    "row_layer_out_of_range": ("row_layer", "'layer_idx' must be a layer index 0..3, got 7"),
    "row_without_delta": ("row_delta", "ablation_results[2] has no 'score_delta'"),
    "row_twice": ("row_twice", "layer 0 appears twice"),
    "rows_incomplete_ours": ("rows_short", "no row for layer(s) [3]"),
    "labels_missing": ({"layer_labels": None}, "'layer_labels' must be an object"),
    "labels_string": ({"layer_labels": "reasoning"}, "it is a string"),
    "label_key_not_index": ({"layer_labels": {"first": "syntax"}}, "key 'first' is not a layer index string"),
    "label_not_string": ({"layer_labels": {"0": 3, "1": "a", "2": "b", "3": "c"}}, "'layer_labels'['0'] must be a string"),
    "labels_incomplete_ours": ({"layer_labels": {"0": "syntax"}}, "'layer_labels' has 1 entries for 4 layers"),
    "top_not_list": ({"top_important_layers": 3}, "'top_important_layers' must be a list"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_validator_names_the_problem(case, demo_report):
    change, fragment = INVALID[case]
    data = copy.deepcopy(demo_report)
    rows = data["ablation_results"]
    if change == "whole":
        data = [data]
    elif change == "row_layer":
        rows[1]["layer_idx"] = 7
    elif change == "row_delta":
        del rows[2]["score_delta"]
    elif change == "row_twice":
        rows[1]["layer_idx"] = 0
    elif change == "rows_short":
        data["ablation_results"] = rows[:3]
    else:
        for key, value in change.items():
            if value is None:
                data.pop(key)
            else:
                data[key] = value
    with pytest.raises(UsageError) as raised:
        validate_report(data, "report file r.json")
    message = str(raised.value)
    assert message.startswith("report file r.json is not a valid neuro-scan report: ") and fragment in message, message
