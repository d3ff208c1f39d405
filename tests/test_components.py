"""Exact component scans (analysis/components.py) on tiny random models of every architecture in
tests/tiny_models.py. The targets themselves are checked against edited models in
tests/test_targets.py; here: what the scans add (every component of a granularity, many
configurations stacked per forward, the cost bound, what removal means in parallel layers)."""

from __future__ import annotations

import pytest
import torch

from neuro_scan.analysis.components import component_targets, cost_bound, run_components
from neuro_scan.backend.base import Intervention, Target
from neuro_scan.backend.transformers import TransformersBackend
from neuro_scan.engine import Engine
from neuro_scan.errors import UsageError
from neuro_scan.probes import Probe, Sample
from neuro_scan.scoring import gather_pairs, score_logits
from tiny_models import CONFIGS, tiny_model, tiny_tokenizer

ARCHS = list(CONFIGS)
TEXTS = [("abcde", "f"), ("hello wor", "ld"), ("1+1=", "2"), ("xyz", " q")]


def probe() -> Probe:
    return Probe(name="t", description="", samples=tuple(Sample(prompt=p, answer=a) for p, a in TEXTS))


def backend_for(model_type: str) -> TransformersBackend:
    return TransformersBackend(tiny_model(model_type), tiny_tokenizer(), model_type)


def full_run_logprob(engine: Engine, target: Target, value) -> torch.Tensor:
    """The answer log-probs with ``target`` removed in one full forward of every row block."""
    reads = [gather_pairs(engine.backend.run(b.batch, interventions={target: Intervention(value=value)})[0],
                          engine.plan, b.rows, b.pairs)[0] for b in engine.blocks]
    return score_logits(engine.plan, engine.backend.unembed(torch.cat(reads))).answer_logprob


@pytest.mark.parametrize("model_type", ARCHS)
@pytest.mark.parametrize("granularity", ["sublayer", "head"])
@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_scan_equals_one_full_run_per_component(model_type, granularity, ablation):
    """Every component of the granularity, stacked several per forward (rows of 3 probes' worth per
    forward) and resumed at its layer, scores as one full run with that component removed."""
    engine = Engine(backend_for(model_type), probe(), batch_size=12)
    result = run_components(engine, granularity, ablation)
    expected_parts = {"sublayer": {"attention", "mlp"}, "head": {"head"}}[granularity]
    assert {c.target.part for c in result.components} == expected_parts
    layers = engine.num_layers
    per_layer = 2 if granularity == "sublayer" else engine.backend.info.num_heads
    assert len(result.components) == layers * per_layer
    for index, component in enumerate(result.components):
        value = None if ablation == "zero" else engine.means([component.target])[component.target]
        expected = full_run_logprob(engine, component.target, value)
        assert abs(result.ablated_logprob[index] - expected).max() < 1e-4, component.target
        assert abs(component.damage.mean - (engine.baseline.answer_logprob - expected).mean()) < 1e-4


@pytest.mark.parametrize("model_type", ["gpt_neox", "llama"])
def test_removed_attention_in_parallel_and_sequential_layers(model_type):
    """GPT-NeoX's layers are parallel (x + attn(ln1 x) + mlp(ln2 x)): with the attention removed
    the layer outputs its input plus the MLP's baseline output. Llama's are sequential: the MLP
    then reads another stream, and its output changes."""
    backend = backend_for(model_type)
    assert backend.model.config.model_type != "gpt_neox" or backend.model.config.use_parallel_residual
    batch = backend.make_batch([[5, 17, 33, 8, 61], [9, 22, 70, 4, 4]])
    layer = 1
    assert Target(layer, "attention") in backend.targets_in(layer)  # (finding it runs a forward: done before the hook)
    mlp = backend.layers[layer].mlp  # the block as the model names it, looked up here, not by the backend
    seen = []
    handle = mlp.register_forward_hook(lambda _m, _a, out: seen.append(out.detach().clone()))
    streams = backend.run(batch, capture=True)
    removed = backend.run(batch, start_layer=layer, start_stream=streams[layer], capture=True,
                          interventions={Target(layer, "attention"): Intervention()})
    handle.remove()
    baseline_mlp, changed_mlp = seen
    if model_type == "gpt_neox":
        assert torch.allclose(changed_mlp, baseline_mlp, atol=1e-6)
        assert torch.allclose(removed[layer + 1], streams[layer] + baseline_mlp, atol=1e-5)
    else:
        assert (changed_mlp - baseline_mlp).abs().max() > 1e-3
    assert (removed[layer + 1] - streams[layer + 1]).abs().max() > 1e-3  # the attention mattered


