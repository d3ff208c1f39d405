"""How reports are stored in a Hub dataset repository, and how a model name finds one (docs/hub.md).

One file per report, ``reports/<model id with / replaced by __>/<probe>.json``, plus
``index.json`` listing every report. Nothing here touches the network.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from neuro_scan.errors import UsageError

if TYPE_CHECKING:  # the CLI imports this module at start-up: standard library only
    from neuro_scan.report.read import Report

DEFAULT_REPO = "XXO47OXX/neuro-scan-results"  # the dataset the reference tool's README names
REPO_ENV = "NEURO_SCAN_HUB_REPO"
INDEX_FILE = "index.json"
INDEX_FORMAT = "neuro-scan-hub-index/1"

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_MODEL_ID = re.compile(rf"(?:{_NAME}/)?{_NAME}")
_PROBE = re.compile(_NAME)


def is_model_id(name: str) -> bool:
    """A Hub model id, ``org/name`` or ``name``: what a report may be stored under."""
    return bool(_MODEL_ID.fullmatch(name))


def is_probe_name(name: str) -> bool:
    return bool(_PROBE.fullmatch(name))


def report_path(model: str, probe: str) -> str:
    return f"reports/{model.replace('/', '__')}/{probe}.json"


@dataclass(frozen=True)
class IndexEntry:
    model: str
    probe: str
    path: str
    layers: int
    scan_date: str | None
    tool_version: str | None
    format: str  # the report's format, or "reference" for the reference tool's

    def sort_key(self) -> tuple[str, str, str]:
        return self.model.casefold(), self.model, self.probe

    @classmethod
    def for_report(cls, report: Report) -> IndexEntry:
        assert report.model is not None and report.probe is not None and report.total_layers is not None
        return cls(model=report.model, probe=report.probe, path=report_path(report.model, report.probe),
                   layers=report.total_layers, scan_date=report.created_at, tool_version=report.tool_version,
                   format=report.flavour)


@dataclass(frozen=True)
class HubIndex:
    entries: tuple[IndexEntry, ...] = ()

    @classmethod
    def parse(cls, text: str | bytes, where: str) -> HubIndex:
        """``where`` names the file in errors, e.g. "index.json of dataset org/name"."""
        from neuro_scan.report.read import load_json

        data = load_json(text, where, "neuro-scan report index")
        if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or not isinstance(data.get("reports"), list):
            raise UsageError(f"{where} is not a neuro-scan report index (expected an object with "
                             f"\"format\": \"{INDEX_FORMAT}\" and a \"reports\" list)")
        entries = []
        for i, item in enumerate(data["reports"]):
            if not (isinstance(item, dict) and all(isinstance(item.get(key), str) for key in ("model", "probe", "path"))
                    and isinstance(item.get("layers"), int)):
                raise UsageError(f"{where}: reports[{i}] needs strings 'model', 'probe', 'path' and an integer 'layers'")
            if not (is_model_id(item["model"]) and is_probe_name(item["probe"])
                    and item["path"] == report_path(item["model"], item["probe"])):
                raise UsageError(f"{where}: reports[{i}] does not follow the layout: model {item['model']!r}, "
                                 f"probe {item['probe']!r}, path {item['path']!r}")
            entries.append(IndexEntry(model=item["model"], probe=item["probe"], path=item["path"], layers=item["layers"],
                                      scan_date=item.get("scan_date"), tool_version=item.get("tool_version"),
                                      format=item.get("format", "")))
        return cls(tuple(entries))

    def to_json(self) -> dict:
        return {"format": INDEX_FORMAT, "reports": [asdict(entry) for entry in self.entries]}

    def models(self) -> list[str]:
        return sorted({entry.model for entry in self.entries}, key=str.casefold)

    def for_models(self, models: list[str]) -> list[IndexEntry]:
        return [entry for entry in self.entries if entry.model in models]

    def find(self, model: str, probe: str) -> IndexEntry | None:
        return next((e for e in self.entries if e.model == model and e.probe == probe), None)

    def with_entry(self, entry: IndexEntry) -> tuple[HubIndex, bool]:
        """The index with ``entry`` added, or replacing the one for the same model and probe (True)."""
        kept = [e for e in self.entries if (e.model, e.probe) != (entry.model, entry.probe)]
        ordered = sorted([*kept, entry], key=IndexEntry.sort_key)
        return HubIndex(tuple(ordered)), len(kept) < len(self.entries)


def match_models(query: str, models: list[str]) -> list[str]:
    """The models ``query`` names: the exact id if listed; otherwise every id equal to it ignoring
    case, or whose last path segment is (``qwen2-7b`` finds ``Qwen/Qwen2-7B``). One match is a hit,
    several are ambiguous. A query with an org only matches that org: ``someone/Qwen2-7B`` is a
    different model from ``Qwen/Qwen2-7B``."""
    if query in models:
        return [query]
    wanted = query.casefold()
    return [m for m in models if m.casefold() == wanted or ("/" not in query and m.rsplit("/", 1)[-1].casefold() == wanted)]
