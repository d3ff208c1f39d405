"""Teacher-forced scoring of probe answers.

No generation: each answer (or each choice) is appended to its prompt and the model's
log-probability of the answer tokens is read off one forward pass.

- answer_logprob: sum of the log-probabilities of the answer's tokens (nats).
- correct: every answer token is the argmax; for multiple choice, the answer is the most
  probable choice.
- probe score: the mean answer log-prob over samples.

Rows and positions: a sample whose continuations are all single tokens needs one row (the
prompt) and one position (the prompt's last token), where every choice is read; otherwise each
continuation gets its own row ``prompt + continuation[:-1]`` and is read at the last
``len(continuation)`` positions. The (row, position) pairs where logits are needed are
gathered before the unembedding, so the vocabulary projection runs only there.

Before anything runs, every sample must fit the model: its row within the model's positions, and
its answer and choices free of characters the tokenizer does not know (they would be scored as
the unknown token). Prompts with such characters are only warned about.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from neuro_scan.backend.base import Backend
from neuro_scan.errors import UsageError
from neuro_scan.probes import Probe
from neuro_scan.statistics import Interval  # noqa: F401  (re-exported: intervals moved to statistics.py)

log = logging.getLogger(__name__)


@dataclass
class ScoringPlan:
    """A probe turned into token rows and the positions/tokens to read."""

    sequences: list[list[int]]  # one token row each, unpadded
    pair_rows: torch.Tensor  # [N] row of each read position
    pair_cols: torch.Tensor  # [N] column (position) of each read position
    token_pair: torch.Tensor  # [M] which read position predicts each scored token
    token_ids: torch.Tensor  # [M] the scored token
    token_target: torch.Tensor  # [M] which target (sample x continuation) the token belongs to
    answer_target: torch.Tensor  # [S] the answer's target per sample
    choice_targets: list[list[int]]  # per sample: its choices' targets ([] without choices)
    first_answer_pair: torch.Tensor  # [S] read position predicting the answer's first token
    first_answer_token: torch.Tensor  # [S] the answer's first token
    digit_scoring: bool

    @property
    def num_samples(self) -> int:
        return int(self.answer_target.shape[0])

    @property
    def num_targets(self) -> int:
        return int(self.token_target.max()) + 1


@dataclass
class SampleScores:
    """Per-sample outcomes of one run (arrays of length S)."""

    answer_logprob: np.ndarray
    correct: np.ndarray
    expected_digit: np.ndarray | None = None

    @property
    def score(self) -> float:
        return float(self.answer_logprob.mean())

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def log_odds(self) -> float:
        return float(np.mean(answer_log_odds(self.answer_logprob)))


def answer_log_odds(logprob: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of the answer's probability, from its log-probability (stable near p = 1)."""
    logprob = np.minimum(logprob, -1e-12)
    return logprob - np.log(-np.expm1(logprob))


