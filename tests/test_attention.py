"""Attention entropy against a direct computation from queries and keys."""

from __future__ import annotations

import math

import numpy as np
import torch

from neuro_scan.analysis.attention import entropy_bits, run_attention
from neuro_scan.engine import Engine
from neuro_scan.probes import Probe, Sample
from tiny_models import make_backend

PROBE = Probe("tiny", "", (Sample("abcdefg", "h"), Sample("hello wor", "ld"), Sample("xyz", "w")))


def direct_llama_attention(model, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) for one llama layer, from its projections ([H, T, T])."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = config.hidden_size // heads
    with torch.no_grad():
        hidden = model.model.embed_tokens(input_ids)
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        cos, sin = model.model.rotary_emb(hidden, positions)
        for index in range(layer + 1):
            block = model.model.layers[index]
            normed = block.input_layernorm(hidden)
            q = block.self_attn.q_proj(normed).view(1, -1, heads, head_dim).transpose(1, 2)
            k = block.self_attn.k_proj(normed).view(1, -1, kv_heads, head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k = k.repeat_interleave(heads // kv_heads, dim=1)
            scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
            causal = torch.triu(torch.ones(scores.shape[-2:], dtype=torch.bool), diagonal=1)
            probs = torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1)
            if index == layer:
                return probs[0]
            hidden = block(hidden, position_embeddings=(cos, sin), attention_mask=None)


def test_head_entropy_equals_direct_softmax_computation():
    backend = make_backend("llama")
    engine = Engine(backend, PROBE)
    result = run_attention(engine)
    for sample_index, sample in enumerate(PROBE.samples):
        ids = torch.tensor([backend.tokenize(sample.prompt, add_special_tokens=True)])
        for layer in range(backend.num_layers):
            probs = direct_llama_attention(backend.model, ids, layer)
            direct = -(probs * torch.where(probs > 0, probs.log2(), 0)).sum(-1)  # [H, T]
            captured = backend.attention_weights(backend.make_batch([ids[0].tolist()]))[layer][0]
            assert torch.allclose(captured, probs, atol=1e-5)
            assert torch.allclose(entropy_bits(captured)[0], direct, atol=1e-4)
    # the per-probe mean at the answer position, recomputed directly
    expected = np.zeros((backend.num_layers, 4))
    for sample in PROBE.samples:
        ids = torch.tensor([backend.tokenize(sample.prompt, add_special_tokens=True)])
        for layer in range(backend.num_layers):
            probs = direct_llama_attention(backend.model, ids, layer)[:, -1]
            expected[layer] += (-(probs * torch.where(probs > 0, probs.log2(), 0)).sum(-1)).numpy() / len(PROBE.samples)
    np.testing.assert_allclose(result.answer_bits, expected, atol=1e-4)


def test_entropies_are_bounded_and_model_attention_is_restored(tiny_backend):
    backend = tiny_backend
    engine = Engine(backend, PROBE)
    result = run_attention(engine)
    layers, heads = backend.num_layers, backend.info.num_heads
    assert result.answer_bits.shape == (layers, heads) == result.all_positions_bits.shape
    longest = max(len(s) for s in engine.plan.sequences)
    assert (result.answer_bits >= 0).all() and (result.answer_bits <= math.log2(longest) + 1e-6).all()
    assert (result.all_positions_normalized >= 0).all() and (result.all_positions_normalized <= 1 + 1e-6).all()
    assert backend.model.config._attn_implementation == "sdpa"
    for weights in backend.attention_weights(engine.blocks[0].batch):
        bits, attended = entropy_bits(weights)
        assert (bits <= torch.log2(attended.clamp(min=1).float()) + 1e-5).all()


def test_sliding_window_layers_attend_within_their_window():
    backend = make_backend("gemma3_text")
    batch = backend.make_batch([list(range(5, 15))])
    weights = backend.attention_weights(batch)
    window = backend.model.config.sliding_window
    sliding, full = weights[0][0], weights[1][0]  # layer types: sliding, full, sliding, full
    assert int((sliding[:, -1] > 0).sum(-1).max()) <= window
    assert int((full[:, -1] > 0).sum(-1).min()) == 10
