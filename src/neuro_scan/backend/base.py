"""The Backend protocol: the one interface through which analyses touch a model.

Vocabulary used everywhere in neuro-scan:

- A model has ``num_layers`` decoder layers, numbered 0..L-1.
- The residual stream is observed at L+1 *boundaries*: boundary 0 is the embedding output
  (the input of layer 0) and boundary i+1 is the output of layer i. Boundary L is the final
  residual, before the final norm.
- Skipping a layer means the stream passes through it unchanged (identity).
- Resuming at layer k means running only layers k..L-1, starting from a given stream at
  boundary k; with the baseline's own boundary-k stream this reproduces the full run exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

# layer index -> rows of the batch in which that layer is skipped (None: every row)
LayerSkips = Mapping[int, torch.Tensor | None]

# what a target names inside decoder layer ``layer``
TARGET_PARTS = ("layer", "attention", "mlp", "head")
# how a target is removed: "zero" (its contribution to the residual stream is zero; for a whole
# layer that is the skip) or "mean" (replaced by its mean over the probe's real tokens)
ABLATIONS = ("zero", "mean")


@dataclass(frozen=True, order=True)
class Target:
    """One place to intervene: a whole decoder layer, its attention block, its MLP block, or one
    attention head (its slice of the attention output projection's input)."""

    layer: int
    part: str = "layer"
    head: int = -1  # only for part == "head"

    def __post_init__(self) -> None:
        if self.part not in TARGET_PARTS:
            raise ValueError(f"target part must be one of {TARGET_PARTS}, got {self.part!r}")
        if (self.part == "head") != (self.head >= 0):
            raise ValueError("a head index is given exactly for part 'head'")

    def __str__(self) -> str:
        if self.part == "layer":
            return f"L{self.layer}"
        return f"L{self.layer}.H{self.head}" if self.part == "head" else f"L{self.layer}.{self.part}"


@dataclass
class Intervention:
    """Remove ``target`` in ``rows`` of the batch (None: every row). ``value`` is what replaces it:
    None for zero ablation, else a mean broadcast over positions (for a whole layer: the mean of
    its residual update; for attention/MLP: the mean of the block's output; for a head: the mean of
    its slice of the output projection's input)."""

    rows: torch.Tensor | None = None
    value: torch.Tensor | None = None


@dataclass
class AttentionGradient:
    """One layer's attention probabilities in a gradient pass, for the QK fix of attribution."""

    weights: torch.Tensor  # [B, heads, T, T] float32
    grad: torch.Tensor  # [B, heads, T, T]: d objective / d weights
    input_grad: torch.Tensor  # [B, T, d]: d <grad, weights> / d layer input, through these probabilities only


@dataclass
class GradientPass:
    """What one differentiable forward and backward over a batch gives (:meth:`Backend.gradient_pass`).

    ``change[t][row]`` is the first-order change of the objective when target ``t``'s contribution
    (see :class:`Intervention`) is replaced in that row: the sum over the row's real tokens of
    gradient . (replacement - value). ``dropped[t][l, row]`` is the same with layer l's residual
    contribution cut from the backward pass (GradDrop): equal to ``change`` for l < t.layer, zero
    for l == t.layer."""

    objective: torch.Tensor  # [n] the objective's values at the unchanged model (detached)
    change: dict[Target, torch.Tensor]  # [B] float32
    dropped: dict[Target, torch.Tensor]  # [L, B] float32; empty unless asked
    attention: list[AttentionGradient | None]  # per layer; empty unless asked, None for layers without attention


@dataclass
class TokenBatch:
    """Right-padded token ids; ``lengths[i]`` real tokens in row i. Right padding keeps every
    real token at its natural position, so no model needs position ids rebuilt."""

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long, 1 for real tokens
    lengths: torch.Tensor  # [B] long

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    def repeat(self, times: int) -> TokenBatch:
        """The same rows stacked ``times`` times (for several ablations in one forward)."""
        return TokenBatch(self.input_ids.repeat(times, 1), self.attention_mask.repeat(times, 1),
                          self.lengths.repeat(times))


@dataclass(frozen=True)
class ModelInfo:
    """What a report records about the model under study."""

    model_id: str
    architecture: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    num_heads: int
    dtype: str
    device: str
    backend: str


class Backend(Protocol):
    """Everything an analysis may ask of a model. Implementations: transformers (this package)."""

    info: ModelInfo

    @property
    def num_layers(self) -> int: ...

    def tokenize(self, text: str, *, add_special_tokens: bool) -> list[int]: ...

    def decode_token(self, token_id: int) -> str: ...

    @property
    def max_positions(self) -> int | None:
        """The most token positions the model reads in one row; None when its config names no limit."""
        ...

    def unknown_pieces(self, text: str) -> list[str]:
        """The pieces of ``text`` that the tokenizer turns into its unknown token (none for a
        tokenizer without one)."""
        ...

    def make_batch(self, sequences: Sequence[Sequence[int]]) -> TokenBatch: ...

    def run(
        self,
        batch: TokenBatch,
        *,
        skip: LayerSkips | None = None,
        start_layer: int = 0,
        start_stream: torch.Tensor | None = None,
        capture: bool | Collection[int] = False,
        repeat: tuple[int, int] | None = None,
        interventions: Mapping[Target, Intervention] | None = None,
        stop_layer: int | None = None,
        capture_device: torch.device | None = None,
    ) -> list[torch.Tensor | None]:
        """Run the model on ``batch`` and return residual streams ([B, T, d] each).

        With ``capture`` every boundary 0..L is returned (None for boundaries before
        ``start_layer``), or with a collection of boundaries those only (and ``stop_layer``'s;
        None elsewhere); otherwise a one-element list holding boundary L only.
        ``start_layer``/``start_stream`` resume from a stream at that boundary (on any device);
        ``stop_layer`` ends the run there (layers ``stop_layer``.. are not run, and boundary
        ``stop_layer`` is the one returned). ``skip`` passes the stream through the named layers
        unchanged (in the given rows). ``repeat=(i, j)`` runs layers i..j-1 a second time right
        after layer j-1 (layer duplication: execution order 0..j-1, i..L-1), without ``capture``
        or ``stop_layer``. ``interventions`` remove targets (see :class:`Target`) in layers >=
        ``start_layer``. Streams returned stay on the device of the layer that made them, or move
        to ``capture_device`` as they are made.
        """
        ...

    def layer_device(self, layer: int) -> torch.device:
        """Where decoder layer ``layer`` computes (with a device map, layers are on several devices)."""
        ...

    def target_means(self, batch: TokenBatch, targets: Sequence[Target]) -> dict[Target, tuple[torch.Tensor, int]]:
        """For mean ablation: per target, the sum over the batch's real tokens of what the target
        contributes (see :class:`Intervention`) and the number of tokens summed."""
        ...

    def gradient_pass(self, batch: TokenBatch, replacements: Mapping[Target, torch.Tensor | None],
                      objective: Callable[[torch.Tensor], torch.Tensor], *, drop_layers: bool = False,
                      attention: bool = False) -> GradientPass:
        """One differentiable forward and backward of ``objective(final stream).sum()`` (``objective``:
        the final residual stream [B, T, d] -> a vector), with every target of ``replacements`` (its
        value: a mean as in :class:`Intervention`, or None for zero) left in place and its first-order
        change measured. ``drop_layers`` adds one partial backward per layer (GradDrop);
        ``attention`` runs under eager attention and returns each layer's probabilities with their
        gradients. The model's parameters never require or receive a gradient."""
        ...

    def attention_after(self, batch: TokenBatch, layer: int, start_stream: torch.Tensor | None,
                        interventions: Mapping[Target, Intervention]) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer`` run from ``start_stream`` (its input; None for layer 0) with
        ``interventions`` on its targets, then layer ``layer + 1`` up to its attention probabilities:
        (the stream at boundary ``layer + 1`` [B, T, d], those probabilities [B, heads, T, T] float32).
        The layers after are not run."""
        ...

    def targets_in(self, layer: int) -> list[Target]:
        """The targets that exist in one layer: the layer, and where the architecture has them,
        its attention and MLP blocks and each attention head."""
        ...

    def reduce_attention(self, batch: TokenBatch, reduce: Callable[[int, torch.Tensor], object]) -> list:
        """``[reduce(layer, weights) for each layer]``, where ``weights`` are the layer's attention
        probabilities ([B, heads, T, T], float32). Each layer's weights are handed over as soon as
        they exist and dropped before the next layer runs: memory holds one layer's weights (the
        caller bounds B x heads x T^2), never all L layers' at once."""
        ...

    def unembed(self, hidden: torch.Tensor, *, differentiable: bool = False) -> torch.Tensor:
        """Final norm + unembedding (the logit lens): residual [..., d] -> logits [..., V] in float32.

        With ``differentiable`` gradients flow back to ``hidden`` (the tuned lens trains through
        the frozen model); the model's own parameters never require or receive a gradient.
        """
        ...

    def unembedding_sha256(self) -> str:
        """Fingerprint of the unembedding matrix, taken in bfloat16 so that the same model loaded
        in float32 or bfloat16 gives the same value (a tuned lens checks it fits the model)."""
        ...