def build_plan(probe: Probe, backend: Backend, variant: str = "") -> ScoringPlan:
    """``variant`` says how the probe was changed from its file (prompt-repeat), for error messages."""
    sequences: list[list[int]] = []
    pairs: dict[tuple[int, int], int] = {}
    token_pair: list[int] = []
    token_ids: list[int] = []
    token_target: list[int] = []
    answer_target: list[int] = []
    choice_targets: list[list[int]] = []
    first_answer_pair: list[int] = []
    first_answer_token: list[int] = []

    next_target = 0

    def pair(row: int, col: int) -> int:
        return pairs.setdefault((row, col), len(pairs))

    unknown_in_prompts: dict[int, list[str]] = {}
    for index, sample in enumerate(probe.samples):
        prompt_ids = backend.tokenize(sample.prompt, add_special_tokens=True)
        continuations = list(sample.choices) if sample.choices else [sample.answer]
        cont_ids = [backend.tokenize(c, add_special_tokens=False) for c in continuations]
        for text, ids in zip(continuations, cont_ids):
            if not ids:
                raise UsageError(f"probe {probe.name}: sample {index}: continuation {text!r} has no tokens")
        if not prompt_ids:
            raise UsageError(f"probe {probe.name}: sample {index}: the prompt has no tokens")
        _check_known(probe, index, continuations, backend)
        if pieces := backend.unknown_pieces(sample.prompt):
            unknown_in_prompts[index] = pieces
        single_row = all(len(ids) == 1 for ids in cont_ids)
        _check_length(probe, index, len(prompt_ids), max(map(len, cont_ids)), single_row, backend.max_positions, variant)
        if single_row:
            sequences.append(prompt_ids)
            shared_row = len(sequences) - 1
        targets = []
        for ids in cont_ids:
            target, next_target = next_target, next_target + 1
            if single_row:
                row = shared_row
            else:
                sequences.append(prompt_ids + ids[:-1])
                row = len(sequences) - 1
            for offset, token in enumerate(ids):
                token_pair.append(pair(row, len(prompt_ids) - 1 + offset))
                token_ids.append(token)
                token_target.append(target)
            targets.append(target)
        answer_index = continuations.index(sample.answer)
        answer_target.append(targets[answer_index])
        choice_targets.append(targets if sample.choices else [])
        first = token_target.index(targets[answer_index])
        first_answer_pair.append(token_pair[first])
        first_answer_token.append(token_ids[first])

    if unknown_in_prompts:
        _warn_once(f"{probe.where}: the prompts of samples {_listed(list(unknown_in_prompts))} hold characters "
                   f"the model's tokenizer does not know ({_listed(_distinct(unknown_in_prompts.values()))}); "
                   "the model reads them as its unknown token")
    ordered = sorted(pairs.items(), key=lambda item: item[1])
    return ScoringPlan(
        sequences=sequences,
        pair_rows=torch.tensor([rc[0] for rc, _ in ordered]),
        pair_cols=torch.tensor([rc[1] for rc, _ in ordered]),
        token_pair=torch.tensor(token_pair),
        token_ids=torch.tensor(token_ids),
        token_target=torch.tensor(token_target),
        answer_target=torch.tensor(answer_target),
        choice_targets=choice_targets,
        first_answer_pair=torch.tensor(first_answer_pair),
        first_answer_token=torch.tensor(first_answer_token),
        digit_scoring=probe.digit_scoring,
    )


def _check_length(probe: Probe, index: int, prompt: int, continuation: int, single_row: bool, limit: int | None,
                  variant: str) -> None:
    """The sample's row (its prompt, and its continuation less the last token, which is only read)
    must fit the model's positions."""
    positions = prompt if single_row else prompt + continuation - 1
    if limit is not None and positions > limit:
        raise UsageError(f"{probe.where}: sample {index}{variant} is {prompt + continuation} tokens (prompt + answer) "
                         f"but the model reads at most {limit} positions ({limit + 1} tokens: the last answer token "
                         "is never read in)")


def _check_known(probe: Probe, index: int, continuations: list[str], backend: Backend) -> None:
    """An answer or choice with characters the tokenizer does not know would be scored as the
    unknown token, whatever the model thinks of the real text: refused."""
    for text in continuations:
        if pieces := backend.unknown_pieces(text):
            what = "answer" if len(continuations) == 1 else "choice"
            raise UsageError(f"{probe.where}: sample {index}: the {what} {text!r} holds characters the model's "
                             f"tokenizer does not know ({_listed(_distinct([pieces]))}); it would be scored as its "
                             "unknown token")


def _distinct(groups) -> list[str]:
    return list(dict.fromkeys(piece for group in groups for piece in group))


