"""One probe on one model: a baseline run with its residual streams cached, and runs with
layers skipped that resume from those streams.

Why it is fast: skipping a set of layers whose lowest index is m leaves boundaries 0..m
unchanged, so the skipped run starts at layer m+1 from the baseline's cached boundary-m stream
(the stream passes through layer m untouched). A full single-layer scan then costs about
(L-1)/2 forwards on top of the baseline, instead of L full forwards. Several skip
configurations share one forward: their rows are stacked, and each layer is skipped only in
the rows of the configurations that skip it.

At scale (docs/scale.md), without changing a score:

- memory: the cache may keep only every K-th boundary (``keep_every``, or the smallest K whose
  cache fits ``cache_memory``; :mod:`neuro_scan.stream_cache`). A run then starts from the highest
  kept boundary at or below its first change and recomputes the baseline layers between;
- padding: rows are sorted by length and cut into length buckets, so a forward carries little
  padding; a short bucket stacks more configurations into each forward;
- pairs: a pair (i, j) resumes after j from the run with i skipped, cached once for every pair
  with that first layer (:meth:`Engine.skip_scan`).

Every scan names each configuration by a key (``skip L3,L7``, ``mean L2.H5``, ``repeat 4-9``) and
asks two optional collaborators before it runs anything: ``journal`` (configurations already
scored by an interrupted run: :mod:`neuro_scan.journal`) and ``workers`` (which configurations this
process scores when several processes share the scan: :mod:`neuro_scan.distributed`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from neuro_scan.backend.base import ABLATIONS, Backend, Intervention, Target, TokenBatch
from neuro_scan.probes import Probe
from neuro_scan.scoring import (
    SampleScores,
    ScoringPlan,
    build_plan,
    by_length,
    gather_pairs,
    length_blocks,
    padding_share,
    pairs_in,
    score_logits,
    split_rows,
)
from neuro_scan.stream_cache import (
    StreamCache,
    baseline_spacing,
    bytes_on,
    cache_device,
    every_kth,
    free_memory,
    spacing_within,
)

Progress = Callable[[float], None]
Scored = Callable[[int, "SampleScores"], None]  # (configuration index, its scores), as each is scored


class Journal(Protocol):
    """Scores of configurations finished earlier, found again by their key."""

    def find(self, key: str) -> SampleScores | None: ...

    def record(self, key: str, scores: SampleScores) -> None: ...


class Workers(Protocol):
    """The processes sharing a scan: which configurations this one scores, and everyone's scores."""

    def share(self, indices: list[int]) -> list[int]: ...

    def gather(self, scored: dict[int, SampleScores]) -> dict[int, SampleScores]: ...


@dataclass
class RowBlock:
    """A slice of the plan's rows that is run as one batch."""

    rows: slice
    batch: TokenBatch
    pairs: torch.Tensor  # the plan's read positions inside this block


