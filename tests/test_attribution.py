"""Attribution (analysis/attribution.py): AtP against finite differences of the model itself,
GradDrop and the QK fix against independent autograd computations on the model's own outputs,
the null check, the verification figures, the proxy audit; and on SmolLM2 (slow) the exact head
scan and the figures `attribute` reports."""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from neuro_scan.analysis.ablation import run_ablation
from neuro_scan.analysis.attribution import (NodeEstimate, attribute, estimate, proxy_audit, spearman, verify)
from neuro_scan.analysis.components import ComponentAblation, run_components
from neuro_scan.analysis.influence import block_influence
from neuro_scan.backend.base import Target
from neuro_scan.backend.transformers import TransformersBackend
from neuro_scan.engine import Engine
from neuro_scan.probes import Probe, Sample, load_probe_file
from neuro_scan.statistics import Interval
from tiny_models import tiny_model, tiny_tokenizer

TEXTS = [("abcde", "f"), ("1+1=", "2"), ("xyz", "q"), ("hello", "!")]  # one-token answers
CAPITALS = Path(__file__).parent / "data" / "capitals.json"


def probe() -> Probe:
    return Probe(name="t", description="", samples=tuple(Sample(prompt=p, answer=a) for p, a in TEXTS))


def double_backend(model_type: str = "llama", **config) -> TransformersBackend:
    model = tiny_model(model_type) if not config else _model_with(model_type, **config)
    return TransformersBackend(model.double(), tiny_tokenizer(), model_type)


def _model_with(model_type: str, **config):
    from transformers import AutoConfig, AutoModelForCausalLM

    from tiny_models import CONFIGS

    torch.manual_seed(0)
    built = AutoConfig.for_model(model_type, **{**CONFIGS[model_type], **config})
    return AutoModelForCausalLM.from_config(built, dtype=torch.float32, attn_implementation="sdpa").eval()


def tokens(backend: TransformersBackend):
    """Each sample's ids, the position reading its answer, and the answer token: written out here."""
    rows = [backend.tokenize(p, add_special_tokens=True) for p, _ in TEXTS]
    answers = [backend.tokenize(a, add_special_tokens=False)[0] for _, a in TEXTS]
    return backend.make_batch(rows), [len(r) - 1 for r in rows], answers


def answer_logprob(model, batch, reads, answers, **kwargs) -> torch.Tensor:
    """Per-sample answer log-prob from the model's own logits (float64), outside the backend."""
    logits = model(attention_mask=batch.attention_mask, use_cache=False, **kwargs).logits.double()
    rows = torch.arange(len(reads))
    return torch.log_softmax(logits[rows, torch.tensor(reads)], dim=-1)[rows, torch.tensor(answers)]


# the modules each target changes, named as llama names them (independently of the backend's lookup)
def scaled_hook(model, target: Target, factor: float, mean: torch.Tensor | None):
    """Move the target's contribution a fraction ``1 - factor`` of the way to its replacement."""
    layer = model.model.layers[target.layer]

    def moved(value):
        goal = torch.zeros_like(value) if mean is None else mean.to(value).expand_as(value)
        return goal + factor * (value - goal)

    if target.part == "head":
        width = model.config.hidden_size // model.config.num_attention_heads
        piece = slice(target.head * width, (target.head + 1) * width)

        def pre(_m, args):
            heads = args[0].clone()
            heads[..., piece] = moved(heads[..., piece])
            return (heads,)

        return layer.self_attn.o_proj.register_forward_pre_hook(pre)
    if target.part == "layer":
        def whole(_m, args, kwargs, output):
            start = args[0] if args else kwargs["hidden_states"]
            stream = output[0] if isinstance(output, tuple) else output
            changed = start + moved(stream - start)
            return (changed, *output[1:]) if isinstance(output, tuple) else changed

        return layer.register_forward_hook(whole, with_kwargs=True)
    module = layer.self_attn if target.part == "attention" else layer.mlp

    def block(_m, _a, output):
        return (moved(output[0]), *output[1:]) if isinstance(output, tuple) else moved(output)

    return module.register_forward_hook(block)


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_atp_is_the_first_order_effect_of_a_tiny_scaled_intervention(ablation):
    """d/de of the probe score with each target moved a fraction e towards its replacement, by
    central differences on the model's own float64 logits (the change moved by hooks written here),
    equals minus the AtP damage estimate."""
    backend = double_backend()
    engine = Engine(backend, probe())
    targets = [Target(0), Target(1, "attention"), Target(2, "mlp"), Target(1, "head", 2), Target(3, "head", 0),
               Target(3)]
    found = estimate(engine, ablation, targets, graddrop=False, qk_fix=False)
    batch, reads, answers = tokens(backend)
    epsilon = 1e-2  # central differences: error ~ epsilon^2; llama's norms compute in float32, so no smaller
    for index, target in enumerate(targets):
        mean = engine.means([target])[target].double() if ablation == "mean" else None
        scores = []
        for sign in (1, -1):
            handle = scaled_hook(backend.model, target, 1 - sign * epsilon, mean)
            with torch.no_grad():
                scores.append(answer_logprob(backend.model, batch, reads, answers, input_ids=batch.input_ids).mean())
            handle.remove()
        derivative = float(scores[0] - scores[1]) / (2 * epsilon)
        assert abs(derivative - (-found.atp[index])) < 2e-6 + 1e-3 * abs(found.atp[index]), target
        assert abs(found.atp[index]) > 2e-5  # the targets matter, well above the tolerance


