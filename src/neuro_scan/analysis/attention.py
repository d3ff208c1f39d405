"""Attention entropy: how focused each head of each layer is, in bits.

For a query position attending to n keys with probabilities p, H = -sum p log2 p lies in
[0, log2 n]. We report it at each sample's first answer position (the position that predicts
the answer) and averaged over every real query position, both raw and normalised by log2 n so
that prompts of different lengths compare (positions with a single attended key, where the
normalised value is undefined, are left out of the normalised means).

Memory: one layer's weights for R rows take R x heads x T^2 x 4 bytes (6.4 GB for one
20,000-token row of a 4-head model). The entropies are reduced inside the forward, layer by
layer, and R is chosen so that this stays under ``ATTENTION_BUDGET_BYTES`` (down to one row),
so the phase never holds more than one layer's weights for one block of rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from neuro_scan.frames import Framed
from neuro_scan.engine import Engine
from neuro_scan.scoring import split_rows

# most bytes of float32 attention weights (one layer) that one forward may produce; the eager
# softmax briefly holds the scores beside them, so the phase peaks near twice this
ATTENTION_BUDGET_BYTES = 256 * 2**20
MEANS = ("answer", "answer_norm", "all", "all_norm")


@dataclass
class AttentionResult(Framed):
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
    return -torch.special.xlogy(weights, weights).sum(dim=-1) / math.log(2), attended


def attention_bytes(rows: int, heads: int, width: int) -> int:
    """Bytes of one layer's float32 attention weights for ``rows`` rows of ``width`` tokens."""
    return rows * heads * width * width * 4


def rows_per_forward(heads: int, width: int, budget: int = ATTENTION_BUDGET_BYTES) -> int:
    """The most rows whose one-layer weights fit ``budget``, at least 1."""
    return max(1, budget // attention_bytes(1, max(heads, 1), width))


def run_attention(engine: Engine, progress: Callable[[float], None] | None = None,
                  budget: int = ATTENTION_BUDGET_BYTES) -> AttentionResult:
    """``progress(1)`` after each forward, one per block of :func:`attention_blocks`."""
    backend, plan = engine.backend, engine.plan
    answer_rows = plan.pair_rows[plan.first_answer_pair]
    answer_cols = plan.pair_cols[plan.first_answer_pair]
    # layers without attention (state-space, linear recurrence) are never reduced: 0/0, NaN (null in the report)
    heads = backend.info.num_heads
    sums: dict[str, list] = {key: [torch.zeros(heads, dtype=torch.float64)] * engine.num_layers for key in MEANS}
    counts: dict[str, list] = {key: [torch.zeros(heads, dtype=torch.int64)] * engine.num_layers for key in MEANS}
    for rows in attention_blocks(engine, budget):
        batch = backend.make_batch(plan.sequences[rows])
        real = batch.attention_mask.bool().cpu()  # [B, T]
        in_block = (answer_rows >= rows.start) & (answer_rows < rows.stop)
        at = (answer_rows[in_block] - rows.start, answer_cols[in_block])

        def reduce(layer: int, weights: torch.Tensor) -> None:
            for key, (total, count) in _layer_sums(weights, real, at).items():
                sums[key][layer] = sums[key][layer] + total
                counts[key][layer] = counts[key][layer] + count

        try:
            backend.reduce_attention(batch, reduce)
        except (MemoryError, RuntimeError) as error:
            size = attention_bytes(batch.size, backend.info.num_heads, batch.input_ids.shape[1])
            error.add_note(f"one layer's attention weights for {batch.size} row(s) of {batch.input_ids.shape[1]} "
                           f"tokens x {backend.info.num_heads} heads take {size / 2**30:.2f} GiB")
            raise
        if progress:
            progress(1)
    means = {key: torch.stack(sums[key]) / torch.stack(counts[key]) for key in MEANS}
    return AttentionResult(*(means[key].numpy() for key in MEANS))


def attention_blocks(engine: Engine, budget: int = ATTENTION_BUDGET_BYTES) -> list[slice]:
    """The plan's rows in blocks of at most ``--batch-size`` rows whose one-layer weights fit ``budget``."""
    width = max(len(sequence) for sequence in engine.plan.sequences)
    per_forward = min(engine.batch_size, rows_per_forward(engine.backend.info.num_heads, width, budget))
    return split_rows(len(engine.plan.sequences), per_forward)


def _layer_sums(weights: torch.Tensor, real: torch.Tensor, at: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """One layer's sums and counts per head ([H] each) for the four means; ``at`` = (rows, cols)
    of the answer positions in this block. Head by head, so the temporaries of the entropy stay
    a fraction of the weights."""
    per_head = [entropy_bits(weights[:, head]) for head in range(weights.shape[1])]
    bits = torch.stack([b for b, _ in per_head], dim=1).cpu().double()  # [B, H, T]
    attended = torch.stack([n for _, n in per_head], dim=1).cpu()
    normalized = torch.where(attended > 1, bits / attended.clamp(min=2).double().log2(),
                             torch.full_like(bits, float("nan")))
    at_answer = bits.permute(0, 2, 1)[at]  # [S_block, H]
    norm_at_answer = normalized.permute(0, 2, 1)[at]
    queries = real.unsqueeze(1).expand_as(bits)
    valid = queries & ~normalized.isnan()
    return {
        "answer": (at_answer.sum(dim=0), torch.full((bits.shape[1],), at_answer.shape[0])),
        "answer_norm": (norm_at_answer.nansum(dim=0), (~norm_at_answer.isnan()).sum(dim=0)),
        "all": ((bits * queries).sum(dim=(0, 2)), queries.sum(dim=(0, 2))),
        "all_norm": (torch.where(valid, normalized, 0).sum(dim=(0, 2)), valid.sum(dim=(0, 2))),
    }


@dataclass
class AttentionRun(Framed):
    """The `attention` command's result: the entropies, or None when the phase failed (``phases`` says why)."""

    attention: AttentionResult | None
    phases: dict
    warnings: list[str] = field(default_factory=list)  # none of its own (neuro_scan.caveats); kept for every result


def scan(session) -> AttentionResult:
    """The attention phase of a command, with its progress."""
    blocks = attention_blocks(session.engine)
    with session.phase("attention", "attention entropy", len(blocks), timing="attention_seconds") as advance:
        return run_attention(session.engine, advance)


def execute(session, options) -> AttentionRun:
    from neuro_scan.session import Phase

    phases = {"baseline": Phase("done"), "attention": Phase()}
    session.engine  # the baseline: a failure there is not an attention failure  # noqa: B018
    return AttentionRun(session.guarded("attention", phases, lambda: scan(session)), phases)
