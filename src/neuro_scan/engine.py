"""One probe on one model: a baseline run with its residual streams cached, and runs with
layers skipped that resume from those streams.

Why it is fast: skipping a set of layers whose lowest index is m leaves boundaries 0..m
unchanged, so the skipped run starts at layer m+1 from the baseline's cached boundary-m stream
(the stream passes through layer m untouched). A full single-layer scan then costs about
(L-1)/2 forwards on top of the baseline, instead of L full forwards. Several skip
configurations share one forward: their rows are stacked, and each layer is skipped only in
the rows of the configurations that skip it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from neuro_scan.backend.base import ABLATIONS, Backend, Intervention, Target, TokenBatch
from neuro_scan.probes import Probe
from neuro_scan.scoring import SampleScores, ScoringPlan, build_plan, gather_pairs, pairs_in, score_logits, split_rows

Progress = Callable[[float], None]


@dataclass
class RowBlock:
    """A slice of the plan's rows that is run as one batch."""

    rows: slice
    batch: TokenBatch
    pairs: torch.Tensor  # the plan's read positions inside this block
    streams: list[torch.Tensor]  # the baseline's residual stream at every boundary


class Engine:
    def __init__(self, backend: Backend, probe: Probe, batch_size: int = 64):
        self.backend = backend
        self.probe = probe
        self.batch_size = batch_size
        self.plan: ScoringPlan = build_plan(probe, backend)
        self.blocks: list[RowBlock] = []
        self._means: dict[Target, torch.Tensor] = {}
        for rows in split_rows(len(self.plan.sequences), batch_size):
            batch = backend.make_batch(self.plan.sequences[rows])
            streams = backend.run(batch, capture=True)
            self.blocks.append(RowBlock(rows, batch, pairs_in(self.plan, rows), streams))
        self.baseline: SampleScores = score_logits(self.plan, self.backend.unembed(self.hidden_at(backend.num_layers)))

    @property
    def num_layers(self) -> int:
        return self.backend.num_layers

    def hidden_at(self, boundary: int) -> torch.Tensor:
        """The baseline's residual stream at every read position, at one boundary ([N, d])."""
        return torch.cat([gather_pairs(b.streams[boundary], self.plan, b.rows, b.pairs)[0] for b in self.blocks])

    def real_tokens_at(self, boundary: int) -> torch.Tensor:
        """The baseline's residual stream at one boundary over every real (non-pad) token of the
        probe's rows, in row order ([tokens, d])."""
        return torch.cat([b.streams[boundary][b.batch.attention_mask.bool()] for b in self.blocks])

    def skip_scan(self, configurations: Sequence[frozenset[int]], progress: Progress | None = None) -> list[SampleScores]:
        """Scores with each set of whole layers skipped, in the order given."""
        return self.ablation_scan([frozenset(Target(layer) for layer in c) for c in configurations], "zero", progress)

    def ablation_scan(self, configurations: Sequence[frozenset[Target]], ablation: str = "zero",
                      progress: Progress | None = None) -> list[SampleScores]:
        """Scores with each set of targets removed (``ablation``: zero or mean), in the order given.

        Each configuration resumes from the baseline's cached stream at its first changed layer
        (after it, for a skipped whole layer); configurations are stacked along the batch up to
        ``batch_size`` rows per forward.
        """
        if ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
        if ablation == "mean":
            self._ensure_means(set().union(*configurations))
        order = sorted(range(len(configurations)), key=lambda i: self._resume_boundary(configurations[i], ablation))
        hidden: list[list[torch.Tensor]] = [[] for _ in configurations]
        for block in self.blocks:
            per_forward = max(1, self.batch_size // (block.rows.stop - block.rows.start))
            for chunk_start in range(0, len(order), per_forward):
                chunk = order[chunk_start : chunk_start + per_forward]
                final = self._run_chunk(block, [configurations[i] for i in chunk], ablation)
                copies = gather_pairs(final, self.plan, block.rows, block.pairs, copies=len(chunk))
                for position, config_index in enumerate(chunk):
                    hidden[config_index].append(copies[position])
                if progress:
                    progress(len(chunk) / len(self.blocks))
        return [score_logits(self.plan, self.backend.unembed(torch.cat(parts))) for parts in hidden]

    def repeat_scan(self, blocks: Sequence[tuple[int, int]], progress: Progress | None = None) -> list[SampleScores]:
        """Scores with each block of layers ``first..stop-1`` run twice (layer duplication: execution
        order 0..stop-1, first..L-1), in the order given; ``first == stop`` duplicates nothing.

        Layers 0..stop-1 see exactly the baseline's inputs on their first pass, so each run resumes
        from the cached stream at boundary ``stop`` (at ``L-1`` when the block ends at the last
        layer: the backend needs at least one layer to run) and costs L - first layer passes.
        """
        results = []
        for first, stop in blocks:
            resume = min(stop, self.num_layers - 1)
            repeat = (first, stop) if stop > first else None
            parts = []
            for block in self.blocks:
                final = self.backend.run(block.batch, repeat=repeat, start_layer=resume,
                                         start_stream=block.streams[resume] if resume else None)[0]
                parts.append(gather_pairs(final, self.plan, block.rows, block.pairs)[0])
            results.append(score_logits(self.plan, self.backend.unembed(torch.cat(parts))))
            if progress:
                progress(1)
        return results

    def _resume_boundary(self, configuration: frozenset[Target], ablation: str) -> int:
        """The first boundary a configuration changes: its lowest target's layer, or the boundary
        after it when that target is a whole layer skipped (L for the empty configuration)."""
        lowest = min((t.layer for t in configuration), default=self.num_layers)
        skipped = ablation == "zero" and Target(lowest) in configuration
        return min(lowest + 1, self.num_layers) if skipped else lowest

    def _run_chunk(self, block: RowBlock, configs: list[frozenset[Target]], ablation: str) -> torch.Tensor:
        """One forward for several configurations stacked along the batch, from the lowest resume
        boundary among them; a configuration whose skipped layer is the one just before that
        boundary starts from the stream before it (the skipped layer passes it through)."""
        start = min(self._resume_boundary(c, ablation) for c in configs)
        size = block.batch.size
        starts = [block.streams[start - 1] if start and ablation == "zero" and Target(start - 1) in c else block.streams[start]
                  for c in configs]
        stream = torch.cat(starts) if len(starts) > 1 else starts[0]
        skips: dict[int, torch.Tensor | None] = {}
        interventions: dict[Target, Intervention] = {}
        for target in sorted(set().union(*configs)):
            if target.layer < start:
                continue
            flags = torch.tensor([target in c for c in configs], device=stream.device).repeat_interleave(size)
            rows = None if bool(flags.all()) else flags
            if ablation == "zero" and target.part == "layer":
                skips[target.layer] = rows
            else:
                value = None if ablation == "zero" else self._means[target].to(stream.device)
                interventions[target] = Intervention(rows=rows, value=value)
        batch = block.batch.repeat(len(configs)) if len(configs) > 1 else block.batch
        return self.backend.run(batch, skip=skips, start_layer=start, start_stream=stream if start else None,
                                interventions=interventions)[0]

    def _ensure_means(self, targets: set[Target]) -> None:
        """Mean over the probe's real tokens of what each target contributes, from the baseline run."""
        missing = sorted(targets - self._means.keys())
        if not missing:
            return
        totals: dict[Target, tuple[torch.Tensor, int]] = {}
        for block in self.blocks:
            for target, (total, count) in self.backend.target_means(block.batch, missing).items():
                previous = totals.get(target)
                totals[target] = (total, count) if previous is None else (previous[0] + total, previous[1] + count)
        self._means.update({target: (total / count).float() for target, (total, count) in totals.items()})