def test_graddrop_equals_a_backward_with_the_layer_cut():
    """GradDrop's term for a cut layer equals the first-order estimate from a backward through the
    model with that layer's residual update detached (output = input + (output - input).detach())."""
    backend = double_backend()
    engine = Engine(backend, probe())
    targets = [Target(0, "mlp"), Target(1, "head", 1), Target(0)]
    found = estimate(engine, "zero", targets, graddrop=True, qk_fix=False)
    batch, reads, answers = tokens(backend)
    model = backend.model
    for cut in range(backend.num_layers):
        for index, target in enumerate(targets):
            expected = found.atp[index] if cut < target.layer else 0.0 if cut == target.layer else None
            if expected is None:
                expected = _estimate_with_cut(model, batch, reads, answers, target, cut)
            assert abs(found.graddrop[index, cut] - expected) < 1e-6 + 1e-4 * abs(expected), (target, cut)
    last = [Target(3, "head", 1)]  # a node of the last layer: no cut is above it, every other cut is plain AtP
    assert estimate(engine, "zero", last, graddrop=True, qk_fix=False).ranking == pytest.approx(
        estimate(engine, "zero", last, graddrop=False, qk_fix=False).ranking)


def _estimate_with_cut(model, batch, reads, answers, target: Target, cut: int) -> float:
    layer = model.model.layers[target.layer]
    kept = {}

    def keep_output(_m, _a, output):
        kept["value"] = output

    def keep_update(_m, args, kwargs, output):
        start = args[0] if args else kwargs["hidden_states"]
        stream = output[0] if isinstance(output, tuple) else output
        kept["value"] = stream - start
        kept["source"] = stream

    def detach_update(_m, args, kwargs, output):
        start = args[0] if args else kwargs["hidden_states"]
        stream = output[0] if isinstance(output, tuple) else output
        cut_stream = start + (stream - start).detach()
        return (cut_stream, *output[1:]) if isinstance(output, tuple) else cut_stream

    handles = [model.model.layers[cut].register_forward_hook(detach_update, with_kwargs=True)]
    if target.part == "layer":
        handles.append(layer.register_forward_hook(keep_update, with_kwargs=True))
    elif target.part == "mlp":
        handles.append(layer.mlp.register_forward_hook(keep_output))
    else:
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(lambda _m, args: kept.update(value=args[0])))
    embeddings = model.get_input_embeddings()(batch.input_ids).detach().requires_grad_(True)
    score = answer_logprob(model, batch, reads, answers, inputs_embeds=embeddings).mean()
    source = kept.get("source", kept["value"])
    (grad,) = torch.autograd.grad(score, source)
    for handle in handles:
        handle.remove()
    value = kept["value"].detach()
    if target.part == "head":
        width = value.shape[-1] // model.config.num_attention_heads
        value, grad = (t[..., target.head * width:(target.head + 1) * width] for t in (value, grad))
    real = batch.attention_mask.double()
    change = ((grad * -value).sum(-1) * real).sum(-1)  # per sample (the mean is already in the score)
    return float(-change.sum())


def test_graddrop_on_a_one_layer_model_equals_plain_atp():
    backend = double_backend(num_hidden_layers=1)
    engine = Engine(backend, probe())
    found = estimate(engine, "zero", graddrop=True, qk_fix=False)
    assert np.allclose(found.ranking, np.abs(found.per_sample).mean(axis=1))  # AtP's ranking: E|estimate|
    assert np.all(found.graddrop == 0)  # the only layer is every node's own: cut, nothing is left


