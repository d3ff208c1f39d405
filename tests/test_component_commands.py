"""`ablate --granularity/--ablation` and `attribute` through the CLI: the registered commands give
the numbers an independent engine run gives, and bad choices are one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuro_scan.backend import open_backend
from neuro_scan.backend.base import Target
from neuro_scan.engine import Engine
from neuro_scan.probes import load_builtin


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_ablate_by_sublayer_equals_engine_runs_with_each_block_removed(cli, tmp_path, ablation):
    result = cli(["ablate", "--model", "demo", "--probe", "arith", "--granularity", "sublayer", "--ablation", ablation,
                  "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "components.json").read_text())
    assert report["command"] == "ablate" and report["granularity"] == "sublayer" and report["ablation"] == ablation
    rows = {row["component"]: row["damage"] for row in report["components"]}
    assert len(rows) == 8  # 4 layers x (attention, MLP)
    engine = Engine(open_backend("demo", device="cpu"), load_builtin("arith"))
    targets = [Target(layer, part) for layer in range(4) for part in ("attention", "mlp")]
    for target, scores in zip(targets, engine.ablation_scan([frozenset({t}) for t in targets], ablation)):
        expected = float(np.mean(engine.baseline.answer_logprob - scores.answer_logprob))
        assert rows[str(target)] == pytest.approx(expected, abs=1e-5)


def test_attribute_writes_estimates_and_their_verification(cli, tmp_path):
    result = cli(["attribute", "--model", "demo", "--probe", "arith", "--verify-top-k", "5", "--verify-sample", "3",
                  "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "attribution.json").is_file() and (tmp_path / "attribution.csv").is_file()
    assert "Spearman" in result.output


@pytest.mark.parametrize(("args", "option"), [(["--granularity", "neuron"], "--granularity"),
                                              (["--ablation", "resample"], "--ablation")])
def test_bad_choices_are_one_line_errors(cli, tmp_path, args, option):
    result = cli(["ablate", "--model", "demo", "--probe", "arith", *args, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and option in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
