"""Backends by name: ``--backend NAME`` -> the code that opens a model behind the Backend protocol.

A backend registers a :class:`BackendEntry` naming the module and function that open it; the
module is imported only when a model is opened, so checking ``--backend`` costs nothing. Adding a
backend: implement :class:`neuro_scan.backend.base.Backend` in a module of its own and add one
``register_backend`` line here (see docs/architecture.md, "Adding a backend").
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from neuro_scan.errors import UsageError

DEFAULT_BACKEND = "transformers"


@dataclass(frozen=True)
class BackendEntry:
    name: str
    module: str  # imported when the backend is opened
    opener: str  # function(model, *, dtype, device[, device_map, max_memory, offload_folder]) -> Backend
    description: str
    unavailable: str | None = None  # why it cannot be used in this version (a one-line reason)
    gradients: bool = True  # analyses that need a backward pass (tuned-lens training) can run


_REGISTRY: dict[str, BackendEntry] = {}


def register_backend(entry: BackendEntry) -> None:
    _REGISTRY[entry.name] = entry


def backend_names() -> list[str]:
    return list(_REGISTRY)


def check_backend(name: str, *, gradients: bool = False) -> BackendEntry:
    """``--backend`` -> its entry, or a one-line error naming what is allowed."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise UsageError(f"--backend: '{name}' is not one of {', '.join(_REGISTRY)}")
    if entry.unavailable:
        raise UsageError(f"--backend: {name} {entry.unavailable}")
    if gradients and not entry.gradients:
        raise UsageError(f"--backend: {name} cannot compute gradients, which this command needs; use {DEFAULT_BACKEND}")
    return entry


def open_backend(model: str, *, backend: str = DEFAULT_BACKEND, dtype: str = "auto", device: str = "auto",
                 device_map: str | dict | None = None, max_memory: dict[int | str, int] | None = None,
                 offload_folder: str | None = None):
    """``--model/--backend/--dtype/--device`` -> a ready :class:`~neuro_scan.backend.base.Backend`;
    ``--device-map/--max-memory`` (and an offload folder) place a model larger than one device
    (see :func:`neuro_scan.backend.loading.load_model`), passed on only when given."""
    entry = check_backend(backend)
    opener = getattr(importlib.import_module(entry.module), entry.opener)
    placement = {"device_map": device_map, "max_memory": max_memory, "offload_folder": offload_folder}
    return opener(model, dtype=dtype, device=device, **{k: v for k, v in placement.items() if v is not None})


register_backend(BackendEntry(
    "transformers", "neuro_scan.backend.transformers", "open_model",
    "Hugging Face transformers: model folders, .gguf files, Hub ids and the demo model"))
register_backend(BackendEntry(
    "exllamav2", "neuro_scan.backend.exllamav2", "open_model", "quantized EXL2/GPTQ models on CUDA",
    unavailable="is not available in this version; use --backend transformers"))
