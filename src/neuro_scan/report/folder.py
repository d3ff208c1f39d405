"""Output folders: checked before the work, held by one run at a time, written as a unit.

Checked: :func:`prepare_output_dir` creates the folder and writes in it before any model is
loaded, so ``-o afile/sub`` or ``-o /proc/x`` fail in a second, not after the scan.

Held: inside :func:`output_session` (the CLI opens one per command) the run holds an exclusive
``flock`` on ``.neuro-scan.lock`` in the folder from its validation to the end of its writing,
so a second run into the folder stops with a one-line error naming the first. The kernel drops
the lock when a process dies, however it dies; the file is removed when the run ends.

Written as a unit (:func:`write_set`), so the folder holds one complete set of results whatever
moment a run is stopped at (Ctrl-C, SIGKILL, power loss):

1. every new file is written under a hidden temporary name (``.neuro-scan-tmp.*``) and fsynced;
2. a commit record (``.neuro-scan-commit.json``) listing the renames and deletions is fsynced and
   renamed into place: from this rename on, the new set exists;
3. the renames and deletions are applied, the folder fsynced and the record removed.

Whoever takes the folder next first completes a leftover record (step 3) and deletes leftover
temporary files of ours. Ctrl-C waits for the end of these steps (well under a second).

Runs that do not belong together: the manifest (``.neuro-scan-files.json``) names every output
file with its :class:`Origin`: the command that wrote it and the run (model, probe, sample count,
seed). A commit removes the files the same command wrote before and does not write now (its
earlier set is replaced as a whole) and the outputs of a run that differs, so pages of different
runs never sit side by side; outputs of the same run from other commands stay (``circuit``
reuses ``map``'s report.json). Files tied to no single run (plotly.min.js, comparisons) stay too,
and files the manifest does not name (the user's own) are never touched. Among them is a scan's
journal (:mod:`neuro_scan.journal`), written line by line during a run and removed by the run once
its report is written: no commit removes it, so an interrupted scan can continue.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path

from neuro_scan.errors import UsageError
from neuro_scan.journal import JOURNAL_FILE
from neuro_scan.report.files import create_file, fsync_folder, json_bytes, remove_quietly
from neuro_scan.report.lock import release_lock, take_lock

COMMIT_FILE = ".neuro-scan-commit.json"
MANIFEST_FILE = ".neuro-scan-files.json"
TEMP_PREFIX = ".neuro-scan-tmp."
MANIFEST_FORMAT = "neuro-scan-files/1"


@dataclass
class Origin:
    """Where an output file came from: the command that wrote it and the identity of the run
    (model, probe, sample count, seed; None for a comparison). Both None: a support file."""

    command: str | None = None
    run: dict | None = None

    def replaced_by(self, new: Origin) -> bool:
        """Does a commit of ``new`` remove a file of this origin that it does not rewrite?"""
        if self.command is None:
            return False
        if self.command == new.command:  # the command's earlier set goes as a whole
            return True
        return self.run is not None and new.run is not None and self.run != new.run

    def describe(self) -> str:
        run = ", ".join(f"{key} {value}" for key, value in (self.run or {}).items())
        return f"{self.command}: {run}" if run else str(self.command)


@dataclass
class HeldFolder:
    """An output folder as one run holds it."""

    path: Path
    created: list[Path]  # the folders the check made, deepest first: removed at the end while empty
    lock: int | None = None  # the descriptor holding the folder's flock
    had_results: bool = False  # it held outputs of an earlier run when the run took it
    written: bool = False
    removed: dict[str, Origin] = field(default_factory=dict)  # earlier runs' files the run removed

    def release(self) -> None:
        if self.lock is not None:
            release_lock(self.path, self.lock)
            self.lock = None
        for folder in self.created:
            try:
                os.rmdir(folder)
            except OSError:  # not empty: the run wrote there
                break

    def removal_note(self) -> str | None:
        if not self.removed:
            return None
        runs = "; ".join(dict.fromkeys(origin.describe() for origin in self.removed.values()))
        return f"removed {len(self.removed)} files of an earlier run ({runs}) from {self.path}: " + ", ".join(self.removed)

    def interruption_note(self) -> str:
        if self.written:
            note = f"{self.path} holds what it had finished"
        elif self.had_results:
            note = f"the earlier results in {self.path} are unchanged"
        else:
            note = f"nothing was written to {self.path}"
        if os.path.lexists(self.path / JOURNAL_FILE):
            note += (f"; the configurations it scored are journalled in {self.path / JOURNAL_FILE}: run the same "
                     "command again (or with --resume) to continue")
        return note


@dataclass
class OutputSession:
    """The output folders one command holds, from its validation to the end of its writing."""

    command: str
    folders: list[HeldFolder] = field(default_factory=list)

    def find(self, path: Path) -> HeldFolder | None:
        real = os.path.realpath(path)
        return next((held for held in self.folders if os.path.realpath(held.path) == real), None)

    def notes(self) -> list[str]:
        """What the user should know besides the files written: earlier runs' files removed."""
        return [note for note in (held.removal_note() for held in self.folders) if note]

    def interruption(self) -> str:
        notes = [held.interruption_note() for held in self.folders] or ["nothing was written"]
        return f"interrupted: neuro-scan {self.command} stopped; " + "; ".join(notes)


