"""The one runner of every command: validate -> open the model once -> run the analysis -> result
dataclass -> documents and figures -> written as a unit -> an outcome for the caller to show.

The CLI, the Python API and the web app all call :func:`run`. Progress, results as they arrive and
warnings go to the caller's event sink (:mod:`neuro_scan.events`); the runner itself prints nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from neuro_scan import events
from neuro_scan.commands import CommandSpec, command
from neuro_scan.errors import UsageError


class Interrupted(Exception):
    """The run was stopped (Ctrl-C); the message says what the output folder holds."""


@dataclass
class Outcome:
    command: str
    result: object  # the analysis's result dataclass
    document: object  # the main JSON document written (a dict), or what the command wrote instead
    written: list[Path]
    failed_phases: dict[str, str] = field(default_factory=dict)  # phase -> error, for a run that went on
    notes: list[str] = field(default_factory=list)  # what the user should know besides the files

    def summary(self) -> list:
        """The command's terminal summary: rich renderables and strings (none where nothing was written)."""
        return [] if self.document is None else _module(command(self.command).report).summary(self.document)


def _module(path: str):
    return importlib.import_module(path)


def run(name: str | CommandSpec, options, sink: events.EventSink = events.ignore) -> Outcome:
    """Run one command with its options dataclass (see :mod:`neuro_scan.commands`)."""
    from neuro_scan.distributed import place
    from neuro_scan.report.folder import output_session

    spec = _spec(name, options)
    here = place()
    if here is not None and not here.main:
        return _run_share(spec, options, f"process {here.rank} of {here.world_size}")
    with output_session(spec.name) as held:
        try:
            outcome = _run(spec, options, sink)
        except KeyboardInterrupt:
            raise Interrupted(held.interruption()) from None
        outcome.notes += held.notes()
    sink(events.Finished(spec.name, [str(path) for path in outcome.written]))
    return outcome


def check(name: str | CommandSpec, options) -> object:
    """Every check a run of the command makes before it loads a model or imports torch: its
    options, then its files (probe files, the output folder) and the model's location. Bad input
    raises the UsageError the CLI prints -> what validation found (for a run: the output folder,
    the probes). Outside a run nothing stays written (the web app checks a job with it)."""
    from neuro_scan.session import ScanOptions, validate

    spec = _spec(name, options)
    options.check()  # bad options fail here, before the analysis modules import torch
    if isinstance(options, ScanOptions):  # a scan: probe files, output folder, model location
        return validate(options)
    return _module(spec.analysis).validate(options)  # compare's, calibrate's own checks


def _spec(name: str | CommandSpec, options) -> CommandSpec:
    spec = command(name) if isinstance(name, str) else name
    if not isinstance(options, spec.options):
        raise UsageError(f"{spec.name}: options must be {spec.options.__name__}, not {type(options).__name__}")
    return spec


def _run(spec: CommandSpec, options, sink: events.EventSink) -> Outcome:
    from neuro_scan import report

    validated = check(spec, options)
    writer = _module(spec.report)
    analysis = _module(spec.analysis)
    if not spec.loads_model:
        result = analysis.execute(options)
        files = writer.files(result)
        return Outcome(spec.name, result, files.documents[files.main], report.write(validated, files))
    if hasattr(writer, "write"):  # a command that writes one file of its own kind (calibrate's lens)
        result = analysis.execute(options, validated, sink)
        return Outcome(spec.name, result, result, writer.write(result, validated))
    from neuro_scan.session import open_session

    session = open_session(options, validated, sink)
    session.save_progress = lambda partial: report.write(session.output, writer.files(partial, session.run_info()))
    result = analysis.execute(session, options)
    files = writer.files(result, session.run_info())
    written = report.write(session.output, files)
    session.finish()  # the scans' journal goes once the report is written
    return Outcome(spec.name, result, files.documents[files.main], written, dict(files.failed_phases))


def _run_share(spec: CommandSpec, options, process: str) -> Outcome:
    """A launched process other than the first (:mod:`neuro_scan.distributed`): it scores its share
    of every scan and gathers the others'; the first process checks the input, writes the report
    and shows progress, so this one writes and shows nothing. Commands that scan nothing (compare,
    calibrate) run in the first process alone."""
    if not spec.loads_model or hasattr(_module(spec.report), "write"):
        return Outcome(spec.name, None, None, [], notes=[f"{process}: {spec.name} runs in process 0 alone"])
    from neuro_scan.session import Validated, open_session

    options.check()
    session = open_session(options, Validated(options.resolve_probes(), Path(options.output)), record=False)
    result = _module(spec.analysis).execute(session, options)
    return Outcome(spec.name, result, None, [], notes=[f"{process}: scored its share; process 0 wrote the report"])
