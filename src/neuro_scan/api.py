"""The Python API, for notebooks and scripts.

Two ways in, both through the same code as the CLI:

- ``run("map", model="demo", probe="arith", output="results/demo")`` runs a command exactly as
  ``neuro-scan map`` does (validation, one model load, files written as a unit) and returns its
  :class:`~neuro_scan.runner.Outcome`: ``.result`` (the result dataclass), ``.document`` (the
  report written), ``.written``.
- ``session = load("demo", probe="arith")`` loads a model and a probe once; then
  ``analyse(session, "ablate")``, ``analyse(session, "logit-lens", top_tokens=3)``, ... run any
  analysis on it and return its result dataclass without writing files. Every result has
  ``.to_frame()`` (a pandas DataFrame).

``read_report(path)`` reads any report file (ours, the reference tool's, a fetched Hub row) into
typed objects.
"""

from __future__ import annotations

import dataclasses
import importlib

from neuro_scan import events
from neuro_scan.commands import command
from neuro_scan.runner import Outcome
from neuro_scan.runner import run as run_spec


def options(name: str, **values):
    """The options dataclass of command ``name`` from keyword arguments (the CLI's option names
    with underscores: ``top_k=5``, ``custom_probe="p.json"``)."""
    spec = command(name)
    known = {field.name for field in dataclasses.fields(spec.options)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return spec.options(**values)


def run(name: str, *, sink: events.EventSink = events.ignore, **values) -> Outcome:
    """Run a command as the CLI does (files written to ``output``) -> its outcome."""
    return run_spec(name, options(name, **values), sink)


def load(model: str, probe: str | None = None, *, sink: events.EventSink = events.ignore, **values):
    """A model and a probe loaded once (``values``: any shared scan option, e.g. ``custom_probe``,
    ``max_samples``, ``batch_size``, ``dtype``, ``device``, ``seed``, ``tuned_lens``) -> a Session.
    Nothing is written: ``output`` is only checked when a command is run."""
    from neuro_scan.commands import MapOptions
    from neuro_scan.session import Session, Validated, load_backend

    scan = MapOptions(model=model, probe=probe, **values)
    scan.check()
    validated = Validated(scan.resolve_probes(), output=None)
    backend, timings = load_backend(scan.model, scan.backend, scan.dtype, scan.device, scan.seed, sink)
    return Session(scan, validated, backend, sink, timings)


def analyse(session, name: str, **values):
    """Run analysis ``name`` (a command name: ablate, logit-lens, attention, circuit, map, ...) on a
    loaded session -> its result dataclass. ``values`` override the session's options."""
    spec = command(name)
    if not spec.loads_model or spec.name == "calibrate":
        raise ValueError(f"{name} does not run on a loaded model; use run('{name}', ...)")
    shared = {field.name: getattr(session.options, field.name) for field in dataclasses.fields(session.options)}
    fields = {field.name for field in dataclasses.fields(spec.options)}
    chosen = spec.options(**{**{k: v for k, v in shared.items() if k in fields}, **values})
    chosen.check()
    return importlib.import_module(spec.analysis).execute(session, chosen)


def read_report(path: str):
    """Any report file -> a typed report (see :mod:`neuro_scan.report.read`)."""
    from neuro_scan.report.read import read_report as read

    return read(path, str(path))
