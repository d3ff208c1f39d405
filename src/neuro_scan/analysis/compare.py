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

import json
from collections import Counter
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from neuro_scan.errors import UsageError

DEFAULT_TOLERANCE = 0.05
OUR_UNIT = "answer log-prob (nats)"
REFERENCE_UNIT = "reference score (expected digit 0-9)"
# fields that a fetched dataset row may hold as JSON-encoded strings
_ENCODED_FIELDS = ("ablation_results", "layer_labels", "top_important_layers")


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


@dataclass
class SharedDepth:
    """A relative depth at which every compared model has a reasoning layer."""

    relative_depth: float  # mean depth of the matched layers
    layers: dict[str, int]  # model name -> its reasoning layer there


@dataclass
class Comparison:
    profiles: list[ModelProfile]
    grid: np.ndarray  # [G] relative depths
    resampled: np.ndarray  # [M, G] each damage profile on the grid
    pearson: list[list[float | None]]
    spearman: list[list[float | None]]
    shared_reasoning: list[SharedDepth]
    pairwise_shared: dict[tuple[str, str], list[SharedDepth]]
    tolerance: float
    ranking: list[str]  # names, highest mean sensitivity first

    @property
    def comparable_means(self) -> bool:
        return len({p.unit for p in self.profiles}) == 1 and len({p.probe for p in self.profiles}) == 1


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


def profile_from_report(data: object, source: str) -> ModelProfile:
    """A report (ours, the reference's, or a fetched dataset row) -> its profile; anything else is
    a one-line UsageError naming the file. The name is made unique later by :func:`compare`."""

    def bad(why: str) -> UsageError:
        return UsageError(f"{source}: not a neuro-scan report ({why})")

    if not isinstance(data, dict):
        raise bad("the top level is not a JSON object")
    data = {key: _decoded(data[key]) if key in _ENCODED_FIELDS else data[key] for key in data}
    rows = data.get("ablation_results")
    if not isinstance(rows, list) or not rows:
        raise bad("no 'ablation_results' list")
    damage: dict[int, float] = {}
    intervals: dict[int, list] = {}
    for row in rows:
        if not isinstance(row, dict):
            raise bad("an 'ablation_results' entry is not an object")
        layer, delta = row.get("layer_idx"), row.get("score_delta")
        if not isinstance(layer, int) or isinstance(layer, bool) or not _is_number(delta):
            raise bad("an 'ablation_results' entry lacks an integer 'layer_idx' or a numeric 'score_delta'")
        damage[layer] = float(delta)
        ci = row.get("score_delta_ci")
        if isinstance(ci, list) and len(ci) == 2 and all(_is_number(v) for v in ci):
            intervals[layer] = [float(v) for v in ci]
    total = data.get("total_layers", len(rows))
    if not isinstance(total, int) or sorted(damage) != list(range(total)):
        raise bad(f"'ablation_results' must hold one entry per layer 0..{total - 1 if isinstance(total, int) else '?'}")
    model = data.get("model", data.get("model_id"))
    if not isinstance(model, str) or not model:
        raise bad("no 'model' name")
    top = data.get("top_important_layers")
    top = top if isinstance(top, list) else []
    top_layers = [i for i in top if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < total]
    reasoning, reasoning_source = _reasoning_layers(data.get("layer_labels"), top_layers, total)
    baseline = data.get("baseline_score")
    return ModelProfile(
        name=model,
        model=model,
        source=source,
        probe=str(data.get("probe", "")),
        damage=np.array([damage[i] for i in range(total)]),
        damage_ci=np.array([intervals[i] for i in range(total)]) if len(intervals) == total else None,
        top_layers=top_layers,
        reasoning_layers=reasoning,
        reasoning_source=reasoning_source,
        unit=OUR_UNIT if "score_definition" in data else REFERENCE_UNIT,
        baseline_score=float(baseline) if _is_number(baseline) else None,
    )


def _decoded(value):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return value
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _reasoning_layers(labels, top_layers: list[int], total: int) -> tuple[list[int], str]:
    if isinstance(labels, dict) and labels:
        chosen = sorted(int(k) for k, v in labels.items() if v == "reasoning" and str(k).isdigit() and int(k) < total)
        return chosen, "layer_labels"
    return sorted(set(top_layers)), "top_important_layers"


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
