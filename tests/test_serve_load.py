"""Load, bounded in count and time: 50 viewers stream one running job while the report list is
asked for 20 times a second. Every viewer gets every event (the job's events.jsonl, line for
line), the server's memory stays flat, and it answers afterwards."""

from __future__ import annotations

import json
import statistics
import threading
import time

import pytest

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'neuro-scan[serve]'")

from serve_process import Server

pytestmark = pytest.mark.slow

VIEWERS = 50
LIST_RATE = 20  # report-list requests per second
LIMIT_SECONDS = 300  # the requests stop by then whatever happens
MEMORY_GROWTH_KIB = 24 * 1024  # a leak of a few KiB per request or event would pass this many times over


def test_fifty_viewers_and_a_busy_report_list(tmp_path):
    server = Server(tmp_path)
    try:
        warm = server.start("ablate", model="demo", probe="arith")
        server.finish(warm["id"])
        for _ in range(LIST_RATE):
            assert server.request("GET", "/api/reports")[0] == 200
        baseline = server.rss_kib()

        job = server.start("map", model="demo", probe="arith", batch_size=4)
        received: list[list[dict]] = [[] for _ in range(VIEWERS)]
        failures: list[BaseException] = []

        def view(number: int) -> None:
            try:
                received[number].extend(server.events(job["id"]))
            except BaseException as error:  # noqa: BLE001 - reported by the test below
                failures.append(error)

        viewers = [threading.Thread(target=view, args=(n,)) for n in range(VIEWERS)]
        for viewer in viewers:
            viewer.start()
        statuses, memory = [], [baseline]
        deadline = time.monotonic() + LIMIT_SECONDS
        while any(viewer.is_alive() for viewer in viewers) and time.monotonic() < deadline:
            tick = time.monotonic()
            statuses.append(server.request("GET", "/api/reports")[0])
            if len(statuses) % LIST_RATE == 0:
                memory.append(server.rss_kib())
            time.sleep(max(0.0, 1 / LIST_RATE - (time.monotonic() - tick)))
        for viewer in viewers:
            viewer.join(timeout=60)
        assert not failures, failures[:3]

        lines = [json.loads(line) for line in (tmp_path / "jobs" / job["id"] / "events.jsonl").read_text().splitlines()]
        assert lines[-1]["event"] == "Ended" and lines[-1]["state"] == "finished"
        for events in received:
            assert [{k: v for k, v in event.items() if k not in ("id", "received")} for event in events] == lines
        assert set(statuses) == {200} and len(statuses) >= LIST_RATE
        after = server.rss_kib()
        assert max(memory + [after]) - baseline < MEMORY_GROWTH_KIB, (baseline, memory, after)
        assert server.request("GET", "/api/reports")[0] == 200
        assert server.json("GET", "/api/jobs")[0] == 200

        latency = [event["received"] - event["time"] for events in received for event in events]
        print(f"\n{VIEWERS} viewers x {len(lines)} events, {len(statuses)} report lists; event latency median "
              f"{statistics.median(latency) * 1000:.0f} ms, 95% {statistics.quantiles(latency, n=20)[-1] * 1000:.0f} ms, "
              f"max {max(latency) * 1000:.0f} ms; server memory {baseline // 1024} MiB before, peak "
              f"{max(memory + [after]) // 1024} MiB, {after // 1024} MiB after")
    finally:
        server.stop()
