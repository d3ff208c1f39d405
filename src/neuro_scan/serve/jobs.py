"""Jobs: each scan started from the page, in its own folder under ``RESULTS/jobs/``.

A job's folder holds the command's files exactly as the CLI writes them (it is the run's output
folder) and three of the server's: ``job.json`` (the command, its options and the job's state),
``events.jsonl`` (what the run reported, line by line: :mod:`.worker`) and ``worker.log`` (the
worker's output); an uploaded probe file is kept in ``upload/``.

States: queued -> running -> finished | failed | interrupted; a queued job cancelled is
cancelled. An interrupted, cancelled or failed job whose folder holds the journal of its scan
(:mod:`neuro_scan.journal`) can be resumed (:meth:`Jobs.resume`): the same job, queued again in
its folder with its options and ``--resume``, so the scan continues where it stopped; its events
go on in the same ``events.jsonl`` after a ``Resumed`` line.

Jobs that run a model run one at a time per device (their ``--device``; ``auto`` as the
runner resolves it on this machine), the rest wait in the order they came (a resumed job keeps
its place): two jobs on different devices run together, two on the same one queue (``compare``
runs at once: it loads no model; :func:`to_start`). Each runs in a child process (:mod:`.worker`)
in a session of its own: cancelling, or stopping the server, sends it SIGINT once, so the runner
leaves the folder as the CLI's Ctrl-C does; a server that is killed leaves its workers running.

Everything is on disk, so a reloaded page and a restarted server see the same jobs: on start, a
job recorded as running is running still if its worker is alive (the server follows it again),
else it ended: as its events say, or interrupted when they do not say (the worker was killed
with the server), its folder completed or rolled back by the folder's own recovery.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from neuro_scan.api import options as command_options
from neuro_scan.errors import UsageError
from neuro_scan.journal import JOURNAL_FILE
from neuro_scan.report.files import json_bytes, write_bytes
from neuro_scan.runner import check as check_run
from neuro_scan.serve import forms
from neuro_scan.serve.settings import Refused, confine
from neuro_scan.serve.worker import EVENTS_FILE, JOB_FILE

JOBS_FOLDER = "jobs"
TICK_SECONDS = 0.1  # how often the scheduler looks at its workers
ENDED_PREFIX = '{"event": "Ended"'
RESUMABLE = ("interrupted", "cancelled", "failed")  # with a journal in the folder
WORKER_EXIT_SECONDS = 10  # how long a resume waits for the worker that wrote Ended to exit


@dataclass
class Job:
    id: str
    command: str
    options: dict  # the options dataclass's values, as the worker passes them to the runner
    title: str
    created_at: str  # to the microsecond: the queue's order
    state: str = "queued"
    pid: int | None = None
    started_at: str | None = None
    ended_at: str | None = None
    message: str | None = None  # why it failed, or what an interrupted one left
    dashboard: str | None = None  # its page, relative to the results folder, once finished
    device: str | None = None  # the device its model runs on (None: it loads no model)
    resumed: int = 0  # how many times it was resumed


def _now(timespec: str = "seconds") -> str:
    return dt.datetime.now().isoformat(timespec=timespec)


class Jobs:
    """The jobs under ``results/jobs`` and the scheduler that runs them (a thread)."""

    def __init__(self, results: Path):
        self.results = results
        self.root = results / JOBS_FOLDER
        self.jobs: dict[str, Job] = {}
        self.children: dict[str, subprocess.Popen] = {}
        self.adopted: set[str] = set()  # running jobs of an earlier server whose worker is alive
        self.lock = threading.RLock()
        self._auto_device: str | None = None  # what --device auto is here, once asked
        self._auto_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life of the server ---------------------------------------------------------------------

    def open(self) -> None:
        """Read every job on disk, settle the ones whose worker is gone, start the scheduler."""
        for path in sorted(self.root.glob(f"*/{JOB_FILE}")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                job = Job(**{f.name: data[f.name] for f in fields(Job) if f.name in data})
            except (OSError, ValueError, TypeError):
                continue  # not a job folder of ours
            self.jobs[job.id] = job
            if job.device is None and job.command != "compare" and job.state in ("queued", "running"):
                # recorded by a server that did not record devices
                job.device = self.device(job.options.get("device", "auto"))
            if job.state == "running":
                if _ended_event(self.folder(job)) is None and _is_worker(job.pid, self.folder(job)):
                    self.adopted.add(job.id)
                else:
                    self._finish(job, "the server stopped while it ran")
        self._thread = threading.Thread(target=self._schedule, name="neuro-scan jobs", daemon=True)
        self._thread.start()

    def close(self, wait_seconds: float = 60) -> None:
        """Stop the scheduler and interrupt the running jobs (as Ctrl-C would), waiting for them to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self.lock:
            running = [job_id for job_id in [*self.children, *self.adopted] if self.jobs[job_id].state == "running"]
            for job_id in running:
                _interrupt(self.jobs[job_id].pid)
            for job_id, child in list(self.children.items()):
                try:
                    child.wait(wait_seconds)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                if self.jobs[job_id].state == "running":
                    self._finish(self.jobs[job_id], _exit_reason(child.returncode))
            self.children.clear()

    # -- what the page asks ---------------------------------------------------------------------

    def folder(self, job: Job) -> Path:
        return self.root / job.id

    def list(self) -> list[Job]:
        with self.lock:
            return sorted(map(self._settled, self.jobs.values()), key=lambda job: job.created_at, reverse=True)

    def get(self, job_id: str) -> Job:
        with self.lock:
            if job_id not in self.jobs:
                raise Refused(404, f"no job '{job_id}'")
            return self._settled(self.jobs[job_id])

    def _settled(self, job: Job) -> Job:
        """The job, ended if its events say so (the scheduler may not have looked since)."""
        if job.state == "running" and _ended_event(self.folder(job)) is not None:
            self._finish(job, None)
        return job

    def submit(self, name: str, values: dict, probe: tuple[str, bytes] | None = None) -> Job:
        """A new queued job, after every check the CLI makes before loading a model; on bad input
        a UsageError with the CLI's line, and nothing written."""
        spec = forms.startable(name)
        values = forms.coerce(spec, values)
        if spec.name == "compare":
            for report in values.get("reports", []):  # named as the list names them: run from the results folder
                confine(self.results, report)
        job_id = f"{dt.datetime.now():%Y%m%d-%H%M%S}-{spec.name}-{secrets.token_hex(3)}"
        folder = self.root / job_id
        with tempfile.TemporaryDirectory(prefix="neuro-scan-job-") as staging:
            if probe is not None:
                if not (spec in forms.scans() and forms.form(spec)["probe_file"]):
                    raise UsageError(f"{spec.name}: takes no probe file")
                probe_file = forms.probe_name(probe[0])
                forms.check_probe(probe_file, probe[1])
                (Path(staging) / probe_file).write_bytes(probe[1])
                values["custom_probe"] = str(Path(staging) / probe_file)
            try:
                chosen = command_options(spec.name, **values, output=str(folder))
            except TypeError as error:  # an option the command does not have
                raise UsageError(str(error)) from None
            try:
                check_run(spec, chosen)  # the runner's checks, as the CLI's run makes them; nothing stays written
            except UsageError as error:  # named as the user named it, not by our staging copy
                raise UsageError(str(error).replace(f"{staging}{os.sep}", "")) from None
            folder.mkdir(parents=True)
            if probe is not None:
                (folder / "upload").mkdir()
                shutil.copyfile(values["custom_probe"], folder / "upload" / probe_file)
                values["custom_probe"] = str(folder / "upload" / probe_file)
        device = self.device(chosen.device) if spec.loads_model else None
        job = Job(job_id, spec.name, {**values, "output": str(folder)}, _title(spec.name, values, probe),
                  _now("microseconds"), device=device)
        with self.lock:
            self.jobs[job.id] = job
            self._save(job)
        return job

    def cancel(self, job_id: str) -> Job:
        with self.lock:
            job = self.get(job_id)
            if job.state == "queued":
                left = (f"cancelled before it resumed; {self.folder(job)} keeps what its earlier run left"
                        if job.resumed else "cancelled before it started; nothing was written")
                _append_event(self.folder(job), {"event": "Ended", "state": "cancelled", "message": left})
                self._finish(job, None)
            elif job.state == "running":
                _interrupt(job.pid)
            else:
                raise Refused(409, f"job {job_id} has already ended ({job.state})")
            return job

    def resumable(self, job: Job) -> bool:
        return job.state in RESUMABLE and (self.folder(job) / JOURNAL_FILE).is_file()

    def resume(self, job_id: str) -> Job:
        """Queue an interrupted, cancelled or failed job again: the same job in its folder, with its
        options and ``--resume``, so its scan continues from the journal there. Refused (409) for a
        job in another state or without a journal; the run's checks (the CLI's line) before it queues."""
        job = self.get(job_id)
        folder = self.folder(job)
        deadline = time.monotonic() + WORKER_EXIT_SECONDS  # a worker exits just after writing its Ended line
        while _is_worker(job.pid, folder) and time.monotonic() < deadline:
            time.sleep(TICK_SECONDS)
        options = {**job.options, "resume": True}
        self._check_resumable(job)
        check_run(job.command, command_options(job.command, **options))  # e.g. a journal of other inputs
        with self.lock:
            self._check_resumable(job)  # still: another request may have resumed it meanwhile
            _append_event(folder, {"event": "Resumed", "message": f"resumed: queued again to continue the scan "
                                                                   f"journalled in {folder / JOURNAL_FILE}"})
            job.options, job.state, job.resumed = options, "queued", job.resumed + 1
            job.pid = job.started_at = job.ended_at = job.message = job.dashboard = None
            self._save(job)
            return job

    def _check_resumable(self, job: Job) -> None:
        if job.state not in RESUMABLE:
            raise Refused(409, f"job {job.id} is {job.state}: only an interrupted, cancelled or failed job "
                               "can be resumed")
        if not self.resumable(job):
            raise Refused(409, f"job {job.id} cannot be resumed: its folder has no journal of scored configurations "
                               f"({JOURNAL_FILE}) to continue from; start it again from the form")
        if _is_worker(job.pid, self.folder(job)):
            raise Refused(409, f"job {job.id} cannot be resumed yet: its worker (pid {job.pid}) is still stopping")

    def device(self, option: str) -> str:
        """The device a job's ``--device`` runs on: the name itself, or for ``auto`` the one the
        runner picks on this machine (asked once of a child process: the server imports no torch)."""
        if option != "auto":
            return option
        with self._auto_lock:
            if self._auto_device is None:
                self._auto_device = _resolve_auto_device()
            return self._auto_device

    # -- the scheduler --------------------------------------------------------------------------

    def _schedule(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            with self.lock:
                self._tick()

    def _tick(self) -> None:
        for job_id, child in list(self.children.items()):
            self._follow(job_id, child.poll() is None, _exit_reason(child.returncode))
        for job_id in list(self.adopted):
            job = self.jobs[job_id]
            self._follow(job_id, _is_worker(job.pid, self.folder(job)), "its worker stopped while the server was away")
        busy = {self.jobs[job_id].device for job_id in [*self.children, *self.adopted]}
        for job in to_start([job for job in self.jobs.values() if job.state == "queued"], busy):
            self._start(job)

    def _follow(self, job_id: str, alive: bool, why: str) -> None:
        """A running job ends when its events say so; its device is free when its process is gone."""
        job = self.jobs[job_id]
        if not alive:
            self.children.pop(job_id, None)
            self.adopted.discard(job_id)
        if not alive and job.state == "running":
            self._finish(job, why)
        self._settled(job)

    def _start(self, job: Job) -> None:
        folder = self.folder(job)
        with open(folder / "worker.log", "ab") as log:
            child = subprocess.Popen([sys.executable, "-m", "neuro_scan.serve.worker", str(folder)],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.results if job.command == "compare" else None,
                                     start_new_session=True)  # a terminal's Ctrl-C reaches the server only
        self.children[job.id] = child
        job.state, job.pid, job.started_at = "running", child.pid, _now()
        self._save(job)

    def _finish(self, job: Job, why: str | None) -> None:
        """Record how a job ended: as its events say, or interrupted (``why``) when they do not."""
        folder = self.folder(job)
        ended = _ended_event(folder)
        if ended is None:
            ended = {"event": "Ended", "state": "interrupted",
                     "message": f"interrupted: {why}; {_recover(folder)}"}
            _append_event(folder, ended)
        job.state, job.message, job.ended_at = ended["state"], ended.get("message"), _now()
        if ended.get("dashboard"):
            job.dashboard = f"{JOBS_FOLDER}/{job.id}/{ended['dashboard']}"
        self._save(job)

    def _save(self, job: Job) -> None:
        write_bytes(self.folder(job) / JOB_FILE, json_bytes(asdict(job)))


def to_start(queued: list[Job], busy: set[str | None]) -> list[Job]:
    """The queued jobs to start now, given the devices whose model-running job has not yet ended
    (``busy``): the oldest job of each free device, and every job that loads no model."""
    starting = []
    taken = {device for device in busy if device is not None}
    for job in sorted(queued, key=lambda job: job.created_at):
        if job.device is None or job.device not in taken:
            starting.append(job)
            if job.device is not None:
                taken.add(job.device)
    return starting


def _resolve_auto_device() -> str:
    """``--device auto`` as the runner resolves it here (:func:`neuro_scan.backend.loading.resolve_device`),
    in a child process; ``auto`` if it cannot tell (a broken torch: such a job fails with its message)."""
    ask = "from neuro_scan.backend.loading import resolve_device; print(resolve_device('auto'))"
    try:
        done = subprocess.run([sys.executable, "-c", ask], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              check=False, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return "auto"
    answer = done.stdout.strip().splitlines()
    return answer[-1] if done.returncode == 0 and answer else "auto"


def _title(command: str, values: dict, probe: tuple[str, bytes] | None) -> str:
    if command == "compare":
        return f"compare · {len(values.get('reports', []))} reports"
    what = probe[0] if probe is not None else values.get("probe") or values.get("probes") or "math"
    return f"{command} · {values.get('model')} · {what}"


def _append_event(folder: Path, record: dict) -> None:
    """An event of the server's own, appended when no worker writes there (queued, or gone)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / EVENTS_FILE, "a", encoding="utf-8") as events:
        events.write(json.dumps({**record, "time": dt.datetime.now().timestamp()}) + "\n")


def _ended_event(folder: Path) -> dict | None:
    """The worker's last line, when it says how the job ended."""
    try:
        with open(folder / EVENTS_FILE, "rb") as events:
            events.seek(0, os.SEEK_END)
            events.seek(max(0, events.tell() - 65536))
            tail = events.read().decode("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return None
    if not tail or not tail[-1].startswith(ENDED_PREFIX):
        return None
    try:
        return json.loads(tail[-1])
    except ValueError:
        return None


def _recover(folder: Path) -> str:
    """A worker that died mid-run may have left a half-applied commit: the folder's own recovery
    completes or rolls it back (as the next CLI run into it would) -> what the folder holds."""
    from neuro_scan.report.folder import MANIFEST_FILE, prepare_output_dir

    try:
        prepare_output_dir(folder)
    except UsageError as error:
        return f"its folder could not be checked: {error}"
    held = (f"{folder} holds what it had finished" if (folder / MANIFEST_FILE).exists()
            else f"nothing was written to {folder}")
    if (folder / JOURNAL_FILE).is_file():
        held += f"; the configurations it scored are journalled in {folder / JOURNAL_FILE}: resume the job to continue"
    return held


def _is_worker(pid: int | None, folder: Path) -> bool:
    """Is ``pid`` alive and the worker of the job in ``folder`` (not a later process with its pid)?"""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return sys.platform != "linux"  # no /proc to tell: alive is all we know
    return b"neuro_scan.serve.worker" in command_line and str(folder).encode() in command_line


def _interrupt(pid: int | None) -> None:
    if pid is not None:
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            pass


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        return f"its worker was killed by {signal.Signals(-code).name}"
    return f"its worker exited with code {code} without saying why (see worker.log)"
