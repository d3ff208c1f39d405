"""The tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the
Tuned Lens"): a learned affine translator in front of the model's own final norm and unembedding.

- Translator of layer i: ``h -> h + A_i h + b_i``. A_i and b_i start at zero, so training starts
  exactly at the logit lens. A_i is a full d x d matrix, or ``U_i V_i^T`` of rank r (U_i starts
  at zero, V_i with random orthonormal columns, so A_i still starts at zero). The last layer's
  output is what the model itself unembeds, so its translator is the identity.
- Loss: KL(model's final distribution || lens distribution), averaged over every token position
  of a calibration corpus (never the probe prompts), summed over layers. The model is frozen:
  gradients flow through its final norm and unembedding to the translators only.
- Optimiser as in the paper's code: SGD with Nesterov momentum 0.9, learning rate
  ``lr * (1 - momentum)`` (so lr = 1 is the paper's default), linearly decayed to zero, no warm-up,
  gradient norm clipped to 1, weight decay 1e-3.
- Proof of gain: the last tenth of every corpus document is held out; the per-layer KL of both
  lenses is measured there and stored with the lens.

Training matmuls run in bfloat16 where the hardware does that fast (CUDA with bf16, CPUs with
AMX), as the paper's code does; the held-out evaluation always runs in the model's own dtype.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from neuro_scan import __version__
from neuro_scan.analysis.lens import LOG2E
from neuro_scan.backend.base import Backend
from neuro_scan.corpus import Corpus
from neuro_scan.errors import UsageError

FORMAT = "neuro-scan-tuned-lens/1"
CONTEXT_TOKENS = 256  # tokens per corpus chunk (one row of a batch)
FORWARD_TOKENS = 2048  # most tokens per forward; larger steps accumulate gradients over several
HELDOUT_FRACTION = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-3
MAX_GRAD_NORM = 1.0

# (units done, status line); see calibrate for the units
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 64
    tokens_per_step: int = 1024
    lr: float = 1.0
    rank: int | None = None  # None: full d x d translators
    heldout_tokens: int = 2048
    seed: int = 0
    max_positions: int | None = None  # the model's: no corpus row may be longer (None: no limit)
    momentum: float = MOMENTUM
    weight_decay: float = WEIGHT_DECAY
    max_grad_norm: float = MAX_GRAD_NORM

    @property
    def context_tokens(self) -> int:
        return min(CONTEXT_TOKENS, self.tokens_per_step, self.max_positions or CONTEXT_TOKENS)

    @property
    def rows_per_step(self) -> int:
        return math.ceil(self.tokens_per_step / self.context_tokens)


@dataclass(frozen=True)
class HeldOut:
    """Per-layer KL to the model's final distribution on held-out text, in bits per token."""

    tokens: int
    logit_kl_bits: list[float]
    tuned_kl_bits: list[float]

    @property
    def saved_bits(self) -> list[float]:
        return [a - b for a, b in zip(self.logit_kl_bits, self.tuned_kl_bits)]


