"""Attention entropy: how focused each head of each layer is, in bits.

For a query position attending to n keys with probabilities p, H = -sum p log2 p lies in
[0, log2 n]. We report it at each sample's first answer position (the position that predicts
the answer) and averaged over every real query position, both raw and normalised by log2 n so
that prompts of different lengths compare (positions with a single attended key, where the
normalised value is undefined, are left out of the normalised means).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from neuro_scan.engine import Engine


@dataclass
class AttentionResult:
    answer_bits: np.ndarray  # [L, H] mean over samples, at the first answer position
    answer_normalized: np.ndarray  # [L, H]
    all_positions_bits: np.ndarray  # [L, H] mean over every real query position of every row
    all_positions_normalized: np.ndarray  # [L, H]

    @property
    def layer_mean_bits(self) -> list[float]:
        return [float(v) for v in self.answer_bits.mean(axis=1)]


def entropy_bits(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(entropy in bits, number of attended keys) per query: weights [..., T_keys] -> [...]."""
    attended = (weights > 0).sum(dim=-1)
    logs = torch.where(weights > 0, weights.log2(), torch.zeros_like(weights))
    return -(weights * logs).sum(dim=-1), attended


def run_attention(engine: Engine) -> AttentionResult:
    backend, plan = engine.backend, engine.plan
    answer_rows = plan.pair_rows[plan.first_answer_pair]
    answer_cols = plan.pair_cols[plan.first_answer_pair]
    sums = {key: 0.0 for key in ("answer", "answer_norm", "all", "all_norm")}
    counts = {key: 0 for key in sums}
    for block in engine.blocks:
        real = block.batch.attention_mask.bool().cpu()  # [B, T]
        in_block = (answer_rows >= block.rows.start) & (answer_rows < block.rows.stop)
        rows, cols = answer_rows[in_block] - block.rows.start, answer_cols[in_block]
        per_layer = [entropy_bits(w.cpu()) for w in backend.attention_weights(block.batch)]
        bits = torch.stack([b for b, _ in per_layer])  # [L, B, H, T]
        attended = torch.stack([n for _, n in per_layer])
        normalized = torch.where(attended > 1, bits / attended.clamp(min=2).double().log2().float(),
                                 torch.full_like(bits, float("nan")))
        at_answer = bits.permute(1, 3, 0, 2)[rows, cols]  # [S_block, L, H]
        norm_at_answer = normalized.permute(1, 3, 0, 2)[rows, cols]
        queries = real.view(1, real.shape[0], 1, real.shape[1]).expand_as(bits)
        _accumulate(sums, counts, "answer", at_answer.sum(dim=0), at_answer.shape[0])
        _accumulate(sums, counts, "answer_norm", norm_at_answer.nansum(dim=0), (~norm_at_answer.isnan()).sum(dim=0))
        _accumulate(sums, counts, "all", (bits * queries).sum(dim=(1, 3)), queries.sum(dim=(1, 3)))
        valid = queries & ~normalized.isnan()
        _accumulate(sums, counts, "all_norm", torch.where(valid, normalized, 0).sum(dim=(1, 3)), valid.sum(dim=(1, 3)))
    means = {key: (sums[key] / counts[key]).double().numpy() for key in sums}
    return AttentionResult(means["answer"], means["answer_norm"], means["all"], means["all_norm"])


def _accumulate(sums: dict, counts: dict, key: str, total: torch.Tensor, count) -> None:
    sums[key] = sums[key] + total
    counts[key] = counts[key] + (count if isinstance(count, int) else count.to(total.dtype))
