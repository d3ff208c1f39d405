"""The attention phase holds one layer's weights for one block of rows, and a phase that fails
leaves every other phase's results written.

The memory cases run `neuro-scan map` in a child process whose address space is capped at its
size after the imports plus HEADROOM_MIB (tests/limited_memory.py), on the demo model with its
context stretched from 64 to 8,192 positions (rotary positions compute at any length: the
outputs past 64 mean nothing, the memory is real). It has 4 layers and 4 heads and reads
characters, so a prompt of T characters costs 4 x T^2 x 4 bytes of attention weights per layer
and row. Measured on the 2-core development machine (OMP_NUM_THREADS=1): the child is about
800 MB after its imports; `map` on two 3,000-token prompts peaks about 390 MB above that (the
ablation about 260 MB; one layer's weights for one row are 144 MB, and the eager softmax briefly
holds the scores beside them). Holding every layer at once, as the attention phase did, needs
4 layers x 2 rows x 144 MB = 1.15 GB for the weights alone: more than the 768 MiB headroom.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from neuro_scan import events
from neuro_scan.analysis import lens as lens_module
from neuro_scan.analysis.attention import attention_blocks, attention_bytes, rows_per_forward, run_attention
from neuro_scan.backend.loading import demo_model_dir
from neuro_scan.commands import MapOptions
from neuro_scan.engine import Engine
from neuro_scan.probes import Probe, Sample
from neuro_scan.runner import run
from tiny_models import make_backend

HEADROOM_MIB = 768
PROBE = Probe("tiny", "", (Sample("abcdefg", "h"), Sample("hello wor", "ld"), Sample("xyz", "w"),
                           Sample("a longer prompt than the others", "!")))
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


def run_map(options: MapOptions, sink: events.EventSink = events.ignore) -> tuple[dict, list]:
    outcome = run("map", options, sink)
    return outcome.document, outcome.written


def long_probe(folder: Path, tokens: int, rows: int) -> Path:
    """``rows`` prompts of ``tokens`` characters the demo tokenizer knows, each a different rotation."""
    text = ("the cat sat on the mat, 12+34=46. " * (tokens // 30 + 1))[:tokens]
    path = folder / f"long_{tokens}x{rows}.json"
    samples = [{"prompt": text[i:] + text[:i], "answer": "x"} for i in range(rows)]
    path.write_text(json.dumps({"name": "long", "samples": samples}))
    return path


@pytest.fixture(scope="module")
def long_demo(tmp_path_factory) -> Path:
    """The demo model's folder with its context stretched to 8,192 positions."""
    folder = tmp_path_factory.mktemp("long_demo")
    shutil.copytree(demo_model_dir(), folder, dirs_exist_ok=True)
    for name, key in (("config.json", "max_position_embeddings"), ("tokenizer_config.json", "model_max_length")):
        settings = json.loads((folder / name).read_text())
        settings[key] = 8192
        (folder / name).write_text(json.dumps(settings))
    return folder


