"""circuit: pair selection, interactions equal to naive pair ablations, significance, reuse of a
stored single-layer scan, and the CLI (tiny random models and the demo model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neuro_scan.analysis.ablation import ablation_result, run_ablation
from neuro_scan.analysis.circuit import (PairInteraction, layer_similarity, plan_pairs, run_circuit, stored_singles)
from neuro_scan.engine import Engine
from neuro_scan.errors import UsageError
from neuro_scan.scoring import Interval, SampleScores
from test_engine import PROBE, naive_answer_logprobs
from tiny_models import make_backend


def synthetic_singles(damage: list[float], samples: int = 6) -> tuple[SampleScores, object]:
    """A single-layer scan whose layer l does ``damage[l]`` nats of damage on every sample."""
    baseline = SampleScores(np.zeros(samples), np.ones(samples, dtype=bool))
    ablated = [SampleScores(np.full(samples, -d), np.ones(samples, dtype=bool)) for d in damage]
    return baseline, ablation_result(baseline, ablated, seed=0, seconds=0.0)


# --------------------------------------------------------------------------------- pair selection


def test_fast_pairs_are_top_k_and_neighbours():
    _, singles = synthetic_singles([0.1, 0.0, 3.0, 0.2, 0.0, 2.0, 0.0, 1.0])
    plan = plan_pairs("fast", singles, top_k=3)
    assert plan.candidates == [2, 5, 7]
    top = {(2, 5), (2, 7), (5, 7)}
    adjacent = {(1, 2), (2, 3), (4, 5), (5, 6), (6, 7)}
    assert set(plan.pairs) == top | adjacent
    assert all(plan.reasons[p] == "top-k" for p in top) and all(plan.reasons[p] == "adjacent" for p in adjacent)
    assert plan.pairs == sorted(plan.pairs) and all(i < j for i, j in plan.pairs)


def test_thorough_adds_the_most_similar_unpaired_layers():
    _, singles = synthetic_singles([0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0])
    similarity = np.eye(8)
    for other, value in ((0, 0.9), (6, 0.8), (7, 0.7), (1, 0.6), (2, 0.99), (4, 0.99)):
        similarity[3, other] = similarity[other, 3] = value
    plan = plan_pairs("thorough", singles, top_k=1, similarity=similarity)
    assert plan.candidates == [3]
    # neighbours 2 and 4 are already paired as adjacent: the next three most similar are 0, 6, 7
    assert {p for p, why in plan.reasons.items() if why == "similar"} == {(0, 3), (3, 6), (3, 7)}
    assert {p for p, why in plan.reasons.items() if why == "adjacent"} == {(2, 3), (3, 4)}


def test_exhaustive_is_every_pair_and_unknown_strategy_is_an_error():
    _, singles = synthetic_singles([1.0] * 6)
    assert len(plan_pairs("exhaustive", singles, top_k=2).pairs) == 15
    with pytest.raises(UsageError, match="--strategy: 'quick' is not one of fast, thorough, exhaustive"):
        plan_pairs("quick", singles, top_k=2)


def test_interaction_type_needs_an_interval_that_excludes_zero():
    def pair(low, high):
        return PairInteraction(0, 1, "all", Interval(1.0, 0.5, 1.5, 0.1), Interval((low + high) / 2, low, high, 0.1))

    assert pair(0.01, 0.3).kind == "synergistic"
    assert pair(-0.3, -0.01).kind == "redundant"
    assert pair(-0.5, 0.4).kind == "independent"
    assert pair(0.0, 2.0).kind == "independent"  # touching zero is not excluding it


# ----------------------------------------------------------------------------- pair interactions


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [3, 64])
def test_pair_interactions_equal_naive_pair_ablations(batch_size):
    backend = make_backend("llama")
    engine = Engine(backend, PROBE, batch_size=batch_size)
    singles = run_ablation(engine, seed=0)
    plan = plan_pairs("exhaustive", singles, top_k=2)
    result = run_circuit(engine, singles, plan, seed=0)
    base, _ = naive_answer_logprobs(backend, PROBE)
    alone = {layer: naive_answer_logprobs(backend, PROBE, frozenset({layer}))[0] for layer in range(4)}
    assert [(p.first, p.second) for p in result.pairs] == plan.pairs == [(i, j) for i in range(4) for j in range(i + 1, 4)]
    for pair in result.pairs:
        joint, _ = naive_answer_logprobs(backend, PROBE, frozenset({pair.first, pair.second}))
        per_sample = (base - joint) - (base - alone[pair.first]) - (base - alone[pair.second])
        assert pair.joint_damage.mean == pytest.approx(float((base - joint).mean()), abs=1e-4)
        assert pair.interaction.mean == pytest.approx(float(per_sample.mean()), abs=1e-4)
        assert pair.interaction.low <= pair.interaction.mean <= pair.interaction.high
    assert result.expected_false_positives == pytest.approx(0.05 * 6)


def test_known_interactions_are_classified():
    """Per-sample damages built by hand: a synergistic, a redundant and an independent pair."""
    samples = 40
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.01, size=(4, samples))

    class FakeEngine:  # only what run_circuit uses
        baseline = SampleScores(np.zeros(samples), np.ones(samples, dtype=bool))

        def skip_scan(self, configurations, progress=None, on_scored=None):
            joint = {frozenset({0, 1}): 3.0, frozenset({0, 2}): 1.2, frozenset({1, 2}): 2.0 + noise[3]}
            return [SampleScores(-(np.zeros(samples) + joint[c]), np.ones(samples, dtype=bool)) for c in configurations]

    baseline = FakeEngine.baseline
    ablated = [SampleScores(-(1.0 + noise[i]), np.ones(samples, dtype=bool)) for i in range(3)]
    singles = ablation_result(baseline, ablated, seed=0, seconds=0.0)
    result = run_circuit(FakeEngine(), singles, plan_pairs("exhaustive", singles, top_k=3), seed=0)
    kinds = {(p.first, p.second): p.kind for p in result.pairs}
    assert kinds == {(0, 1): "synergistic", (0, 2): "redundant", (1, 2): "independent"}
    assert [(p.first, p.second) for p in result.synergistic] == [(0, 1)]
    assert [(p.first, p.second) for p in result.redundant] == [(0, 2)]


def test_layer_similarity_is_the_mean_token_cosine_of_layer_outputs():
    backend = make_backend("gpt2")
    engine = Engine(backend, PROBE, batch_size=3)
    similarity = layer_similarity(engine)
    assert similarity.shape == (4, 4)
    np.testing.assert_allclose(np.diag(similarity), 1.0, atol=1e-5)
    np.testing.assert_allclose(similarity, similarity.T, atol=1e-6)
    expected = np.zeros((4, 4))
    tokens = 0
    for sequence in engine.plan.sequences:  # one row at a time, no padding
        streams = backend.run(backend.make_batch([sequence]), capture=True)
        tokens += len(sequence)
        for a in range(4):
            for b in range(4):
                cos = torch.nn.functional.cosine_similarity(streams[a + 1][0], streams[b + 1][0], dim=-1)
                expected[a, b] += float(cos.sum())
    np.testing.assert_allclose(similarity, expected / tokens, atol=1e-4)


# ------------------------------------------------------------------------------- stored scans


def test_stored_scan_is_reused_only_for_the_same_samples(tmp_path):
    backend = make_backend("llama")
    engine = Engine(backend, PROBE, batch_size=64)
    fresh = run_ablation(engine, seed=0)
    report = {"model": "llama", "probe": PROBE.name, "total_layers": 4, "sample_count": len(PROBE.samples),
              "per_sample": {"baseline": {"answer_logprob": fresh.baseline_logprob.tolist(),
                                          "correct": fresh.baseline_correct.tolist()},
                             "ablated": {"answer_logprob": fresh.ablated_logprob.tolist(),
                                         "correct": fresh.ablated_correct.tolist()}}}
    reused = stored_singles(json.loads(json.dumps(report)), engine, seed=0)
    assert reused is not None
    np.testing.assert_allclose(reused.ablated_logprob, fresh.ablated_logprob)
    assert [layer.damage for layer in reused.layers] == [layer.damage for layer in fresh.layers]
    assert stored_singles({**report, "model": "other"}, engine, 0) is None
    assert stored_singles({**report, "probe": "other"}, engine, 0) is None
    assert stored_singles({k: v for k, v in report.items() if k != "per_sample"}, engine, 0) is None
    shifted = json.loads(json.dumps(report))
    shifted["per_sample"]["baseline"]["answer_logprob"][2] += 0.01  # another sample set or model state
    assert stored_singles(shifted, engine, 0) is None


# ------------------------------------------------------------------------------------------ CLI


def flat(text: str) -> str:
    """The console wraps long lines: compare text with whitespace runs collapsed."""
    return " ".join(text.split())


def test_circuit_cli_reuses_a_map_in_the_same_folder(cli, tmp_path):
    out = tmp_path / "out"
    fresh = cli(["circuit", "--model", "demo", "--probe", "arith", "--max-samples", "12", "--strategy", "exhaustive",
                 "-o", str(out)])
    assert fresh.exit_code == 0, fresh.output
    assert "6 pair evaluations on 12 samples; single-layer scan computed" in flat(fresh.output)
    computed = json.loads((out / "circuit.json").read_text())
    assert cli(["ablate", "--model", "demo", "--probe", "arith", "--max-samples", "12", "-o", str(out)]).exit_code == 0
    again = cli(["circuit", "--model", "demo", "--probe", "arith", "--max-samples", "12", "--strategy", "exhaustive",
                 "-o", str(out)])
    assert again.exit_code == 0, again.output
    assert f"single-layer scan reused from {out / 'ablation.json'}" in flat(again.output)
    reused = json.loads((out / "circuit.json").read_text())
    for a, b in zip(computed["all_interactions"], reused["all_interactions"]):
        assert a["interaction_effect"] == pytest.approx(b["interaction_effect"], abs=1e-5)
        assert a["interaction_type"] == b["interaction_type"]
    # another sample set: not reused
    other = cli(["circuit", "--model", "demo", "--probe", "arith", "--max-samples", "10", "-o", str(out)])
    assert "single-layer scan computed" in flat(other.output)


def test_circuit_outputs(cli, tmp_path):
    out = tmp_path / "out"
    result = cli(["circuit", "--model", "demo", "--probe", "facts", "--max-samples", "8", "--strategy", "thorough",
                  "--top-k-pairs", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = (out / "circuit.json").read_text()
    report = json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
    reference_keys = ["strategy", "top_k", "total_pairs", "total_evals", "time_seconds", "synergistic", "redundant",
                      "all_interactions"]
    assert all(key in report for key in reference_keys)
    assert report["strategy"] == "thorough" and report["total_pairs"] == len(report["all_interactions"])
    assert len(report["layer_similarity"]) == 4
    for pair in report["all_interactions"]:
        low, high = pair["interaction_ci"]
        kind = "synergistic" if low > 0 else "redundant" if high < 0 else "independent"
        assert pair["interaction_type"] == kind
        assert pair["interaction_effect"] == pytest.approx(
            pair["joint_delta"] - pair["individual_delta_i"] - pair["individual_delta_j"], abs=1e-9)
    assert {(p["layer_i"], p["layer_j"]) for p in report["synergistic"]} == \
        {(p["layer_i"], p["layer_j"]) for p in report["all_interactions"] if p["interaction_type"] == "synergistic"}
    html = (out / "circuit.html").read_text()
    assert "plotly.min.js" in html and "cdn.plot.ly" not in html
    assert (out / "plotly.min.js").is_file()


@pytest.mark.parametrize("args, fragment", [
    (["--strategy", "quick"], "--strategy: 'quick' is not one of fast, thorough, exhaustive"),
    (["--top-k-pairs", "0"], "--top-k-pairs: must be a whole number >= 1, got 0"),
])
def test_circuit_option_errors_come_before_loading(cli, no_model_loading, args, fragment, tmp_path):
    result = cli(["circuit", "--model", "demo", "-o", str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.output
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ real model


@pytest.mark.slow
def test_fast_circuit_on_smollm2(smollm2_backend):
    """SmolLM2-135M on the capitals: layers 0 and 1 each cost about 11 nats alone. Skipping both
    hurts more than either, but far less than the sum (log-probs saturate): a redundant pair.
    (The exhaustive strategy's time is measured by benchmarks/circuit.py, see docs/circuit.md.)"""
    from neuro_scan.probes import load_probe_file
    from test_smollm2 import CAPITALS

    engine = Engine(smollm2_backend, load_probe_file(CAPITALS))
    singles = run_ablation(engine, seed=0)
    plan = plan_pairs("fast", singles, top_k=10)
    assert {0, 1} <= set(plan.candidates) and len(plan.candidates) == 10
    result = run_circuit(engine, singles, plan, seed=0)
    first_two = next(p for p in result.pairs if (p.first, p.second) == (0, 1))
    alone = [singles.layers[0].damage.mean, singles.layers[1].damage.mean]
    assert min(alone) > 5
    assert max(alone) < first_two.joint_damage.mean < sum(alone)
    assert first_two.kind == "redundant" and first_two.interaction.high < 0
    assert len(result.redundant) + len(result.synergistic) > result.expected_false_positives
