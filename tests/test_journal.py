"""Resumable scans (issue 15, part 4): the journal of every configuration scored, read back bit for
bit; a torn last line dropped and recomputed; a journal of other inputs refused with the difference
named; and real runs killed (SIGKILL, SIGINT) at seeded moments, resumed, giving the report of an
uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from test_cli_errors import _offline_env, assert_usage_error, cli_command, run_inprocess
from tiny_models import make_backend

from neuro_scan.engine import Engine
from neuro_scan.errors import UsageError
from neuro_scan.journal import JOURNAL_FILE, check_journal, open_journal
from neuro_scan.probes import Probe, Sample, resolve_probe
from neuro_scan.scoring import SampleScores

PROBE = Probe(name="letters", description="", samples=(
    Sample("a", "b"), Sample("the cat sat on the", " mat"), Sample("1+1=", "2", choices=("1", "2", "3")),
    Sample("hello wor", "ld"), Sample("xy", "zz", choices=("zz", "ab")),
))
SKIPS = [frozenset({layer}) for layer in range(4)] + [frozenset({0, 2}), frozenset({1, 3})]


@pytest.fixture(scope="module")
def backend():
    return make_backend("llama")


def journalled(folder: Path, backend, probe: Probe = PROBE, resume: bool | None = None):
    notices: list[str] = []
    journal = open_journal(folder, [probe], backend, resume, lambda message, *_: notices.append(message))
    return journal, notices


def scan(backend, journal, probe: Probe = PROBE, configurations=SKIPS) -> list[SampleScores]:
    engine = Engine(backend, probe, batch_size=4)
    engine.journal = journal.for_probe(probe) if journal is not None else None
    return engine.skip_scan(configurations)


def assert_identical(found: list[SampleScores], expected: list[SampleScores]) -> None:
    for a, b in zip(found, expected, strict=True):
        assert a.answer_logprob.dtype == b.answer_logprob.dtype and np.array_equal(a.answer_logprob, b.answer_logprob)
        assert np.array_equal(a.correct, b.correct)
        assert (a.expected_digit is None) == (b.expected_digit is None)
        if a.expected_digit is not None:
            assert np.array_equal(a.expected_digit, b.expected_digit, equal_nan=True)


def test_entries_are_read_back_bit_for_bit(backend, tmp_path):
    rng = np.random.default_rng(0)
    written = [SampleScores(-rng.exponential(size=7) * 10.0 ** rng.integers(-30, 3, size=7), rng.random(7) < 0.5,
                            rng.random(7) * 9),
               SampleScores(np.array([-0.1, -np.inf, -1e-300, 0.0], dtype=np.float32), np.zeros(4, dtype=bool), None)]
    journal, _ = journalled(tmp_path, backend)
    for index, scores in enumerate(written):
        journal.for_probe(PROBE).record(f"skip L{index}", scores)
    lines = (tmp_path / JOURNAL_FILE).read_text().splitlines()
    assert json.loads(lines[0])["probes"]["letters"]["samples"] == 5 and len(lines) == 3
    again, notices = journalled(tmp_path, backend)
    assert notices == [f"continuing the interrupted scan journalled in {tmp_path / JOURNAL_FILE}: 2 configurations "
                       "already scored are not run again"]
    assert_identical([again.find("letters", f"skip L{index}") for index in range(2)], written)
    assert again.find("other probe", "skip L0") is None and again.find("letters", "skip L2") is None


def test_a_scan_continues_from_its_journal_and_removes_it_at_the_end(backend, tmp_path):
    plain = scan(backend, None)
    journal, _ = journalled(tmp_path, backend)
    interrupted = scan(backend, journal, configurations=SKIPS[:3])
    resumed_journal, _ = journalled(tmp_path, backend)
    engine = Engine(backend, PROBE, batch_size=4)
    engine.journal = resumed_journal.for_probe(PROBE)
    ran = []
    original = engine._skip_scan
    engine._skip_scan = lambda configurations, *args: ran.extend(configurations) or original(configurations, *args)
    resumed = engine.skip_scan(SKIPS)
    assert ran == SKIPS[3:]  # the journalled three are not run again
    assert_identical(resumed[:3], interrupted)  # the very bits the interrupted run wrote
    for a, b in zip(resumed, plain):
        np.testing.assert_allclose(a.answer_logprob, b.answer_logprob, atol=1e-6, rtol=0)
    resumed_journal.remove()
    assert not (tmp_path / JOURNAL_FILE).exists()


def test_a_torn_last_line_is_dropped_and_recomputed(backend, tmp_path):
    journal, _ = journalled(tmp_path, backend)
    expected = scan(backend, journal)
    path = tmp_path / JOURNAL_FILE
    whole = path.read_bytes()
    path.write_bytes(whole[: whole.rstrip(b"\n").rfind(b"\n") + 40])  # the last entry cut in its middle
    again, notices = journalled(tmp_path, backend)
    assert notices[0].startswith(f"dropped the last line of {path}, cut short")
    assert notices[1].endswith(f": {len(SKIPS) - 1} configurations already scored are not run again")
    assert path.read_bytes() == whole[: whole.rstrip(b"\n").rfind(b"\n") + 1]  # the torn line is gone from the file
    assert_identical(scan(backend, again), expected)  # the dropped one is scored again, the same way
    assert path.read_bytes().count(b"\n") == 1 + len(SKIPS)
    path.write_bytes(b'{"format": "neuro-scan-jour')  # killed while the header was written: a fresh start
    fresh, notices = journalled(tmp_path, backend)
    assert notices == [] and not path.exists() and not fresh.entries


def test_a_damaged_line_before_the_last_is_refused(backend, tmp_path):
    journal, _ = journalled(tmp_path, backend)
    scan(backend, journal)
    path = tmp_path / JOURNAL_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([*lines[:2], b"garbage\n", *lines[3:]]))
    with pytest.raises(UsageError, match=r"^--output: line 3 of .* is damaged .* --no-resume"):
        journalled(tmp_path, backend)


def test_a_journal_of_other_inputs_is_refused_never_mixed_in(backend, tmp_path):
    journal, _ = journalled(tmp_path, backend)
    scan(backend, journal, configurations=SKIPS[:2])
    other_probe = Probe(name="letters", description="", samples=PROBE.samples[:4])
    with pytest.raises(UsageError, match=r"^--output: .* journals a scan of other inputs \(probe letters: 5 samples, "
                                         r"sha256 \w{12} in the journal, 4 samples, sha256 \w{12} now\); it is never "
                                         r"mixed in: pass --no-resume"):
        check_journal(tmp_path, [other_probe], None)
    with pytest.raises(UsageError, match=r"\(probes letters in the journal, arith now\)"):
        check_journal(tmp_path, [resolve_probe("arith")], True)
    check_journal(tmp_path, [other_probe], False)  # --no-resume: discarded when the model is loaded
    with pytest.raises(UsageError, match=r"\(model unembedding_sha256: \w{12} \(llama\) in the journal, \w{12} "
                                         r"\(llama\) now\)"):
        journalled(tmp_path, make_backend("llama", seed=1))
    discarded, notices = journalled(tmp_path, make_backend("llama", seed=1), resume=False)
    assert notices == [f"--no-resume: discarded the journal of an interrupted scan, {tmp_path / JOURNAL_FILE}"]
    assert not (tmp_path / JOURNAL_FILE).exists() and not discarded.entries


def test_the_cli_refuses_a_journal_of_another_probe_before_loading(backend, tmp_path, no_model_loading):
    journal, _ = journalled(tmp_path, backend)
    scan(backend, journal, configurations=SKIPS[:1])
    before = (tmp_path / JOURNAL_FILE).read_bytes()
    rc, stdout, stderr = run_inprocess(["ablate", "--model", "demo", "--probe", "arith", "-o", str(tmp_path)])
    assert_usage_error(rc, stdout, stderr, ["--output", JOURNAL_FILE, "probes letters in the journal, arith now",
                                            "--no-resume"], None)
    assert (tmp_path / JOURNAL_FILE).read_bytes() == before  # refused, and kept as it was


# -- real runs, interrupted -----------------------------------------------------------------------------

RUNS = {  # small batches: one configuration per forward, so there are many moments to stop at
    "ablate": (["ablate", "--model", "demo", "--probe", "arith", "--batch-size", "4", "--granularity", "head"],
               "components.json", 16),  # 16 heads
    "circuit": (["circuit", "--model", "demo", "--probe", "arith", "--batch-size", "4", "--strategy", "exhaustive",
                 "--cache-memory", "1KB"], "circuit.json", 10),  # 4 layers, 6 pairs
}


def cli(args: list[str], folder: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*cli_command(), *args, "-o", str(folder)], capture_output=True, text=True, timeout=900,
                          env=_offline_env(tmp_path), check=False)


def stopped(args: list[str], folder: Path, tmp_path: Path, entries: int, how: signal.Signals) -> tuple[int, str]:
    """Run ``args`` and send ``how`` once the journal holds at least ``entries`` configurations ->
    (exit code, stderr)."""
    process = subprocess.Popen([*cli_command(), *args, "-o", str(folder)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=_offline_env(tmp_path))
    journal = folder / JOURNAL_FILE
    while process.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") > entries:  # the header and `entries` lines
            process.send_signal(how)
            break
        time.sleep(0.01)
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr


def report(folder: Path, name: str) -> dict:
    """The report without what differs between any two runs: when it was made and how long it took."""
    def steady(value):
        if isinstance(value, dict):
            return {k: steady(v) for k, v in value.items() if k not in ("created_at", "timings") and "seconds" not in k}
        return [steady(v) for v in value] if isinstance(value, list) else value

    return steady(json.loads((folder / name).read_text()))


@pytest.mark.slow
@pytest.mark.parametrize("run", sorted(RUNS))
def test_killed_scans_resume_to_the_uninterrupted_report(run, tmp_path):
    """SIGKILL at two seeded moments (after a random number of configurations), then the same
    command again; and a Ctrl-C (SIGINT), which exits 130 and says how to continue, then --resume.
    Every resumed report equals the uninterrupted one exactly (timestamps and timings aside): the
    journalled configurations are read back bit for bit, and with one configuration per forward the
    others are computed as the uninterrupted run computes them."""
    args, name, configurations = RUNS[run]
    done = cli(args, tmp_path / "whole", tmp_path)
    assert done.returncode == 0, done.stderr
    expected = report(tmp_path / "whole", name)
    assert expected["scale"]["cache_keep_every"] == {"arith": 5 if run == "circuit" else 1}
    moments = random.Random(run).sample(range(1, configurations - 1), 3)
    for moment, how in zip(moments, (signal.SIGKILL, signal.SIGKILL, signal.SIGINT)):
        folder = tmp_path / f"{how.name}-{moment}"
        code, stderr = stopped(args, folder, tmp_path, moment, how)
        if code == 0:  # the scan ended before the signal landed: nothing to resume
            continue
        assert (folder / JOURNAL_FILE).exists()
        if how == signal.SIGINT:
            assert code == 130 and "run the same command again (or with --resume) to continue" in stderr, stderr
        else:
            assert code == -signal.SIGKILL
        resumed = cli([*args, "--resume"] if how == signal.SIGINT else args, folder, tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert "continuing the interrupted scan journalled in" in resumed.stdout + resumed.stderr
        assert report(folder, name) == expected
        assert not (folder / JOURNAL_FILE).exists()