_session: ContextVar[OutputSession | None] = ContextVar("neuro_scan_output_session", default=None)


@contextlib.contextmanager
def output_session(command: str) -> Iterator[OutputSession]:
    """Hold the output folders that ``prepare_output_dir`` checks within, until the block ends.

    Outside a session a folder is only locked while :func:`write_set` writes it."""
    session = OutputSession(command)
    token = _session.set(session)
    try:
        yield session
    finally:
        _session.reset(token)
        for held in session.folders:
            held.release()


def prepare_output_dir(path: str | Path, lock: bool = True) -> Path:
    """Check an output folder before any work: create it (and its parents) and write in it.

    ``lock=False`` for a folder that receives one file written on its own (calibrate's lens file:
    lenses of many models share a folder). Within :func:`output_session` the folder stays held
    (locked, unless ``lock=False``) to the session's end, and a folder the check created is
    removed then if nothing was written to it; outside a session the check cleans up at once."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--output: {path} is a file; give a folder for the results")
    session = _session.get()
    if session is not None and session.find(path) is not None:
        return path
    try:
        held = HeldFolder(path, _make_folders(path))
    except OSError as error:
        raise _cannot_write(path, error) from None
    try:
        if lock:
            held.lock = take_lock(path, _command(session))
            _recover(path)
            held.had_results = any(os.path.lexists(path / name) for name in _read_manifest(path))
        else:
            probe = path / f"{TEMP_PREFIX}check.{secrets.token_hex(4)}"
            create_file(probe, b"neuro-scan write check\n")
            remove_quietly(probe)
    except OSError as error:
        held.release()
        raise _cannot_write(path, error) from None
    except BaseException:
        held.release()
        raise
    if session is None:
        held.release()
    else:
        session.folders.append(held)
    return path


def write_set(folder: Path, files: dict[str, bytes], origin: Origin,
              support: dict[str, bytes] | None = None) -> list[Path]:
    """Write one run's files into ``folder`` as a unit (see the module docstring) -> their paths.

    ``support``: files the pages need (plotly.min.js), rewritten only when the folder's copy is
    not exactly this."""
    folder = Path(folder)
    session = _session.get()
    held = session.find(folder) if session is not None else None
    own: HeldFolder | None = None
    try:
        if held is None or held.lock is None:  # not held by this run: held for the writing only
            held = own = _hold_for_writing(folder, session)
        with _interrupts_deferred():  # a Ctrl-C meanwhile is raised at the end of the block
            removed = _commit(folder, files, origin, support or {})
            held.removed = {name: o for name, o in held.removed.items() if name not in files} | removed  # net of rewrites
            held.written = True
    except OSError as error:
        state = ("the next neuro-scan run into it completes the writing" if os.path.lexists(folder / COMMIT_FILE)
                 else "nothing was changed there")
        raise UsageError(f"--output: cannot write to {folder}: {error.strerror or error}; {state}") from None
    finally:
        if own is not None:
            own.release()
    return [folder / name for name in files]


def _hold_for_writing(folder: Path, session: OutputSession | None) -> HeldFolder:
    folder.mkdir(parents=True, exist_ok=True)
    held = HeldFolder(folder, [])
    held.lock = take_lock(folder, _command(session))
    if session is not None:
        session.folders.append(held)
    try:
        _recover(folder)
    except BaseException:
        held.release()
        raise
    return held


def _command(session: OutputSession | None) -> str:
    return f"neuro-scan {session.command}" if session is not None else "neuro-scan"


# ------------------------------------------------------------------------------------- writing


def _commit(folder: Path, files: dict[str, bytes], origin: Origin, support: dict[str, bytes]) -> dict[str, Origin]:
    """Steps 1-3 of the module docstring -> the files of earlier runs removed, with their origin."""
    old = {name: entry for name, entry in _read_manifest(folder).items() if name not in files}
    replaced = {name: entry for name, entry in old.items() if entry.replaced_by(origin)}
    kept = {name: entry for name, entry in old.items() if name not in replaced and os.path.lexists(folder / name)}
    manifest = kept | {name: Origin() for name in support} | {name: origin for name in files}
    new = files | {name: data for name, data in support.items() if not _holds(folder / name, data)}
    new[MANIFEST_FILE] = json_bytes({"format": MANIFEST_FORMAT,
                                     "files": {name: asdict(entry) for name, entry in manifest.items()}})
    removed = {name: entry for name, entry in replaced.items() if os.path.lexists(folder / name)}

    temps: dict[str, str] = {}
    try:
        for name, data in new.items():
            temps[name] = f"{TEMP_PREFIX}{secrets.token_hex(4)}.{name}"
            create_file(folder / temps[name], data)
        record = {"rename": [[temp, name] for name, temp in temps.items()], "delete": sorted(replaced)}
        temps[COMMIT_FILE] = f"{TEMP_PREFIX}{secrets.token_hex(4)}.{COMMIT_FILE}"
        create_file(folder / temps[COMMIT_FILE], json_bytes(record))
        os.replace(folder / temps[COMMIT_FILE], folder / COMMIT_FILE)  # from here on the new set exists
    except BaseException:
        if not os.path.lexists(folder / COMMIT_FILE):  # never committed: the folder is as it was
            for temp in temps.values():
                remove_quietly(folder / temp)
        raise
    fsync_folder(folder)
    _roll_forward(folder)
    return removed


def _roll_forward(folder: Path) -> None:
    """Apply the commit record in place (again, if a run stopped while applying it) and remove it."""
    record_path = folder / COMMIT_FILE
    try:
        record = json.loads(record_path.read_bytes())
        renames = [(temp, name) for temp, name in record["rename"]
                   if temp.startswith(TEMP_PREFIX) and _plain(temp) and _plain(name)]
        deletions = [name for name in record["delete"] if _plain(name)]
    except (ValueError, KeyError, TypeError, AttributeError):  # damaged or not ours: trust nothing in it
        renames, deletions = [], []
    for temp, name in renames:
        try:
            os.replace(folder / temp, folder / name)
        except FileNotFoundError:  # renamed before the run stopped
            pass
    for name in deletions:
        remove_quietly(folder / name)
    fsync_folder(folder)
    remove_quietly(record_path)
    fsync_folder(folder)


def _recover(folder: Path) -> None:
    """On taking a folder: complete a stopped run's commit, delete our leftover temporary files."""
    if os.path.lexists(folder / COMMIT_FILE):
        _roll_forward(folder)
    for entry in os.scandir(folder):
        if entry.name.startswith(TEMP_PREFIX):
            remove_quietly(Path(entry.path))


