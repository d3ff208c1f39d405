"""The process that runs one job: ``python -m neuro_scan.serve.worker JOB_FOLDER``.

It reads the job's command and options from ``job.json``, runs them through the CLI's runner
(:func:`neuro_scan.runner.run`) with the job folder as the output folder, and appends every event
to ``events.jsonl`` as one JSON line, flushed at once, with the time it was written. Lines it adds
to the runner's events:

- ``Started`` (its pid) first;
- ``Saved`` before the next event whenever the output folder's files were (re)written (``map``
  writes its report after each phase): the page then reads what is there;
- ``Ended`` last: ``state`` finished (``written``: the files; ``dashboard``: the page that shows
  them), failed (``message``: the CLI's one line) or interrupted
  (SIGINT, the page's cancel button: ``message`` says what the folder holds).

The exit code is the CLI's: 0, 1 (a phase failed, or an unexpected error: its traceback goes to
stderr, the job's worker.log), 2 (bad input), 130 (interrupted).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from neuro_scan.events import event_to_dict
from neuro_scan.report.files import to_json_safe
from neuro_scan.report.folder import MANIFEST_FILE

EVENTS_FILE = "events.jsonl"
JOB_FILE = "job.json"


class Journal:
    """The events of a job, appended to its events.jsonl as they happen."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.manifest = folder / MANIFEST_FILE
        self.seen = self._stamp()
        self.file = open(folder / EVENTS_FILE, "a", encoding="utf-8")

    def __call__(self, event) -> None:
        self.saved()
        self.write(event_to_dict(event))

    def saved(self) -> None:
        stamp = self._stamp()
        if stamp != self.seen:
            self.seen = stamp
            self.write({"event": "Saved"})

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(to_json_safe({**record, "time": time.time()})) + "\n")
        self.file.flush()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.manifest)
        except FileNotFoundError:
            return None
        return info.st_mtime_ns, info.st_ino


def run_job(folder: Path) -> int:
    journal = Journal(folder)
    journal.write({"event": "Started", "pid": os.getpid()})
    try:
        from neuro_scan.api import options
        from neuro_scan.errors import UsageError
        from neuro_scan.runner import Interrupted, run

        job = json.loads((folder / JOB_FILE).read_text(encoding="utf-8"))
        try:
            outcome = run(job["command"], options(job["command"], **job["options"]), journal)
        except UsageError as error:
            return _end(journal, 2, "failed", str(error))
        except Interrupted as interrupted:
            return _end(journal, 130, "interrupted", str(interrupted))
    except KeyboardInterrupt:  # before the runner held the folder: nothing was written
        return _end(journal, 130, "interrupted", f"interrupted: the job stopped before it began; nothing was "
                                                 f"written to {folder}")
    except Exception as error:
        traceback.print_exc()
        return _end(journal, 1, "failed", f"{type(error).__name__}: {error} (the traceback is in the job's worker.log)")
    journal.saved()
    written = [Path(path).name for path in outcome.written]
    return _end(journal, 1 if outcome.failed_phases else 0, "finished", None, written=written,
                dashboard=_dashboard(written), notes=outcome.notes, failed_phases=dict(outcome.failed_phases))


def _dashboard(written: list[str]) -> str | None:
    """The page that shows the job's results: the dashboard (index.html) if it wrote one, else its first page."""
    pages = ["index.html"] if "index.html" in written else [name for name in written if name.endswith(".html")]
    return pages[0] if pages else None


def _end(journal: Journal, code: int, state: str, message: str | None, **details) -> int:
    journal.write({"event": "Ended", "state": state, "message": message, "exit_code": code, **details})
    return code


def main() -> None:
    # as the CLI: library logs quiet unless asked for, before transformers or the Hub client is imported
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    sys.exit(run_job(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
