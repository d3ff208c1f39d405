"""The web app's scheduler: one model-running job at a time per device, the rest queued in the
order they came; jobs that load no model start at once. Device names such as cuda:1 are only
scheduled here, nothing runs on them."""

from __future__ import annotations

import dataclasses
import random

import pytest

from neuro_scan.serve.jobs import Job, Jobs, to_start


def job(name: str, device: str | None, order: int) -> Job:
    return Job(name, "compare" if device is None else "ablate", {}, name, f"2025-01-01T00:00:00.{order:06d}",
               device=device)


def names(jobs: list[Job]) -> list[str]:
    return [job.id for job in jobs]


def test_one_job_per_free_device_oldest_first():
    queued = [job("cpu-1", "cpu", 1), job("cuda1-1", "cuda:1", 2), job("cpu-2", "cpu", 3), job("cuda0-1", "cuda:0", 4),
              job("cuda1-2", "cuda:1", 5), job("compare-1", None, 6), job("compare-2", None, 7)]
    for seed in range(5):  # the order of the list does not matter: the order they came does
        shuffled = random.Random(seed).sample(queued, len(queued))
        assert names(to_start(shuffled, set())) == ["cpu-1", "cuda1-1", "cuda0-1", "compare-1", "compare-2"]
        # a device whose job still runs takes none; the others still start theirs
        assert names(to_start(shuffled, {"cuda:1"})) == ["cpu-1", "cuda0-1", "compare-1", "compare-2"]
        assert names(to_start(shuffled, {"cpu", "cuda:0", "cuda:1"})) == ["compare-1", "compare-2"]
        # a running job that loads no model (device None) holds no device
        assert names(to_start(shuffled, {None})) == ["cpu-1", "cuda1-1", "cuda0-1", "compare-1", "compare-2"]


def test_the_queue_of_a_device_empties_in_order():
    queued = [job(f"cpu-{n}", "cpu", n) for n in range(4)] + [job("cuda-0", "cuda:0", 9)]
    ran = []
    busy: set[str | None] = set()
    while queued:
        started = to_start(queued, busy)
        assert len([j for j in started if j.device == "cpu"]) <= 1
        ran += names(started)
        queued = [j for j in queued if j not in started]
        busy = set()  # every started job ends before the next look
    assert ran == ["cpu-0", "cuda-0", "cpu-1", "cpu-2", "cpu-3"]


@pytest.mark.slow
def test_auto_is_the_device_the_runner_picks(tmp_path):
    """``auto`` is asked of a child process (the server imports no torch); here it is compared
    with the runner's own resolution in this process."""
    from neuro_scan.backend.loading import resolve_device

    jobs = Jobs(tmp_path)
    assert jobs.device("cpu") == "cpu" and jobs.device("cuda") == "cuda"
    assert jobs.device("auto") == str(resolve_device("auto"))


def test_the_form_has_no_resume_each_job_has_a_new_folder():
    from neuro_scan.errors import UsageError
    from neuro_scan.serve import forms

    spec = forms.startable("ablate")
    assert "resume" in {field.name for field in dataclasses.fields(spec.options)}  # the CLI has it
    assert "resume" not in {option["name"] for option in forms.form(spec)["options"]}
    with pytest.raises(UsageError, match=r"^--resume: set by the server \(each job has a new folder"):
        forms.coerce(spec, {"model": "demo", "resume": True})
