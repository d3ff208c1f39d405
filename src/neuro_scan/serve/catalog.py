"""The reports under the results folder: every JSON document the one reader
(:func:`neuro_scan.report.read.read_report`) accepts, whichever command wrote it, fetched ones and
the reference tool's included.

A listing walks the folder (not following links out of it) and reads only the files that changed
since the last listing: reports are cached by path, size and modification time.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from neuro_scan.report.read import Report, ReportError, read_report
from neuro_scan.serve.settings import Refused, confine, relative_to_results

MAX_REPORT_BYTES = 256 * 2**20  # larger JSON files are not read as reports
NOT_REPORTS = ("job.json",)  # the server's own records in job folders


@dataclass(frozen=True)
class TopLayer:
    layer: int
    score_delta: float | None
    label: str | None


@dataclass(frozen=True)
class Entry:
    """One report as the list shows it."""

    path: str  # relative to the results folder
    kind: str
    command: str  # the command that wrote it, or "reference" for the reference tool's and Hub rows
    made_by: str
    model: str | None
    probe: str | None
    created_at: str | None
    baseline_score: float | None
    baseline_accuracy: float | None
    total_layers: int | None
    top_layers: list[TopLayer]
    dashboard: str | None  # its page, relative to the results folder
    job: str | None  # the job whose folder holds it
    modified: float


def entry(root: Path, path: Path, report: Report) -> Entry:
    relative = relative_to_results(root, path)
    parts = relative.split("/")
    command = report.document.get("command") if report.flavour != "reference" else "reference"
    return Entry(
        path=relative, kind=report.kind, command=str(command or report.kind), made_by=report.made_by,
        model=report.model, probe=report.probe, created_at=report.created_at, baseline_score=report.baseline_score,
        baseline_accuracy=report.baseline_accuracy, total_layers=report.total_layers,
        top_layers=[TopLayer(row.layer, row.score_delta, row.label) for row in report.top_layers],
        dashboard=_dashboard(root, path), job=parts[1] if len(parts) == 3 and parts[0] == "jobs" else None,
        modified=path.stat().st_mtime)


def _dashboard(root: Path, path: Path) -> str | None:
    """The page that shows a report: the folder's index.html for a map's report.json, else the page
    of the same name (ablation.json -> ablation.html)."""
    for page in (["index.html"] if path.name == "report.json" else []) + [path.with_suffix(".html").name]:
        if (path.parent / page).is_file():
            return relative_to_results(root, path.parent / page)
    return None


class Catalog:
    """The reports under ``root``, cached between listings (thread-safe)."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[str, tuple[tuple[int, int], Entry | None]] = {}
        self._lock = threading.Lock()

    def reports(self) -> list[Entry]:
        """Every report, newest first."""
        found: dict[str, tuple[tuple[int, int], Entry | None]] = {}
        for path in self._json_files():
            try:
                info = path.stat()
            except OSError:
                continue
            stamp = (info.st_mtime_ns, info.st_size)
            key = str(path)
            with self._lock:
                cached = self._cache.get(key)
            if cached is None or cached[0] != stamp:
                cached = (stamp, self._read(path, info.st_size))
            found[key] = cached
        with self._lock:
            self._cache = found  # forgets removed files
        return sorted((e for _stamp, e in found.values() if e is not None), key=lambda e: -e.modified)

    def report(self, relative: str) -> tuple[Entry, Report]:
        """One report by its path in the results folder -> (its entry, the report read)."""
        path = confine(self.root, relative)
        if not path.is_file():
            raise Refused(404, f"no report at '{relative}'")
        try:
            report = read_report(path, f"report file {relative}")
        except ReportError as error:
            raise Refused(400, str(error)) from None
        return entry(self.root, path, report), report

    def _json_files(self):
        for folder, folders, files in os.walk(self.root):  # does not descend into linked folders
            folders[:] = sorted(name for name in folders if not name.startswith("."))
            for name in files:
                if name.endswith(".json") and not name.startswith(".") and name not in NOT_REPORTS:
                    path = Path(folder) / name
                    if not path.is_symlink() or _inside(self.root, path):
                        yield path

    def _read(self, path: Path, size: int) -> Entry | None:
        if size > MAX_REPORT_BYTES:
            return None
        try:
            return entry(self.root, path, read_report(path, str(path)))
        except (ReportError, OSError):
            return None


def _inside(root: Path, path: Path) -> bool:
    try:
        confine(root, relative_to_results(root, path))
        return True
    except Refused:
        return False

