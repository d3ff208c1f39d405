"""Atomic file writing: every output appears whole or not at all (temp file + rename)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from neuro_scan.errors import UsageError


def prepare_output_dir(path: str | Path) -> Path:
    """Check ``--output`` before any work is done; create it only when writing starts."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--output: {path} is a file; give a folder for the results")
    parent = next((p for p in [path, *path.parents] if p.exists()), None)
    if parent is not None and not os.access(parent, os.W_OK):
        raise UsageError(f"--output: {parent} is not writable")
    return path


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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


def write_json(path: Path, data: dict) -> Path:
    return write_text(path, json.dumps(to_json_safe(data), indent=2, allow_nan=False) + "\n")
