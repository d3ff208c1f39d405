"""Is this a neuro-scan report? One check for everything that reads reports made elsewhere
(``fetch``, ``publish``, ``compare``).

Two formats are accepted:

* ours (``"format": "neuro-scan-report/1"``), checked strictly: one ablation row and one label
  per layer, ``top_important_layers`` present;
* the reference tool's report.json (no ``format`` key), checked only on the keys its consumers
  read (``compare``, ``layer-scan annotate``): some layers may lack a row or a label, ``probe`` and
  ``top_important_layers`` may be missing, numbers may be NaN.

Both must have ``model``, ``total_layers``, ``ablation_results`` rows with ``layer_idx`` and
``score_delta``, and ``layer_labels`` as an object with a string layer index per key and a string
label per value (``layer-scan annotate`` crashes on anything else). Problems are reported one at a
time, naming the key, as a :class:`UsageError`. Standard library only: fast commands import this.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from neuro_scan.errors import UsageError

# report formats this version reads; report/build.py writes the newest (a test keeps them in step)
READABLE_FORMATS = ("neuro-scan-report/1",)
FORMAT_PREFIX = "neuro-scan-report/"
REFERENCE = "reference"  # ReportInfo.flavour of a reference-tool report


class _Invalid(Exception):
    """One problem with a report; :func:`validate_report` adds where the report came from."""


@dataclass(frozen=True)
class TopLayer:
    layer: int
    score_delta: float | None
    label: str | None


@dataclass(frozen=True)
class ReportInfo:
    """What a valid report says, read the same way from either format."""

    flavour: str  # a READABLE_FORMATS entry, or REFERENCE
    model: str
    probe: str | None
    total_layers: int
    created_at: str | None
    tool_version: str | None
    baseline_score: float | None
    baseline_stderr: float | None
    top_layers: tuple[TopLayer, ...]
    labels: dict[int, str]

    @property
    def made_by(self) -> str:
        if self.tool_version:
            return f"neuro-scan {self.tool_version}"
        return "the reference tool" if self.flavour == REFERENCE else "neuro-scan (version not recorded)"

    def label_runs(self) -> list[tuple[int, int, str]]:
        """Consecutive layers with the same label as (first, last, label); unlabelled layers are skipped."""
        runs: list[tuple[int, int, str]] = []
        for layer in sorted(self.labels):
            label = self.labels[layer]
            if runs and runs[-1][2] == label and runs[-1][1] == layer - 1:
                runs[-1] = (runs[-1][0], layer, label)
            else:
                runs.append((layer, layer, label))
        return runs


@dataclass(frozen=True)
class CheckedReport:
    data: dict
    info: ReportInfo


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite_or_none(value: object) -> float | None:
    return float(value) if _is_number(value) and math.isfinite(value) else None


def _kind(value: object) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if _is_number(value) else type(value).__name__)


def _flavour(data: dict) -> str:
    fmt = data.get("format")
    if fmt is None:
        return REFERENCE
    if fmt in READABLE_FORMATS:
        return fmt
    if isinstance(fmt, str) and fmt.startswith(FORMAT_PREFIX):
        raise _Invalid(f"its format '{fmt}' is not one this neuro-scan reads ({', '.join(READABLE_FORMATS)}); "
                       "upgrade neuro-scan")
    raise _Invalid(f"'format' is {fmt!r}, not a neuro-scan report format")


def _text(data: dict, key: str, required: bool) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if key not in data:
        raise _Invalid(f"'{key}' is missing")
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"'{key}' must be a non-empty string, got {value!r}")
    return value


def _total_layers(data: dict) -> int:
    total = data.get("total_layers")
    if not _is_int(total) or total < 1:
        raise _Invalid(f"'total_layers' must be a positive integer, got {total!r}")
    return total


def _ablation_rows(data: dict, total: int, strict: bool) -> dict[int, dict]:
    rows = data.get("ablation_results")
    if not isinstance(rows, list) or not rows:
        raise _Invalid("'ablation_results' must be a non-empty list of per-layer objects")
    by_layer: dict[int, dict] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise _Invalid(f"ablation_results[{i}] is a {_kind(row)}, not an object")
        layer = row.get("layer_idx")
        if not _is_int(layer) or not 0 <= layer < total:
            raise _Invalid(f"ablation_results[{i}]: 'layer_idx' must be a layer index 0..{total - 1}, got {layer!r}")
        if layer in by_layer:
            raise _Invalid(f"ablation_results[{i}]: layer {layer} appears twice")
        if "score_delta" not in row:
            raise _Invalid(f"ablation_results[{i}] has no 'score_delta'")
        delta = row["score_delta"]
        if delta is not None and not _is_number(delta):
            raise _Invalid(f"ablation_results[{i}]: 'score_delta' must be a number, got {delta!r}")
        by_layer[layer] = row
    if strict and len(by_layer) != total:
        missing = sorted(set(range(total)) - set(by_layer))
        raise _Invalid(f"'ablation_results' has no row for layer(s) {missing[:10]} of {total}")
    return by_layer


def _layer_labels(data: dict, total: int, strict: bool) -> dict[int, str]:
    labels = data.get("layer_labels")
    if not isinstance(labels, dict):
        what = "missing" if "layer_labels" not in data else f"a {_kind(labels)}"
        raise _Invalid(f"'layer_labels' must be an object mapping layer index strings to labels, it is {what}")
    parsed: dict[int, str] = {}
    for key, label in labels.items():
        if not isinstance(key, str) or not key.isdigit() or int(key) >= total:
            raise _Invalid(f"'layer_labels' key {key!r} is not a layer index string '0'..'{total - 1}'")
        if not isinstance(label, str):
            raise _Invalid(f"'layer_labels'['{key}'] must be a string label, got {_kind(label)}")
        parsed[int(key)] = label
    if strict and len(parsed) != total:
        raise _Invalid(f"'layer_labels' has {len(parsed)} entries for {total} layers")
    return parsed


def _top_layers(data: dict, total: int, strict: bool) -> list[int]:
    top = data.get("top_important_layers")
    if top is None and not strict:
        return []
    if not isinstance(top, list) or not all(_is_int(t) and 0 <= t < total for t in top):
        raise _Invalid(f"'top_important_layers' must be a list of layer indices 0..{total - 1}")
    return top


def _tool_version(data: dict) -> str | None:
    tool = data.get("tool")
    version = tool.get("version") if isinstance(tool, dict) else None
    return version if isinstance(version, str) else None


def _check(data: object) -> ReportInfo:
    if not isinstance(data, dict):
        raise _Invalid(f"the top level is a JSON {_kind(data)}, not an object")
    flavour = _flavour(data)
    strict = flavour != REFERENCE
    model = _text(data, "model", required=True)
    probe = _text(data, "probe", required=strict)
    total = _total_layers(data)
    rows = _ablation_rows(data, total, strict)
    labels = _layer_labels(data, total, strict)
    top = _top_layers(data, total, strict)
    created_at = data.get("created_at")
    return ReportInfo(
        flavour=flavour,
        model=model,
        probe=probe,
        total_layers=total,
        created_at=created_at if isinstance(created_at, str) else None,
        tool_version=_tool_version(data),
        baseline_score=_finite_or_none(data.get("baseline_score")),
        baseline_stderr=_finite_or_none(data.get("baseline_uncertainty")),
        top_layers=tuple(TopLayer(layer, _finite_or_none(rows.get(layer, {}).get("score_delta")), labels.get(layer))
                         for layer in top),
        labels=labels,
    )


def validate_report(data: object, where: str) -> ReportInfo:
    """Check ``data`` (a parsed report.json); ``where`` names it in the error, e.g. "report file r.json"."""
    try:
        return _check(data)
    except _Invalid as problem:
        raise UsageError(f"{where} is not a valid neuro-scan report: {problem}") from None


def parse_report(text: str | bytes, where: str) -> CheckedReport:
    """JSON text -> a validated report. The reference writes bare NaN, which Python's json reads."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{where} is not valid JSON ({error})") from None
    except RecursionError:
        raise UsageError(f"{where} is not a neuro-scan report (its JSON is nested too deeply to read)") from None
    return CheckedReport(data, validate_report(data, where))


def read_report(path: str | Path) -> CheckedReport:
    """A report.json file -> a validated report; every error names the file."""
    where = f"report file {path}"
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{where} is a folder; give the report.json inside it") from None
    except OSError as error:
        raise UsageError(f"{where} cannot be read: {error.strerror}") from None
    return parse_report(raw, where)
