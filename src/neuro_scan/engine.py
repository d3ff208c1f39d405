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

from neuro_scan.backend.base import Backend, TokenBatch
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

    def skip_scan(self, configurations: Sequence[frozenset[int]], progress: Progress | None = None) -> list[SampleScores]:
        """Scores with each set of layers skipped, in the order given."""
        order = sorted(range(len(configurations)), key=lambda i: self._lowest(configurations[i]))
        hidden: list[list[torch.Tensor]] = [[] for _ in configurations]
        for block in self.blocks:
            per_forward = max(1, self.batch_size // (block.rows.stop - block.rows.start))
            for chunk_start in range(0, len(order), per_forward):
                chunk = order[chunk_start : chunk_start + per_forward]
                final = self._run_chunk(block, [configurations[i] for i in chunk])
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

    def _lowest(self, configuration: frozenset[int]) -> int:
        """The first layer a configuration changes (L for the empty one: nothing to rerun)."""
        return min(configuration, default=self.num_layers)

    def _run_chunk(self, block: RowBlock, configs: list[frozenset[int]]) -> torch.Tensor:
        """One forward for several skip configurations stacked along the batch."""
        first = min(self._lowest(c) for c in configs)
        start = min(first + 1, self.num_layers)
        size = block.batch.size
        starts = [block.streams[first] if self._lowest(c) == first else block.streams[start] for c in configs]
        stream = torch.cat(starts) if len(starts) > 1 else starts[0]
        skips: dict[int, torch.Tensor | None] = {}
        for layer in sorted(set().union(*configs) - {first}):
            if layer < start:
                continue
            rows = torch.tensor([layer in c for c in configs], device=stream.device).repeat_interleave(size)
            skips[layer] = None if bool(rows.all()) else rows
        batch = block.batch.repeat(len(configs)) if len(configs) > 1 else block.batch
        return self.backend.run(batch, skip=skips, start_layer=start, start_stream=stream)[0]
