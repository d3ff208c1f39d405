"""Reading reports back: every JSON document neuro-scan writes, the reference tool's report.json
and rows of the Hub dataset, as one typed :class:`Report`. The one reader: ``compare``,
``circuit`` (a stored single-layer scan), ``fetch`` and ``publish`` read through it.

Formats: each kind of document has its own tag, ``neuro-scan-<kind>/1`` (:data:`FORMATS`); the
documents written before the tags all say ``neuro-scan-report/1`` and are read by their
``command`` (comparisons had no tag then). A document without ``format`` is the reference tool's report.json (the counterpart
of our ``map``), or a row of the Hub dataset: its list and object fields may hold JSON-encoded
strings, and its model may be named ``model_id``.

Checked for every document: ``model`` and ``total_layers`` (but a comparison, which is of several
models), and ``probe`` in ours of one probe. For the documents with an ablation profile
(``map``, ``ablate``, the reference's):

* ours strictly: one ablation row per layer (none in a map's report written while its ablation is
  still pending), one label per layer (``map``), ``top_important_layers``;
* the reference's only on what its consumers read (``compare``, ``layer-scan annotate``): some
  layers may lack a row or a label, ``probe``, ``layer_labels`` and ``top_important_layers`` may
  be missing, numbers may be NaN.

``layer_labels``, where present, must be an object with a string layer index per key and a
string label per value: ``layer-scan annotate`` crashes on anything else, and :func:`annotatable`
(the check of what the Hub holds) requires it.

Problems are reported one at a time, naming the key, as a :class:`ReportError`. Standard library
only: the fast commands import this.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from neuro_scan.errors import UsageError

KINDS = ("map", "ablation", "lens", "attention", "circuit", "cross-probe", "multi-probe", "comparison", "prompt-repeat")
FORMATS = {kind: f"neuro-scan-{kind}/1" for kind in KINDS}  # what this version writes, by kind
LEGACY_FORMAT = "neuro-scan-report/1"  # every kind, before the tags per kind
READABLE_FORMATS = (*FORMATS.values(), LEGACY_FORMAT)
REFERENCE = "reference"  # Report.flavour of the reference tool's report (and of Hub rows)
PROFILE_KINDS = ("map", "ablation")  # ours with ablation_results, beside the reference's
_LEGACY_KINDS = {"map": "map", "ablate": "ablation", "logit-lens": "lens", "attention": "attention",
                 "circuit": "circuit", "cross-probe": "cross-probe", "prompt-repeat": "prompt-repeat"}
_SEVERAL_PROBES = ("cross-probe", "multi-probe", "comparison")
_ENCODED_FIELDS = ("ablation_results", "layer_labels", "top_important_layers")  # in Hub dataset rows
_LABELS_WANTED = "'layer_labels' must be an object mapping layer index strings to labels"


class ReportError(UsageError):
    """A report that cannot be read. The message names the file; ``why`` says what is wrong without
    it, and ``missing`` that there is no file there at all (for commands that phrase it their way)."""

    def __init__(self, message: str, why: str, missing: bool = False):
        super().__init__(message)
        self.why = why
        self.missing = missing


class _Invalid(Exception):
    """One problem with a document; :func:`read_report` adds where it came from."""


@dataclass(frozen=True)
class LayerRow:
    """One layer of an ablation profile (``ablation_results``)."""

    layer: int
    score_delta: float | None  # baseline - ablated; None when null or NaN in the file
    ci: tuple[float, float] | None  # its 95% interval (ours)
    label: str | None


@dataclass(frozen=True)
class ScanRecord:
    """A single-layer scan's run and its per-sample outcomes (``per_sample``): what a later run
    needs to tell whether it can reuse the scan. The run's fields are as the document has them."""

    model: object
    probe: object
    total_layers: object
    sample_count: object
    baseline_logprob: list[float]  # [S]
    ablated_logprob: list[list[float]]  # [L][S]
    ablated_correct: list[list[bool]]  # [L][S]