def test_qk_fix_equals_the_exact_softmax_change_from_the_models_own_outputs():
    """The QK fix of a head removal: <dS/dA, A' - A> - <d<dS/dA, A>/dx, x' - x> for the next layer's
    attention probabilities A and input x, all read off the model's own outputs (eager attention,
    output_attentions / output_hidden_states) with the head's output-projection columns zeroed in
    a copy of the model."""
    backend = double_backend()
    engine = Engine(backend, probe())
    target = Target(1, "head", 2)
    found = estimate(engine, "zero", [target], graddrop=False, qk_fix=True)
    batch, reads, answers = tokens(backend)
    model = copy.deepcopy(backend.model)
    model.set_attn_implementation("eager")
    edited = copy.deepcopy(model)
    width = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        edited.model.layers[1].self_attn.o_proj.weight[:, 2 * width:3 * width] = 0
    embeddings = model.get_input_embeddings()(batch.input_ids).detach().requires_grad_(True)
    out = model(inputs_embeds=embeddings, attention_mask=batch.attention_mask, use_cache=False, output_attentions=True,
                output_hidden_states=True)
    rows = torch.arange(len(reads))
    score = torch.log_softmax(out.logits.double()[rows, torch.tensor(reads)], -1)[rows, torch.tensor(answers)].mean()
    weights, stream = out.attentions[2], out.hidden_states[2]  # layer 2: the one after the head's layer
    (grad,) = torch.autograd.grad(score, weights, retain_graph=True)
    (input_grad,) = torch.autograd.grad((grad * weights).sum(), stream)
    with torch.no_grad():
        changed = edited(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
                         output_attentions=True, output_hidden_states=True)
    real = batch.attention_mask.double()
    pairs = real[:, None, :, None] * real[:, None, None, :]
    correction = ((changed.attentions[2] - weights) * grad * pairs).sum() - ((changed.hidden_states[2] - stream)
                                                                            * input_grad * real[..., None]).sum()
    correction = float(correction.detach())
    assert abs((found.estimate[0] - found.atp[0]) - (-correction)) < 1e-6
    assert abs(correction) > 1e-6  # there was something to correct


def test_null_check_passes_in_eval_mode_and_warns_with_dropout(caplog):
    engine = Engine(TransformersBackend(tiny_model("llama"), tiny_tokenizer(), "llama"), probe())
    result = attribute(engine, top_k=3, sample=3)
    assert result.null_check.ok and result.null_check.estimate < 1e-5 and result.null_check.measured < 1e-5
    backend = TransformersBackend(_model_with("llama", attention_dropout=0.5), tiny_tokenizer(), "llama")
    backend.model.train()  # dropout on: removing nothing no longer gives the baseline
    with caplog.at_level(logging.WARNING):
        dropped = attribute(Engine(backend, probe()), top_k=3, sample=3)
    assert not dropped.null_check.ok
    assert "removing nothing does not give the baseline" in caplog.text


def test_attribute_verifies_the_top_nodes_and_a_random_sample():
    engine = Engine(TransformersBackend(tiny_model("qwen2"), tiny_tokenizer(), "qwen2"), probe())
    result = attribute(engine, "mean", top_k=6, sample=4, seed=5)
    top = sorted(result.nodes, key=lambda n: -n.ranking)[:6]
    assert {n.target for n in top} == {n.target for n in result.nodes if n.verified == "top-k"}
    assert sum(n.verified == "random" for n in result.nodes) == 4
    exact = {c.target: c.damage.mean for g in ("layer", "sublayer", "head")
             for c in run_components(engine, g, "mean").components}
    for node in result.nodes:
        if node.exact is not None:
            assert node.exact.damage.mean == pytest.approx(exact[node.target], abs=1e-5)
    again = attribute(engine, "mean", top_k=6, sample=4, seed=5)
    assert [n.verified for n in again.nodes] == [n.verified for n in result.nodes]  # seeded
    frame = result.to_frame()
    assert len(frame) == len(result.nodes) and frame["exact"].notna().sum() == 10


def _node(damage: float, verified: str) -> NodeEstimate:
    exact = ComponentAblation(Target(0), 0.0, Interval(damage, damage, damage, 0.0), 1.0, Interval(0, 0, 0, 0))
    return NodeEstimate(Target(len(verified) + int(abs(damage) * 1000)), damage, damage, abs(damage), exact, verified)