def _listed(items: list, most: int = 8) -> str:
    shown = ", ".join(repr(item) if isinstance(item, str) else str(item) for item in items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


@functools.cache
def _warn_once(message: str) -> None:
    """A warning on stderr, once per process: probes are planned again (prompt-repeat, cross-probe)."""
    log.warning(message)


def score_logits(plan: ScoringPlan, logits: torch.Tensor) -> SampleScores:
    """Scores from logits at the plan's read positions ([N, V], float32)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    token_lp = logprobs[plan.token_pair, plan.token_ids].double()
    token_top = logits.argmax(dim=-1)[plan.token_pair] == plan.token_ids
    num_targets = plan.num_targets
    target_lp = torch.zeros(num_targets, dtype=torch.float64).index_add_(0, plan.token_target, token_lp)
    target_misses = torch.zeros(num_targets, dtype=torch.long).index_add_(0, plan.token_target, (~token_top).long())
    answer_lp = target_lp[plan.answer_target]
    correct = target_misses[plan.answer_target] == 0
    digits = []
    for sample, targets in enumerate(plan.choice_targets):
        if targets:
            choice_lp = target_lp[targets]
            correct[sample] = bool(choice_lp.argmax() == targets.index(int(plan.answer_target[sample])))
            if plan.digit_scoring:
                weights = torch.softmax(choice_lp, dim=0)
                digits.append(float((weights * torch.arange(len(targets), dtype=torch.float64)).sum()))
    return SampleScores(
        answer_logprob=answer_lp.numpy(),
        correct=correct.numpy(),
        expected_digit=np.array(digits) if plan.digit_scoring else None,
    )


def answer_logprobs(plan: ScoringPlan, logits: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Per-sample answer log-probs ([S], differentiable) from the logits at read positions ``pairs``
    ([len(pairs), V]): the score of :func:`score_logits` for gradients. A sample whose answer is read
    outside ``pairs`` gets 0, so the sum over a probe's row blocks is the whole probe's."""
    local = torch.full((len(plan.pair_rows),), -1, dtype=torch.long)
    local[pairs] = torch.arange(len(pairs))
    read = local[plan.token_pair] >= 0
    device = logits.device
    token_lp = torch.log_softmax(logits.float(), dim=-1)[local[plan.token_pair[read]].to(device),
                                                         plan.token_ids[read].to(device)]
    target_lp = torch.zeros(plan.num_targets, device=device).index_add(0, plan.token_target[read].to(device), token_lp)
    return target_lp[plan.answer_target.to(device)]


def split_rows(num_rows: int, batch_size: int) -> list[slice]:
    return [slice(start, min(start + batch_size, num_rows)) for start in range(0, num_rows, batch_size)]


# a row joins a length bucket while its padding is at most this share of the bucket's width
BUCKET_PADDING = 0.1


def by_length(plan: ScoringPlan) -> ScoringPlan:
    """The same plan with its rows longest first (stable) and its read positions renumbered in
    the new row order, so that contiguous row blocks are length buckets. Scores come out per
    sample, so nothing a report shows depends on the order of rows."""
    order = sorted(range(len(plan.sequences)), key=lambda row: -len(plan.sequences[row]))
    new_row = torch.empty(len(order), dtype=torch.long)
    new_row[order] = torch.arange(len(order))
    rows = new_row[plan.pair_rows]
    pair_order = torch.argsort(rows * (int(plan.pair_cols.max()) + 1) + plan.pair_cols)  # by (row, column)
    new_pair = torch.empty_like(pair_order)
    new_pair[pair_order] = torch.arange(len(pair_order))
    return replace(
        plan, sequences=[plan.sequences[row] for row in order], pair_rows=rows[pair_order],
        pair_cols=plan.pair_cols[pair_order], token_pair=new_pair[plan.token_pair],
        first_answer_pair=new_pair[plan.first_answer_pair])


def length_blocks(lengths: Sequence[int], batch_size: int) -> list[slice]:
    """Blocks of rows sorted longest first (:func:`by_length`): a block ends at ``batch_size``
    rows or where the next row is shorter than its first by more than BUCKET_PADDING, so each
    row's padding is at most that share of its block's width. Short blocks cost no extra work:
    the engine stacks more configurations into each of their forwards."""
    blocks, start = [], 0
    for row in range(1, len(lengths) + 1):
        if row == len(lengths) or row - start == batch_size or lengths[row] < (1 - BUCKET_PADDING) * lengths[start]:
            blocks.append(slice(start, row))
            start = row
    return blocks


def padding_share(lengths: Sequence[int], blocks: Sequence[slice]) -> float:
    """The share of the token positions a forward of these blocks computes that are padding."""
    padded = sum((block.stop - block.start) * max(lengths[block]) for block in blocks)
    return 1 - sum(lengths) / padded


def pairs_in(plan: ScoringPlan, rows: slice) -> torch.Tensor:
    """Indices of the read positions that lie in a contiguous block of rows."""
    return torch.nonzero((plan.pair_rows >= rows.start) & (plan.pair_rows < rows.stop)).flatten()


def gather_pairs(stream: torch.Tensor, plan: ScoringPlan, rows: slice, pair_index: Sequence[int] | torch.Tensor,
                 copies: int = 1) -> torch.Tensor:
    """Hidden states at read positions of a row block; with ``copies`` stacked blocks ([copies, n, d])."""
    block = rows.stop - rows.start
    local_rows = plan.pair_rows[pair_index] - rows.start
    cols = plan.pair_cols[pair_index]
    offsets = torch.arange(copies).view(-1, 1) * block
    device = stream.device
    return stream[(local_rows + offsets).to(device), cols.to(device).expand(copies, -1)]
