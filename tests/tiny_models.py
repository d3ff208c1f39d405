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


def make_backend(model_type: str, seed: int = 0):
    """``tiny_model(model_type, seed)`` with the char tokenizer, behind the transformers backend."""
    from neuro_scan.backend.transformers import TransformersBackend

    return TransformersBackend(tiny_model(model_type, seed), tiny_tokenizer(), model_type)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII, ids < VOCAB."""
    chars = [chr(c) for c in range(32, 32 + VOCAB - 2)]
    vocab = {"<pad>": 0, "<unk>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")


# -- any model type: a tiny config made from the config class's own defaults ------------------

TINY_LAYERS = 4
TINY_WIDTH = 64
# size fields shrunk wherever a config (or one of its sub-configs) has them
SHRINK: dict[str, int] = {
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "embedding_dim", "dim"), TINY_WIDTH),
    **dict.fromkeys(("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size", "intermediate_size_mlp"), 96),
    **dict.fromkeys(("moe_intermediate_size", "shared_expert_intermediate_size", "shared_intermediate_size",
                     "moe_shared_expert_intermediate_size", "shared_experts_intermediate_size"), 32),
    **dict.fromkeys(("head_dim", "attention_head_dim", "kv_channels", "qk_head_dim", "v_head_dim"), 16),
    **dict.fromkeys(("qk_rope_head_dim", "qk_nope_head_dim", "rotary_dim"), 8),
    **dict.fromkeys(("kv_lora_rank", "q_lora_rank", "o_lora_rank"), 16),
    **dict.fromkeys(("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers", "num_blocks"),
                    TINY_LAYERS),
    **dict.fromkeys(("num_attention_heads", "n_head", "n_heads", "num_heads"), 4),
    **dict.fromkeys(("num_key_value_heads", "num_kv_heads", "multi_query_group_num", "num_query_groups"), 2),
    "vocab_size": 128,
    **dict.fromkeys(("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"), 256),
    "original_max_position_embeddings": 128,
    **dict.fromkeys(("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"), 4),
    **dict.fromkeys(("num_experts_per_tok", "num_experts_per_token", "moe_topk", "moe_k"), 2),
    **dict.fromkeys(("n_group", "num_expert_group", "topk_group", "n_shared_experts", "num_shared_experts",
                     "moe_num_shared_experts", "first_k_dense_replace"), 1),
    **dict.fromkeys(("sliding_window", "attention_window_size", "sliding_window_size"), 4),
    **dict.fromkeys(("mamba_d_state", "ssm_state_size", "state_size", "mamba_dt_rank", "time_step_rank"), 8),
    **dict.fromkeys(("mamba_n_heads", "mamba_num_heads", "n_mamba_heads"), 8),
    **dict.fromkeys(("mamba_d_head", "mamba_head_dim"), 16),
    **dict.fromkeys(("mamba_chunk_size", "chunk_size"), 16),
    **dict.fromkeys(("n_groups", "mamba_n_groups"), 1),
    "mamba_d_ssm": 128,
    **dict.fromkeys(("linear_num_key_heads", "index_n_heads"), 2),
    **dict.fromkeys(("linear_num_value_heads", "linear_num_heads"), 4),
    **dict.fromkeys(("linear_key_head_dim", "linear_value_head_dim", "linear_head_dim", "index_head_dim"), 16),
    "index_topk": 4,
    "vocab_size_per_layer_input": 128,
    "hidden_size_per_layer_input": 16,
}
DEPTH_FIELDS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers")
# size fields that some config classes leave None (derived, or unset in the defaults) but their model needs
FILL_WHEN_NONE = ("head_dim", "num_key_value_heads", "num_experts_per_tok", "n_routed_experts", "n_group",
                  "topk_group", "n_shared_experts")
TINY_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
# model_type -> config fields that generic shrinking gets wrong
OVERRIDES: dict[str, dict] = {
    # hybrid models: put attention layers among the state-space layers
    "bamba": dict(attn_layer_indices=[1, 3]),
    "granitemoehybrid": dict(layer_types=["mamba", "attention", "mamba", "attention"]),
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1),
    "zamba": dict(attention_hidden_size=128, attention_head_dim=32),
    "zamba2": dict(hybrid_layer_ids=[1, 3], attention_hidden_size=128, attention_head_dim=32, mamba_headdim=16, kv_channels=16,
                   num_query_groups=4, adapter_rank=8),
    "lfm2_moe": dict(layer_types=["conv", "full_attention", "conv", "full_attention"], num_dense_layers=1),
    "mamba2": dict(num_heads=8),  # hidden 64 x expand 2 = heads x head_dim
    "zaya": dict(num_experts_per_tok=1),
    # stored with two entries per layer (attention block, MLP block)
    "dory": dict(num_hidden_layers=8, n_input_layers=2, n_recurrent_layers=4, n_output_layers=2,
                 layer_types=["sliding_attention", "mlp", "full_attention", "mlp"] * 2),
    "gemma3n_text": dict(num_kv_shared_layers=2),
    "xlnet": dict(d_head=16),
    "dbrx": dict(attn_config={"kv_n_heads": 1, "rope_theta": 10000.0, "clip_qkv": 8.0}),
    "cohere_compass_text": dict(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e4},
                                                 "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
    "qwen4_exp_text": dict(indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=16, indexer_budget=8,
                           indexer_compress_ratio=2),
    "dots3_note_text": dict(head_dim=16),  # sliding-window layers: head_dim = nope + rope
    "falcon_h1": dict(mamba_d_head=16),  # mamba_d_ssm 128 = 8 heads x 16
}
# multimodal wrappers: the same for their text model
OVERRIDES.update(qwen4_exp={"text_config": OVERRIDES["qwen4_exp_text"]},
                 dots3_note={"text_config": OVERRIDES["dots3_note_text"]})


def _resized(per_layer: list, length: int) -> list:
    """A per-layer list of ``length`` keeping every distinct entry (each layer kind stays present)."""
    kinds: list = []
    for entry in per_layer:
        if entry not in kinds:
            kinds.append(entry)
    return [kinds[i % len(kinds)] for i in range(length)]


def _shrunk(fields: dict) -> dict:
    depth = next((fields[k] for k in DEPTH_FIELDS if isinstance(fields.get(k), int)), None)
    out: dict = {}
    for key, value in fields.items():
        if isinstance(value, dict) and (key.endswith("config") or "model_type" in value):
            value = _shrunk(value)
        elif isinstance(value, list) and depth and len(value) == depth:
            numeric = key in SHRINK and all(isinstance(v, int) for v in value)
            value = [SHRINK[key]] * TINY_LAYERS if numeric else _resized(value, TINY_LAYERS)
        elif key in SHRINK and isinstance(value, int) and not isinstance(value, bool):
            value = min(value, SHRINK[key])  # never grown: 0 and small defaults keep their meaning
        elif key in FILL_WHEN_NONE and value is None:
            value = SHRINK[key]
        elif key.endswith(("token_id", "token_index")) and isinstance(value, int):
            value = VOCAB + 4 + len(out) % 24  # special tokens above the tiny tokenizer's ids, inside the vocabulary
        out[key] = value
    out.update({k: v for k, v in TINY_IDS.items() if k in out})
    if fields.get("num_key_value_heads") == fields.get("num_attention_heads") and "num_attention_heads" in out:
        out["num_key_value_heads"] = out["num_attention_heads"]  # multi-head attention stays multi-head
    if "kv_lora_rank" in out and "qk_rope_head_dim" in out:  # multi-head latent attention: rotary on the rope part, one key/value head per head
        out.update(head_dim=out.get("qk_rope_head_dim", 8), num_key_value_heads=out.get("num_attention_heads", 4))
    if isinstance(out.get("per_layer_config"), dict):
        out["per_layer_config"] = _per_layer(out["per_layer_config"], fields.get("layer_types"), out.get("layer_types"))
    return out


def _per_layer(overrides: dict, old_types: list | None, new_types: list | None) -> dict:
    """Per-layer config overrides moved to the tiny model's layers of the same type (shrunk)."""
    moved = {}
    for key, value in overrides.items():
        index = int(key)
        targets = [index] if index < TINY_LAYERS else []
        if old_types and new_types and index < len(old_types):
            targets = [i for i, kind in enumerate(new_types) if kind == old_types[index]]
        for target in targets:
            moved[str(target).zfill(len(str(key)))] = _shrunk(value)
    return moved


