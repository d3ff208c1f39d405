"""`neuro-scan serve`: resuming a job, with the real server process on 127.0.0.1 and the demo model.

A head-granularity ablation (16 configurations, one per forward) stopped once its journal holds a
few of them, by the page's cancel or by a crash of the server and its worker, is resumed through
``POST /api/jobs/ID/resume``: the same job, in its folder, continues from the journal, its events
go on after the first end, and its report equals an uninterrupted CLI run's. Jobs that cannot be
resumed are refused with a 4xx and their one line, and nothing changes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'neuro-scan[serve]'")

from serve_process import Server, pause, resume, wait_for_sigint
from test_journal import report
from test_serve import DEMO, assert_whole, until

from neuro_scan.journal import JOURNAL_FILE

pytestmark = pytest.mark.slow

HEADS = {**DEMO, "batch_size": 4, "granularity": "head"}  # 16 heads, one configuration per forward
CLI = ["ablate", "--model", "demo", "--probe", "arith", "--batch-size", "4", "--granularity", "head"]
REPORT = "components.json"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("results"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The report of the same scan run whole by the CLI."""
    folder = tmp_path_factory.mktemp("cli") / "whole"
    done = subprocess.run([sys.executable, "-m", "neuro_scan.cli", *CLI, "-o", str(folder)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    return report(folder, REPORT)


def journalled(folder: Path) -> int:
    """How many configurations the journal in ``folder`` holds (whole lines after its header)."""
    path = folder / JOURNAL_FILE
    return max(0, path.read_bytes().count(b"\n") - 1) if path.exists() else 0


def paused_with_a_journal(server: Server, job: dict, entries: int = 2) -> int:
    """Pause the job's worker once its journal holds ``entries`` configurations -> its pid."""
    folder = server.results / "jobs" / job["id"]
    until(lambda: journalled(folder) >= entries, f"{entries} configurations in the journal of job {job['id']}")
    worker = server.job(job["id"])["pid"]
    pause(worker)  # stopped for sure before anything else is sent
    return worker


def plain(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in event.items() if k != "received"} for event in events]


def resumed_to_the_end(server: Server, job: dict, first: list[dict], uninterrupted: dict) -> list[dict]:
    """Resume the stopped job through the endpoint and check what it did -> the events after its first end."""
    folder = server.results / "jobs" / job["id"]
    kept = journalled(folder)
    assert 2 <= kept <= 16  # 16 heads: on a busy machine the stop can come after the last one, before the report
    status, queued = server.json("POST", f"/api/jobs/{job['id']}/resume")
    assert status == 200, queued
    assert (queued["id"], queued["state"], queued["resumed"], queued["resumable"]) == (job["id"], "queued", 1, False)
    assert queued["options"] == {**job["options"], "resume": True} and queued["options"]["output"] == str(folder)
    events = server.finish(job["id"])
    # the same stream, going on after its first end: the earlier events unchanged, numbered on
    assert [event["id"] for event in events] == list(range(len(events)))
    assert plain(events[:len(first)]) == plain(first)
    later = events[len(first):]
    assert [event["event"] for event in later[:2]] == ["Resumed", "Started"]
    assert later[0]["message"] == f"resumed: queued again to continue the scan journalled in {folder / JOURNAL_FILE}"
    assert later[-1]["event"] == "Ended" and later[-1]["state"] == "finished", later[-1]
    notices = [event["message"] for event in later if event["event"] == "Notice"]
    assert (f"continuing the interrupted scan journalled in {folder / JOURNAL_FILE}: {kept} configurations already "
            "scored are not run again") in notices, notices
    # the job record, its folder, its report: as an uninterrupted CLI run's
    record = server.job(job["id"])
    assert (record["state"], record["resumed"], record["resumable"]) == ("finished", 1, False)
    assert record["dashboard"] == f"jobs/{job['id']}/components.html"
    assert report(folder, REPORT) == uninterrupted
    assert not (folder / JOURNAL_FILE).exists()
    assert_whole(folder)
    return later


def test_a_cancelled_scan_resumes_in_its_folder_to_the_uninterrupted_report(server, uninterrupted):
    job = server.start("ablate", **HEADS)
    worker = paused_with_a_journal(server, job)
    status, _ = server.json("POST", f"/api/jobs/{job['id']}/cancel")
    assert status == 200
    wait_for_sigint(worker)
    resume(worker)
    first = server.finish(job["id"])
    folder = server.results / "jobs" / job["id"]
    assert first[-1]["state"] == "interrupted" and str(folder / JOURNAL_FILE) in first[-1]["message"], first[-1]
    listed = server.job(job["id"])
    assert (listed["state"], listed["resumable"], listed["resumed"]) == ("interrupted", True, 0)
    resumed_to_the_end(server, job, first, uninterrupted)
    # and once finished, it cannot be resumed again
    status, answer = server.json("POST", f"/api/jobs/{job['id']}/resume")
    assert status == 409 and answer["error"] == (f"job {job['id']} is finished: only an interrupted, cancelled or "
                                                 "failed job can be resumed")


def test_a_job_interrupted_by_a_crash_is_resumed_by_the_restarted_server(tmp_path, uninterrupted):
    """The server and the worker killed mid-scan: the next server lists the job interrupted with its
    journal, and resumes it."""
    first_server = Server(tmp_path)
    try:
        job = first_server.start("ablate", **HEADS)
        worker = paused_with_a_journal(first_server, job)
    finally:
        first_server.kill(worker)
    server = Server(tmp_path)
    try:
        folder = tmp_path / "jobs" / job["id"]
        listed, = server.json("GET", "/api/jobs")[1]
        assert (listed["id"], listed["state"], listed["resumable"]) == (job["id"], "interrupted", True)
        assert listed["message"] == (f"interrupted: the server stopped while it ran; nothing was written to {folder}; "
                                     f"the configurations it scored are journalled in {folder / JOURNAL_FILE}: resume "
                                     "the job to continue")
        first = server.finish(job["id"])
        assert [event["event"] for event in first][-1] == "Ended"
        resumed_to_the_end(server, job, first, uninterrupted)
    finally:
        server.stop()


def test_resuming_is_refused_unless_the_job_stopped_with_a_journal(server):
    running = server.start("ablate", **DEMO)
    queued = server.start("ablate", **DEMO)
    status, _ = server.json("POST", f"/api/jobs/{queued['id']}/cancel")
    assert status == 200
    status, answer = server.json("POST", f"/api/jobs/{queued['id']}/resume")
    assert status == 409 and answer["error"] == (f"job {queued['id']} cannot be resumed: its folder has no journal of "
                                                 f"scored configurations ({JOURNAL_FILE}) to continue from; start it "
                                                 "again from the form")
    assert server.finish(running["id"])[-1]["state"] == "finished"
    assert server.job(running["id"])["state"] == "finished"  # recorded so in its job.json
    folder = server.results / "jobs" / running["id"]
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    status, answer = server.json("POST", f"/api/jobs/{running['id']}/resume")
    assert status == 409 and answer["error"] == (f"job {running['id']} is finished: only an interrupted, cancelled "
                                                 "or failed job can be resumed")
    status, _headers, body = server.request("POST", f"/api/jobs/{running['id']}/resume", token=False)
    assert status == 403 and b"x-neuro-scan-token header" in body
    status, answer = server.json("POST", "/api/jobs/no-such-job/resume")
    assert status == 404 and answer["error"] == "no job 'no-such-job'"
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert (server.job(running["id"])["state"], server.job(queued["id"])["state"]) == ("finished", "cancelled")
    status, answer = server.json("POST", "/api/jobs", {"command": "ablate", "options": {**DEMO, "resume": True}})
    assert status == 400 and answer["error"].startswith("--resume: set by the server (each job has a new folder")