def test_head_scan_runs_each_head_from_its_layer():
    """The cost bound, counted: with one configuration per forward, removing a head of layer l runs
    layers l..L-1 only, so the scan runs H x (sum over l of L - l) = H x L(L+1)/2 layer passes, i.e.
    H x (L+1)/2 forwards: counted as calls of each layer's MLP, which a resumed run never makes
    below the resume point."""
    backend = backend_for("llama")
    engine = Engine(backend, probe(), batch_size=len(TEXTS), bucket_rows=False)  # one configuration per forward
    component_targets(engine, "head")  # finding the heads runs a forward of its own: before counting
    calls = []
    handles = [layer.mlp.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0])) for layer in backend.layers]
    run_components(engine, "head")
    for handle in handles:
        handle.remove()
    layers, heads, rows = backend.num_layers, backend.info.num_heads, len(engine.plan.sequences)
    assert sum(calls) == heads * layers * (layers + 1) // 2 * rows
    assert sum(calls) / (layers * rows) == cost_bound("head", layers, heads)


def test_result_frame_and_ranking():
    engine = Engine(backend_for("qwen2"), probe())
    result = run_components(engine, "sublayer", "mean", seed=3)
    frame = result.to_frame()
    assert list(frame["component"]) == [str(c.target) for c in result.components]
    assert (frame["damage_ci_low"] <= frame["damage"]).all() and (frame["damage"] <= frame["damage_ci_high"]).all()
    damages = [c.damage.mean for c in result.ranked]
    assert damages == sorted(damages, reverse=True)
    again = run_components(engine, "sublayer", "mean", seed=3).to_frame()
    assert frame.equals(again)  # same inputs, same seed: same result


def test_targets_follow_the_model():
    engine = Engine(backend_for("gpt2"), probe())
    assert component_targets(engine, "layer") == [Target(i) for i in range(engine.num_layers)]
    assert len(component_targets(engine, "head")) == engine.num_layers * engine.backend.info.num_heads


@pytest.mark.parametrize(("granularity", "ablation", "message"), [
    ("neuron", "zero", "--granularity: 'neuron' is not one of layer, sublayer, head"),
    ("head", "resample", "--ablation: 'resample' is not one of zero, mean"),
])
def test_bad_choices_are_one_line(granularity, ablation, message):
    engine = Engine(backend_for("llama"), probe())
    with pytest.raises(UsageError, match=message):
        run_components(engine, granularity, ablation)


def test_report_files(tmp_path):
    """components.json/csv/html hold the result's numbers; the terminal summary renders."""
    import csv
    import json

    from rich.console import Console

    from neuro_scan.report import components as report
    from neuro_scan.report import write
    from neuro_scan.session import RunInfo

    engine = Engine(backend_for("llama"), probe())
    run = RunInfo(model=engine.backend.info, probe=engine.probe, seed=0, batch_size=64, top_k=10)
    for granularity in ("head", "sublayer"):
        result = run_components(engine, granularity, "zero")
        folder = tmp_path / granularity
        written = {path.name for path in write(folder, report.files(result, run))}
        assert {"components.json", "components.csv", "components.html"} <= written
        document = json.loads((folder / "components.json").read_text())
        frame = result.to_frame()
        assert [row["damage"] for row in document["components"]] == pytest.approx(list(frame["damage"]))
        rows = list(csv.DictReader((folder / "components.csv").open()))
        assert [float(row["damage_ci_low"]) for row in rows] == pytest.approx(list(frame["damage_ci_low"]))
        Console(file=open(folder / "summary.txt", "w")).print(*report.summary(document))