def limited(model: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
    script = Path(__file__).parent / "limited_memory.py"
    return subprocess.run([sys.executable, str(script), str(HEADROOM_MIB), str(model), *args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_row_blocks_fit_the_budget_down_to_one_row():
    heads, width = 4, 100
    assert rows_per_forward(heads, width, attention_bytes(3, heads, width)) == 3
    assert rows_per_forward(heads, width, attention_bytes(3, heads, width) - 1) == 2
    assert rows_per_forward(heads, width, 1) == 1  # one row even when it alone exceeds the budget
    assert attention_bytes(1, 4, 20_001) > 6.4e9  # the 20,000-character prompt on the demo model


def test_entropies_do_not_depend_on_the_row_blocks():
    backend = make_backend("llama")
    engine = Engine(backend, PROBE)
    whole = run_attention(engine)
    advanced = []
    one_row = run_attention(engine, advanced.append, budget=1)
    assert len(attention_blocks(engine)) == 1 and len(attention_blocks(engine, budget=1)) == len(PROBE.samples)
    assert advanced == [1] * len(PROBE.samples)
    for field in ("answer_bits", "answer_normalized", "all_positions_bits", "all_positions_normalized"):
        np.testing.assert_allclose(getattr(one_row, field), getattr(whole, field), atol=1e-5)


def test_each_layer_is_reduced_and_dropped_before_the_next_layer_runs():
    backend = make_backend("llama")
    batch = backend.make_batch([list(range(5, 30)), list(range(7, 20))])
    alive_at_next_layer, previous = [], []

    def reduce(layer: int, weights: torch.Tensor) -> float:
        alive_at_next_layer.extend(ref() is not None for ref in previous)
        previous[:] = [weakref.ref(weights)]
        return float(weights.sum())

    sums = backend.reduce_attention(batch, reduce)
    assert alive_at_next_layer == [False] * (backend.num_layers - 1)
    # the reduce saw each layer's own weights, in order
    assert sums == pytest.approx([float(w.sum()) for w in backend.attention_weights(batch)])
    assert backend.model.config._attn_implementation == "sdpa"


@pytest.mark.slow
@linux_only
def test_map_with_long_prompts_fits_where_every_layer_at_once_did_not(tmp_path, long_demo):
    probe = long_probe(tmp_path, 3000, 2)
    before = limited(long_demo, "all-layers", str(probe))  # the attention phase as it was
    assert before.returncode != 0 and "memory" in before.stderr.lower(), before.stdout + before.stderr[-2000:]

    result = limited(long_demo, "neuro-scan", "map", "--model", str(long_demo), "--probe", str(probe), "--device",
                     "cpu", "--output", str(tmp_path / "map"))
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads((tmp_path / "map" / "report.json").read_text())
    assert {name: phase["status"] for name, phase in report["phases"].items()} == {
        "baseline": "done", "ablation": "done", "lens": "done", "attention": "done"}
    entropy = np.array(report["attention_entropy"])
    assert entropy.shape == (4, 4) and (entropy > 0).all() and (entropy <= np.log2(3002)).all()


@pytest.mark.slow
@linux_only
def test_attention_out_of_memory_names_the_phase_and_writes_the_rest(tmp_path, long_demo):
    """One 6,000-token row needs 576 MB of weights for one layer and as much again for its scores:
    past the headroom, while the ablation (SDPA, no weights) peaks about 270 MB above the imports."""
    out = tmp_path / "map"
    result = limited(long_demo, "neuro-scan", "map", "--model", str(long_demo), "--probe",
                     str(long_probe(tmp_path, 6000, 1)), "--device", "cpu", "--output", str(out))
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert "warning: the attention phase failed" in result.stderr
    report = json.loads((out / "report.json").read_text())
    attention = report["phases"]["attention"]
    assert attention["status"] == "failed" and "memory" in attention["error"].lower()
    assert "GiB" in attention["error"]  # how much one layer's weights take
    assert report["phases"]["lens"] == {"status": "done"} and len(report["ablation_results"]) == 4
    assert report["attention_entropy"] == [] and report["attention"] is None
    assert len(report["logit_lens_trajectory"]) == 1 and len(report["layer_labels"]) == 4
    assert not (out / "attention.html").exists() and (out / "logit_lens.html").exists()
    assert "The attention phase failed" in (out / "index.html").read_text()


def test_report_is_on_disk_before_the_attention_phase_starts(tmp_path):
    seen = {}

    def sink(event: events.Event) -> None:
        if isinstance(event, events.PhaseStarted) and event.phase == "attention":
            seen.update(json.loads((tmp_path / "report.json").read_text()))

    final, _ = run_map(MapOptions(model="demo", probe="arith", device="cpu", output=str(tmp_path)), sink)
    assert seen["phases"]["lens"]["status"] == "done" and seen["phases"]["attention"]["status"] == "pending"
    assert seen["ablation_results"] == final["ablation_results"]
    assert seen["logit_lens"] == final["logit_lens"] and seen["attention_entropy"] == []


def test_a_failed_lens_phase_leaves_the_other_phases_in_the_report(tmp_path, monkeypatch):
    def fail(*_args, **_kwargs):
        raise RuntimeError("lens went wrong\nsecond line")

    monkeypatch.setattr(lens_module, "run_lens", fail)
    report, written = run_map(MapOptions(model="demo", probe="arith", device="cpu", output=str(tmp_path)))
    assert report["phases"]["lens"] == {"status": "failed", "error": "RuntimeError: lens went wrong second line"}
    assert report["phases"]["attention"] == {"status": "done"} and len(report["attention_entropy"]) == 4
    assert report["layer_labels"] == {str(i): "" for i in range(4)} and report["block_influence"] == []
    assert report["logit_lens"] is None and report["logit_lens_trajectory"] == []
    assert {p.name for p in written} >= {"report.json", "ablation.csv", "ablation.html", "attention.html", "index.html"}
    assert not {"logit_lens.html", "entropy_profile.html"} & {p.name for p in written}
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["phases"]["lens"]["status"] == "failed" and len(saved["ablation_results"]) == 4


def test_a_failed_attention_command_writes_its_report_and_exits_1(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from neuro_scan.analysis import attention as attention_module
    from neuro_scan.cli import app

    def fail(*_args, **_kwargs):
        raise MemoryError("no room")

    monkeypatch.setattr(attention_module, "run_attention", fail)
    result = CliRunner().invoke(app, ["attention", "--model", "demo", "--probe", "arith", "--output", str(tmp_path)])
    assert result.exit_code == 1 and "warning: the attention phase failed" in result.output
    report = json.loads((tmp_path / "attention.json").read_text())
    assert report["phases"]["attention"] == {"status": "failed", "error": "MemoryError: no room"}
    assert report["attention_entropy"] == [] and not (tmp_path / "attention.html").exists()
