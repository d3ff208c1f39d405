"""The real `neuro-scan serve` process for the tests: started on 127.0.0.1 with a free port, in a
session of its own, talked to over plain HTTP, stopped by SIGINT (as Ctrl-C) or killed."""

from __future__ import annotations

import http.client
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

START_SECONDS = 120
STOP_SECONDS = 90
STREAM_SECONDS = 600  # a stream that says nothing for this long fails the test


class Server:
    def __init__(self, results: Path, *arguments: str):
        self.results = results
        command = [sys.executable, "-m", "neuro_scan.cli", "serve", "--results", str(results), "--port", "0", *arguments]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True, env=env)
        self.url = self._announced()
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname, parts.port
        self.token = self.page_token()

    def _announced(self) -> str:
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + START_SECONDS
        seen = ""
        while time.monotonic() < deadline:
            if selector.select(timeout=1):
                line = self.process.stdout.readline()
                seen += line
                found = re.search(r"(http://127\.0\.0\.1:\d+/\S*)", line)
                if found:
                    return found[1]
                if not line:
                    break
        self.kill()
        raise AssertionError(f"the server did not announce its URL: {seen}")

    # -- HTTP ------------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                token: bool = True) -> tuple[int, dict, bytes]:
        """(status, headers, body) of one request; ``token``: send the page's token header."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
        sent = {"x-neuro-scan-token": self.token} if token and self.token else {}
        connection.request(method, path, body=body, headers={**sent, **(headers or {})})
        response = connection.getresponse()
        data = response.read()
        connection.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def json(self, method: str, path: str, payload: object = None, **options) -> tuple[int, object]:
        body = None if payload is None else json.dumps(payload).encode()
        status, _headers, data = self.request(method, path, body, {"content-type": "application/json"}, **options)
        return status, json.loads(data) if data else None

    def page_token(self) -> str | None:
        status, _headers, page = self.request("GET", urlsplit(self.url).path + "?" + (urlsplit(self.url).query or ""),
                                              token=False)
        found = re.search(rb'name="neuro-scan-token" content="([^"]+)"', page)
        return found[1].decode() if status == 200 and found else None

    def start(self, command: str, probe_file: dict | None = None, **options) -> dict:
        status, job = self.json("POST", "/api/jobs", {"command": command, "options": options, "probe_file": probe_file})
        assert status == 201, job
        return job

    def job(self, job_id: str) -> dict:
        status, job = self.json("GET", f"/api/jobs/{job_id}")
        assert status == 200, job
        return job

    def events(self, job_id: str, after: int | None = None) -> Iterator[dict]:
        """The job's server-sent events as they arrive, each with ``id`` and ``received`` (the
        wall-clock time it was read), until the stream's end event."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=STREAM_SECONDS)
        headers = {"x-neuro-scan-token": self.token} if self.token else {}
        if after is not None:
            headers["last-event-id"] = str(after)
        connection.request("GET", f"/api/jobs/{job_id}/events", headers=headers)
        response = connection.getresponse()
        assert response.status == 200, response.read()
        fields: dict[str, str] = {}
        try:
            while True:
                line = response.readline()
                if not line:
                    raise AssertionError("the stream closed before its end event")
                line = line.decode("utf-8").rstrip("\n")
                if line:
                    name, _colon, value = line.partition(": ")
                    fields[name] = value
                    continue
                if fields.get("event") == "end":
                    return
                if "data" in fields:
                    yield {**json.loads(fields["data"]), "id": int(fields["id"]), "received": time.time()}
                fields = {}
        finally:
            connection.close()

    def finish(self, job_id: str) -> list[dict]:
        """Every event of the job, once it has ended."""
        return list(self.events(job_id))

    # -- the process -----------------------------------------------------------------------------

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status)[1])

    def stop(self) -> None:
        """Ctrl-C: the server interrupts its running jobs and waits for them."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError("the server did not stop on SIGINT") from None
        self.process.stdout.close()

    def kill(self, *workers: int) -> None:
        """SIGKILL to the server (a crash) and to the given worker pids (a power cut). Workers run
        in sessions of their own: the others keep running."""
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.process.stdout.close()


def pause(pid: int) -> None:
    """SIGSTOP a worker and wait until it is stopped: it stays alive and does nothing until
    :func:`resume` (no race with its work). Waiting matters: a thread still in a system call (the
    journal's fsync) when SIGSTOP came would take a SIGINT sent meanwhile first (the lower number)
    instead of leaving it pending."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + START_SECONDS
    while Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "T":
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} did not stop")
        time.sleep(0.01)


def resume(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


def wait_for_sigint(pid: int) -> None:
    """Until SIGINT is pending for (paused) process ``pid``: it is then the first thing it meets on resuming."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        pending = re.search(r"ShdPnd:\s+([0-9a-f]+)", Path(f"/proc/{pid}/status").read_text())[1]
        if int(pending, 16) & (1 << (signal.SIGINT - 1)):
            return
        time.sleep(0.05)
    raise AssertionError(f"no SIGINT reached process {pid}")

