"""Bad input through the real CLI: exit code 2, one `error:` line naming the culprit, no traceback, nothing written.

Most cases run in-process with ``typer.testing.CliRunner``; where input must be rejected before
the model is loaded, ``load_model`` is replaced by a function that fails the test. Cases that depend
on environment variables read at import time (``HF_HUB_OFFLINE``), a sample of the probe-before-model
ordering checks and the positive controls run ``neuro-scan`` in a subprocess with HF_HUB_OFFLINE=1
and an empty HF_HOME, so nothing here can ever reach the network. Positive controls on a tiny local llama keep the tests honest: the
same command lines with good input must succeed and write the reports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neuro_scan.cli import app

COMMANDS = ["map", "ablate"]
HUB_ID = "someorg/some-model"  # a Hub id: loading it offline fails, but only after every cheap check


# ---------------------------------------------------------------------------------------- helpers


def _offline_env(tmp_path: Path) -> dict[str, str]:
    hf_home = tmp_path / "hf_home"
    hf_home.mkdir(exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(hf_home), NO_COLOR="1", COLUMNS="200")
    env.pop("HF_HUB_CACHE", None)
    env.pop("TRANSFORMERS_CACHE", None)
    return env


def cli_command() -> list[str]:
    exe = shutil.which("neuro-scan")
    return [exe] if exe else [sys.executable, "-m", "neuro_scan.cli"]


def run_subprocess(args: list[str], tmp_path: Path, timeout: float = 300) -> tuple[int, str, str]:
    proc = subprocess.run([*cli_command(), *args], capture_output=True, text=True, cwd=tmp_path,
                          env=_offline_env(tmp_path), timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def run_inprocess(args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # an exception escaping the CLI is exactly what these tests forbid; show it
        import traceback

        tb = "".join(traceback.format_exception(result.exception))
        return result.exit_code, result.stdout, result.stderr + "\nTraceback (escaped exception):\n" + tb
    return result.exit_code, result.stdout, result.stderr


def assert_nothing_written(out_dir: Path) -> None:
    assert not out_dir.exists() or not any(out_dir.iterdir()), \
        f"output folder {out_dir} was written to: {sorted(p.name for p in out_dir.iterdir())}"


def assert_usage_error(rc: int, stdout: str, stderr: str, fragments: list[str], out_dir: Path | None,
                       forbidden: list[str] = ()) -> str:
    """Exit 2, one `error:` line on stderr holding every fragment, no traceback, nothing in out_dir."""
    shown = f"rc={rc}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    assert "Traceback" not in stdout + stderr, shown
    assert rc == 2, shown
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one line on stderr\n{shown}"
    line = lines[0]
    assert line.startswith("error:"), shown
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in the error line\n{shown}"
    for fragment in forbidden:
        assert fragment not in line, f"{fragment!r} should not be in the error line\n{shown}"
    assert stdout.strip() == "", f"nothing should go to stdout on an error\n{shown}"
    if out_dir is not None:
        assert_nothing_written(out_dir)
    return line


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ model errors


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_model_path(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess([command, "--model", "./does/not/exist", "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, ["--model", "./does/not/exist", "no such model folder or file"], out)


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_gguf_file(command, tmp_path):
    out = tmp_path / "out"
    missing = tmp_path / "nope.gguf"
    rc, stdout, stderr = run_inprocess([command, "--model", str(missing), "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, ["--model", str(missing), "does not exist"], out)


@pytest.mark.parametrize("command", COMMANDS)
def test_empty_folder_is_not_a_model(command, tmp_path):
    empty = tmp_path / "empty_model"
    empty.mkdir()
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess([command, "--model", str(empty), "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, ["--model", str(empty), "not a model folder", "config.json"], out)


@pytest.mark.parametrize("command", COMMANDS)
def test_file_is_not_a_model(command, tmp_path):
    not_a_model = tmp_path / "weights.bin"
    not_a_model.write_bytes(b"\x00\x01 definitely not a model")
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess([command, "--model", str(not_a_model), "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, ["--model", str(not_a_model), "is a file", "Hub id"], out)


@pytest.mark.parametrize("command", COMMANDS)
def test_folder_with_broken_config(command, tmp_path):
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess([command, "--model", str(broken), "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, ["--model", str(broken)], out)


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_hub_id_while_offline(command, tmp_path):
    out = tmp_path / "out"
    rc, stdout, stderr = run_subprocess([command, "--model", HUB_ID, "-o", str(out)], tmp_path)
    assert_usage_error(rc, stdout, stderr, ["--model", HUB_ID, "Hugging Face Hub", "HF_HUB_OFFLINE"], out)
    # HF_HOME pointed at an empty folder: nothing may have been downloaded or cached for the model
    assert not list((tmp_path / "hf_home").rglob("*some-model*"))


# ------------------------------------------------------------------------------------ probe errors

GOOD_SAMPLE = {"prompt": "Q: 1 + 1 =", "answer": " 2"}

BAD_PROBES = {
    # id: (file content (str = raw text, else JSON), fragments the message must name besides the file)
    "not_json": ("{this is not json", ["not valid JSON"]),
    "top_level_list": ([GOOD_SAMPLE], ["top level", "'name'", "'samples'"]),
    "sample_without_answer": ({"name": "p", "samples": [GOOD_SAMPLE, {"prompt": "Q: 2 + 2 ="}]},
                              ["sample 1", "'answer'"]),
    "probe_without_name": ({"samples": [GOOD_SAMPLE]}, ["'name'"]),
    "no_samples": ({"name": "p", "samples": []}, ["'samples'", "non-empty list"]),
    "samples_missing": ({"name": "p"}, ["'samples'", "non-empty list"]),
    "answer_not_in_choices": ({"name": "p", "samples": [{"prompt": "Q: sky?", "answer": " red",
                                                         "choices": [" blue", " green"]}]},
                              ["sample 0", "' red'", "choices"]),
    "duplicate_choices": ({"name": "p", "samples": [GOOD_SAMPLE, {"prompt": "Q?", "answer": " a",
                                                                  "choices": [" a", " a"]}]},
                          ["sample 1", "'choices'", "duplicates"]),
    "unknown_scoring": ({"name": "p", "scoring": "logits", "samples": [GOOD_SAMPLE]}, ["'scoring'", "digits"]),
    "digits_answer_out_of_range": ({"name": "d", "scoring": "digits",
                                    "samples": [{"prompt": "Rate it.\nAnswer: ", "correct_answer": 7},
                                                {"prompt": "Rate it.\nAnswer: ", "correct_answer": 12}]},
                                   ["sample 1", "'correct_answer'", "0-9"]),
    "digits_answer_missing": ({"name": "d", "scoring": "digits", "samples": [{"prompt": "Rate it.\nAnswer: "}]},
                              ["sample 0", "'correct_answer'", "0-9"]),
}


def _write_probe(tmp_path: Path, case: str) -> Path:
    content, _ = BAD_PROBES[case]
    path = tmp_path / f"{case}.json"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        write_json(path, content)
    return path


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", sorted(BAD_PROBES))
def test_bad_custom_probe_fails_before_model_load(command, case, tmp_path, no_model_loading):
    """A bad probe file is reported (file + what is wrong) before the model would be loaded."""
    probe_file = _write_probe(tmp_path, case)
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess([command, "--model", HUB_ID, "--custom-probe", str(probe_file),
                                        "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, ["probe file", str(probe_file), *BAD_PROBES[case][1]], out,
                       forbidden=["--model", HUB_ID])


@pytest.mark.slow
@pytest.mark.parametrize(("command", "case"), [("map", "not_json"), ("ablate", "sample_without_answer"),
                                               ("map", "probe_without_name"), ("ablate", "no_samples"),
                                               ("map", "answer_not_in_choices"),
                                               ("ablate", "digits_answer_out_of_range")])
def test_bad_custom_probe_wins_over_offline_hub_model(command, case, tmp_path):
    """Real process, HF_HUB_OFFLINE=1: loading the Hub id would fail with a --model error, so an error
    about the probe proves the probe was validated first."""
    probe_file = _write_probe(tmp_path, case)
    out = tmp_path / "out"
    rc, stdout, stderr = run_subprocess([command, "--model", HUB_ID, "--custom-probe", str(probe_file),
                                         "-o", str(out)], tmp_path)
    assert_usage_error(rc, stdout, stderr, ["probe file", str(probe_file), *BAD_PROBES[case][1]], out,
                       forbidden=["--model", HUB_ID])


@pytest.mark.parametrize("case", ["sample_without_answer", "digits_answer_out_of_range"])
def test_bad_probe_file_via_probe_option(case, tmp_path):
    """`--probe FILE.json` takes the same validation path as --custom-probe."""
    probe_file = _write_probe(tmp_path, case)
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess(["ablate", "--model", "./does/not/exist", "--probe", str(probe_file),
                                        "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, [str(probe_file), *BAD_PROBES[case][1]], out, forbidden=["--model"])


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_custom_probe_file(command, tmp_path, no_model_loading):
    missing = tmp_path / "nope.json"
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess([command, "--model", HUB_ID, "--custom-probe", str(missing),
                                        "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, [str(missing), "no such file"], out, forbidden=["--model"])


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_probe_name(command, tmp_path, no_model_loading):
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess([command, "--model", HUB_ID, "--probe", "nope", "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, ["--probe", "'nope'", "math", "eq", "json", "--custom-probe"], out,
                       forbidden=["--model"])


def test_error_text_with_markup_like_brackets_is_printed_verbatim(tmp_path, no_model_loading):
    probe_file = write_json(tmp_path / "brackets.json",
                            {"name": "p", "samples": [{"prompt": "Q?", "answer": "[/b]", "choices": [" a"]}]})
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess(["ablate", "--model", HUB_ID, "--custom-probe", str(probe_file),
                                        "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, [str(probe_file), "sample 0", "'[/b]'", "choices"], out)


def test_digits_probe_with_non_string_suffix(tmp_path, no_model_loading):
    probe_file = write_json(tmp_path / "suffix.json",
                            {"name": "d", "scoring": "digits",
                             "samples": [{"prompt": "Rate it.", "scoring_suffix": 5, "correct_answer": 3}]})
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess(["ablate", "--model", HUB_ID, "--custom-probe", str(probe_file),
                                        "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, [str(probe_file), "sample 0", "'scoring_suffix'"], out)


# ----------------------------------------------------------------------------------- option errors

OPTION_ERRORS = {
    # id: (extra args, fragments)
    "top_k_0": (["--top-k", "0"], ["--top-k", ">= 1", "got 0"]),
    "batch_size_0": (["--batch-size", "0"], ["--batch-size", ">= 1", "got 0"]),
    "batch_size_negative": (["--batch-size", "-3"], ["--batch-size", ">= 1", "got -3"]),
    "max_samples_0": (["--max-samples", "0"], ["--max-samples", ">= 1", "got 0"]),
    "backend_exllamav2": (["--backend", "exllamav2"], ["--backend", "exllamav2", "not available", "transformers"]),
    "backend_foo": (["--backend", "foo"], ["--backend", "'foo'", "transformers", "exllamav2"]),
    "dtype_float8": (["--dtype", "float8"], ["--dtype", "'float8'", "auto", "float32", "bfloat16", "float16"]),
    "device_tpu": (["--device", "tpu"], ["--device", "'tpu'", "auto", "cpu", "cuda", "mps"]),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", sorted(OPTION_ERRORS))
def test_bad_option_with_a_valid_model(command, case, tiny_model_folder, tmp_path):
    """The model and probe are fine: the bad option alone must stop the run, before anything is written."""
    extra, fragments = OPTION_ERRORS[case]
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess([command, "--model", str(tiny_model_folder), "--max-samples", "2",
                                        "-o", str(out), *extra])
    assert_usage_error(rc, stdout, stderr, fragments, out)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", ["top_k_0", "batch_size_negative", "max_samples_0", "backend_foo", "dtype_float8"])
def test_cheap_option_errors_win_over_model_errors(command, case, tmp_path, no_model_loading):
    """Options that need no model are checked first: the Hub id is never loaded."""
    extra, fragments = OPTION_ERRORS[case]
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess([command, "--model", HUB_ID, "-o", str(out), *extra])
    assert_usage_error(rc, stdout, stderr, fragments, out, forbidden=[HUB_ID])


@pytest.mark.parametrize("command", COMMANDS)
def test_output_path_is_an_existing_file(command, tiny_model_folder, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("keep me\n", encoding="utf-8")
    rc, stdout, stderr = run_inprocess([command, "--model", str(tiny_model_folder), "--max-samples", "2",
                                        "-o", str(target)])
    assert_usage_error(rc, stdout, stderr, ["--output", str(target), "is a file", "folder"], None)
    assert target.read_text(encoding="utf-8") == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]


def test_map_tuned_lens_missing_file(tiny_model_folder, tmp_path, no_model_loading):
    out = tmp_path / "out"
    missing = tmp_path / "lens.safetensors"
    rc, stdout, stderr = run_inprocess(["map", "--model", str(tiny_model_folder), "--tuned-lens", str(missing),
                                        "-o", str(out)])
    assert_usage_error(rc, stdout, stderr, ["--tuned-lens", str(missing), "no such file"], out)


# -------------------------------------------------------------------------------- positive controls

OUR_PROBE = {
    "name": "tiny_ours",
    "description": "two exact-continuation samples and one multiple choice",
    "samples": [
        {"prompt": "Q: 1 + 1 =", "answer": " 2", "category": "arithmetic"},
        {"prompt": "Q: 2 + 3 =", "answer": " 5", "category": "arithmetic"},
        {"prompt": "Q: sky colour?", "answer": " blue", "choices": [" blue", " red"], "category": "mc"},
    ],
}

DIGITS_PROBE = {
    "name": "tiny_digits",
    "scoring": "digits",
    "samples": [
        {"prompt": "How happy is this? I won the lottery!\nAnswer: ", "correct_answer": 7},
        {"prompt": "How happy is this? I lost my keys.\nAnswer: ", "correct_answer": 2},
        {"prompt": "How happy is this? A normal day.\nAnswer: ", "correct_answer": 5},
    ],
}


def _check_ablation_outputs(out: Path) -> dict:
    for name in ("ablation.json", "ablation.csv", "ablation.html"):
        assert (out / name).is_file(), f"{name} missing; folder holds {sorted(p.name for p in out.iterdir())}"
    report = json.loads((out / "ablation.json").read_text(encoding="utf-8"))
    assert report["total_layers"] == 4
    assert len(report["ablation_results"]) == 4
    assert sorted(r["layer_idx"] for r in report["ablation_results"]) == [0, 1, 2, 3]
    assert report["sample_count"] == 2
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")], "temp files left behind"
    return report


@pytest.mark.slow
@pytest.mark.parametrize("probe", [OUR_PROBE, DIGITS_PROBE], ids=["our_format", "digits_format"])
def test_ablate_with_valid_custom_probe_succeeds(probe, tiny_model_folder, tmp_path):
    probe_file = write_json(tmp_path / f"{probe['name']}.json", probe)
    out = tmp_path / "out"
    rc, stdout, stderr = run_subprocess(["ablate", "--model", str(tiny_model_folder), "--custom-probe", str(probe_file),
                                         "--max-samples", "2", "-o", str(out)], tmp_path)
    assert rc == 0, f"rc={rc}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    assert "Traceback" not in stdout + stderr
    assert "error:" not in stderr
    report = _check_ablation_outputs(out)
    assert report["probe"] == probe["name"]
    assert "wrote" in stdout


def test_ablate_with_builtin_probe_succeeds_in_process(tiny_model_folder, tmp_path):
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess(["ablate", "--model", str(tiny_model_folder), "--max-samples", "2",
                                        "--batch-size", "3", "-o", str(out)])
    assert rc == 0, f"rc={rc}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    report = _check_ablation_outputs(out)
    assert report["probe"] == "math"


def test_map_with_valid_probe_succeeds(tiny_model_folder, tmp_path):
    probe_file = write_json(tmp_path / "ours.json", OUR_PROBE)
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess(["map", "--model", str(tiny_model_folder), "--custom-probe", str(probe_file),
                                        "--max-samples", "2", "-o", str(out)])
    assert rc == 0, f"rc={rc}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["total_layers"] == 4
    assert len(report["ablation_results"]) == 4
    assert (out / "logit_lens.html").is_file()


# ------------------------------------------------------------------------------- probes and version


def test_probes_lists_builtins():
    rc, stdout, stderr = run_inprocess(["probes"])
    assert rc == 0, stderr
    for name in ("math", "eq", "json"):
        assert any(line.split("│")[1].strip() == name for line in stdout.splitlines() if line.count("│") > 2), \
            f"{name} not listed:\n{stdout}"


def test_probes_lists_builtins_subprocess(tmp_path):
    rc, stdout, stderr = run_subprocess(["probes"], tmp_path)
    assert rc == 0, stderr
    assert "Traceback" not in stderr
    for name in ("math", "eq", "json"):
        assert name in stdout


def test_version_prints_installed_version(tmp_path):
    expected = version("neuro-scan")
    rc, stdout, stderr = run_inprocess(["version"])
    assert rc == 0, stderr
    assert stdout.strip() == f"neuro-scan {expected}"
    rc, stdout, stderr = run_subprocess(["version"], tmp_path)
    assert rc == 0, stderr
    assert stdout.strip() == f"neuro-scan {expected}"


# ------------------------------------------------------------- placement, cache and resume options (issue 15)

SCALE_ERRORS = {
    "device_map_unknown": (["--device-map", "everywhere"], ["--device-map", "'everywhere'", "auto", "sequential"]),
    "device_map_with_device": (["--device-map", "auto", "--device", "cpu"], ["--device-map", "leave --device at auto"]),
    "max_memory_without_map": (["--max-memory", "cpu=1GB"], ["--max-memory", "only used with --device-map"]),
    "max_memory_bad_size": (["--device-map", "auto", "--max-memory", "cpu=lots"], ["--max-memory cpu", "'lots'"]),
    "max_memory_bad_device": (["--device-map", "auto", "--max-memory", "gpu=1GB"], ["--max-memory", "'gpu'"]),
    "offload_without_map": (["--offload-folder", "off"], ["--offload-folder", "only used with --device-map"]),
    "cache_memory_bad": (["--cache-memory", "8PB"], ["--cache-memory", "'8PB'", "is not a size"]),
    "cache_memory_negative": (["--cache-memory", "-1GB"], ["--cache-memory", "'-1GB'"]),
    "resume_nothing": (["--resume"], ["--resume", ".neuro-scan-journal.jsonl", "no interrupted scan"]),
}


@pytest.mark.parametrize("command", [*COMMANDS, "circuit", "prompt-repeat", "cross-probe", "attribute"])
@pytest.mark.parametrize("case", sorted(SCALE_ERRORS))
def test_bad_scale_options_fail_before_the_model_loads(command, case, tmp_path, no_model_loading):
    extra, fragments = SCALE_ERRORS[case]
    out = tmp_path / "out"
    rc, stdout, stderr = run_inprocess([command, "--model", HUB_ID, "-o", str(out), *extra])
    assert_usage_error(rc, stdout, stderr, fragments, out, forbidden=[HUB_ID])
