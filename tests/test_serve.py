"""`neuro-scan serve`, the real server process on 127.0.0.1 with the demo model: results stream
while a job runs and equal its report; cancel leaves a whole folder; jobs queue; a restarted
server tells what became of its jobs; bad input is a 4xx with the CLI's line and writes nothing;
paths out of the results folder and requests without the token are refused."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'neuro-scan[serve]'")

from serve_process import Server, pause, resume, wait_for_sigint

from neuro_scan.backend.loading import resolve_device
from neuro_scan.journal import JOURNAL_FILE
from neuro_scan.report.read import read_report
from neuro_scan.serve.settings import make_settings

pytestmark = pytest.mark.slow

DEMO = {"model": "demo", "probe": "arith"}
LEFT_BEHIND = (".neuro-scan-tmp.", ".neuro-scan-commit.json", ".neuro-scan.lock", ".neuro-scan-part.")
SERVER_FILES = {"job.json", "events.jsonl", "worker.log"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("results"))
    yield running
    running.stop()


def job_folders(results: Path) -> set[str]:
    return {path.name for path in (results / "jobs").glob("*")} if (results / "jobs").exists() else set()


def assert_whole(folder: Path) -> None:
    """Nothing half-written: no temporary file, commit record or lock, and every file the
    folder's manifest names is there."""
    names = {path.name for path in folder.iterdir()}
    assert not [name for name in names if name.startswith(LEFT_BEHIND)], names
    manifest = folder / ".neuro-scan-files.json"
    if manifest.exists():
        assert set(json.loads(manifest.read_text())["files"]) <= names


