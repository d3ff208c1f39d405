"""What the "new scan" form offers and how its values become a command's options.

The commands and their options are :mod:`neuro_scan.commands`' specs, the same dataclasses the
CLI builds its flags from, so the form has every option of every scanning command, with the
CLI's defaults and help. Values arrive as JSON, are typed here (:func:`coerce`), and are then
checked by the runner's own validation (:func:`neuro_scan.runner.check`, the CLI's), so a bad
value gets the CLI's one line.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import types
import typing
from pathlib import Path

from neuro_scan.commands import COMMANDS, CommandSpec, command
from neuro_scan.errors import UsageError
from neuro_scan.session import ScanOptions

MAX_PROBE_BYTES = 4 * 2**20  # an uploaded probe file
SET_BY_SERVER = {  # what the server sets, and why
    "output": "each job has a new folder of its own",
    "custom_probe": "upload the probe file",
    "resume": "each job has a new folder of its own; an interrupted job is resumed by its Resume button",
}
TYPES = {int: "int", float: "float", str: "str", bool: "bool"}


def scans() -> list[CommandSpec]:
    """The commands the page can start: those that scan a model on probes."""
    return [spec for spec in COMMANDS.values() if issubclass(spec.options, ScanOptions)]


def startable(name: str) -> CommandSpec:
    spec = command(name)
    if spec not in scans() and spec.name != "compare":
        raise UsageError(f"command: '{name}' cannot be started from the page; it starts "
                         f"{', '.join(s.name for s in scans())} and compare")
    return spec


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _fields(spec: CommandSpec) -> list[tuple[dataclasses.Field, type, bool, str]]:
    """(field, its base type, whether it may be None, its help) for each option of the form."""
    hints = typing.get_type_hints(spec.options, include_extras=True)
    hidden = (*getattr(spec.options, "NOT_OPTIONS", ()), *SET_BY_SERVER)
    fields = []
    for field in dataclasses.fields(spec.options):
        if field.name in hidden:
            continue
        kind, info = typing.get_args(hints[field.name])[:2]  # Annotated[type, typer's OptionInfo]
        members = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
        base = next(member for member in members if member is not type(None))
        fields.append((field, typing.get_origin(base) or base, type(None) in members, getattr(info, "help", "") or ""))
    return fields


def form(spec: CommandSpec) -> dict:
    """A command as the page draws its form."""
    takes_probe_file = ("custom_probe" in {f.name for f in dataclasses.fields(spec.options)}
                        and "custom_probe" not in getattr(spec.options, "NOT_OPTIONS", ()))
    return {"name": spec.name, "help": spec.help, "probe_file": takes_probe_file,
            "options": [{"name": field.name, "flag": flag(field.name), "type": TYPES.get(base, "str"),
                         "optional": optional, "help": help_,
                         "default": None if field.default is dataclasses.MISSING else field.default,
                         "required": field.default is dataclasses.MISSING}
                        for field, base, optional, help_ in _fields(spec)]}


def coerce(spec: CommandSpec, values: dict) -> dict:
    """JSON values -> the options' Python values; one line naming the flag when one is not of its
    type. Names the form does not know are passed on (the options' constructor names them)."""
    known = {field.name: (base, optional) for field, base, optional, _help in _fields(spec)}
    out = {}
    for name, value in values.items():
        if name in SET_BY_SERVER:
            raise UsageError(f"{flag(name)}: set by the server ({SET_BY_SERVER[name]})")
        if name not in known:
            out[name] = value
            continue
        base, optional = known[name]
        if value is None or value == "":
            if not optional:
                raise UsageError(f"{flag(name)}: a value is required")
            out[name] = None
        else:
            out[name] = _typed(name, base, value)
    return out


def _typed(name: str, base: type, value: object):
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdecimal():
            return int(value)
        raise UsageError(f"{flag(name)}: '{value}' is not a whole number")
    elif base is float:
        try:
            if not isinstance(value, bool):
                return float(value)
        except (TypeError, ValueError):
            pass
        raise UsageError(f"{flag(name)}: '{value}' is not a number")
    elif base is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise UsageError(f"{flag(name)}: give a list of report paths")
    elif isinstance(value, str):
        return value
    raise UsageError(f"{flag(name)}: '{value}' is not a {TYPES.get(base, 'text')}")


def probe_name(name: str) -> str:
    """The name an uploaded probe file is kept under: its base name."""
    base = os.path.basename(name.replace("\\", "/")).strip()
    if not base or base.startswith(".") or "\0" in base:
        raise UsageError(f"probe file '{name}': give a JSON file with a plain name")
    return base


def check_probe(name: str, data: bytes):
    """An uploaded probe file checked by the CLI's reader, with the CLI's messages (as if
    ``--custom-probe NAME`` were given) -> the probe. Nothing stays written."""
    from neuro_scan.probes import load_probe_file

    base = probe_name(name)
    if len(data) > MAX_PROBE_BYTES:
        raise UsageError(f"probe file {base}: {len(data)} bytes, more than the {MAX_PROBE_BYTES} a probe upload may have")
    with tempfile.TemporaryDirectory(prefix="neuro-scan-probe-") as folder:
        path = Path(folder) / base
        path.write_bytes(data)
        try:
            return load_probe_file(path)
        except UsageError as error:  # the reader names the file by its path: name it as the user did
            raise UsageError(str(error).replace(f"{folder}{os.sep}", "")) from None


def cached_models() -> list[str]:
    """Hub ids of the models in the local Hugging Face cache (those with a downloaded snapshot)."""
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        folders = sorted(os.scandir(HF_HUB_CACHE), key=lambda e: e.name.lower())
    except OSError:
        return []
    return [folder.name[len("models--"):].replace("--", "/") for folder in folders
            if folder.name.startswith("models--") and any(Path(folder.path, "snapshots").glob("*/*"))]
