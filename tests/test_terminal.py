"""What the terminal shows: summaries that fit 80 columns (rendered at a fixed width, no cell cut),
numbers that never read -0.000, a significance column, the page to open at the end, and a bad
option reported before torch is imported."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from rich.console import Console

from neuro_scan.report import (
    ablation,
    attention,
    circuit,
    comparison,
    cross_probe,
    lens,
    prompt_repeat,
)
from neuro_scan.report.document import number

WIDTH = 80


def rendered(parts: list, width: int = WIDTH) -> str:
    """A summary as the CLI prints it, on a console of ``width`` columns."""
    console = Console(width=width, file=io.StringIO(), color_system=None, force_terminal=False)
    for part in parts:
        console.print(part, highlight=False)
    return console.file.getvalue()


def assert_fits(text: str) -> None:
    lines = text.splitlines()
    assert all(len(line) <= WIDTH for line in lines), "\n".join(line for line in lines if len(line) > WIDTH)
    assert "…" not in text, f"a cell was cut:\n{text}"


@pytest.fixture(scope="module")
def two_sample_map(cli, tmp_path_factory):
    """The demo on two samples: the longest cells (tiny damages with long intervals, the label
    semantic_processing) and a baseline of about -3e-6 nats."""
    folder = tmp_path_factory.mktemp("two")
    probe = folder / "two.json"
    probe.write_text(json.dumps({"name": "two", "samples": [{"prompt": "18+27=", "answer": "45."},
                                                            {"prompt": "91+85=", "answer": "176."}]}))
    result = cli(["map", "--model", "demo", "--custom-probe", str(probe), "--output", str(folder / "out")])
    assert result.exit_code == 0, result.output
    return result, json.loads((folder / "out" / "report.json").read_text(encoding="utf-8")), folder / "out"


def test_map_summary_fits_80_columns_with_a_significance_column(two_sample_map):
    _, report, _ = two_sample_map
    text = rendered(ablation.summary(report))
    assert_fits(text)
    labels = report["layer_labels"]
    assert "semantic_processing" in labels.values()
    header = next(line for line in text.splitlines() if line.startswith("layer"))
    assert header.split() == ["layer", "damage", "95%", "CI", "adj.", "p", "sig.", "acc.", "w/o", "label"]
    rows = {r["layer_idx"]: r for r in report["ablation_results"]}
    for line in text.splitlines():
        cells = line.split()
        if cells and cells[0].isdecimal() and int(cells[0]) in rows and len(cells) == 7:
            layer = int(cells[0])
            assert cells[4] == ("yes" if layer in report["top_important_layers"] else "no")
            assert cells[6] == labels[str(layer)]


def test_no_number_reads_minus_zero(two_sample_map):
    _, report, _ = two_sample_map
    assert -1e-4 < report["baseline"]["score"] < 0
    text = rendered(ablation.summary(report))
    assert "-0.000" not in text and "e-0" in text
    assert number(-2.1e-05) == "-2.1e-05" and number(0.0) == "0" and number(-0.0) == "0" and number(None) == "n/a"


def test_the_cli_ends_with_the_page_to_open(two_sample_map):
    result, _, out = two_sample_map
    assert result.stdout.rstrip().splitlines()[-1] == f"open {out / 'index.html'}"


def test_other_summaries_fit_80_columns(cli, tmp_path, two_sample_map):
    _, report, out = two_sample_map
    assert_fits(rendered(lens.summary(report)))
    assert_fits(rendered(attention.summary(report)))
    runs = {
        "ablate": (["--probe", "facts"], "ablation.json", ablation.summary),
        "circuit": (["--probe", "arith", "--max-samples", "12"], "circuit.json", circuit.summary),
        "prompt-repeat": (["--probe", "arith", "--max-samples", "12", "--repeat-counts", "1,2"], "prompt_repeat.json",
                          prompt_repeat.summary),
        "cross-probe": (["--probes", "arith,facts", "--max-samples", "12"], "cross_probe.json", cross_probe.summary),
    }
    for command, (args, name, summary) in runs.items():
        result = cli([command, "--model", "demo", *args, "--output", str(tmp_path / command)])
        assert result.exit_code == 0, result.output
        document = json.loads((tmp_path / command / name).read_text(encoding="utf-8"))
        text = rendered(summary(document))
        assert_fits(text)
        if command == "ablate":  # no labels in an ablation: no empty label column
            assert "label" not in text and "sig." in text
    result = cli(["compare", str(tmp_path / "ablate" / "ablation.json"), str(out / "report.json"),
                  "--output", str(tmp_path / "compare")])
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "compare" / "comparison.json").read_text(encoding="utf-8"))
    text = rendered(comparison.summary(document))
    assert_fits(text)
    assert "warning: the reports differ in probe" in " ".join(text.split())  # facts vs two: not comparable


# ---------------------------------------------------------------------------------- fast failure

FAIL_FAST = """
import sys
sys.argv = ["neuro-scan", *sys.argv[1:]]
from neuro_scan.cli import main
try:
    main()
except SystemExit as exit_:
    print(exit_.code, "torch" in sys.modules)
"""


@pytest.mark.parametrize("args", [
    ["map", "--model", "demo", "--top-k", "0"],
    ["ablate", "--model", "demo", "--batch-size", "0"],
    ["map", "--model", "demo", "--probe", "nope"],
    ["map", "--model", "demo", "--custom-probe", "does/not/exist.json"],
    ["logit-lens", "--model", "demo", "--top-tokens", "0"],
    ["circuit", "--model", "demo", "--strategy", "everything"],
])
def test_bad_options_fail_before_torch_is_imported(args, tmp_path):
    done = subprocess.run([sys.executable, "-c", FAIL_FAST, *args, "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
    assert len([line for line in done.stderr.splitlines() if line.strip()]) == 1 and "error:" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_transformers_bars_only_with_verbose(tmp_path):
    """transformers' own 'Loading weights' bar would interleave with ours: shown only with --verbose."""
    shown = {}
    # the in-process CLI of other tests sets TRANSFORMERS_VERBOSITY here; a user's own setting would win
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    for flag in ([], ["--verbose"]):
        done = subprocess.run([sys.executable, "-m", "neuro_scan.cli", "ablate", "--model", "demo", "--probe", "facts",
                               "--max-samples", "4", "--output", str(tmp_path / str(len(flag))), *flag],
                              capture_output=True, text=True, timeout=600, check=False, env=env)
        assert done.returncode == 0, done.stderr
        shown[bool(flag)] = "Loading weights" in done.stderr
    assert shown == {False: False, True: True}