def cli_error(arguments: list[str], cwd: Path) -> str:
    """The CLI's one line for bad input (exit code 2)."""
    done = subprocess.run([sys.executable, "-m", "neuro_scan.cli", *arguments], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    line, = done.stderr.strip().splitlines()
    return line.removeprefix("error: ")


def test_map_streams_each_layer_before_the_end_and_it_equals_the_report(server):
    job = server.start("map", **DEMO, batch_size=8)
    events = server.finish(job["id"])
    kinds = [event["event"] for event in events]
    assert kinds[0] == "Started" and kinds[-1] == "Ended" and events[-1]["state"] == "finished", events[-1]
    assert [event["id"] for event in events] == list(range(len(events)))
    scored = [event for event in events if event["event"] == "ConfigurationScored" and event["phase"] == "ablation"]
    report = json.loads((server.results / "jobs" / job["id"] / "report.json").read_text())
    assert [event["index"] for event in scored] == list(range(report["total_layers"]))
    # every layer's result arrived while the job ran: as the ablation scored it, before the phase ended
    ablation_ends = next(i for i, event in enumerate(events) if event["event"] == "PhaseFinished"
                         and event["phase"] == "ablation")
    assert all(events.index(event) < ablation_ends for event in scored)
    assert all(event["received"] < events[-1]["time"] for event in scored)
    for event in scored:
        row = report["ablation_results"][event["index"]]
        assert (event["damage"], event["score"], event["accuracy"]) == (row["score_delta"], row["score"], row["accuracy"])
        assert event["answer_logprob"] == report["per_sample"]["ablated"]["answer_logprob"][event["index"]]
    # map writes its report after each phase: the page is told, and reads what is there
    assert kinds.count("Saved") >= 2
    finished = server.job(job["id"])
    assert finished["state"] == "finished" and finished["dashboard"] == f"jobs/{job['id']}/index.html"
    status, _headers, page = server.request("GET", f"/files/{finished['dashboard']}")
    assert status == 200 and b"plotly.min.js" in page
    status, _headers, document = server.request("GET", f"/api/jobs/{job['id']}/report")
    assert status == 200 and json.loads(document) == report
    # a reload of the page: the same events again, or those after the last one it saw
    assert [event["id"] for event in server.finish(job["id"])] == [event["id"] for event in events]
    assert [event["id"] for event in server.events(job["id"], after=5)] == [event["id"] for event in events[6:]]
    # and it is listed with the other reports
    status, reports = server.json("GET", "/api/reports")
    listed, = [entry for entry in reports if entry["job"] == job["id"]]
    assert (listed["command"], listed["model"], listed["probe"]) == ("map", "demo", "arith")
    assert listed["baseline_score"] == report["baseline_score"]
    assert [top["layer"] for top in listed["top_layers"]] == report["top_important_layers"]


def test_cancel_mid_run_leaves_what_finished_whole(server):
    job = server.start("map", **DEMO, batch_size=4)
    events = []
    for event in server.events(job["id"]):
        events.append(event)
        if event["event"] == "PhaseStarted" and event["phase"] == "attention":
            status, _ = server.json("POST", f"/api/jobs/{job['id']}/cancel")
            assert status == 200
    ended = events[-1]
    assert ended["state"] == "interrupted", ended
    folder = server.results / "jobs" / job["id"]
    journal = folder / ".neuro-scan-journal.jsonl"  # the ablation's configurations, for a --resume
    assert ended["message"] == (f"interrupted: neuro-scan map stopped; {folder} holds what it had finished; the "
                                f"configurations it scored are journalled in {journal}: run the same command again "
                                f"(or with --resume) to continue")
    assert journal.is_file()
    assert server.job(job["id"])["state"] == "interrupted"
    assert_whole(folder)
    report = read_report(folder / "report.json", "the cancelled job's report")
    assert report.document["phases"]["lens"]["status"] == "done"
    assert report.document["phases"]["attention"]["status"] == "pending"
    status, answer = server.json("POST", f"/api/jobs/{job['id']}/cancel")
    assert status == 409 and "already ended (interrupted)" in answer["error"]


def test_model_jobs_queue_one_at_a_time(server):
    first = server.start("ablate", **DEMO)
    second = server.start("ablate", **DEMO)
    assert server.job(second["id"])["state"] == "queued"
    first_events, second_events = server.finish(first["id"]), server.finish(second["id"])
    assert first_events[-1]["state"] == second_events[-1]["state"] == "finished"
    assert second_events[0]["time"] >= first_events[-1]["time"]  # started after the first ended


def until(condition, what: str, seconds: float = 300) -> None:
    """Wait for ``condition()``; the deadline only turns a hang into a failure."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds} s for {what}")
        time.sleep(0.1)


def test_model_jobs_queue_per_device(server, tmp_path):
    """A job on the same device as a running one waits; a job on another device starts at once.
    ``auto`` is the device the runner picks here (cpu on a CPU-only machine): the other device is
    cuda there, whose job starts while the first runs, then fails at load as the CLI does."""
    auto = str(resolve_device("auto"))
    other = "cuda" if auto == "cpu" else "cpu"
    first = server.start("ablate", **DEMO)
    assert first["device"] == auto
    until(lambda: server.job(first["id"])["state"] == "running", "the first job to start")
    worker = server.job(first["id"])["pid"]
    pause(worker)  # running, and stays so until resumed: no race with its end
    try:
        same = server.start("ablate", **DEMO, device=auto)
        elsewhere = server.start("ablate", **DEMO, device=other)
        assert (same["device"], elsewhere["device"]) == (auto, other)
        until(lambda: server.job(elsewhere["id"])["state"] != "queued", f"the job on {other} to start")
        assert server.job(first["id"])["state"] == "running"
        assert server.job(same["id"])["state"] == "queued"
    finally:
        resume(worker)
    first_events, same_events = server.finish(first["id"]), server.finish(same["id"])
    elsewhere_events = server.finish(elsewhere["id"])
    assert first_events[-1]["state"] == same_events[-1]["state"] == "finished"
    assert same_events[0]["time"] >= first_events[-1]["time"]  # started after the first ended
    assert elsewhere_events[0]["event"] == "Started" and elsewhere_events[0]["time"] < first_events[-1]["time"]
    ended = elsewhere_events[-1]
    if other == "cuda" and ended["state"] == "failed":  # no GPU here: the CLI's message for --device cuda
        assert ended["message"] == cli_error(["ablate", "--model", "demo", "--probe", "arith", "--device", "cuda",
                                              "-o", str(tmp_path / "o")], tmp_path)
    else:
        assert ended["state"] == "finished", ended


def test_a_queued_job_cancelled_never_runs(server):
    running = server.start("ablate", **DEMO)
    queued = server.start("ablate", **DEMO)
    status, _ = server.json("POST", f"/api/jobs/{queued['id']}/cancel")
    assert status == 200
    assert server.job(queued["id"])["state"] == "cancelled"
    events = server.finish(queued["id"])
    assert [event["event"] for event in events] == ["Ended"] and events[0]["state"] == "cancelled"
    assert {path.name for path in (server.results / "jobs" / queued["id"]).iterdir()} == {"job.json", "events.jsonl"}
    assert server.finish(running["id"])[-1]["state"] == "finished"


def test_bad_input_is_a_4xx_with_the_cli_line_and_writes_nothing(server, tmp_path):
    before = job_folders(server.results)
    status, answer = server.json("POST", "/api/jobs", {"command": "map", "options": {"model": "./no-such-model"}})
    assert status == 400
    assert answer["error"] == cli_error(["map", "--model", "./no-such-model", "-o", str(tmp_path / "o")], tmp_path)
    status, answer = server.json("POST", "/api/jobs", {"command": "mapp", "options": {"model": "demo"}})
    assert status == 400 and answer["error"].startswith("command: 'mapp' is not one of map, ")
    status, answer = server.json("POST", "/api/jobs", {"command": "map", "options": {"model": "demo", "layers": 3}})
    assert status == 400 and answer["error"].startswith("map: unknown option(s) layers; known: ")
    status, answer = server.json("POST", "/api/jobs", {"command": "map", "options": {"model": "demo", "top_k": 0}})
    assert status == 400 and answer["error"] == "--top-k: must be a whole number >= 1, got 0"
    status, answer = server.json("POST", "/api/jobs", {"command": "ablate", "options": {**DEMO, "output": "/tmp"}})
    assert status == 400 and answer["error"].startswith("--output: set by the server")
    for name, text in (("bad.json", '{"name": "bad", "samples": []}'), ("broken.json", '{"name": "x", "samples": [')):
        (tmp_path / name).write_text(text)
        expected = cli_error(["ablate", "--model", "demo", "--custom-probe", name, "-o", str(tmp_path / "o")], tmp_path)
        status, _headers, body = server.request("POST", f"/api/probe-check?name={name}", text.encode())
        assert (status, json.loads(body)["error"]) == (400, expected)
        status, answer = server.json("POST", "/api/jobs", {"command": "ablate", "options": {"model": "demo"},
                                                           "probe_file": {"name": name, "text": text}})
        assert (status, answer["error"]) == (400, expected)
    status, _headers, body = server.request("POST", "/api/probe-check?name=big.json", b" " * (4 * 2**20 + 1))
    assert status == 413 and "more than the" in json.loads(body)["error"]
    status, answer = server.json("POST", "/api/jobs", {"command": "calibrate", "options": {"model": "demo"}})
    assert status == 400 and "cannot be started from the page" in answer["error"]
    assert job_folders(server.results) == before
    assert not (tmp_path / "o").exists()


def test_an_uploaded_probe_runs_as_with_the_cli(server, tmp_path):
    samples = [{"prompt": "2+3=", "answer": "5"}, {"prompt": "4+4=", "answer": "8"}, {"prompt": "1+6=", "answer": "7"}]
    text = json.dumps({"name": "tiny-sums", "samples": samples})
    status, _headers, body = server.request("POST", "/api/probe-check?name=sums.json", text.encode())
    assert status == 200 and json.loads(body)["samples"] == 3
    job = server.start("ablate", {"name": "sums.json", "text": text}, model="demo")
    assert server.finish(job["id"])[-1]["state"] == "finished"
    folder = server.results / "jobs" / job["id"]
    assert (folder / "upload" / "sums.json").read_text() == text
    served = json.loads((folder / "ablation.json").read_text())
    (tmp_path / "sums.json").write_text(text)
    done = subprocess.run([sys.executable, "-m", "neuro_scan.cli", "ablate", "--model", "demo", "--custom-probe",
                           "sums.json", "-o", "cli"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    by_cli = json.loads((tmp_path / "cli" / "ablation.json").read_text())
    assert served["probe"] == by_cli["probe"] == "tiny-sums"
    assert served["ablation_results"] == by_cli["ablation_results"]


def test_paths_out_of_the_results_folder_are_refused(server, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    (server.results / "leak.json").symlink_to(outside)
    (server.results / "leaks").symlink_to(tmp_path, target_is_directory=True)
    (server.results / "mine.txt").write_text("yours")
    assert server.request("GET", "/files/mine.txt")[::2] == (200, b"yours")
    for path in ["/files/../secret.txt", "/files/%2e%2e/secret.txt", "/files/..%2fsecret.txt", "/files/%2E%2E%2Fsecret.txt",
                 "/files//etc/passwd", "/files/%2Fetc%2Fpasswd", "/files/leak.json", "/files/leaks/secret.txt",
                 "/files/mine.txt/..", "/files/.neuro-scan-files.json", "/files/a%00b",
                 "/api/report?path=../secret.txt", "/api/report?path=/etc/passwd", "/api/report?path=leak.json"]:
        status, _headers, body = server.request("GET", path)
        assert status in (400, 403, 404), path
        assert b"not yours" not in body and b"root:" not in body, path
    status, answer = server.json("POST", "/api/jobs", {"command": "compare", "options": {"reports": ["../a", "leak.json"]}})
    assert status in (400, 403) and "results folder" in answer["error"]
    status, reports = server.json("GET", "/api/reports")
    assert all(not entry["path"].startswith(("leak", "leaks/")) for entry in reports)


def test_compare_two_reports_as_the_cli_does(server, tmp_path):
    jobs = [server.start("ablate", **DEMO, seed=seed) for seed in (0, 1)]
    for job in jobs:
        assert server.finish(job["id"])[-1]["state"] == "finished"
    paths = [f"jobs/{job['id']}/ablation.json" for job in jobs]
    compare = server.start("compare", reports=paths)
    ended = server.finish(compare["id"])[-1]
    assert ended["state"] == "finished" and ended["dashboard"] == "comparison.html"
    served = json.loads((server.results / "jobs" / compare["id"] / "comparison.json").read_text())
    done = subprocess.run([sys.executable, "-m", "neuro_scan.cli", "compare", *paths, "-o", str(tmp_path / "cli")],
                          cwd=server.results, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    by_cli = json.loads((tmp_path / "cli" / "comparison.json").read_text())
    served.pop("created_at"), by_cli.pop("created_at")
    assert served == by_cli


def started_ablation(server: Server, job: dict) -> None:
    """Read the job's events until its ablation phase starts."""
    for event in server.events(job["id"]):
        if event["event"] == "PhaseStarted" and event["phase"] == "ablation":
            return
    raise AssertionError(f"job {job['id']} ended before its ablation")


def test_a_restarted_server_tells_what_became_of_its_jobs(tmp_path):
    """Killed server, worker alive: followed again. Both killed: interrupted. Ctrl-C: its jobs
    are interrupted as the CLI's Ctrl-C does."""
    first = Server(tmp_path)
    try:
        done = first.start("ablate", **DEMO)
        assert first.finish(done["id"])[-1]["state"] == "finished"
        failed = first.start("ablate", model="no-such-org/no-such-model", probe="arith")
        failed_end = first.finish(failed["id"])[-1]
        assert failed_end["state"] == "failed" and failed_end["message"].startswith("--model: ")
        orphan = first.start("ablate", **DEMO)
        started_ablation(first, orphan)
        pause(first.job(orphan["id"])["pid"])  # still running when the next server looks
    finally:
        first.kill()  # the server alone: its worker runs on
    second = Server(tmp_path)
    try:
        assert second.job(orphan["id"])["state"] == "running"
        resume(second.job(orphan["id"])["pid"])
        assert second.finish(orphan["id"])[-1]["state"] == "finished"
        assert second.job(orphan["id"])["state"] == "finished"
        killed = second.start("ablate", **DEMO)
        started_ablation(second, killed)
        pause(second.job(killed["id"])["pid"])
    finally:
        second.kill(second.job(killed["id"])["pid"])  # the server and the worker
    third = Server(tmp_path)
    try:
        states = {job["id"]: (job["state"], job["message"]) for job in third.json("GET", "/api/jobs")[1]}
        folder = tmp_path / "jobs" / killed["id"]
        held = f"nothing was written to {folder}"
        if (folder / JOURNAL_FILE).exists():  # killed after its first configuration was journalled
            held += f"; the configurations it scored are journalled in {folder / JOURNAL_FILE}: resume the job to continue"
        assert states == {
            done["id"]: ("finished", None),
            failed["id"]: ("failed", failed_end["message"]),
            orphan["id"]: ("finished", None),
            killed["id"]: ("interrupted", f"interrupted: the server stopped while it ran; {held}"),
        }
        assert third.finish(killed["id"])[-1]["state"] == "interrupted"
        assert_whole(folder)
        assert {path.name for path in folder.iterdir()} - {JOURNAL_FILE} == SERVER_FILES  # the journal is kept
        stopped = third.start("ablate", **DEMO)
        started_ablation(third, stopped)
        worker = third.job(stopped["id"])["pid"]
        pause(worker)
        third.process.send_signal(signal.SIGINT)  # Ctrl-C: the server interrupts its job, once
        wait_for_sigint(worker)
        resume(worker)
    finally:
        third.stop()
    record = json.loads((tmp_path / "jobs" / stopped["id"] / "job.json").read_text())
    folder = tmp_path / "jobs" / stopped["id"]
    expected = f"interrupted: neuro-scan ablate stopped; nothing was written to {folder}"
    if (folder / JOURNAL_FILE).exists():  # Ctrl-C came after its first configuration was journalled
        expected += (f"; the configurations it scored are journalled in {folder / JOURNAL_FILE}: run the same command "
                     "again (or with --resume) to continue")
    assert (record["state"], record["message"]) == ("interrupted", expected)


def test_with_a_token_every_request_needs_it(tmp_path):
    server = Server(tmp_path, "--token", "a-token-for-tests")
    try:
        assert server.url.endswith("/?token=a-token-for-tests")
        assert server.token == "a-token-for-tests"
        for path in ["/", "/api/reports", "/api/jobs", "/static/app.js", "/files/x.json", "/api/jobs/x/events"]:
            status, _headers, body = server.request("GET", path, token=False)
            assert status == 403 and b"needs its token" in body, path
        assert server.request("GET", "/api/reports", token=False, headers={"x-neuro-scan-token": "wrong-token"})[0] == 403
        status, headers, _body = server.request("GET", "/?token=a-token-for-tests", token=False)
        assert status == 200 and "SameSite=Strict" in headers["set-cookie"] and "HttpOnly" in headers["set-cookie"]
        cookie = headers["set-cookie"].split(";")[0]
        assert server.request("GET", "/api/reports", token=False, headers={"cookie": cookie})[0] == 200
        # a change needs the header: the cookie alone (which a cross-site form would carry) is not enough
        start = json.dumps({"command": "ablate", "options": DEMO}).encode()
        status, _headers, body = server.request("POST", "/api/jobs", start, {"cookie": cookie}, token=False)
        assert status == 403 and b"x-neuro-scan-token header" in body
        assert job_folders(tmp_path) == set()
        # DNS rebinding: a request for another host name is not answered
        status, _headers, _body = server.request("GET", "/api/reports", headers={"host": f"evil.example:{server.port}"})
        assert status == 403
    finally:
        server.stop()


def test_open_gives_the_browser_the_printed_url(tmp_path, monkeypatch):
    """--open: the browser (BROWSER, which Python's webbrowser honours: here a script that writes
    down what it was given) opens the URL the server printed, with its token when it has one."""
    browser = tmp_path / "browser"
    browser.write_text('#!/bin/sh\nprintf "%s\\n" "$*" >> "$0.urls"\n')
    browser.chmod(0o755)
    opened = tmp_path / "browser.urls"
    monkeypatch.setenv("BROWSER", str(browser))
    for arguments, ending in (([], "/"), (["--token", "a-token-for-tests"], "/?token=a-token-for-tests")):
        opened.unlink(missing_ok=True)
        server = Server(tmp_path / "results", "--open", *arguments)
        try:
            until(opened.exists, "the browser to be opened", seconds=60)
            assert opened.read_text().splitlines() == [server.url]
            assert server.url == f"http://127.0.0.1:{server.port}{ending}"
            status, _headers, page = server.request("GET", ending, token=False)  # what the browser asks
            assert status == 200 and b'name="neuro-scan-token"' in page
        finally:
            server.stop()


def test_any_address_but_loopback_requires_a_token(tmp_path):
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        settings = make_settings(tmp_path, host, 8000, None)
        assert settings.token_required and len(settings.token) >= 24
        assert settings.url().endswith(f"/?token={settings.token}")
    loopback = make_settings(tmp_path, "127.0.0.1", 8000, None)
    assert not loopback.token_required and loopback.url() == "http://127.0.0.1:8000/"


def test_changes_need_the_header_even_on_loopback(server):
    start = json.dumps({"command": "ablate", "options": DEMO}).encode()
    before = job_folders(server.results)
    for headers in ({}, {"content-type": "text/plain"}, {"x-neuro-scan-token": "guess"}):
        status, _headers, _body = server.request("POST", "/api/jobs", start, headers, token=False)
        assert status == 403
    assert job_folders(server.results) == before
    status, _headers, _body = server.request("GET", "/api/reports", headers={"host": "attacker.example"})
    assert status == 403


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_the_worker_is_the_cli_runner_not_the_server(server):
    """No model in the server process: the demo job ran in a worker child."""
    maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "libtorch" not in maps
