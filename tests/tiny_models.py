"""Tiny random models of every supported architecture, built from their config classes (no download)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

VOCAB = 96
IDS = dict(bos_token_id=2, eos_token_id=3, pad_token_id=0)
COMMON = dict(IDS, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=128)

CONFIGS: dict[str, dict] = {
    "llama": dict(COMMON, num_key_value_heads=2),
    "qwen2": dict(COMMON, num_key_value_heads=2),
    "mistral": dict(COMMON, num_key_value_heads=2, sliding_window=None),
    "gemma3_text": dict(COMMON, num_key_value_heads=2, head_dim=8, sliding_window=4,
                        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"]),
    "phi3": dict(COMMON, num_key_value_heads=2),
    "gpt2": dict(IDS, vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4, n_positions=128),
    "gpt_neox": dict(COMMON),
    "opt": dict(IDS, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, ffn_dim=64,
                max_position_embeddings=128, word_embed_proj_dim=32),
}


def tiny_model(model_type: str, seed: int = 0):
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **CONFIGS[model_type])
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII, ids < VOCAB."""
    chars = [chr(c) for c in range(32, 32 + VOCAB - 2)]
    vocab = {"<pad>": 0, "<unk>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")
