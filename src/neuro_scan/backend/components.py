"""Where the parts of a decoder layer live: the one table of per-architecture knowledge that
component targets (attention block, MLP block, attention head) need, and the hooks that remove
them.

A part is found by the first child name in its list that the layer (or its attention module)
has. "Removing" a part means its output, the thing the layer adds to the residual stream (after
any post-norm the architecture applies to it), is zero; for a head, its slice of the attention
output projection's input is zero, so its contribution through that projection is zero. In
parallel-attention layers (GPT-NeoX, Phi-style ``x + attn(ln1 x) + mlp(ln2 x)``) the two blocks
read the same input, so removing one leaves the other's input untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from neuro_scan.backend.base import Intervention, Target

# part -> child names of a decoder layer, most common first
LAYER_CHILDREN: dict[str, tuple[str, ...]] = {
    "attention": ("self_attn", "attn", "attention", "self_attention"),
    # OPT writes its MLP inline (fc1 -> activation -> fc2): its fc2 output is the MLP's output
    "mlp": ("mlp", "feed_forward", "block_sparse_moe", "ffn", "fc2"),
}
# child names of an attention module for its output projection (input: the heads side by side)
OUTPUT_PROJECTIONS = ("o_proj", "c_proj", "dense", "out_proj")


def find_part(layer: nn.Module, part: str) -> nn.Module | None:
    """The attention or MLP module of a decoder layer, or None where the layer has none."""
    return next((getattr(layer, name) for name in LAYER_CHILDREN[part] if isinstance(getattr(layer, name, None), nn.Module)),
                None)


def find_output_projection(layer: nn.Module) -> nn.Module | None:
    attention = find_part(layer, "attention")
    if attention is None:
        return None
    return next((getattr(attention, n) for n in OUTPUT_PROJECTIONS if isinstance(getattr(attention, n, None), nn.Module)),
                None)


def hooked_module(layer: nn.Module, target: Target) -> nn.Module | None:
    """The module whose output (attention, MLP) or input (head) a target's hook changes."""
    if target.part == "head":
        return find_output_projection(layer)
    return find_part(layer, target.part)


def _rows_mask(rows: torch.Tensor | None, reference: torch.Tensor) -> torch.Tensor | None:
    """``rows`` ([B]) shaped to select rows of ``reference``: [B, ...], or [B * T, d] where a block
    works on the tokens flattened (OPT's MLP), each row's T tokens in a run."""
    if rows is None:
        return None
    rows = rows.to(reference.device)
    if reference.shape[0] != rows.shape[0]:
        rows = rows.repeat_interleave(reference.shape[0] // rows.shape[0])
    return rows.view(-1, *([1] * (reference.dim() - 1)))


def _replace(tensor: torch.Tensor, rows: torch.Tensor | None, value: torch.Tensor | None) -> torch.Tensor:
    replacement = torch.zeros_like(tensor) if value is None else value.to(tensor).expand_as(tensor)
    mask = _rows_mask(rows, tensor)
    return replacement if mask is None else torch.where(mask, replacement, tensor)


def block_output_hook(intervention: Intervention) -> Callable:
    """Forward hook replacing an attention/MLP block's output (the first element of a tuple)."""

    def hook(_module, _args, output):
        if isinstance(output, tuple):
            return (_replace(output[0], intervention.rows, intervention.value), *output[1:])
        return _replace(output, intervention.rows, intervention.value)

    return hook


def head_input_hook(head: int, num_heads: int, intervention: Intervention) -> Callable:
    """Forward pre-hook replacing one head's slice of the output projection's input."""

    def hook(_module, args):
        heads = args[0]
        width = heads.shape[-1] // num_heads
        changed = heads.clone()
        piece = slice(head * width, (head + 1) * width)
        changed[..., piece] = _replace(heads[..., piece], intervention.rows, intervention.value)
        return (changed, *args[1:])

    return hook


def head_slice(heads: torch.Tensor, head: int, num_heads: int) -> torch.Tensor:
    width = heads.shape[-1] // num_heads
    return heads[..., head * width : (head + 1) * width]
