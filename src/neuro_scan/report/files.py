"""Writing one file so that it is whole or absent, and durable once written.

A file is written under a hidden temporary name in its own folder, flushed and fsynced, then
renamed over the target, and the folder is fsynced: a crash or power loss leaves the old file
or the new one, never an empty or torn one. Files are created with mode 0666 minus the umask,
like any other program's files (``tempfile.mkstemp`` would make them 0600, unreadable to
colleagues and web servers). Result folders written as a set go through ``report.folder``.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path

# temporary names of single-file writes (lens files, fetched reports). Folder writes use their
# own prefix (report.folder.TEMP_PREFIX): a folder writer removes its leftovers, never these,
# since a single file may be being written next to it by a run that holds no folder lock
PART_PREFIX = ".neuro-scan-part."


def create_file(path: Path, data: bytes) -> None:
    """Create ``path`` (which must not exist) holding ``data``, on disk when this returns."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with open(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(fd)
    except BaseException:
        remove_quietly(path)
        raise


def fsync_folder(folder: Path) -> None:
    """Make renames and deletions in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f"{PART_PREFIX}{secrets.token_hex(4)}.{path.name}"
    create_file(temp, data)
    try:
        os.replace(temp, path)
    except BaseException:
        remove_quietly(temp)
        raise
    fsync_folder(path.parent)
    return path


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def to_json_safe(value):
    """Replace NaN/inf by None so the file is valid JSON; numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_bytes(data: dict) -> bytes:
    return (json.dumps(to_json_safe(data), indent=2, allow_nan=False) + "\n").encode("utf-8")


def write_json(path: Path, data: dict) -> Path:
    return write_bytes(path, json_bytes(data))
