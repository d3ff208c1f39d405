"""``neuro-scan publish``: upload a report and the updated index to the Hub dataset in one commit,
as a pull request unless asked otherwise. Nothing is sent unless the report passes validation.

The index is read from the repository's main branch when publishing; two pull requests opened
from the same main both change index.json, so the second to be merged needs a rebase (docs/hub.md).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from neuro_scan.analysis.compare import profile_from_report
from neuro_scan.errors import UsageError
from neuro_scan.hub.layout import INDEX_FILE, HubIndex, IndexEntry, is_model_id, is_probe_name
from neuro_scan.hub.remote import HubRepo
from neuro_scan.report.files import write_json
from neuro_scan.report.read import annotatable, read_report


@dataclass(frozen=True)
class Published:
    entry: IndexEntry
    repo: str
    url: str  # the pull request, or the commit
    pull_request: bool
    replaced: bool  # the repository already had a report for this model and probe


def publish_report(report_file: str, repo_id: str, model: str | None = None, create_pr: bool = True) -> Published:
    """Upload ``report_file`` to ``repo_id``; ``model`` names the model on the Hub when the report
    was made from a local folder (its ``model`` is then a path)."""
    if model is not None and not model.strip():
        raise UsageError("--model: must not be empty; give the Hub model id (org/name) the report is of")
    where = f"report file {report_file}"
    info = read_report(Path(report_file), where)
    if model is not None:
        info = read_report({**info.document, "model": model}, where)
    annotatable(info)
    profile_from_report(info, report_file)  # what compare refuses to read is not published either
    if not is_model_id(info.model):
        raise UsageError(f"report file {report_file}: model '{info.model}' is not a Hugging Face model id "
                         "(org/name); say which model it is with --model")
    if info.probe is None:
        raise UsageError(f"report file {report_file} has no 'probe': the Hub stores reports by model and probe")
    if not is_probe_name(info.probe):
        raise UsageError(f"report file {report_file}: probe '{info.probe}' cannot be a file name on the Hub "
                         "(letters, digits, '.', '_' and '-' only)")
    repo = HubRepo(repo_id)
    repo.check_writable()
    entry = IndexEntry.for_report(info)
    index, replaced = (repo.index() or HubIndex()).with_entry(entry)
    message = f"{'Update' if replaced else 'Add'} report: {info.model} on {info.probe}"
    description = (f"Published with `neuro-scan publish`: {info.total_layers} layers, scanned {info.created_at or '?'} "
                   f"by {'neuro-scan ' + info.tool_version if info.tool_version else 'the reference tool'}.")
    with tempfile.TemporaryDirectory(prefix="neuro-scan-publish-") as staging:
        files = {entry.path: write_json(Path(staging) / "report.json", info.document),
                 INDEX_FILE: write_json(Path(staging) / INDEX_FILE, index.to_json())}
        url = repo.commit(files, message, description, create_pr)
    return Published(entry, repo_id, url, create_pr, replaced)