def tiny_config(model_type: str):
    """A 4-layer, 64-wide config of any model type, from its config class's defaults."""
    fields = AutoConfig.for_model(model_type).to_dict()
    for key in ("model_type", "transformers_version", "architectures"):
        fields.pop(key, None)
    fields = _merged(_shrunk(fields), OVERRIDES.get(model_type, {}))
    return AutoConfig.for_model(model_type, **fields)


def _merged(fields: dict, overrides: dict) -> dict:
    """``fields`` with ``overrides`` applied, sub-config by sub-config."""
    out = dict(fields)
    for key, value in overrides.items():
        both_dicts = isinstance(value, dict) and isinstance(out.get(key), dict) and key.endswith("config")
        out[key] = _merged(out[key], value) if both_dicts else value
    return out


def tiny_any_model(model_type: str, seed: int = 0):
    """A tiny random causal LM of any model type, with SDPA attention where the model has it and
    can switch to eager later (as neuro-scan's loading does)."""
    from neuro_scan.backend.architecture import legacy_attention
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = tiny_config(model_type)
    torch.manual_seed(seed)
    legacy = legacy_attention(MODEL_FOR_CAUSAL_LM_MAPPING[type(config)])
    try:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                                 attn_implementation="eager" if legacy else "sdpa")
    except ValueError:  # the model has no SDPA path
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    return model.eval()