@dataclass(frozen=True)
class Report:
    """What a valid report says, read the same way from every format."""

    source: str  # what errors call it
    kind: str  # a KINDS entry ("map" for the reference's report.json)
    flavour: str  # its format tag, or REFERENCE
    document: dict = field(repr=False, compare=False)  # as given (a Hub row's fields still encoded)
    model: str | None  # None only in a comparison (of several models)
    probe: str | None
    total_layers: int | None  # None only in a comparison
    sample_count: int | None
    created_at: str | None
    tool_version: str | None
    baseline_score: float | None
    baseline_stderr: float | None
    baseline_accuracy: float | None
    rows: tuple[LayerRow, ...]  # the ablation profile by layer (the layers it has rows for); () without one
    top_layers: tuple[LayerRow, ...]  # top_important_layers, in their order
    labels: dict[int, str]  # layer -> label, for the layers labelled
    scan: ScanRecord | None  # per-sample outcomes of a single-layer scan, when the document has them

    @property
    def made_by(self) -> str:
        if self.tool_version:
            return f"neuro-scan {self.tool_version}"
        return "the reference tool" if self.flavour == REFERENCE else "neuro-scan (version not recorded)"

    def profile(self) -> list[float] | None:
        """The damage of every layer 0..L-1, or None when a layer has no row or no finite score_delta."""
        deltas = {row.layer: row.score_delta for row in self.rows}
        if not self.total_layers or any(deltas.get(layer) is None for layer in range(self.total_layers)):
            return None
        return [deltas[layer] for layer in range(self.total_layers)]

    def profile_intervals(self) -> list[tuple[float, float]] | None:
        """The 95% interval of every layer's damage, or None unless every layer has one."""
        intervals = {row.layer: row.ci for row in self.rows}
        if not self.total_layers or any(intervals.get(layer) is None for layer in range(self.total_layers)):
            return None
        return [intervals[layer] for layer in range(self.total_layers)]

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


def read_report(report: str | Path | dict, source: str) -> Report:
    """A report file (a path) or a parsed document -> its :class:`Report`. ``source`` names it in
    every error, e.g. "report file r.json"."""
    data = load_json(_file_bytes(Path(report), source), source) if isinstance(report, (str, Path)) else report
    try:
        return _read(data, source)
    except _Invalid as problem:
        raise ReportError(f"{source} is not a valid neuro-scan report: {problem}", str(problem)) from None


def annotatable(report: Report) -> Report:
    """``report``, if ``layer-scan annotate`` can read it: a map report (ours or the reference's)
    with its ``layer_labels``, as the Hub holds them. Else a ReportError."""
    if report.kind != "map":
        why = f"it is a '{report.kind}' report, not the report.json of `neuro-scan map` (or of the reference tool)"
    elif "layer_labels" not in report.document:
        why = f"{_LABELS_WANTED}, it is missing"
    else:
        return report
    raise ReportError(f"{report.source} is not a valid neuro-scan report: {why}", why)


