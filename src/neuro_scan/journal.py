"""The journal of a scan: every configuration's per-sample scores, on disk as soon as it is scored,
so that an interrupted scan continues where it stopped (docs/scale.md, "Resumable scans").

The file, ``.neuro-scan-journal.jsonl`` in the output folder, is one JSON object per line:

1. a header: the format and the inputs that decide a configuration's scores (see :func:`inputs`);
2. one line per configuration scored: its probe, its key (the engine's name for it: ``skip L3,L7``,
   ``mean L2.H5``, ``repeat 4-9``) and its per-sample arrays, floats written as ``float.hex`` so
   that a resumed run reads back the very bits the interrupted one computed.

Each line is appended with one write, flushed and fsynced before the scan goes on: a run killed
at any moment leaves every finished configuration on disk and at most one torn last line, which
the next run drops (with a notice) and recomputes. A journal whose header names other inputs is
refused with the difference named, never mixed in.

This module is the one writer of files outside :mod:`neuro_scan.report`: the report layer writes
whole files as a unit at the end of a phase, while a journal grows line by line during a scan.
The journal is no output: the folder's manifest never names it (so a report's commit never
removes it), and a run removes it once its report is written.

Nothing here imports torch or numpy at import time: the CLI checks a journal before either loads.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from neuro_scan.errors import UsageError

if TYPE_CHECKING:
    from neuro_scan.backend.base import Backend
    from neuro_scan.probes import Probe
    from neuro_scan.scoring import SampleScores

JOURNAL_FILE = ".neuro-scan-journal.jsonl"
FORMAT = "neuro-scan-journal/1"
START_AFRESH = "pass --no-resume to discard it and start afresh, or choose another --output"


def probe_fingerprint(probe: Probe) -> dict:
    """A probe as its scores depend on it: its samples (prompt, answer, choices) and how they are scored."""
    samples = [[s.prompt, s.answer, list(s.choices) if s.choices else None] for s in probe.samples]
    text = json.dumps({"samples": samples, "digit_scoring": probe.digit_scoring}, ensure_ascii=False)
    return {"samples": len(probe.samples), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def model_fingerprint(backend: Backend) -> dict:
    """A loaded model as its scores depend on it: its shape, its unembedding (sha256 of the matrix in
    bfloat16, the tuned lens's check), and the dtype, device type and backend it runs in. Its name
    is recorded for the messages but not compared: the same model moved to another folder continues."""
    info = backend.info
    return {"model": info.model_id, "architecture": info.architecture, "layers": info.num_layers,
            "hidden_size": info.hidden_size, "vocab_size": info.vocab_size,
            "unembedding_sha256": backend.unembedding_sha256(), "dtype": info.dtype,
            "device": info.device.split(":")[0], "backend": info.backend}


def inputs(probes: list[Probe], backend: Backend | None = None) -> dict:
    """The header's inputs: every probe's fingerprint and, once loaded, the model's.

    Not among them, because they change no score (docs/scale.md): the batch size, the cache budget,
    the device map, length buckets and pair resume change how configurations share a forward,
    hence at most the last bits of float32 sums, as the interruption itself does; the seed only
    draws bootstrap intervals and samples from the scores; what a command scans (its granularity,
    ablation kind, pairs, blocks) is in each configuration's key."""
    found = {"probes": {probe.name: probe_fingerprint(probe) for probe in probes}}
    if backend is not None:
        found["model"] = model_fingerprint(backend)
    return found


def check_journal(folder: Path, probes: list[Probe], resume: bool | None) -> None:
    """Before the model loads: ``--resume`` needs a journal, and a journal of other probes is refused
    (the model is compared once loaded, by :func:`open_journal`)."""
    path = folder / JOURNAL_FILE
    if not path.exists():
        if resume:
            raise UsageError(f"--resume: {path} does not exist: no interrupted scan to continue in {folder}")
        return
    if resume is False:
        return
    header = _read_lines(path)[0]
    if header is not None:
        _refuse_other_inputs(path, header, inputs(probes))


def open_journal(folder: Path, probes: list[Probe], backend: Backend, resume: bool | None,
                 notice: Callable[..., None], *, record: bool = True) -> ScanJournal:
    """The folder's journal for a run on these inputs: the one an interrupted run left (checked
    against them; its torn last line dropped), or a new one, made at the first configuration scored.
    ``resume=False``: an existing journal is discarded. ``record=False``: read it, write nothing."""
    path = folder / JOURNAL_FILE
    now = {"format": FORMAT, **inputs(probes, backend)}
    journal = ScanJournal(path, now, record=record)
    if not path.exists():
        return journal
    if resume is False:
        if record:
            os.unlink(path)
        notice(f"--no-resume: discarded the journal of an interrupted scan, {path}")
        return journal
    header, *lines = _read_lines(path)
    if header is None:  # killed while the header was written: nothing was scored yet
        if record:
            os.unlink(path)
        return journal
    _refuse_other_inputs(path, header, now)
    kept = 0  # bytes of the entries kept after the header
    for number, line in enumerate(lines, start=2):
        entry = _entry(line)
        if entry is None and number == len(lines) + 1:  # the last line, torn by the interruption
            notice(f"dropped the last line of {path}, cut short when the scan was interrupted; "
                   "that configuration is scored again")
            journal.keep(kept)
            break
        if entry is None:
            raise UsageError(f"--output: line {number} of {path} is damaged (not a configuration's scores); {START_AFRESH}")
        journal.entries[entry[0]] = entry[1]
        kept += len(line)
    journal.created = True
    notice(f"continuing the interrupted scan journalled in {path}: {len(journal.entries)} configurations already "
           "scored are not run again")
    return journal


@dataclass
class ScanJournal:
    """The journal of one run: the configurations found in it, and where new ones are appended."""

    path: Path
    header: dict
    record: bool = True  # False: read only (a process that does not write the report)
    entries: dict[tuple[str, str], SampleScores] = field(default_factory=dict)  # (probe, key) -> scores
    created: bool = False  # the file exists with our header
    used: bool = False  # this run found or recorded a configuration in it

    def for_probe(self, probe: Probe) -> ProbeJournal:
        """The journal of one probe's scans (the engine's ``journal``)."""
        return ProbeJournal(self, probe.name)

    def find(self, probe: str, key: str) -> SampleScores | None:
        found = self.entries.get((probe, key))
        self.used |= found is not None
        return found

    def add(self, probe: str, key: str, scores: SampleScores) -> None:
        """Record one configuration: one line appended, on disk when this returns."""
        self.entries[(probe, key)] = scores
        self.used = True
        if not self.record:
            return
        line = {"probe": probe, "key": key, **_arrays(scores)}
        if not self.created:
            _append(self.path, _line(self.header), create=True)
            self.created = True
        _append(self.path, _line(line))

    def keep(self, kept: int) -> None:
        """Keep the header and the first ``kept`` bytes of entries (a torn last line goes)."""
        if self.record:
            with open(self.path, "r+b") as handle:
                handle.truncate(len(handle.readline()) + kept)
                os.fsync(handle.fileno())

    def remove(self) -> None:
        """The run is over and its report written: the journal it used goes."""
        if self.record and self.used and self.path.exists():
            os.unlink(self.path)
            _fsync_folder(self.path.parent)


@dataclass
class ProbeJournal:
    """:class:`neuro_scan.engine.Journal` for one probe's engine."""

    journal: ScanJournal
    probe: str

    def find(self, key: str) -> SampleScores | None:
        return self.journal.find(self.probe, key)

    def record(self, key: str, scores: SampleScores) -> None:
        self.journal.add(self.probe, key, scores)


# -- the file ----------------------------------------------------------------------------------


def _line(data: dict) -> bytes:
    return (json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


def _append(path: Path, data: bytes, create: bool = False) -> None:
    """Append ``data`` with one write (looped only if the kernel takes less), flushed and fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT | os.O_TRUNC if create else 0), 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if create:
        _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    from neuro_scan.report.files import fsync_folder

    fsync_folder(folder)


def _read_lines(path: Path) -> list:
    """The header (None when torn or empty) and the entry lines, as bytes (a torn last line has no newline)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UsageError(f"--output: cannot read {path}: {error.strerror or error}") from None
    first, newline, rest = data.partition(b"\n")
    if not newline:
        return [None]
    try:
        header = json.loads(first)
    except ValueError:
        header = "damaged"
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise UsageError(f"--output: {path} is not a neuro-scan journal of this version (its first line is not "
                         f"a {FORMAT} header); {START_AFRESH}")
    return [header, *rest.splitlines(keepends=True)]


def _refuse_other_inputs(path: Path, header: dict, now: dict) -> None:
    """A one-line UsageError naming the first input that differs between the journal and this run."""
    theirs, ours = header.get("probes", {}), now["probes"]
    if list(theirs) != list(ours):
        _refuse(path, f"probes {', '.join(theirs)} in the journal, {', '.join(ours)} now")
    for name, fingerprint in ours.items():
        if theirs[name] != fingerprint:
            _refuse(path, f"probe {name}: {_probe_text(theirs[name])} in the journal, {_probe_text(fingerprint)} now")
    if "model" in now:
        journal_model, model = header.get("model", {}), now["model"]
        for key, value in model.items():
            if key != "model" and journal_model.get(key) != value:
                _refuse(path, f"model {key}: {_short(journal_model.get(key))} ({journal_model.get('model')}) in the "
                        f"journal, {_short(value)} ({model['model']}) now")


def _probe_text(fingerprint: dict) -> str:
    return f"{fingerprint.get('samples')} samples, sha256 {str(fingerprint.get('sha256'))[:12]}"


def _short(value: object) -> str:
    text = str(value)
    return text[:12] if len(text) == 64 else text  # a sha256


def _refuse(path: Path, difference: str) -> None:
    raise UsageError(f"--output: {path} journals a scan of other inputs ({difference}); it is never mixed in: "
                     f"{START_AFRESH}")


def _arrays(scores: SampleScores) -> dict:
    """Per-sample arrays exactly: floats as float.hex, with their dtypes."""
    digit = scores.expected_digit
    return {"answer_logprob": [float(v).hex() for v in scores.answer_logprob.tolist()],
            "logprob_dtype": str(scores.answer_logprob.dtype), "correct": [bool(v) for v in scores.correct.tolist()],
            "expected_digit": None if digit is None else [float(v).hex() for v in digit.tolist()],
            "digit_dtype": None if digit is None else str(digit.dtype)}


def _entry(line: bytes) -> tuple[tuple[str, str], SampleScores] | None:
    """((probe, key), scores) of an entry line; None for a torn or damaged one."""
    import numpy as np

    from neuro_scan.scoring import SampleScores

    if not line.endswith(b"\n"):
        return None
    try:
        data = json.loads(line)
        logprob = np.array([float.fromhex(v) for v in data["answer_logprob"]], dtype=data["logprob_dtype"])
        correct = np.array(data["correct"], dtype=bool)
        digits = data["expected_digit"]
        digit = None if digits is None else np.array([float.fromhex(v) for v in digits], dtype=data["digit_dtype"])
        if len(correct) != len(logprob) or not isinstance(data["probe"], str) or not isinstance(data["key"], str):
            return None
        return (data["probe"], data["key"]), SampleScores(logprob, correct, digit)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
