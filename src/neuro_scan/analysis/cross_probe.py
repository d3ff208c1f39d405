"""Which layers matter for every task, and which for one: single-layer ablation under several
probes on one loaded model.

Each probe gets its own baseline (one Engine) and its full ablation scan through the engine;
only one probe's cached streams are held at a time.

- universal layers: removal does significant damage in every probe;
- probe-specific layers: significant damage in exactly one probe;

where significant damage is each probe's own decision (its layers' p-values adjusted together,
Benjamini-Hochberg at q = 0.05; docs/statistics.md). Requiring significance in every probe needs
no further correction: a layer is universal only if each probe's test says so.
- correlation of the damage profiles between probes, Pearson and Spearman (null when a
  profile is flat).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from neuro_scan.frames import Framed
from neuro_scan.analysis.ablation import AblationResult, run_ablation
from neuro_scan.analysis.compare import correlation_matrix, pearson, spearman
from neuro_scan.backend.base import Backend
from neuro_scan.engine import Engine, Progress
from neuro_scan.probes import Probe


@dataclass
class ProbeAblation:
    probe: Probe
    ablation: AblationResult
    baseline_seconds: float


@dataclass
class CrossProbeResult(Framed):
    per_probe: list[ProbeAblation]
    universal_layers: list[int]
    specific_layers: dict[str, list[int]]  # probe name -> layers significant in that probe only
    pearson: list[list[float | None]]
    spearman: list[list[float | None]]
    seconds: float
    warnings: list[str] = field(default_factory=list)  # each probe's (neuro_scan.caveats)

    @property
    def names(self) -> list[str]:
        return [p.probe.name for p in self.per_probe]


def run_cross_probe(backend: Backend, probes: Sequence[Probe], batch_size: int, seed: int,
                    progress: Progress | None = None,
                    new_engine: Callable[[Probe], Engine] | None = None) -> CrossProbeResult:
    """``progress`` advances by L units per probe; ``new_engine(probe)`` makes each probe's engine
    (a session's: its cache budget and journal; default: a plain Engine)."""
    started = time.perf_counter()
    per_probe = []
    for probe in probes:
        baseline_started = time.perf_counter()
        engine = new_engine(probe) if new_engine else Engine(backend, probe, batch_size=batch_size)
        baseline_seconds = time.perf_counter() - baseline_started
        ablation = run_ablation(engine, seed=seed, progress=progress)
        per_probe.append(ProbeAblation(probe, ablation, baseline_seconds))
        del engine  # its cached streams: one probe's at a time
    return summarize(per_probe, time.perf_counter() - started)


def summarize(per_probe: list[ProbeAblation], seconds: float) -> CrossProbeResult:
    significant = [set(p.ablation.important_layers) for p in per_probe]
    counts = np.zeros(len(per_probe[0].ablation.layers), dtype=int)
    for layers in significant:
        counts[list(layers)] += 1
    profiles = np.stack([[layer.damage.mean for layer in p.ablation.layers] for p in per_probe])
    return CrossProbeResult(
        per_probe=per_probe,
        universal_layers=[int(i) for i in np.flatnonzero(counts == len(per_probe))],
        specific_layers={p.probe.name: sorted(i for i in layers if counts[i] == 1)
                         for p, layers in zip(per_probe, significant)},
        pearson=correlation_matrix(profiles, pearson),
        spearman=correlation_matrix(profiles, spearman),
        seconds=seconds,
    )


def execute(session, options) -> CrossProbeResult:
    """Every probe is checked against the model (positions, known characters) before the first one runs."""
    from neuro_scan.caveats import announce, scan_warnings
    from neuro_scan.scoring import build_plan

    for probe in session.probes:
        build_plan(probe, session.backend)
    layers = session.backend.num_layers
    with session.phase("cross-probe", f"ablating {layers} layers under {len(session.probes)} probes",
                       layers * len(session.probes), timing="cross_probe_seconds") as advance:
        result = run_cross_probe(session.backend, session.probes, options.batch_size, options.seed, advance,
                                 session.new_engine)
    for entry in result.per_probe:
        entry.ablation.warnings = scan_warnings(entry.ablation, entry.probe.name)
    result.warnings = announce(session, [warning for entry in result.per_probe for warning in entry.ablation.warnings])
    return result