class Engine:
    def __init__(self, backend: Backend, probe: Probe, batch_size: int = 64, *, cache_memory: int | None = None,
                 keep_every: int | None = None, bucket_rows: bool = True, pair_resume: bool = True,
                 progress: Progress | None = None):
        """``cache_memory``: the most bytes the cached streams may take (None: no limit), which sets
        K, the spacing of the boundaries kept; ``keep_every`` sets K itself. ``bucket_rows`` batches
        rows of similar length; ``pair_resume`` lets :meth:`skip_scan` resume a pair of layers after
        its second layer. None of them changes a score, only memory and time. ``progress`` advances
        by 1 / (row blocks) after each block of the baseline run."""
        if keep_every is not None and keep_every < 1:
            raise ValueError(f"keep_every must be at least 1, got {keep_every}")
        self.backend = backend
        self.probe = probe
        self.batch_size = batch_size
        self.cache_memory = cache_memory
        self.pair_resume = pair_resume
        plan = build_plan(probe, backend)
        self.plan: ScoringPlan = by_length(plan) if bucket_rows else plan
        lengths = [len(sequence) for sequence in self.plan.sequences]
        slices = length_blocks(lengths, batch_size) if bucket_rows else split_rows(len(lengths), batch_size)
        self.blocks = [RowBlock(rows, backend.make_batch(self.plan.sequences[rows]), pairs_in(self.plan, rows))
                       for rows in slices]
        self.padding_share = padding_share(lengths, slices)
        value_bytes = getattr(torch, backend.info.dtype).itemsize
        self.boundary_bytes = sum((r.stop - r.start) * max(lengths[r]) for r in slices) * backend.info.hidden_size * value_bytes
        layers = self.num_layers
        self.keep_every = keep_every or baseline_spacing(layers, self.boundary_bytes, cache_memory)
        kept = every_kth(self.keep_every, layers, self.keep_every)
        self._cache = StreamCache(kept, from_embeddings=True, device=self._placement(kept))
        finals = []
        for block in self.blocks:
            streams = backend.run(block.batch, capture=kept, capture_device=self._cache.device)
            self._cache.streams.append({boundary: streams[boundary] for boundary in kept})
            finals.append(gather_pairs(streams[layers], self.plan, block.rows, block.pairs)[0])
            if progress:
                progress(1 / len(self.blocks))
        self.baseline: SampleScores = score_logits(self.plan, self.backend.unembed(torch.cat(finals)))
        self._cursor: tuple[int, list[torch.Tensor]] | None = None  # the last boundary recomputed
        self._means: dict[Target, torch.Tensor] = {}
        self.journal: Journal | None = None
        self.workers: Workers | None = None

    @property
    def num_layers(self) -> int:
        return self.backend.num_layers

    @property
    def cache_bytes(self) -> int:
        """What the baseline's kept boundaries take."""
        return len(self._cache.boundaries) * self.boundary_bytes

    def hidden_at(self, boundary: int) -> torch.Tensor:
        """The baseline's residual stream at every read position, at one boundary ([N, d])."""
        return torch.cat([gather_pairs(stream, self.plan, block.rows, block.pairs)[0]
                          for stream, block in zip(self._streams_at(boundary), self.blocks)])

    def real_tokens_at(self, boundary: int) -> torch.Tensor:
        """The baseline's residual stream at one boundary over every real (non-pad) token of the
        probe's rows, in the plan's row order ([tokens, d])."""
        return torch.cat([stream[block.batch.attention_mask.bool().to(stream.device)]
                          for stream, block in zip(self._streams_at(boundary), self.blocks)])

    def block_stream(self, block: RowBlock, boundary: int) -> torch.Tensor:
        """The baseline's residual stream of one row block at one boundary ([rows, T, d])."""
        return self._streams_at(boundary)[next(i for i, b in enumerate(self.blocks) if b is block)]

    def skip_scan(self, configurations: Sequence[frozenset[int]], progress: Progress | None = None,
                  on_scored: Scored | None = None) -> list[SampleScores]:
        """Scores with each set of whole layers skipped, in the order given.

        Pairs {i, j}, i < j, that share their i resume after j from the run with i skipped (with
        ``pair_resume``, where that saves layer passes: see :meth:`_pairs_after`); every other
        configuration resumes from the baseline."""
        keys = ["skip " + ",".join(f"L{layer}" for layer in sorted(c)) for c in configurations]
        return self._recorded(keys, lambda mine, scored: self._skip_scan([configurations[i] for i in mine], progress, scored),
                              progress, on_scored)

    def _skip_scan(self, configurations: Sequence[frozenset[int]], progress: Progress | None,
                   on_scored: Scored | None) -> list[SampleScores]:
        results: list[SampleScores | None] = [None] * len(configurations)
        by_first: dict[int, list[int]] = {}
        for index, configuration in enumerate(configurations):
            if self.pair_resume and len(configuration) == 2:
                by_first.setdefault(min(configuration), []).append(index)
        for first, members in sorted(by_first.items()):
            scores = self._pairs_after(first, [max(configurations[index]) for index in members], progress) or []
            for index, score in zip(members, scores):
                results[index] = score
                if on_scored:
                    on_scored(index, score)
        rest = [index for index, score in enumerate(results) if score is None]
        scores = self._scan(self._cache, [frozenset(Target(layer) for layer in configurations[index]) for index in rest],
                            "zero", progress, None if on_scored is None else lambda i, sc: on_scored(rest[i], sc))
        for index, score in zip(rest, scores):
            results[index] = score
        return results  # type: ignore[return-value]  (every configuration is scored)

    def ablation_scan(self, configurations: Sequence[frozenset[Target]], ablation: str = "zero",
                      progress: Progress | None = None, on_scored: Scored | None = None) -> list[SampleScores]:
        """Scores with each set of targets removed (``ablation``: zero or mean), in the order given.

        Each configuration resumes from the baseline's cached stream at its first changed layer
        (after it, for a skipped whole layer), or from the nearest kept boundary below it;
        configurations are stacked along the batch up to ``batch_size`` rows per forward.
        """
        if ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
        keys = [f"{ablation} " + ",".join(str(target) for target in sorted(c, key=_order)) for c in configurations]

        def scan(mine: list[int], scored: Scored) -> list[SampleScores]:
            chosen = [configurations[i] for i in mine]
            if ablation == "mean" and chosen:
                self._ensure_means(set().union(*chosen))
            return self._scan(self._cache, chosen, ablation, progress, scored)

        return self._recorded(keys, scan, progress, on_scored)

    def repeat_scan(self, blocks: Sequence[tuple[int, int]], progress: Progress | None = None) -> list[SampleScores]:
        """Scores with each block of layers ``first..stop-1`` run twice (layer duplication: execution
        order 0..stop-1, first..L-1), in the order given; ``first == stop`` duplicates nothing.

        Layers 0..stop-1 see exactly the baseline's inputs on their first pass, so each run resumes
        from the cached stream at boundary ``stop`` (at ``L-1`` when the block ends at the last
        layer: the backend needs at least one layer to run), or the nearest kept one below it.
        """
        keys = [f"repeat {first}-{stop}" for first, stop in blocks]
        return self._recorded(keys, lambda mine, scored: self._repeat_scan([blocks[i] for i in mine], progress, scored),
                              progress, None)

    def _repeat_scan(self, blocks: Sequence[tuple[int, int]], progress: Progress | None,
                     on_scored: Scored) -> list[SampleScores]:
        results = []
        for first, stop in blocks:
            resume = self._cache.floor(min(stop, self.num_layers - 1))
            repeat = (first, stop) if stop > first else None
            parts = []
            for index, block in enumerate(self.blocks):
                final = self.backend.run(block.batch, repeat=repeat, start_layer=resume,
                                         start_stream=self._cache.stream(index, resume))[0]
                parts.append(gather_pairs(final, self.plan, block.rows, block.pairs)[0])
            results.append(score_logits(self.plan, self.backend.unembed(torch.cat(parts))))
            on_scored(len(results) - 1, results[-1])
            if progress:
                progress(1)
        return results

    def means(self, targets: Sequence[Target]) -> dict[Target, torch.Tensor]:
        """What mean ablation puts in each target's place: the mean over the probe's real tokens of
        what it contributes in the baseline run (float32)."""
        self._ensure_means(set(targets))
        return {target: self._means[target] for target in targets}

    def _recorded(self, keys: list[str], compute: Callable[[list[int], Scored], list[SampleScores]],
                  progress: Progress | None, on_scored: Scored | None) -> list[SampleScores]:
        """Every configuration's scores, in order: those the journal holds as they were recorded,
        the rest from ``compute(indices, on_scored)`` (this process's share of them when
        ``workers`` split the scan; the others' scores are gathered). Each newly scored
        configuration is recorded in the journal as soon as it is scored."""
        results: dict[int, SampleScores] = {}
        for index, key in enumerate(keys):
            found = self.journal.find(key) if self.journal else None
            if found is not None:
                results[index] = found
                if on_scored:
                    on_scored(index, found)
                if progress:
                    progress(1)
        todo = [index for index in range(len(keys)) if index not in results]
        mine = self.workers.share(todo) if self.workers else todo

        def scored(position: int, scores: SampleScores) -> None:
            if self.journal:
                self.journal.record(keys[mine[position]], scores)
            if on_scored:
                on_scored(mine[position], scores)

        fresh = dict(zip(mine, compute(mine, scored)))
        if self.workers:
            for index, scores in self.workers.gather(fresh).items():
                if index not in fresh:  # scored by another process
                    fresh[index] = scores
                    if self.journal:
                        self.journal.record(keys[index], scores)
                    if on_scored:
                        on_scored(index, scores)
        results.update(fresh)
        return [results[index] for index in range(len(keys))]

    # -- resuming ---------------------------------------------------------------------------------

    def _scan(self, cache: StreamCache, configurations: Sequence[frozenset[Target]], ablation: str,
              progress: Progress | None, on_scored: Scored | None = None) -> list[SampleScores]:
        """Scores of each configuration run from ``cache`` (which holds a run with none of their targets);
        ``on_scored(index, scores)`` as soon as a configuration has been run on every row block."""
        order = sorted(range(len(configurations)), key=lambda i: self._entry(cache, configurations[i], ablation))
        hidden: list[list[torch.Tensor]] = [[] for _ in configurations]
        scored: list[SampleScores | None] = [None] * len(configurations)
        for index, block in enumerate(self.blocks):
            per_forward = max(1, self.batch_size // (block.rows.stop - block.rows.start))
            for chunk_start in range(0, len(order), per_forward):
                chunk = order[chunk_start : chunk_start + per_forward]
                final = self._run_chunk(index, cache, [configurations[i] for i in chunk], ablation)
                copies = gather_pairs(final, self.plan, block.rows, block.pairs, copies=len(chunk))
                for position, config_index in enumerate(chunk):
                    hidden[config_index].append(copies[position])
                    if len(hidden[config_index]) == len(self.blocks):  # every row block done: score it now
                        scored[config_index] = score_logits(self.plan, self.backend.unembed(torch.cat(hidden[config_index])))
                        hidden[config_index] = []
                        if on_scored:
                            on_scored(config_index, scored[config_index])
                if progress:
                    progress(len(chunk) / len(self.blocks))
        return scored

    def _entry(self, cache: StreamCache, configuration: frozenset[Target], ablation: str) -> int:
        """The layer a configuration's run starts at: after its lowest target when that is a whole
        layer skipped whose input the cache holds (the skipped layer passes it through), else at the
        highest boundary the cache holds at or below its lowest target (L for the empty configuration)."""
        lowest = min((t.layer for t in configuration), default=self.num_layers)
        if ablation == "zero" and Target(lowest) in configuration and cache.holds(lowest):
            return lowest + 1
        return cache.floor(lowest)

    def _run_chunk(self, index: int, cache: StreamCache, configs: list[frozenset[Target]], ablation: str,
                   into: StreamCache | None = None) -> torch.Tensor | None:
        """One forward of row block ``index`` for several configurations stacked along the batch,
        from the lowest entry among them; a configuration whose skipped layer is the one just before
        that entry starts from the stream before it (the skipped layer passes it through). Returns
        the final stream, or, with ``into``, runs up to the last boundary ``into`` holds and adds
        this block's streams at its boundaries to it."""
        block = self.blocks[index]
        start = min(self._entry(cache, c, ablation) for c in configs)
        if not (cache.holds(start) or (start == 0 and cache.from_embeddings)):
            start -= 1  # entered after a skipped layer whose output is not held: run from its input, skipping it
        starts = [cache.stream(index, start - 1 if ablation == "zero" and start and Target(start - 1) in c else start)
                  for c in configs]
        stream = None if starts[0] is None else torch.cat([s.to(starts[0].device) for s in starts])
        size = block.batch.size
        skips: dict[int, torch.Tensor | None] = {}
        interventions: dict[Target, Intervention] = {}
        for target in sorted(set().union(*configs)):
            if target.layer < start:
                continue
            flags = torch.tensor([target in c for c in configs]).repeat_interleave(size)
            rows = None if bool(flags.all()) else flags
            if ablation == "zero" and target.part == "layer":
                skips[target.layer] = rows
            else:
                interventions[target] = Intervention(rows=rows, value=None if ablation == "zero" else self._means[target])
        batch = block.batch.repeat(len(configs)) if len(configs) > 1 else block.batch
        if into is None:
            return self.backend.run(batch, skip=skips, start_layer=start, start_stream=stream,
                                    interventions=interventions)[0]
        streams = self.backend.run(batch, skip=skips, start_layer=start, start_stream=stream, interventions=interventions,
                                   capture=into.boundaries, stop_layer=into.boundaries[-1], capture_device=into.device)
        into.streams.append({boundary: streams[boundary] for boundary in into.boundaries})
        return None

    def _pairs_after(self, first: int, seconds: list[int], progress: Progress | None) -> list[SampleScores] | None:
        """Pairs (first, j) for each j in ``seconds``, resumed after j from the run with ``first``
        skipped; None when that does not pay or its cache does not fit.

        The stream at boundary j of the run with layer i skipped is the same for every pair with
        that i. So that run is cached once, up to the last j, and each pair resumes after j from it:
        L-1-j layer passes instead of the L-1-i of resuming after i from the baseline. That pays when
        the pairs reach further than the cached run: when the sum of their (j - i) exceeds (last j -
        i). The run's cache keeps every K-th boundary from i+1, within what ``cache_memory`` leaves
        beside the baseline's (without a budget it may take as much as the baseline's: the peak is
        then up to twice the baseline's cache), on the CPU when an accelerator is short of memory."""
        last = max(seconds)
        if sum(j - first for j in seconds) <= last - first:
            return None
        budget = None if self.cache_memory is None else self.cache_memory - self.cache_bytes
        spacing = spacing_within(first + 1, last, self.boundary_bytes, budget,
                                 smallest=self.keep_every if budget is None else 1)
        if spacing is None:
            return None
        boundaries = every_kth(first + 1, last, spacing)
        skipped = StreamCache(boundaries, from_embeddings=False, device=self._placement(boundaries))
        for index in range(len(self.blocks)):
            self._run_chunk(index, self._cache, [frozenset({Target(first)})], "zero", into=skipped)
        return self._scan(skipped, [frozenset({Target(j)}) for j in seconds], "zero", progress)

    def _streams_at(self, boundary: int) -> list[torch.Tensor]:
        """The baseline's stream at one boundary, per row block: kept, or recomputed from the highest
        kept boundary below it, or from the last one recomputed when that is nearer (so reading the
        boundaries in order recomputes each layer once)."""
        if self._cache.holds(boundary):
            return [streams[boundary] for streams in self._cache.streams]
        if self._cursor is not None and self._cursor[0] == boundary:
            return self._cursor[1]
        start = self._cache.floor(boundary)
        if self._cursor is not None and start < self._cursor[0] < boundary:
            start, starts = self._cursor
        else:
            starts = [self._cache.stream(index, start) for index in range(len(self.blocks))]
        self._cursor = None  # its memory is free before the next is made
        streams = [self.backend.run(block.batch, start_layer=start, start_stream=stream, stop_layer=boundary,
                                    capture_device=self._cache.device)[0] for block, stream in zip(self.blocks, starts)]
        self._cursor = (boundary, streams)
        return streams

    def _placement(self, boundaries: Sequence[int]) -> torch.device | None:
        """Where to keep streams at these boundaries: where their layers make them (None), or on the
        CPU when an accelerator has too little free memory for them now."""
        made_on = (self.backend.layer_device(boundary - 1) for boundary in boundaries)
        return cache_device(bytes_on(made_on, self.boundary_bytes), free_memory)

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


def _order(target: Target) -> tuple[int, str, int]:
    return target.layer, target.part, target.head
