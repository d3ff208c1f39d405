"""Does repeating the prompt N times act like running some layers twice? Both are measured.

- Repetition: the probe with every prompt repeated N times (copies joined by SEPARATOR, the
  answer after the last copy), scored like any probe; change = score(N) - score(1), per sample.
- Duplication: the model with layers first..stop-1 run a second time (execution order
  0..stop-1, first..L-1, as layer-scan and mergekit passthrough build it), through
  :meth:`Engine.repeat_scan`; change = score(duplicated) - baseline, per sample.
- Equivalence: for each N and each duplication, the paired per-sample difference of the two
  changes, with a 95% bootstrap-t interval. The duplications whose difference has the smallest
  magnitude are the best matches; a duplication is *indistinguishable* from repetition N when
  that interval contains zero.

Verdict per N:

- ``no_effect``: repetition N's own change is not significant, so it is indistinguishable from
  duplicating nothing and a match says nothing;
- ``matched``: the change is significant and at least one duplication is indistinguishable;
- ``unlike_duplication``: the change is significant and every duplication differs from it.

A change is significant when its p-value, adjusted across its family (the repeat counts, or the
duplication blocks) by Benjamini-Hochberg, is at most 0.05 (docs/statistics.md). The equivalence
intervals are per comparison and not corrected: a correction would widen "indistinguishable" to
more duplications, the opposite of caution. With many blocks some will still look
indistinguishable by chance, and few samples give wide intervals that make "indistinguishable"
easy: read matches with the interval widths.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from neuro_scan.frames import Framed
from neuro_scan.engine import Engine, Progress
from neuro_scan.probes import Probe
from neuro_scan.scoring import SampleScores
from neuro_scan.statistics import Interval, mean_intervals

SEPARATOR = " "  # between prompt copies: a space encodes in every vocabulary (a newline may not)
BEST_MATCHES = 3


def repeated_probe(probe: Probe, count: int) -> Probe:
    """The probe with each prompt written ``count`` times; answers and choices unchanged."""
    return replace(probe, samples=tuple(replace(s, prompt=SEPARATOR.join([s.prompt] * count)) for s in probe.samples))


def default_block_sizes(num_layers: int) -> list[int]:
    """1, 2, 4, ... up to half the depth (at least 1)."""
    sizes = [1]
    while sizes[-1] * 2 <= num_layers // 2:
        sizes.append(sizes[-1] * 2)
    return sizes


def duplication_blocks(num_layers: int, sizes: Sequence[int]) -> list[tuple[int, int]]:
    """Every block (first, first + K) of each size K, at every position."""
    return [(first, first + size) for size in sizes for first in range(num_layers - size + 1)]


@dataclass
class Condition:
    """One scored variant of the probe, relative to the plain baseline."""

    score: float
    accuracy: float
    change: Interval  # score - baseline score, paired over samples; p-values adjusted across its family


@dataclass
class Duplication:
    first: int
    stop: int
    condition: Condition

    @property
    def size(self) -> int:
        return self.stop - self.first


@dataclass
class Match:
    duplication: Duplication
    difference: Interval  # repetition change - duplication change, paired over samples

    @property
    def indistinguishable(self) -> bool:
        return not self.difference.excludes_zero


@dataclass
class Repetition:
    count: int
    condition: Condition
    best_matches: list[Match]  # smallest |difference| first
    indistinguishable: list[Match]  # every duplication whose difference interval contains zero

    @property
    def verdict(self) -> str:
        if not self.condition.change.significant:
            return "no_effect"
        return "matched" if self.indistinguishable else "unlike_duplication"


@dataclass
class PromptRepeatResult(Framed):
    baseline: Condition
    repetitions: list[Repetition]
    duplications: list[Duplication]
    block_sizes: list[int]
    separator: str
    seconds: float
    warnings: list[str] = field(default_factory=list)  # what may make it mislead (neuro_scan.caveats)


def run_prompt_repeat(engine: Engine, counts: Sequence[int], block_sizes: Sequence[int], seed: int,
                      progress: Progress | None = None) -> PromptRepeatResult:
    """``progress`` advances by one unit per repeat count and per duplication block."""
    started = time.perf_counter()
    baseline = engine.baseline
    repeated: list[SampleScores] = []
    for count in counts:
        repeated.append(baseline if count == 1 else
                        Engine(engine.backend, repeated_probe(engine.probe, count), engine.batch_size,
                               cache_memory=engine.cache_memory).baseline)
        if progress:
            progress(1)
    blocks = duplication_blocks(engine.num_layers, block_sizes)
    duplicated = engine.repeat_scan(blocks, progress)

    def conditions(runs: list[SampleScores]) -> list[Condition]:
        changes = mean_intervals(np.stack([r.answer_logprob - baseline.answer_logprob for r in runs]), seed)
        return [Condition(r.score, r.accuracy, change) for r, change in zip(runs, changes)]

    duplications = [Duplication(first, stop, c) for (first, stop), c in zip(blocks, conditions(duplicated))]
    dup_logprob = np.stack([d.answer_logprob for d in duplicated])  # [D, S]
    repetitions = []
    for count, run, condition in zip(counts, repeated, conditions(repeated)):
        # (score_N - base) - (score_dup - base), per sample
        differences = mean_intervals(run.answer_logprob - dup_logprob, seed)
        matches = sorted((Match(d, diff) for d, diff in zip(duplications, differences)),
                         key=lambda m: abs(m.difference.mean))
        repetitions.append(Repetition(count, condition, matches[:BEST_MATCHES], [m for m in matches if m.indistinguishable]))
    return PromptRepeatResult(conditions([baseline])[0], repetitions, duplications, list(block_sizes), SEPARATOR,
                              time.perf_counter() - started)


def execute(session, options) -> PromptRepeatResult:
    """The blocks must fit the model's layers and every repeated prompt its positions: checked on
    the loaded model before any forward."""
    from neuro_scan.caveats import announce, probe_warnings
    from neuro_scan.errors import UsageError
    from neuro_scan.scoring import build_plan

    counts, sizes = options.counts(), options.sizes()
    backend, probe = session.backend, session.probe
    if sizes is not None and max(sizes) > backend.num_layers:
        raise UsageError(f"--dup-sizes: a block of {max(sizes)} layers does not fit in this model's "
                         f"{backend.num_layers} layers")
    for count in sorted({1, *counts}):
        build_plan(repeated_probe(probe, count), backend,
                   f" with its prompt repeated {count} times (--repeat-counts)" if count > 1 else "")
    engine = session.engine
    sizes = default_block_sizes(engine.num_layers) if sizes is None else sizes
    units = len(counts) + len(duplication_blocks(engine.num_layers, sizes))
    with session.phase("prompt-repeat", f"{len(counts)} repeat counts, {units - len(counts)} duplicated blocks", units,
                       timing="prompt_repeat_seconds") as advance:
        result = run_prompt_repeat(engine, counts, sizes, options.seed, advance)
    result.warnings = announce(session, probe_warnings(result.baseline.accuracy, len(probe.samples)))
    return result
