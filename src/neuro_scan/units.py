"""Memory sizes as users write them: ``8GB``, ``1.5 GB``, ``512MiB``, ``8G``, ``4096``.

SI prefixes count in thousands and binary ones in 1024s, as accelerate and transformers count
them: ``K``/``KB`` = 1000 bytes, ``Ki``/``KiB`` = 1024 bytes, and so on through ``T``; ``B`` or no
unit is bytes. Letters may be of either case; a space may separate the number and its unit.
"""

from __future__ import annotations

import math
import re

from neuro_scan.errors import UsageError

_PREFIXES = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_SIZE = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<prefix>[kmgt]?)(?P<binary>i?)(?P<byte>b?)", re.IGNORECASE)
SIZE_HELP = "a size such as 8GB, 1.5 GB, 512MiB or 8G (K/M/G/T count in 1000s, KiB/MiB/GiB/TiB in 1024s)"


def parse_size(text: str, option: str) -> int:
    """``text`` -> bytes (rounded down), or a one-line UsageError naming ``option``."""
    found = _SIZE.fullmatch(text.strip())
    if found is None or (found["binary"] and not found["prefix"]):
        raise UsageError(f"{option}: '{text}' is not {SIZE_HELP}")
    base = 1024 if found["binary"] else 1000
    value = float(found["number"]) * base ** _PREFIXES[found["prefix"].lower()]
    if not math.isfinite(value):
        raise UsageError(f"{option}: '{text}' is too large")
    return int(value)


def format_size(size: int) -> str:
    """Bytes in the largest binary unit that keeps the number at least 1 (``1.50 GiB``)."""
    for power, unit in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if size >= 1024**power:
            return f"{size / 1024**power:.2f} {unit}"
    return f"{size} B"


def parse_max_memory(text: str, option: str = "--max-memory") -> dict[int | str, int]:
    """``0=20GiB,1=20GiB,cpu=64GB`` -> accelerate's ``max_memory`` ({0: bytes, 1: bytes, 'cpu': bytes}).

    A device is a GPU index (``0`` or ``cuda:0``), ``cpu`` or ``mps``; what a map leaves over goes
    to disk, which needs no limit."""
    limits: dict[int | str, int] = {}
    for item in text.split(","):
        device, equals, size = item.partition("=")
        device = device.strip().lower()
        if not equals or not device:
            raise UsageError(f"{option}: '{item.strip()}' is not DEVICE=SIZE (for example 0=20GiB,cpu=64GB)")
        key = _device_key(device, option)
        if key in limits:
            raise UsageError(f"{option}: device '{device}' is given twice")
        limits[key] = parse_size(size, f"{option} {device}")
    return limits


def _device_key(device: str, option: str) -> int | str:
    index = device.removeprefix("cuda:")
    if index.isdigit():
        return int(index)
    if device in ("cpu", "mps"):
        return device
    raise UsageError(f"{option}: device '{device}' is not a GPU index (0, cuda:0), cpu or mps")