@dataclass(frozen=True)
class LensRecord:
    """Everything a lens file says about itself (safetensors metadata)."""

    model_id: str
    architecture: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    unembedding_sha256: str
    rank: int | None
    settings: dict
    corpus: dict
    training: dict
    heldout: HeldOut
    tool_version: str = __version__
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))

    def to_metadata(self) -> dict[str, str]:
        values = asdict(self)
        return {"format": FORMAT, **{k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> LensRecord:
        values = {}
        for name, kind in cls.__annotations__.items():
            raw = metadata[name]
            values[name] = raw if kind == "str" else json.loads(raw)
        values["heldout"] = HeldOut(**values["heldout"])
        return cls(**values)


class TunedLens(nn.Module):
    """One affine translator per layer output 0..L-2 (the last layer's is the identity)."""

    def __init__(self, num_layers: int, hidden_size: int, rank: int | None = None, seed: int = 0):
        super().__init__()
        self.num_layers = num_layers
        self.rank = rank
        count = num_layers - 1
        self.bias = nn.Parameter(torch.zeros(count, hidden_size))
        if rank is None:
            self.weight = nn.Parameter(torch.zeros(count, hidden_size, hidden_size))
        else:
            generator = torch.Generator().manual_seed(seed)
            down = torch.linalg.qr(torch.randn(count, hidden_size, rank, generator=generator)).Q
            self.up = nn.Parameter(torch.zeros(count, hidden_size, rank))
            self.down = nn.Parameter(down.contiguous())

    def forward(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden + A hidden + b`` for one layer, computed in float32, in ``hidden``'s dtype."""
        if layer == self.num_layers - 1:
            return hidden
        h = hidden.float()
        if self.rank is None:
            change = h @ self.weight[layer].T
        else:
            change = (h @ self.down[layer]) @ self.up[layer].T
        return (h + change + self.bias[layer]).to(hidden.dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().cpu().contiguous() for name, p in self.named_parameters()}


@dataclass
class Calibration:
    lens: TunedLens
    record: LensRecord
    train_kl_bits: list[float]  # per step, averaged over layers


@dataclass(frozen=True)
class CorpusSplit:
    """Token rows of the corpus: for training, and held out (taken from the documents in turn,
    cut to the held-out token budget)."""

    train: list[list[int]]
    heldout: list[list[int]]


def _chunk(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


def split_corpus(corpus: Corpus, backend: Backend, settings: TrainSettings) -> CorpusSplit:
    """Tokenize each document; its last tenth is held out, the rest is for training. Both are cut
    into rows of ``context_tokens``."""
    size = settings.context_tokens
    train: list[list[int]] = []
    heldout_by_document: list[list[list[int]]] = []
    for document in corpus.documents:
        ids = backend.tokenize(document, add_special_tokens=True)
        cut = len(ids) - math.ceil(len(ids) * HELDOUT_FRACTION)
        train += _chunk(ids[:cut], size)
        heldout_by_document.append(_chunk(ids[cut:], size))
    heldout: list[list[int]] = []
    budget = settings.heldout_tokens
    for chunk in itertools.chain.from_iterable(itertools.zip_longest(*heldout_by_document)):
        if chunk and budget > 0:
            heldout.append(chunk[:budget])
            budget -= len(heldout[-1])
    if not train or not heldout:
        raise UsageError(f"--corpus: {corpus.name} is too short: it gives {sum(map(len, train))} training and "
                         f"{sum(map(len, heldout))} held-out tokens; give more text")
    return CorpusSplit(train, heldout)


def _training_rows(chunks: list[list[int]], seed: int) -> Iterator[list[int]]:
    """Training chunks in a seeded random order, reshuffled on every pass."""
    rng = random.Random(seed)
    order = list(range(len(chunks)))
    while True:
        rng.shuffle(order)
        for index in order:
            yield chunks[index]


def _fast_bfloat16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # bfloat16 matmuls are fast on CPUs with AMX tiles (about 2x here, whole step) and slow elsewhere
    return device.type == "cpu" and getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()


def _micro_batches(rows: list[list[int]]) -> list[list[list[int]]]:
    per_forward = max(1, FORWARD_TOKENS // max(len(r) for r in rows))
    return [rows[i : i + per_forward] for i in range(0, len(rows), per_forward)]


@dataclass
class _Training:
    lens: TunedLens
    train_kl_bits: list[float]  # per step, averaged over layers
    tokens_seen: int
    bfloat16: bool


def train_lens(backend: Backend, chunks: list[list[int]], settings: TrainSettings,
               progress: Progress | None = None) -> _Training:
    """Progress: one unit per step, with the step's training KL (bits, mean over layers)."""
    info = backend.info
    device = torch.device(info.device)
    lens = TunedLens(info.num_layers, info.hidden_size, settings.rank, seed=settings.seed).to(device)
    optimizer = torch.optim.SGD(lens.parameters(), lr=settings.lr * (1 - settings.momentum),
                                momentum=settings.momentum, nesterov=True, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / settings.steps)
    bfloat16 = _fast_bfloat16(device)
    rows = _training_rows(chunks, settings.seed)
    translated = info.num_layers - 1
    history: list[float] = []
    tokens_seen = 0
    for step in range(settings.steps):
        step_rows = [next(rows) for _ in range(settings.rows_per_step)]
        step_tokens = sum(len(r) for r in step_rows)
        tokens_seen += step_tokens
        kl_sum = 0.0
        for micro in _micro_batches(step_rows):
            batch = backend.make_batch(micro)
            streams = backend.run(batch, capture=True)
            real = batch.attention_mask.bool()
            # the model's final distribution: fixed targets (clone: inference tensors can't enter autograd)
            target = torch.softmax(backend.unembed(streams[-1][real]), dim=-1).clone()
            entropy = float(torch.special.entr(target).sum())  # nats, summed over tokens
            for layer in range(translated):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16):
                    logits = backend.unembed(lens(layer, streams[layer + 1][real]), differentiable=True)
                # cross-entropy against the target distribution = KL(target || lens) + H(target)
                loss = F.cross_entropy(logits, target, reduction="sum") / step_tokens
                loss.backward()
                kl_sum += float(loss.detach()) - entropy / step_tokens
        torch.nn.utils.clip_grad_norm_(lens.parameters(), settings.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(kl_sum / translated * LOG2E)
        if progress:
            progress(1, f"train KL {history[-1]:.3f} bits")
    return _Training(lens, history, tokens_seen, bfloat16)


@torch.inference_mode()
def evaluate_heldout(backend: Backend, lens: TunedLens, chunks: list[list[int]],
                     progress: Progress | None = None) -> HeldOut:
    """Per-layer mean KL(final || lens) in bits, for the logit lens and the tuned lens.
    Progress: one unit per token."""
    num_layers = backend.num_layers
    logit = torch.zeros(num_layers, dtype=torch.float64)
    tuned = torch.zeros(num_layers, dtype=torch.float64)
    tokens = 0
    for micro in _micro_batches(chunks):
        batch = backend.make_batch(micro)
        streams = backend.run(batch, capture=True)
        real = batch.attention_mask.bool()
        final = torch.log_softmax(backend.unembed(streams[-1][real]), dim=-1)
        probs = final.exp()
        done = int(real.sum())
        tokens += done
        for layer in range(num_layers):
            hidden = streams[layer + 1][real]
            for total, reading in ((logit, hidden), (tuned, lens(layer, hidden))):
                logprobs = torch.log_softmax(backend.unembed(reading), dim=-1)
                total[layer] += float((probs * (final - logprobs)).sum()) * LOG2E
        if progress:
            progress(done, "held-out evaluation")
    return HeldOut(tokens, (logit / tokens).tolist(), (tuned / tokens).tolist())


def fitted_settings(backend: Backend, settings: TrainSettings) -> TrainSettings:
    """The settings for this model, checked before anything runs: it needs a layer before the last,
    a rank below its hidden size; its corpus rows are cut to its positions."""
    info = backend.info
    if info.num_layers < 2:
        raise UsageError(f"--model: {info.model_id} has one layer; a tuned lens translates the outputs of the layers "
                         "before the last, and it has none")
    if settings.rank is not None and settings.rank >= info.hidden_size:
        raise UsageError(f"--rank: {settings.rank} is not below the hidden size {info.hidden_size}; "
                         "leave --rank out for full-rank translators")
    return replace(settings, max_positions=backend.max_positions)


def calibrate(backend: Backend, corpus: Corpus, settings: TrainSettings, progress: Progress | None = None) -> Calibration:
    """Train on the corpus, then compare both lenses on its held-out part. Progress: one unit per
    step; the held-out evaluation counts as ``heldout_tokens / tokens_per_step`` steps (about its cost).
    Corpus rows are cut to the model's positions where it reads fewer than CONTEXT_TOKENS."""
    info = backend.info
    settings = fitted_settings(backend, settings)
    chunks = split_corpus(corpus, backend, settings)
    started = time.perf_counter()
    training = train_lens(backend, chunks.train, settings, progress)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    in_steps = (lambda tokens, status: progress(tokens / settings.tokens_per_step, status)) if progress else None
    heldout = evaluate_heldout(backend, training.lens, chunks.heldout, in_steps)
    record = LensRecord(
        model_id=info.model_id, architecture=info.architecture, num_layers=info.num_layers,
        hidden_size=info.hidden_size, vocab_size=info.vocab_size, unembedding_sha256=backend.unembedding_sha256(),
        rank=settings.rank,
        settings={**asdict(settings), "context_tokens": settings.context_tokens, "torch_sgd_lr": round(settings.lr * (1 - settings.momentum), 12),
                  "schedule": "linear decay to 0, no warm-up"},
        corpus={"name": corpus.name, "documents": len(corpus.documents), "characters": corpus.characters,
                "train_tokens": sum(map(len, chunks.train)), "heldout_fraction": HELDOUT_FRACTION},
        training={"seconds": round(train_seconds, 2), "heldout_seconds": round(time.perf_counter() - started, 2),
                  "tokens_seen": training.tokens_seen, "device": info.device, "model_dtype": info.dtype,
                  "matmul_dtype": "bfloat16" if training.bfloat16 else info.dtype,
                  "final_train_kl_bits": training.train_kl_bits[-1]},
        heldout=heldout,
    )
    return Calibration(training.lens, record, training.train_kl_bits)


# -- lens files ---------------------------------------------------------------------------------


def lens_file_bytes(lens: TunedLens, record: LensRecord) -> bytes:
    """The lens as safetensors, its record as the file's metadata (report/ writes it)."""
    from safetensors.torch import save

    return save(lens.tensors(), metadata=record.to_metadata())


def read_lens_record(path: str | Path) -> LensRecord:
    """Check that ``--tuned-lens FILE`` is a neuro-scan lens file, without loading any model."""
    from safetensors import SafetensorError, safe_open

    where = f"--tuned-lens: {path}"
    if Path(path).is_dir():
        raise UsageError(f"{where}: is a folder, not a lens file; give the .safetensors file `neuro-scan calibrate` wrote")
    if not Path(path).is_file():
        raise UsageError(f"{where}: no such file")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(f"{where}: not a safetensors file ({exc})") from None
    if metadata.get("format") != FORMAT:
        raise UsageError(f"{where}: not a neuro-scan tuned-lens file (no '{FORMAT}' metadata); "
                         "make one with `neuro-scan calibrate`")
    try:
        return LensRecord.from_metadata(metadata)
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise UsageError(f"{where}: damaged tuned-lens metadata ({exc})") from None


def check_fits(record: LensRecord, backend: Backend, path: str | Path) -> None:
    """A lens only fits the model it was trained on: a clear error naming the first mismatch."""
    info = backend.info
    for what, trained, here in (("hidden size", record.hidden_size, info.hidden_size),
                                ("layer count", record.num_layers, info.num_layers),
                                ("vocabulary size", record.vocab_size, info.vocab_size)):
        if trained != here:
            raise UsageError(f"--tuned-lens: {path} does not fit this model: it was trained on {record.model_id} "
                             f"with {what} {trained}, and {info.model_id} has {what} {here}")
    fingerprint = backend.unembedding_sha256()
    if fingerprint != record.unembedding_sha256:
        raise UsageError(f"--tuned-lens: {path} does not fit this model: it was trained on {record.model_id}, whose "
                         f"unembedding matrix differs from that of {info.model_id} (sha256 "
                         f"{record.unembedding_sha256[:12]}... vs {fingerprint[:12]}...)")


def load_lens(path: str | Path, backend: Backend) -> tuple[TunedLens, LensRecord]:
    """Read a lens file and put it on the model's device, after checking it fits the model."""
    from safetensors.torch import load_file

    record = read_lens_record(path)
    check_fits(record, backend, path)
    lens = TunedLens(record.num_layers, record.hidden_size, record.rank)
    try:
        lens.load_state_dict(load_file(str(path)))
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or ["?"])[-1].strip()
        raise UsageError(f"--tuned-lens: {path}: its tensors do not match its metadata ({first})") from None
    return lens.to(torch.device(backend.info.device)).requires_grad_(False), record


def validate(options) -> Path:
    """The `calibrate` command's checks, none needing the model -> the lens file to write."""
    from neuro_scan.backend.loading import resolve_source
    from neuro_scan.corpus import resolve_corpus
    from neuro_scan.report import prepare_output_dir
    from neuro_scan.session import check_model_options

    options.check()
    check_model_options(options.backend, options.dtype, options.device, options.seed, gradients=True)
    output = Path(options.output)
    if output.suffix != ".safetensors" or output.is_dir():
        raise UsageError(f"--output: give the path of a .safetensors file for the lens, not '{options.output}'")
    prepare_output_dir(output.parent, lock=False)  # lens files of many models share a folder: no lock
    resolve_corpus(options.corpus)
    resolve_source(options.model)
    return output


def execute(options, _destination: Path, sink) -> Calibration:
    """`calibrate`: train a tuned lens on the corpus and compare it with the logit lens on held-out text."""
    from neuro_scan.corpus import resolve_corpus
    from neuro_scan.events import phase
    from neuro_scan.session import load_backend

    corpus = resolve_corpus(options.corpus)
    backend, _timings = load_backend(options.model, options.backend, options.dtype, options.device, options.seed, sink)
    settings = fitted_settings(backend, TrainSettings(steps=options.steps, tokens_per_step=options.tokens_per_step,
                                                      lr=options.lr, rank=options.rank,
                                                      heldout_tokens=options.heldout_tokens, seed=options.seed))
    total = settings.steps + settings.heldout_tokens / settings.tokens_per_step
    with phase(sink, "calibrate", f"calibrating: {settings.steps} steps x {settings.tokens_per_step} tokens",
               total) as advance:
        return calibrate(backend, corpus, settings, advance)
