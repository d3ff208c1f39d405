"""prompt-repeat: layer duplication through the engine equals a model whose module list holds the
block twice, duplicating nothing equals the baseline, repetition scores, the equivalence curve and
its verdicts, the CLI; and the experiment on SmolLM2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuro_scan.analysis.prompt_repeat import (Condition, Match, Repetition, default_block_sizes, duplication_blocks,
                                               repeated_probe, run_prompt_repeat)
from neuro_scan.backend.transformers import TransformersBackend
from neuro_scan.engine import Engine
from neuro_scan.scoring import Interval
from test_backend import duplicate_block
from test_engine import PROBE
from tiny_models import make_backend, tiny_tokenizer

BLOCKS = [(1, 3), (0, 4), (3, 4), (0, 1), (2, 3)]


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text", "gpt2"])
@pytest.mark.parametrize("batch_size", [2, 64])
def test_duplicated_block_equals_a_model_with_the_layers_repeated(model_type, batch_size):
    backend = make_backend(model_type)
    engine = Engine(backend, PROBE, batch_size=batch_size)
    scores = engine.repeat_scan(BLOCKS)
    for block, got in zip(BLOCKS, scores):
        grown = duplicate_block(backend.model, model_type, *block)
        expected = Engine(TransformersBackend(grown, tiny_tokenizer(), model_type), PROBE, batch_size=64).baseline
        np.testing.assert_allclose(got.answer_logprob, expected.answer_logprob, atol=1e-4)
        assert (got.correct == expected.correct).all()
        assert np.abs(got.answer_logprob - engine.baseline.answer_logprob).max() > 1e-3  # it changed something


def test_duplicating_zero_layers_equals_the_baseline():
    backend = make_backend("llama")
    engine = Engine(backend, PROBE, batch_size=3)
    for got in engine.repeat_scan([(k, k) for k in range(backend.num_layers + 1)]):
        np.testing.assert_allclose(got.answer_logprob, engine.baseline.answer_logprob, atol=1e-5)


def test_repeated_probe_and_the_default_grid():
    probe = repeated_probe(PROBE, 3)
    assert probe.samples[0].prompt == "abc abc abc" and probe.samples[0].answer == PROBE.samples[0].answer
    assert probe.samples[2].choices == PROBE.samples[2].choices and probe.name == PROBE.name
    assert repeated_probe(PROBE, 1).samples == PROBE.samples
    assert default_block_sizes(30) == [1, 2, 4, 8, 16][:4] and default_block_sizes(4) == [1, 2]
    assert default_block_sizes(1) == [1] and default_block_sizes(18) == [1, 2, 4, 8]
    assert duplication_blocks(4, [1, 3]) == [(0, 1), (1, 2), (2, 3), (3, 4), (0, 3), (1, 4)]


def interval(mean: float, low: float, high: float) -> Interval:
    return Interval(mean, low, high, 0.1)


@pytest.mark.parametrize("change, differences, verdict", [
    (interval(0.02, -0.1, 0.15), [interval(0.5, 0.2, 0.8)], "no_effect"),
    (interval(1.0, 0.6, 1.4), [interval(0.5, 0.2, 0.8), interval(0.1, -0.2, 0.4)], "matched"),
    (interval(-1.0, -1.4, -0.6), [interval(0.5, 0.2, 0.8), interval(-0.3, -0.5, -0.1)], "unlike_duplication"),
])
def test_verdicts(change, differences, verdict):
    matches = [Match(None, d) for d in differences]
    repetition = Repetition(2, Condition(0.0, 1.0, change), matches, [m for m in matches if m.indistinguishable])
    assert repetition.verdict == verdict


def test_equivalence_curve_on_a_tiny_model():
    backend = make_backend("llama")
    engine = Engine(backend, PROBE, batch_size=64)
    steps = []
    result = run_prompt_repeat(engine, counts=[1, 2, 3], block_sizes=[1, 2], seed=0, progress=steps.append)
    assert len(steps) == 3 + 7 and len(result.duplications) == 7
    once, twice, _ = result.repetitions
    assert once.condition.change.mean == 0.0 and once.verdict == "no_effect"
    expected = Engine(backend, repeated_probe(PROBE, 2), batch_size=64).baseline.answer_logprob
    assert twice.condition.score == pytest.approx(float(expected.mean()), abs=1e-5)
    assert twice.condition.change.mean == pytest.approx(float((expected - engine.baseline.answer_logprob).mean()), abs=1e-5)
    for repetition in result.repetitions:
        sizes = [abs(m.difference.mean) for m in repetition.best_matches]
        assert sizes == sorted(sizes) and len(sizes) == 3
        best = repetition.best_matches[0]
        assert best.difference.mean == pytest.approx(
            repetition.condition.change.mean - best.duplication.condition.change.mean, abs=1e-9)
        assert all(m.indistinguishable for m in repetition.indistinguishable)


def test_prompt_repeat_cli(cli, tmp_path):
    out = tmp_path / "out"
    result = cli(["prompt-repeat", "--model", "demo", "--probe", "facts", "--max-samples", "6",
                  "--repeat-counts", "1,2", "--dup-sizes", "1,3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "prompt_repeat.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert set(report["repeat_results"]) == {"1", "2"} and report["baseline_x1"] == report["repeat_results"]["1"]
    assert [(d["first"], d["stop"]) for d in report["duplications"]] == [(0, 1), (1, 2), (2, 3), (3, 4), (0, 3), (1, 4)]
    for repetition in report["repetitions"]:
        assert repetition["verdict"] in ("no_effect", "matched", "unlike_duplication")
        assert len(repetition["best_matches"]) == 3
        assert repetition["indistinguishable_count"] == len(repetition["indistinguishable"])
    assert "cdn.plot.ly" not in (out / "prompt_repeat.html").read_text()


@pytest.mark.parametrize("args, fragment", [
    (["--repeat-counts", "1,0"], "--repeat-counts: '1,0' is not a comma-separated list of whole numbers >= 1"),
    (["--repeat-counts", "2,2"], "--repeat-counts: '2,2' lists a number twice"),
    (["--dup-sizes", "two"], "--dup-sizes: 'two' is not a comma-separated list"),
])
def test_prompt_repeat_option_errors_come_before_loading(cli, no_model_loading, args, fragment, tmp_path):
    result = cli(["prompt-repeat", "--model", "demo", "-o", str(tmp_path / "out"), *args])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and fragment in lines[0], result.output


def test_block_larger_than_the_model_is_an_error(cli, tmp_path):
    result = cli(["prompt-repeat", "--model", "demo", "--dup-sizes", "1,5", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "--dup-sizes: a block of 5 layers does not fit in this model's 4 layers" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_prompt_repeat_on_smollm2(smollm2_backend):
    """The experiment on a real model: every count gets a verdict backed by intervals."""
    from neuro_scan.probes import load_probe_file
    from test_smollm2 import CAPITALS

    engine = Engine(smollm2_backend, load_probe_file(CAPITALS))
    result = run_prompt_repeat(engine, counts=[1, 2, 3], block_sizes=[1, 4], seed=0)
    assert len(result.duplications) == 30 + 27
    assert result.repetitions[0].verdict == "no_effect"
    for repetition in result.repetitions:
        best = repetition.best_matches[0]
        assert best.difference.low <= best.difference.mean <= best.difference.high
        assert repetition.verdict in ("no_effect", "matched", "unlike_duplication")
    # duplicating the first layer wrecks the model; a middle layer twice barely matters
    by_block = {(d.first, d.stop): d.condition.change for d in result.duplications}
    assert by_block[(0, 1)].mean < -1.0
    assert abs(by_block[(15, 16)].mean) < abs(by_block[(0, 1)].mean)