def load_json(raw: bytes | str, source: str, what: str = "neuro-scan report") -> object:
    """JSON text -> its value; one line naming ``source`` when it is not JSON. The reference
    writes bare NaN, which Python's json reads."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReportError(f"{source} is not valid JSON ({error})", f"not valid JSON: {error}") from None
    except RecursionError:
        why = "its JSON is nested too deeply to read"
        raise ReportError(f"{source} is not a {what} ({why})", why) from None


def read_scan(data: dict) -> ScanRecord | None:
    """The ``per_sample`` section of a document with its run, or None when it has none (or it is
    not lists of numbers of the shapes a scan has)."""
    section = data.get("per_sample")
    try:
        baseline = section["baseline"]["answer_logprob"]
        ablated, correct = section["ablated"]["answer_logprob"], section["ablated"]["correct"]
    except (KeyError, TypeError):
        return None
    if not (_all(baseline, _is_number) and _all(ablated, lambda row: _all(row, _is_number))
            and _all(correct, lambda row: _all(row, lambda v: isinstance(v, bool)))):
        return None
    return ScanRecord(data.get("model"), data.get("probe"), data.get("total_layers"), data.get("sample_count"),
                      baseline, ablated, correct)


# -- reading a document -----------------------------------------------------------------------------


def _file_bytes(path: Path, source: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ReportError(f"{source}: no such file", "no such file", missing=True) from None
    except IsADirectoryError:
        raise ReportError(f"{source} is a folder; give the report.json inside it", "it is a folder",
                          missing=True) from None
    except OSError as error:
        raise ReportError(f"{source} cannot be read: {error.strerror}", f"cannot be read: {error.strerror}") from None


def _read(data: object, source: str) -> Report:
    if not isinstance(data, dict):
        raise _Invalid(f"the top level is not a JSON object (its top level is a JSON {_kind(data)})")
    kind, flavour = _kind_and_flavour(data)
    ours = flavour != REFERENCE
    fields = data if ours else {key: _decoded(value) if key in _ENCODED_FIELDS else value for key, value in data.items()}
    several = kind in _SEVERAL_PROBES
    model = None if kind == "comparison" else _model(fields)
    probe = _text(fields, "probe", required=ours and not several)
    has_profile = kind in PROFILE_KINDS or not ours
    rows = _ablation_rows(fields, pending=ours and _pending(fields, "ablation")) if has_profile else []
    total = None if kind == "comparison" else _total_layers(fields)
    by_layer = _rows_by_layer(rows, total, strict=ours)
    labels: dict[int, str] = {}
    top: list[int] = []
    if has_profile:
        labels = _layer_labels(fields, total, every_layer=ours and kind == "map")
        top = _top_layers(fields, total, strict=ours)
    tool = fields.get("tool")
    baseline = fields.get("baseline")
    return Report(
        source=source, kind=kind, flavour=flavour, document=data, model=model, probe=probe, total_layers=total,
        sample_count=fields.get("sample_count") if _is_int(fields.get("sample_count")) else None,
        created_at=_string_or_none(fields.get("created_at")),
        tool_version=_string_or_none(tool.get("version")) if isinstance(tool, dict) else None,
        baseline_score=_finite_or_none(fields.get("baseline_score")),
        baseline_stderr=_finite_or_none(fields.get("baseline_uncertainty")),
        baseline_accuracy=_finite_or_none(baseline.get("accuracy")) if isinstance(baseline, dict) else None,
        rows=tuple(_row(layer, row, labels) for layer, row in sorted(by_layer.items())),
        top_layers=tuple(_row(layer, by_layer.get(layer, {}), labels) for layer in top),
        labels=labels,
        scan=read_scan(fields) if has_profile else None,
    )


def _kind_and_flavour(data: dict) -> tuple[str, str]:
    fmt = data.get("format")
    if fmt is None:  # the reference's report; or one of our comparisons, which had no tag before the tags per kind
        return ("comparison", LEGACY_FORMAT) if data.get("command") == "compare" else ("map", REFERENCE)
    if fmt == LEGACY_FORMAT:
        kind = _LEGACY_KINDS.get(data.get("command"))
        if kind is None:
            raise _Invalid(f"'command' is {data.get('command')!r}, not a neuro-scan command that writes reports")
        return ("multi-probe" if kind == "cross-probe" and "reports" in data else kind), fmt
    kind = next((kind for kind, tag in FORMATS.items() if tag == fmt), None)
    if kind is not None:
        return kind, fmt
    ours = re.fullmatch(r"neuro-scan-([a-z-]+)/\d+", fmt) if isinstance(fmt, str) else None
    if ours and ours[1] in (*KINDS, "report"):
        same = [tag for tag in READABLE_FORMATS if tag.startswith(f"neuro-scan-{ours[1]}/")]
        raise _Invalid(f"its format '{fmt}' is not one this neuro-scan reads (it reads {', '.join(same)}); "
                       "upgrade neuro-scan")
    raise _Invalid(f"'format' is {fmt!r}, not a neuro-scan report format")


def _model(data: dict) -> str:
    """``model``, or ``model_id`` in a Hub dataset row."""
    return _text(data if "model" in data or "model_id" not in data else {"model": data["model_id"]}, "model",
                 required=True)


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


def _pending(data: dict, phase: str) -> bool:
    """Does the document say ``phase`` is still to run? (A map's report written while it runs.)"""
    phases = data.get("phases")
    return isinstance(phases, dict) and isinstance(phases.get(phase), dict) and phases[phase].get("status") == "pending"


def _ablation_rows(data: dict, pending: bool = False) -> list[dict]:
    """The rows' shape; their layers are checked once ``total_layers`` is known. ``pending``: the
    ablation is still to run, so the list may be empty."""
    rows = data.get("ablation_results")
    wanted = "'ablation_results' must be a non-empty list of per-layer objects"
    if "ablation_results" not in data:
        raise _Invalid(f"no 'ablation_results' list: {wanted}")
    if pending and rows == []:
        return rows
    if not isinstance(rows, list) or not rows:
        raise _Invalid(f"{wanted}, it is {'empty' if rows == [] else f'a {_kind(rows)}'}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise _Invalid(f"ablation_results[{i}] is a {_kind(row)}, not an object")
        if "score_delta" not in row:
            raise _Invalid(f"ablation_results[{i}] has no 'score_delta': every row needs a numeric 'score_delta'")
        if row["score_delta"] is not None and not _is_number(row["score_delta"]):
            raise _Invalid(f"ablation_results[{i}]: 'score_delta' must be a number, got {row['score_delta']!r}")
    return rows


def _rows_by_layer(rows: list[dict], total: int | None, strict: bool) -> dict[int, dict]:
    by_layer: dict[int, dict] = {}
    for i, row in enumerate(rows):
        layer = row.get("layer_idx")
        if not _is_int(layer) or not 0 <= layer < total:
            raise _Invalid(f"ablation_results[{i}]: 'layer_idx' must be a layer index 0..{total - 1}, got {layer!r}")
        if layer in by_layer:
            raise _Invalid(f"ablation_results[{i}]: layer {layer} appears twice")
        by_layer[layer] = row
    if strict and rows and len(by_layer) != total:
        missing = sorted(set(range(total)) - set(by_layer))
        raise _Invalid(f"'ablation_results' has no row for layer(s) {missing[:10]} of {total}")
    return by_layer


def _layer_labels(data: dict, total: int, every_layer: bool) -> dict[int, str]:
    """``every_layer``: required, with a label per layer (ours of map); else optional."""
    labels = data.get("layer_labels")
    if "layer_labels" not in data and not every_layer:
        return {}
    if not isinstance(labels, dict):
        what = "missing" if "layer_labels" not in data else f"a {_kind(labels)}"
        raise _Invalid(f"{_LABELS_WANTED}, it is {what}")
    parsed: dict[int, str] = {}
    for key, label in labels.items():
        if not isinstance(key, str) or not key.isdigit() or int(key) >= total:
            raise _Invalid(f"'layer_labels' key {key!r} is not a layer index string '0'..'{total - 1}'")
        if not isinstance(label, str):
            raise _Invalid(f"'layer_labels'['{key}'] must be a string label, got {_kind(label)}")
        parsed[int(key)] = label
    if every_layer and len(parsed) != total:
        raise _Invalid(f"'layer_labels' has {len(parsed)} entries for {total} layers")
    return parsed


def _top_layers(data: dict, total: int, strict: bool) -> list[int]:
    top = data.get("top_important_layers")
    if top is None and not strict:
        return []
    if not isinstance(top, list) or not all(_is_int(t) and 0 <= t < total for t in top):
        raise _Invalid(f"'top_important_layers' must be a list of layer indices 0..{total - 1}")
    return top


def _row(layer: int, row: dict, labels: dict[int, str]) -> LayerRow:
    ci = row.get("score_delta_ci")
    finite = isinstance(ci, list) and len(ci) == 2 and all(_finite_or_none(v) is not None for v in ci)
    return LayerRow(layer, _finite_or_none(row.get("score_delta")), (float(ci[0]), float(ci[1])) if finite else None,
                    labels.get(layer))


def _decoded(value: object) -> object:
    """A Hub row's JSON-encoded field, decoded (left as it is when it is no JSON)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return value
    return value


def _all(values: object, check) -> bool:
    return isinstance(values, list) and all(check(v) for v in values)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite_or_none(value: object) -> float | None:
    return float(value) if _is_number(value) and math.isfinite(value) else None


def _string_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _kind(value: object) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if _is_number(value) else type(value).__name__)
