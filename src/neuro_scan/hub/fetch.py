"""``neuro-scan fetch``: find one pre-computed report in the Hub dataset, download only it, check it.

The exact path for ``--model``/``--probe`` is tried first (one small download); only when it is
missing is ``index.json`` read, to match the name (:func:`match_models`) and to say what exists.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from neuro_scan.errors import UsageError
from neuro_scan.hub.layout import INDEX_FILE, HubIndex, IndexEntry, is_model_id, is_probe_name, match_models, report_path
from neuro_scan.hub.remote import HubRepo, NotCached
from neuro_scan.report.files import write_json
from neuro_scan.report.read import Report, annotatable, read_report


@dataclass(frozen=True)
class FetchedReport:
    repo: str
    path: str  # in the repository
    report: Report
    saved_to: Path | None


def _check_model_given(model: str) -> None:
    if not model.strip():
        raise UsageError("--model: must not be empty; give a model id such as Qwen/Qwen2-7B or a name such as qwen2-7b")


def _output_file(output: str | None) -> Path | None:
    """Check ``--output`` before anything is downloaded."""
    if output is None:
        return None
    path = Path(output).expanduser()
    if path.is_dir():
        raise UsageError(f"--output: {output} is a folder; give a file name such as {path / 'report.json'}")
    parent = next(p for p in path.absolute().parents if p.exists())  # the root exists
    if not parent.is_dir():
        raise UsageError(f"--output: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"--output: {parent} is not writable")
    return path


def _index_or_empty(repo: HubRepo) -> tuple[HubIndex, str]:
    """The index, and a note for messages saying where what it lists comes from."""
    index = repo.index()
    if index is None:
        return HubIndex(), f" ({repo} has no {INDEX_FILE})"
    return index, f" (as its cached {INDEX_FILE} says: HF_HUB_OFFLINE is set)" if repo.offline else ""


def _not_found(repo: HubRepo, model: str, index: HubIndex, note: str) -> UsageError:
    models = index.models()
    close = difflib.get_close_matches(model, models, n=3, cutoff=0.6)
    if close:
        hint = f"; did you mean {', '.join(close)}?"
    elif models:
        hint = f"; {len(models)} models have reports there: see `neuro-scan fetch --list`"
    else:
        hint = ""
    return UsageError(f"no report for model '{model}' in {repo}{note}{hint}")


def _resolve(repo: HubRepo, model: str, probe: str) -> IndexEntry:
    """The index entry ``model``/``probe`` name, or an error saying what is available."""
    index, note = _index_or_empty(repo)
    candidates = match_models(model, index.models())
    if not candidates:
        raise _not_found(repo, model, index, note)
    if len(candidates) > 1:
        raise UsageError(f"--model '{model}' matches several models in {repo}: {', '.join(candidates)}; give the full id")
    entry = index.find(candidates[0], probe)
    if entry is None:
        probes = sorted(e.probe for e in index.for_models(candidates))
        raise UsageError(f"no '{probe}' report for {candidates[0]} in {repo}{note}; its reports: {', '.join(probes)}")
    return entry


def _download(repo: HubRepo, model: str, probe: str) -> tuple[str, Path]:
    exact = report_path(model, probe) if is_model_id(model) and is_probe_name(probe) else None
    offline_miss: NotCached | None = None
    if exact is not None:
        try:
            local = repo.download(exact)
        except NotCached as miss:  # offline: the name may still resolve through a cached index
            local, offline_miss = None, miss
        if local is not None:
            return exact, local
    try:
        entry = _resolve(repo, model, probe)
        local = repo.download(entry.path)
    except NotCached as miss:
        raise (offline_miss or miss) from None  # offline: rather the message about the report itself
    if local is None:
        raise UsageError(f"{INDEX_FILE} of {repo} lists {entry.path}, but the file is not there")
    return entry.path, local


def fetch_report(repo_id: str, model: str, probe: str, output: str | None = None) -> FetchedReport:
    """Download (or read from the cache) the report of ``model`` on ``probe``, validate it, and
    save it as a report.json at ``output`` if given."""
    _check_model_given(model)
    target = _output_file(output)
    repo = HubRepo(repo_id)
    path, local = _download(repo, model, probe)
    where = f"{path} of {repo}"
    report = annotatable(read_report(local, where))
    if report_path(report.model, report.probe or probe) != path:
        raise UsageError(f"{where} holds a report of '{report.model}' on '{report.probe}', not the one its path names")
    if target is not None:
        write_json(target, report.document)
    return FetchedReport(repo_id, path, report, target)


def summary(fetched: FetchedReport) -> list:
    """Whose report it is, where it came from, its baseline, top layers and labels."""
    report = fetched.report
    lines: list = [
        f"[bold]{escape(report.model)}[/bold] · probe [bold]{escape(report.probe or '?')}[/bold] · "
        f"{report.total_layers} layers · scanned {escape(report.created_at or 'on an unrecorded date')} "
        f"by {escape(report.made_by)}",
        f"from {escape(fetched.repo)}: {escape(fetched.path)}",
    ]
    if report.baseline_score is not None:
        stderr = f" ± {report.baseline_stderr:.3f} (standard error)" if report.baseline_stderr is not None else ""
        lines.append(f"baseline score: {report.baseline_score:.3f}{stderr}")
    table = Table("top layer", "damage (score_delta)", "label")
    for top in report.top_layers:
        table.add_row(str(top.layer), "n/a" if top.score_delta is None else f"{top.score_delta:.4f}",
                      escape(top.label or ""))
    runs = [f"{first}{'' if first == last else f'-{last}'} {label}" for first, last, label in report.label_runs()]
    lines += [table, "labels: " + escape(" · ".join(runs) or "none")]
    if fetched.saved_to is not None:
        lines.append(f"wrote {escape(str(fetched.saved_to))}")
    return lines


def list_reports(repo_id: str, model: str | None = None) -> list[IndexEntry]:
    """The index (of the models ``model`` matches, if given), sorted by model and probe."""
    if model is not None:
        _check_model_given(model)
    repo = HubRepo(repo_id)
    index, note = _index_or_empty(repo)
    entries = list(index.entries)
    if model is not None:
        candidates = match_models(model, index.models())
        if not candidates:
            raise _not_found(repo, model, index, note)
        entries = index.for_models(candidates)
    return sorted(entries, key=IndexEntry.sort_key)
