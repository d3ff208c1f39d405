"""The logit lens: read every layer's residual stream through the final norm and unembedding.

Read at each sample's first answer position (the position whose next-token prediction is the
answer's first token), from the baseline's cached streams: no extra forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from neuro_scan.engine import Engine

LOG2E = 1.0 / math.log(2.0)
DEFAULT_EMERGENCE_PROB = 0.5

# maps (layer index, residual [S, d]) -> residual to unembed; the tuned lens plugs in here
Translator = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass
class LensLayer:
    layer: int
    answer_prob: np.ndarray  # [S]
    answer_rank: np.ndarray  # [S] 0 = top-1
    top_tokens: list[list[str]]  # [S][k]
    top_probs: np.ndarray  # [S, k]
    entropy_bits: np.ndarray  # [S]
    kl_to_final_bits: np.ndarray  # [S]


@dataclass
class LensResult:
    lens: str  # "logit" or "tuned"
    layers: list[LensLayer]  # one per layer output, 0..L-1
    answer_tokens: list[str]  # [S] the answer's first token
    emergence: list[int | None]  # per sample: first layer from which the answer stays top-1
    prob_emergence: list[int | None]  # per sample: first layer from which p(answer) stays >= threshold
    probe_emergence: int | None  # first layer from which at least half the samples are top-1 to the end
    emergence_prob_threshold: float


def run_lens(engine: Engine, top_k: int = 5, translator: Translator | None = None,
             emergence_prob: float = DEFAULT_EMERGENCE_PROB) -> LensResult:
    backend, plan = engine.backend, engine.plan
    answer = plan.first_answer_token

    def hidden_after(layer: int) -> torch.Tensor:
        return engine.hidden_at(layer + 1)[plan.first_answer_pair]

    # the model's own output distribution: the reference for KL, whichever lens is used
    final_logprobs = torch.log_softmax(backend.unembed(hidden_after(backend.num_layers - 1)).cpu(), dim=-1)
    layers: list[LensLayer] = []
    for layer in range(backend.num_layers):
        hidden = hidden_after(layer)
        if translator is not None:
            hidden = translator(layer, hidden)
        logprobs = torch.log_softmax(backend.unembed(hidden).cpu(), dim=-1)
        probs = logprobs.exp()
        answer_lp = logprobs.gather(1, answer.view(-1, 1)).squeeze(1)
        top = probs.topk(top_k, dim=-1)
        layers.append(LensLayer(
            layer=layer,
            answer_prob=answer_lp.exp().numpy(),
            answer_rank=(logprobs > answer_lp.view(-1, 1)).sum(dim=-1).numpy(),
            top_tokens=[[backend.decode_token(int(t)) for t in row] for row in top.indices],
            top_probs=top.values.numpy(),
            entropy_bits=(-(probs * logprobs).sum(-1) * LOG2E).numpy(),
            kl_to_final_bits=((final_logprobs.exp() * (final_logprobs - logprobs)).sum(-1) * LOG2E).clamp(min=0).numpy(),
        ))
    stays_top1 = _stays(np.stack([lay.answer_rank == 0 for lay in layers], axis=1))  # [S, L]
    stays_above = _stays(np.stack([lay.answer_prob >= emergence_prob for lay in layers], axis=1))
    majority = stays_top1.mean(axis=0) >= 0.5
    return LensResult(
        lens="logit" if translator is None else "tuned",
        layers=layers,
        answer_tokens=[backend.decode_token(int(t)) for t in answer],
        emergence=[_first(row) for row in stays_top1],
        prob_emergence=[_first(row) for row in stays_above],
        probe_emergence=int(np.argmax(majority)) if majority.any() else None,
        emergence_prob_threshold=emergence_prob,
    )


def _stays(flags: np.ndarray) -> np.ndarray:
    """[S, L] bool: true at layer i when the flag holds at i and at every later layer."""
    return np.logical_and.accumulate(flags[:, ::-1], axis=1)[:, ::-1]


def _first(row: np.ndarray) -> int | None:
    return int(np.argmax(row)) if row.any() else None
