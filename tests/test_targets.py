"""Component targets (attention block, MLP block, one head) against independently edited models,
on tiny random models of every architecture in tests/tiny_models.py."""

from __future__ import annotations

import copy

import pytest
import torch

from neuro_scan.backend.base import Intervention, Target
from neuro_scan.backend.transformers import TransformersBackend
from neuro_scan.engine import Engine
from neuro_scan.probes import Probe, Sample
from tiny_models import make_backend

TOL = 1e-5
SEQUENCES = [[5, 17, 33, 8, 61, 12, 40], [9, 22, 70], [44, 45, 46, 47, 48]]
LAYER = 2
HEAD = 1

# written out here, independently of the backend's lookup table: each layer's attention output
# projection and the last linear map of its MLP
OUT_PROJ = {"gpt2": "attn.c_proj", "gpt_neox": "attention.dense", "opt": "self_attn.out_proj"}
MLP_OUT = {"gpt2": "mlp.c_proj", "gpt_neox": "mlp.dense_4h_to_h", "opt": "fc2"}


def module_at(backend: TransformersBackend, model, path: str) -> torch.nn.Module:
    layers = dict(model.named_modules())
    prefix = next(name for name, module in backend.model.named_modules() if module is backend.layers[LAYER])
    return layers[f"{prefix}.{path}"]


def input_columns(module: torch.nn.Module) -> torch.Tensor:
    """The weight with input features along the last axis (Linear) -- GPT-2's Conv1D stores it transposed."""
    return module.weight if isinstance(module, torch.nn.Linear) else module.weight.T


def logits_of(model, batch) -> torch.Tensor:
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits


def assert_same_on_real_tokens(ours: torch.Tensor, expected: torch.Tensor, batch) -> None:
    for row in range(batch.size):
        real = slice(0, int(batch.lengths[row]))
        assert torch.allclose(ours[row, real], expected[row, real], atol=TOL, rtol=0)


def test_removed_head_equals_zeroed_output_projection_columns(tiny_backend):
    backend, model_type = tiny_backend, tiny_backend.info.architecture
    batch = backend.make_batch(SEQUENCES)
    ours = backend.unembed(backend.run(batch, interventions={Target(LAYER, "head", HEAD): Intervention()})[0])
    edited = copy.deepcopy(backend.model)
    proj = module_at(backend, edited, OUT_PROJ.get(model_type, "self_attn.o_proj"))
    width = input_columns(proj).shape[-1] // backend.info.num_heads
    with torch.no_grad():
        input_columns(proj)[:, HEAD * width:(HEAD + 1) * width] = 0
    assert_same_on_real_tokens(ours, logits_of(edited, batch), batch)
    assert (ours - backend.unembed(backend.run(batch)[0])).abs().max() > 1e-4  # the head mattered


@pytest.mark.parametrize("part", ["attention", "mlp"])
def test_removed_block_equals_block_output_forced_to_zero(tiny_backend, part):
    backend, model_type = tiny_backend, tiny_backend.info.architecture
    batch = backend.make_batch(SEQUENCES)
    ours = backend.unembed(backend.run(batch, interventions={Target(LAYER, part): Intervention()})[0])
    edited = copy.deepcopy(backend.model)
    path = OUT_PROJ.get(model_type, "self_attn.o_proj") if part == "attention" else MLP_OUT.get(model_type, "mlp.down_proj")
    last = module_at(backend, edited, path)
    with torch.no_grad():  # the block's last linear map outputs zero: so does the block
        last.weight.zero_()
        if getattr(last, "bias", None) is not None:
            last.bias.zero_()
    assert_same_on_real_tokens(ours, logits_of(edited, batch), batch)
    assert (ours - backend.unembed(backend.run(batch)[0])).abs().max() > 1e-4


@pytest.mark.parametrize("tiny_backend", ["llama", "gpt2", "gpt_neox"], indirect=True)
def test_mean_ablated_attention_equals_a_projection_that_outputs_the_mean(tiny_backend):
    backend, model_type = tiny_backend, tiny_backend.info.architecture
    batch = backend.make_batch(SEQUENCES)
    edited = copy.deepcopy(backend.model)
    proj = module_at(backend, edited, OUT_PROJ.get(model_type, "self_attn.o_proj"))
    outputs = []
    handle = module_at(backend, backend.model, OUT_PROJ.get(model_type, "self_attn.o_proj")).register_forward_hook(
        lambda _m, _a, out: outputs.append(out.detach()))
    logits_of(backend.model, batch)
    handle.remove()
    mean = outputs[0][batch.attention_mask.bool()].double().mean(dim=0).float()  # computed here, not by the backend
    total, count = backend.target_means(batch, [Target(LAYER, "attention")])[Target(LAYER, "attention")]
    assert count == int(batch.attention_mask.sum())
    assert torch.allclose((total / count).float(), mean, atol=1e-6)
    with torch.no_grad():
        proj.weight.zero_()
        if getattr(proj, "bias", None) is None:
            proj.bias = torch.nn.Parameter(torch.zeros(proj.weight.shape[0]))
        proj.bias.copy_(mean)
    ours = backend.unembed(backend.run(batch, interventions={Target(LAYER, "attention"): Intervention(value=mean)})[0])
    assert_same_on_real_tokens(ours, logits_of(edited, batch), batch)


def probe() -> Probe:
    texts = [("abcde", "f"), ("hello wor", "ld"), ("1+1=", "2"), ("xyz", " q")]
    return Probe(name="t", description="", samples=[Sample(prompt=p, answer=a) for p, a in texts])


@pytest.mark.parametrize("tiny_backend", ["llama", "gemma3_text", "gpt2"], indirect=True)
@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_engine_scan_of_targets_equals_one_full_run_each(tiny_backend, ablation):
    """Resumed, stacked runs (batch_size lets several configurations share a forward) equal a
    full run per configuration with the same intervention."""
    backend = tiny_backend
    engine = Engine(backend, probe(), batch_size=64)
    configurations = [frozenset({Target(0, "head", 0)}), frozenset({Target(1, "mlp")}), frozenset({Target(3)}),
                      frozenset({Target(2, "attention"), Target(3, "head", 2)}), frozenset({Target(1), Target(2, "mlp")}),
                      frozenset()]
    scanned = engine.ablation_scan(configurations, ablation)
    for configuration, scores in zip(configurations, scanned):
        hidden = []
        for block in engine.blocks:
            interventions = {t: Intervention(value=None if ablation == "zero" else engine._means[t]) for t in configuration}
            final = backend.run(block.batch, interventions=interventions)[0]
            hidden.append(final)
        from neuro_scan.scoring import gather_pairs, score_logits

        reads = torch.cat([gather_pairs(h, engine.plan, b.rows, b.pairs)[0] for h, b in zip(hidden, engine.blocks)])
        expected = score_logits(engine.plan, backend.unembed(reads))
        assert abs(scores.answer_logprob - expected.answer_logprob).max() < 1e-4
    assert abs(scanned[-1].answer_logprob - engine.baseline.answer_logprob).max() < 1e-5  # removing nothing


def test_targets_in_a_layer_list_the_heads():
    backend = make_backend("llama")
    targets = backend.targets_in(1)
    assert targets[:3] == [Target(1), Target(1, "attention"), Target(1, "mlp")]
    assert [t.head for t in targets[3:]] == list(range(backend.info.num_heads))
