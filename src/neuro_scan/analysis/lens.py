"""The logit lens: read every layer's residual stream through the final norm and unembedding.

Read from the baseline's cached streams (no extra forward pass), at the answer's positions:

- the answer's probability is that of the whole answer: the product, over its tokens, of each
  token's probability at the position that predicts it (teacher-forced, as in scoring);
- its rank is the worst rank among those tokens (0: every answer token is top-1, which is what
  "correct" means in scoring);
- top-k tokens, entropy and KL to the model's final distribution describe the distribution at
  the first answer position (where the answer begins).

A :data:`Translator` (the tuned lens) may rewrite each layer's stream before the unembedding; the
model's own final distribution stays the reference for KL either way.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from neuro_scan.frames import Framed
from neuro_scan.engine import Engine, Progress
from neuro_scan.scoring import ScoringPlan
from neuro_scan.statistics import Interval, mean_intervals

if TYPE_CHECKING:
    from neuro_scan.analysis.tuned_lens import LensRecord

LOG2E = 1.0 / math.log(2.0)
DEFAULT_EMERGENCE_PROB = 0.5

# maps (layer index, residual [S, d]) -> residual to unembed; the tuned lens plugs in here
Translator = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass
class TokenReads:
    """Each answer token (M in all, in the probe's order) read at the position that predicts it."""

    probs: np.ndarray  # [M] the token's probability
    ranks: np.ndarray  # [M] its rank, 0 = top-1
    top_tokens: list[list[str]]  # [M][k] the lens's top tokens there
    top_probs: np.ndarray  # [M, k]


@dataclass
class LensLayer:
    layer: int
    answer_prob: np.ndarray  # [S] probability of the whole answer
    answer_rank: np.ndarray  # [S] worst rank among the answer's tokens, 0 = every token top-1
    top_tokens: list[list[str]]  # [S][k] at the first answer position
    top_probs: np.ndarray  # [S, k]
    entropy_bits: np.ndarray  # [S]
    kl_to_final_bits: np.ndarray  # [S] KL(model's final distribution || lens distribution)
    tokens: TokenReads | None = None  # every answer token, at its own position

    @property
    def mean_answer_prob(self) -> float:
        return float(np.mean(self.answer_prob))

    @property
    def median_answer_rank(self) -> float:
        return float(np.median(self.answer_rank))

    @property
    def top1_fraction(self) -> float:
        """The share of samples whose every answer token is top-1 here."""
        return float(np.mean(self.answer_rank == 0))

    @property
    def mean_entropy_bits(self) -> float:
        return float(np.mean(self.entropy_bits))

    @property
    def mean_kl_to_final_bits(self) -> float:
        return float(np.mean(self.kl_to_final_bits))


@dataclass
class LensResult(Framed):
    lens: str  # "logit" or "tuned"
    layers: list[LensLayer]  # one per layer output, 0..L-1
    answer_tokens: list[str]  # [S] the answer's first token
    emergence: list[int | None]  # per sample: first layer from which the answer stays top-1
    prob_emergence: list[int | None]  # per sample: first layer from which p(answer) stays >= threshold
    probe_emergence: int | None  # first layer from which at least half the samples stay top-1 to the end
    probe_prob_emergence: int | None  # the same with p(answer) >= threshold
    emergence_prob_threshold: float
    entropy_mean: list[Interval]  # per layer: mean entropy over samples (bits), 95% bootstrap-t interval
    token_sample: list[int] = field(default_factory=list)  # [M] the sample of each answer token
    token_text: list[str] = field(default_factory=list)  # [M] each answer token, decoded


@dataclass(frozen=True)
class _AnswerReads:
    """Where the answers are read: ``pairs`` are the plan's read positions that are needed,
    and the other fields index into them."""

    pairs: torch.Tensor  # [n] read positions (indices into the plan's pairs)
    token_row: torch.Tensor  # [M] row in ``pairs`` of each answer token
    token_ids: torch.Tensor  # [M]
    token_sample: torch.Tensor  # [M] the sample each answer token belongs to
    first_row: torch.Tensor  # [S] row in ``pairs`` of each sample's first answer position


def _answer_reads(plan: ScoringPlan) -> _AnswerReads:
    sample_of_target = torch.full((plan.num_targets,), -1, dtype=torch.long)
    sample_of_target[plan.answer_target] = torch.arange(plan.num_samples)
    token_sample = sample_of_target[plan.token_target]
    keep = token_sample >= 0
    token_pairs = plan.token_pair[keep]
    pairs, inverse = torch.unique(torch.cat([token_pairs, plan.first_answer_pair]), return_inverse=True)
    count = int(token_pairs.shape[0])
    return _AnswerReads(pairs, inverse[:count], plan.token_ids[keep], token_sample[keep], inverse[count:])


def run_lens(engine: Engine, top_k: int = 5, translator: Translator | None = None,
             emergence_prob: float = DEFAULT_EMERGENCE_PROB, seed: int = 0,
             progress: Progress | None = None) -> LensResult:
    """``progress(1)`` after each layer."""
    backend, plan = engine.backend, engine.plan
    reads = _answer_reads(plan)
    samples = plan.num_samples
    top_k = min(top_k, backend.info.vocab_size)
    decode_token = functools.cache(backend.decode_token)  # top tokens repeat across layers and samples

    def decode(ids: torch.Tensor) -> list[str]:
        return [decode_token(i) for i in ids.tolist()]

    def logprobs_after(layer: int, translate: bool) -> torch.Tensor:
        hidden = engine.hidden_at(layer + 1)
        hidden = hidden[reads.pairs.to(hidden.device)]
        if translate and translator is not None:
            hidden = translator(layer, hidden)
        return torch.log_softmax(backend.unembed(hidden).cpu(), dim=-1)

    # the model's own output distribution: the reference for KL, whichever lens is used
    final = logprobs_after(backend.num_layers - 1, translate=False)[reads.first_row]
    layers: list[LensLayer] = []
    for layer in range(backend.num_layers):
        logprobs = logprobs_after(layer, translate=True)
        token_lp = logprobs[reads.token_row, reads.token_ids]
        token_rank = (logprobs[reads.token_row] > token_lp.view(-1, 1)).sum(dim=-1)
        answer_lp = torch.zeros(samples, dtype=torch.float64).index_add_(0, reads.token_sample, token_lp.double())
        answer_rank = torch.zeros(samples, dtype=torch.long).scatter_reduce_(0, reads.token_sample, token_rank, "amax")
        token_top = logprobs[reads.token_row].topk(top_k, dim=-1)
        first = logprobs[reads.first_row]
        probs = first.exp()
        top = probs.topk(top_k, dim=-1)
        layers.append(LensLayer(
            layer=layer,
            answer_prob=answer_lp.exp().numpy(),
            answer_rank=answer_rank.numpy(),
            top_tokens=[decode(row) for row in top.indices],
            top_probs=top.values.numpy(),
            entropy_bits=(-(probs * first).sum(-1) * LOG2E).numpy(),
            kl_to_final_bits=((final.exp() * (final - first)).sum(-1) * LOG2E).clamp(min=0).numpy(),
            tokens=TokenReads(token_lp.exp().numpy(), token_rank.numpy(), [decode(row) for row in token_top.indices],
                              token_top.values.exp().numpy()),
        ))
        if progress:
            progress(1)
    stays_top1 = _stays(np.stack([lay.answer_rank == 0 for lay in layers], axis=1))  # [S, L]
    stays_above = _stays(np.stack([lay.answer_prob >= emergence_prob for lay in layers], axis=1))
    return LensResult(
        lens="logit" if translator is None else "tuned",
        layers=layers,
        answer_tokens=decode(plan.first_answer_token),
        emergence=[_first(row) for row in stays_top1],
        prob_emergence=[_first(row) for row in stays_above],
        probe_emergence=_first(stays_top1.mean(axis=0) >= 0.5),
        probe_prob_emergence=_first(stays_above.mean(axis=0) >= 0.5),
        emergence_prob_threshold=emergence_prob,
        entropy_mean=mean_intervals(np.stack([lay.entropy_bits for lay in layers]), seed=seed),
        token_sample=reads.token_sample.tolist(),
        token_text=decode(reads.token_ids),
    )


def _stays(flags: np.ndarray) -> np.ndarray:
    """[S, L] bool: true at layer i when the flag holds at i and at every later layer."""
    return np.logical_and.accumulate(flags[:, ::-1], axis=1)[:, ::-1]


def _first(row: np.ndarray) -> int | None:
    return int(np.argmax(row)) if row.any() else None


@dataclass
class LensRun(Framed):
    """The `logit-lens` command's result: the lens read, and the tuned lens used (None: the logit lens)."""

    lens: LensResult
    tuned: LensRecord | None = None
    lens_file: str | None = None
    plain: LensResult | None = None  # beside a tuned lens: the logit lens, for the side-by-side chart
    warnings: list[str] = field(default_factory=list)  # what may make it mislead (neuro_scan.caveats)


def read_lenses(engine: Engine, translator: Translator | None, top_k: int, seed: int,
                progress: Progress | None = None) -> tuple[LensResult, LensResult | None]:
    """The lens asked for and, when it is a tuned lens, the plain logit lens beside it (both read
    from the same cached streams); ``progress(1)`` per layer of each: :func:`lens_units` in all."""
    lens = run_lens(engine, top_k=top_k, translator=translator, seed=seed, progress=progress)
    plain = run_lens(engine, top_k=top_k, seed=seed, progress=progress) if translator is not None else None
    return lens, plain


def lens_units(engine: Engine, translator: Translator | None) -> int:
    return engine.num_layers * (1 if translator is None else 2)


def execute(session, options) -> LensRun:
    from neuro_scan.caveats import announce, lens_warnings

    translator, record = session.tuned_lens()
    engine = session.engine
    with session.phase("lens", "reading every layer through the lens", lens_units(engine, translator),
                       timing="lens_seconds") as advance:
        lens, plain = read_lenses(engine, translator, options.top_tokens, options.seed, advance)
    return LensRun(lens, record, options.tuned_lens, plain, announce(session, lens_warnings(lens)))