def _read_manifest(folder: Path) -> dict[str, Origin]:
    """file name -> its origin. Unreadable: {} (so nothing is removed)."""
    try:
        files = json.loads((folder / MANIFEST_FILE).read_bytes())["files"]
        return {name: Origin(entry["command"], entry["run"]) for name, entry in files.items()
                if _plain(name) and isinstance(entry["command"], (str, type(None)))
                and isinstance(entry["run"], (dict, type(None)))}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _plain(name: object) -> bool:
    """A file name directly in the folder (a record or manifest never reaches outside it)."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name


def _holds(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Ctrl-C during the writing takes effect right after it (the writing takes well under a second)."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is None or threading.current_thread() is not threading.main_thread():  # not ours to change
        yield
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)


def _make_folders(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents -> the folders made, deepest first."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = path.parent
    created: list[Path] = []
    try:
        for folder in reversed(missing):
            try:
                os.mkdir(folder)
            except FileExistsError:
                if folder.is_dir():  # made by someone else just now: not ours to remove
                    continue
                raise
            created.insert(0, folder)
    except BaseException:
        for folder in created:
            os.rmdir(folder)
        raise
    return created


def _cannot_write(path: Path, error: OSError) -> UsageError:
    return UsageError(f"--output: cannot write to {path}: {error.strerror or error}")