def test_verification_figures():
    """Recall of the verified nodes' true top-10 (by |damage|) among the estimated top-k, and the
    bound from the random sample, on nodes written out here."""
    top = [_node(d, "top-k") for d in (5, 4, 3, 2, 1, 0.5, 0.4, -7)]
    drawn = [_node(d, "random") for d in (0.1, 0.2, 0.3, 6, 0.01, 0.02)]
    figures = verify(top + drawn, top_k=8, sample_size=6, total=30)
    assert figures.recall_top10 == 0.8  # the true top-10 holds 6 and 0.3 from the random sample
    assert figures.missed_effect_bound == 6
    assert figures.missed_fraction_bound == pytest.approx(1 - 0.05 ** (1 / 6))
    assert figures.missed_count_bound == math.ceil((1 - 0.05 ** (1 / 6)) * 22)


def test_spearman():
    a = [0.3, 1.2, -4.0, 2.5, 0.0]
    b = [1.0, 3.0, 2.0, 5.0, 4.0]
    ranks_a, ranks_b = [3, 4, 1, 5, 2], [1, 3, 2, 5, 4]
    d2 = sum((x - y) ** 2 for x, y in zip(ranks_a, ranks_b))
    assert spearman(a, b) == pytest.approx(1 - 6 * d2 / (5 * (25 - 1)))
    assert spearman(a, [x ** 3 for x in a]) == pytest.approx(1.0)
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([1.5, 1.5, 3, 4], [1, 2, 3, 4])[0, 1])
    assert spearman([1, 2], [2, 1]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


def test_proxy_audit():
    engine = Engine(TransformersBackend(tiny_model("llama"), tiny_tokenizer(), "llama"), probe())
    scan = run_ablation(engine, seed=0)
    influence = block_influence(engine)
    audit = proxy_audit(engine, scan, influence)
    exact = [layer.damage.mean for layer in scan.layers]
    assert audit.atp == pytest.approx(list(estimate(engine, "zero", [Target(i) for i in range(4)], graddrop=False,
                                                    qk_fix=False).atp))
    assert audit.spearman_atp == spearman(audit.atp, exact)
    assert audit.spearman_block_influence == spearman(influence, exact)
    reversed_proxy = proxy_audit(engine, scan, [-d for d in exact])
    assert reversed_proxy.spearman_block_influence == pytest.approx(-1.0)
    assert any(w.startswith("block influence ranks the layers unlike") for w in reversed_proxy.warnings)


# -- SmolLM2 (a real trained model; slow) ---------------------------------------------------------

@pytest.mark.slow
def test_smollm2_head_scan_and_attribution(smollm2_backend):
    """The exact head scan runs on SmolLM2 (capitals), and attribution reports its correlation and
    recall figures (no threshold: docs/components.md records them)."""
    engine = Engine(smollm2_backend, load_probe_file(CAPITALS))
    heads = run_components(engine, "head")
    assert len(heads.components) == smollm2_backend.num_layers * smollm2_backend.info.num_heads
    result = attribute(engine)
    assert result.null_check.ok
    figures = result.verification
    assert figures.spearman is not None and -1 <= figures.spearman <= 1
    assert figures.recall_top10 is not None and 0 <= figures.recall_top10 <= 1
    verified_heads = [n for n in result.nodes if n.exact is not None and n.target.part == "head"]
    exact = {c.target: c.damage.mean for c in heads.components}
    for node in verified_heads:
        assert node.exact.damage.mean == pytest.approx(exact[node.target], abs=1e-4)


def test_report_files(tmp_path):
    """attribution.json/csv and the three charts hold the result's numbers; the summary renders."""
    import json

    from rich.console import Console

    from neuro_scan.report import attribution as report
    from neuro_scan.report import write
    from neuro_scan.session import RunInfo

    engine = Engine(TransformersBackend(tiny_model("gpt2"), tiny_tokenizer(), "gpt2"), probe())
    result = attribute(engine, top_k=4, sample=3)
    run = RunInfo(model=engine.backend.info, probe=engine.probe, seed=0, batch_size=64, top_k=10)
    written = {path.name for path in write(tmp_path, report.files(result, run))}
    assert {"attribution.json", "attribution.csv", "attribution.html", "attribution_heads.html",
            "attribution_blocks.html"} <= written
    document = json.loads((tmp_path / "attribution.json").read_text())
    assert [n["estimate"] for n in document["nodes"]] == pytest.approx([n.estimate for n in result.nodes])
    assert document["verification"]["spearman"] == result.verification.spearman
    assert document["null_check"]["ok"] is True
    Console(file=open(tmp_path / "summary.txt", "w")).print(*report.summary(document))
