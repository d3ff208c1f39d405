"""The Python API: docs/python-api.md's examples run as written, and give the CLI's numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

DOC = Path(__file__).parent.parent / "docs" / "python-api.md"


@pytest.mark.slow
def test_the_documented_examples_run_and_agree_with_the_written_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 3
    scope: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), scope)  # noqa: S102 - the documentation's own code
    written = json.loads((tmp_path / "results" / "demo-ablate" / "ablation.json").read_text())
    # the table of the run equals the file it wrote, layer by layer
    damage = scope["damage"]
    assert list(damage["layer"]) == [row["layer_idx"] for row in written["ablation_results"]]
    assert list(damage["damage"]) == pytest.approx([row["score_delta"] for row in written["ablation_results"]])
    # analysing a loaded session gives the same numbers as the command (same seed, same model)
    assert list(scope["ablation"].to_frame()["damage"]) == pytest.approx(list(damage["damage"]), abs=1e-9)
    assert scope["report"].total_layers == 4 and scope["report"].probe == "arith"
    assert len(scope["attention"].to_frame()) == 4 * 4  # layers x heads of the demo model


def test_unknown_options_name_the_known_ones():
    import neuro_scan

    with pytest.raises(TypeError, match="top_k"):
        neuro_scan.run("ablate", model="demo", topk=3)


def test_importing_the_package_loads_no_torch():
    import subprocess
    import sys

    code = "import sys, neuro_scan, neuro_scan.commands; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
