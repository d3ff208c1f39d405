"""One run at a time in an output folder: an exclusive ``flock`` on ``.neuro-scan.lock`` in it.

The file holds the holder's pid, host, command and start time, so a second run can say whom it
waits for. The kernel drops a flock when its process dies, however it dies, so a killed run never
blocks the next one; the holder removes the file when it is done.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
from pathlib import Path

from neuro_scan.errors import UsageError
from neuro_scan.report.files import remove_quietly

LOCK_FILE = ".neuro-scan.lock"


def take_lock(folder: Path, command: str) -> int:
    """The folder's exclusive lock -> the descriptor holding it; UsageError naming the holder when taken."""
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            current = os.fstat(fd)
            try:
                there = os.stat(path)
            except FileNotFoundError:
                there = None
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UsageError(f"--output: {folder} is being written by {holder}; wait for it or choose another "
                             "folder") from None
        except BaseException:
            os.close(fd)
            raise
        if there is not None and (there.st_dev, there.st_ino) == (current.st_dev, current.st_ino):
            break
        os.close(fd)  # the holder removed that file between our open and our lock: lock the one there now
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                "started": dt.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8") + b"\n", 0)
    except BaseException:
        remove_quietly(path)
        os.close(fd)
        raise
    return fd


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0))
        started = dt.datetime.fromisoformat(info["started"])
        when = started.strftime("%H:%M:%S" if started.date() == dt.date.today() else "%Y-%m-%d %H:%M:%S")
        host = "" if info["host"] == socket.gethostname() else f" on {info['host']}"
        return f"{info['command']} (pid {int(info['pid'])}{host}, started {when})"
    except (OSError, ValueError, KeyError, TypeError):  # the holder has not written its details yet
        return "another neuro-scan run"


def release_lock(folder: Path, fd: int) -> None:
    remove_quietly(folder / LOCK_FILE)  # while still locked: a run that opened it meanwhile sees it gone and retries
    os.close(fd)
