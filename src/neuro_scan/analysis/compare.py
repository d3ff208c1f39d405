"""Compare the ablation profiles of several models (or runs) from their report.json files.

numpy only: `neuro-scan compare` reads JSON and must start fast, so nothing here may import
torch or transformers.

Method (docs/compare.md):

- A profile is a report's damage per layer (``score_delta`` = baseline - ablated). Layer l of a
  model with L layers sits at relative depth l / (L - 1), so models of different depth share
  one axis.
- Similarity: every profile is linearly interpolated onto the relative depths of the deepest
  model (``max L`` evenly spaced points in [0, 1]) and compared with Pearson and Spearman
  correlation. Both ignore scale and offset, so profiles measured in different units (our
  nats, the reference's expected digit) still compare by shape. A flat profile has no shape:
  its correlations are null and it is listed in ``flat_profiles``.
- Reasoning layers: the layers a report labels ``reasoning`` (``layer_labels``), or its
  ``top_important_layers`` when it has no labels. A relative depth is shared when every model
  has a reasoning layer within ``tolerance`` of it.
- Ranking: by mean damage over layers (mean sensitivity). Means are only comparable within
  one unit and one probe; the result says whether they are.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np

from neuro_scan.frames import Framed
from neuro_scan.errors import UsageError
from neuro_scan.report.read import REFERENCE, Report, ReportError, read_report

DEFAULT_TOLERANCE = 0.05
OUR_UNIT = "answer log-prob (nats)"
REFERENCE_UNIT = "reference score (expected digit 0-9)"


@dataclass
class ModelProfile:
    name: str  # unique display name
    model: str
    source: str  # the report file
    probe: str
    damage: np.ndarray  # [L] baseline - ablated, per layer
    damage_ci: np.ndarray | None  # [L, 2] when the report has intervals (ours)
    top_layers: list[int]  # the report's top_important_layers
    reasoning_layers: list[int]
    reasoning_source: str  # "layer_labels" or "top_important_layers"
    unit: str
    baseline_score: float | None

    @property
    def total_layers(self) -> int:
        return len(self.damage)

    @property
    def depths(self) -> np.ndarray:
        return relative_depths(self.total_layers)

    @property
    def flat(self) -> bool:
        return bool(np.ptp(self.damage) == 0)

    @property
    def mean_sensitivity(self) -> float:
        return float(self.damage.mean())

    @property
    def most_damaging_layer(self) -> int:
        return int(np.argmax(self.damage))

    @property
    def significant_layers(self) -> list[int] | None:
        """Layers whose damage interval lies above zero (None: the report has no intervals)."""
        return [int(i) for i in np.flatnonzero(self.damage_ci[:, 0] > 0)] if self.damage_ci is not None else None

    @property
    def reasoning_fraction(self) -> float:
        return len(self.reasoning_layers) / self.total_layers


@dataclass
class SharedDepth:
    """A relative depth at which every compared model has a reasoning layer."""

    relative_depth: float  # mean depth of the matched layers
    layers: dict[str, int]  # model name -> its reasoning layer there


@dataclass
class Comparison(Framed):
    profiles: list[ModelProfile]
    grid: np.ndarray  # [G] relative depths
    resampled: np.ndarray  # [M, G] each damage profile on the grid
    pearson: list[list[float | None]]
    spearman: list[list[float | None]]
    shared_reasoning: list[SharedDepth]
    pairwise_shared: dict[tuple[str, str], list[SharedDepth]]
    tolerance: float
    ranking: list[str]  # names, highest mean sensitivity first
    warnings: list[str] = field(default_factory=list)  # what may make it mislead (neuro_scan.caveats)

    @property
    def comparable_means(self) -> bool:
        return len({p.unit for p in self.profiles}) == 1 and len({p.probe for p in self.profiles}) == 1

    @property
    def ranked_profiles(self) -> list[ModelProfile]:
        by_name = {p.name: p for p in self.profiles}
        return [by_name[name] for name in self.ranking]


def relative_depths(num_layers: int) -> np.ndarray:
    return np.arange(num_layers) / max(num_layers - 1, 1)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their mean rank (as Spearman's correlation needs)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation; None when either side is constant (the correlation is undefined)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    if norm == 0 or not np.isfinite(norm):
        return None
    return float(np.clip((a * b).sum() / norm, -1.0, 1.0))


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    return pearson(_ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64)))


def correlation_matrix(rows: np.ndarray, method) -> list[list[float | None]]:
    return [[method(a, b) for b in rows] for a in rows]


def profile_from_report(report: Report | str | Path | dict, source: str) -> ModelProfile:
    """A report (read, a file or a parsed document: ours, the reference's, or a fetched dataset
    row) -> its profile; anything else is a one-line UsageError naming ``source``. The name is made
    unique later by :func:`compare`."""
    try:
        read = report if isinstance(report, Report) else read_report(report, source)
    except ReportError as error:
        raise UsageError(f"{source}: no such report file" if error.missing else
                         f"{source}: not a neuro-scan report ({error.why})") from None
    damage = read.profile()
    if damage is None:
        if not read.rows:
            why = f"it is a {read.kind} report, with no 'ablation_results' list: give a map or ablate report"
        else:
            why = (f"'ablation_results' must hold one entry per layer 0..{read.total_layers - 1} with a numeric "
                   "'score_delta'")
        raise UsageError(f"{source}: not a neuro-scan report ({why})")
    intervals = read.profile_intervals()
    reasoning, reasoning_source = _reasoning_layers(read)
    return ModelProfile(
        name=read.model,
        model=read.model,
        source=source,
        probe=read.probe or "",
        damage=np.array(damage),
        damage_ci=np.array(intervals) if intervals is not None else None,
        top_layers=[row.layer for row in read.top_layers],
        reasoning_layers=reasoning,
        reasoning_source=reasoning_source,
        unit=REFERENCE_UNIT if read.flavour == REFERENCE else OUR_UNIT,
        baseline_score=read.baseline_score,
    )


def _reasoning_layers(report: Report) -> tuple[list[int], str]:
    if report.labels:
        return sorted(layer for layer, label in report.labels.items() if label == "reasoning"), "layer_labels"
    return sorted({row.layer for row in report.top_layers}), "top_important_layers"


def unique_names(profiles: list[ModelProfile]) -> None:
    """Give repeated model names a suffix (the file, then a counter): no profile is overwritten."""
    counts = Counter(p.name for p in profiles)
    for profile in profiles:
        if counts[profile.name] > 1:
            profile.name = f"{profile.model} ({profile.source})"
    seen: Counter = Counter()
    for profile in profiles:
        seen[profile.name] += 1
        if seen[profile.name] > 1:
            profile.name = f"{profile.name} #{seen[profile.name]}"


def shared_depths(profiles: list[ModelProfile], tolerance: float) -> list[SharedDepth]:
    """Relative depths where every profile has a reasoning layer within ``tolerance``.

    Every reasoning layer of every model is a candidate depth; each model contributes its
    reasoning layer nearest to it. Candidates that match the same layers are one result.
    """
    found: dict[tuple[int, ...], SharedDepth] = {}
    candidates = sorted({float(p.depths[layer]) for p in profiles for layer in p.reasoning_layers})
    for depth in candidates:
        matched: dict[str, int] = {}
        for profile in profiles:
            if not profile.reasoning_layers:
                break
            layer = min(profile.reasoning_layers, key=lambda i: abs(profile.depths[i] - depth))
            if abs(profile.depths[layer] - depth) > tolerance + 1e-12:
                break
            matched[profile.name] = layer
        else:
            key = tuple(matched.values())
            if key not in found:
                mean_depth = float(np.mean([p.depths[matched[p.name]] for p in profiles]))
                found[key] = SharedDepth(relative_depth=mean_depth, layers=matched)
    return sorted(found.values(), key=lambda s: s.relative_depth)


def compare(profiles: list[ModelProfile], tolerance: float = DEFAULT_TOLERANCE) -> Comparison:
    if len(profiles) < 2:
        raise UsageError("compare: give at least two report files")
    unique_names(profiles)
    grid = relative_depths(max(p.total_layers for p in profiles))
    resampled = np.stack([np.interp(grid, p.depths, p.damage) for p in profiles])
    pairwise = {(a.name, b.name): shared_depths([a, b], tolerance) for a, b in combinations(profiles, 2)}
    return Comparison(
        profiles=profiles,
        grid=grid,
        resampled=resampled,
        pearson=correlation_matrix(resampled, pearson),
        spearman=correlation_matrix(resampled, spearman),
        shared_reasoning=shared_depths(profiles, tolerance),
        pairwise_shared=pairwise,
        tolerance=tolerance,
        ranking=[p.name for p in sorted(profiles, key=lambda p: -p.mean_sensitivity)],
    )


def validate(options) -> Path:
    """The `compare` command's checks -> its output folder (held until the end)."""
    from neuro_scan.report import prepare_output_dir

    options.check()
    return prepare_output_dir(options.output)


def execute(options) -> Comparison:
    from neuro_scan.caveats import comparison_warnings

    tolerance = DEFAULT_TOLERANCE if options.tolerance is None else options.tolerance
    result = compare([profile_from_report(Path(path), path) for path in options.reports], tolerance)
    result.warnings = comparison_warnings(result)
    return result
