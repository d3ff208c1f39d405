"""The `neuro-scan` command line: registers every command of :mod:`neuro_scan.commands`, runs it
through the one runner, shows its events (progress, warnings) and prints its summary.

No science and no report keys here: what a command computes is its analysis module's business,
what it prints is its report module's ``summary``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import sys
import typing
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Column, Table

from neuro_scan import __version__, events
from neuro_scan.commands import COMMANDS, CommandSpec
from neuro_scan.errors import UsageError
from neuro_scan.hub.layout import DEFAULT_REPO
from neuro_scan.options import (HubModel, HubProbe, HubRepo, ListReports, OpenBrowser, PublishAs, PullRequest,
                                ReportOutput, ServeHost, ServePort, ServeResults, ServeToken, Verbose)


def _version(show: bool) -> None:
    if show:
        out.print(f"neuro-scan {__version__}")
        raise typer.Exit(0)


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Map what each transformer layer of a causal LLM does.")
console = Console(stderr=True)
out = Console()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", help="Show the installed version and exit.",
                                                callback=_version, is_eager=True)] = False) -> None:
    """Map what each transformer layer of a causal LLM does."""


def user_errors(command: Callable) -> Callable:
    """Bad input -> one line on stderr and exit code 2, never a traceback. Ctrl-C -> one line
    saying what was stopped and what the output folder holds, exit code 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from neuro_scan.runner import Interrupted

        verbose = kwargs.get("verbose", False)
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s",
                            handlers=[ConsoleLog()])
        # read by transformers when (and if) it is imported: no import cost for fast commands
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if verbose else "error")
        # same for huggingface_hub: its retry warnings would break the one-line errors
        os.environ.setdefault("HF_HUB_VERBOSITY", "info" if verbose else "error")
        try:
            return command(*args, **kwargs)
        except UsageError as error:
            fail(str(error))
        except Interrupted as interrupted:
            console.print(escape(str(interrupted)), highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except KeyboardInterrupt:
            console.print(f"interrupted: neuro-scan {command.__name__} stopped", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None

    return wrapper


class ConsoleLog(logging.Handler):
    """Log records printed by the rich console on stderr, so that they appear above the progress
    bars instead of tearing through them."""

    def emit(self, record: logging.LogRecord) -> None:
        console.print(escape(self.format(record)), highlight=False, soft_wrap=True)


def fail(message: str) -> None:
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


class TerminalEvents:
    """The terminal's consumer of a run's events: one progress bar per phase (rich, on stderr; a
    spinner and the time keep a one-step phase such as loading visibly alive), warnings and notes
    as lines. Used as a context manager around the run."""

    def __init__(self) -> None:
        description = Column(max_width=36, no_wrap=True, overflow="ellipsis")  # the bar stays visible at 80 columns
        columns = [SpinnerColumn(finished_text="✓"), TextColumn("{task.description}", table_column=description),
                   BarColumn(bar_width=20), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                   TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
        self.bars = Progress(*columns, console=console, transient=False, disable=not console.is_terminal)
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> TerminalEvents:
        self.bars.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.bars.stop()

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.PhaseStarted):
            self.tasks[event.phase] = self.bars.add_task(event.description, total=event.total, status="")
        elif isinstance(event, events.Advanced) and event.phase in self.tasks:
            self.bars.update(self.tasks[event.phase], advance=event.units,
                             **({} if event.status is None else {"status": event.status}))
        elif isinstance(event, events.Notice):
            colour = "yellow" if event.level == "warning" else "default"
            prefix = f"[{colour}]warning:[/{colour}] " if event.level == "warning" else ""
            self.bars.console.print(prefix + escape(event.message), highlight=False, soft_wrap=True)


def _written(paths: list) -> str:
    if len(paths) == 1 and paths[0].is_file():
        return f"wrote {paths[0]} ({paths[0].stat().st_size / 2**20:.1f} MiB)"
    folders = {path.parent for path in paths}
    if len(folders) == 1:
        return f"wrote {len(paths)} files to {folders.pop()}: " + ", ".join(path.name for path in paths)
    return "wrote " + ", ".join(str(path) for path in paths)


def _where_to_look(paths: list) -> str | None:
    """The page to open: the dashboard when there is one, else the first chart page."""
    pages = [path for path in paths if path.suffix == ".html"]
    page = next((path for path in pages if path.name == "index.html"), pages[0] if pages else None)
    return None if page is None else f"open {page}"


def run_and_print(spec: CommandSpec, options) -> None:
    """Run one command, print its summary and what it wrote; exit 1 when a phase failed (its
    report holds every other phase)."""
    from neuro_scan.runner import run

    with TerminalEvents() as terminal:
        outcome = run(spec, options, terminal)
    for part in outcome.summary():
        out.print(part, highlight=False) if isinstance(part, str) else out.print(part)
    for note in outcome.notes:
        out.print(escape(note), highlight=False, soft_wrap=True)
    if outcome.written:
        out.print(_written(outcome.written), highlight=False, soft_wrap=True)
    look = _where_to_look(outcome.written)
    if look is not None:
        out.print(look, highlight=False, soft_wrap=True)
    for phase, error in outcome.failed_phases.items():
        console.print(f"[yellow]warning:[/yellow] the {phase} phase failed, the report has every other phase: "
                      f"{escape(error)}", highlight=False, soft_wrap=True)
    if outcome.failed_phases:
        raise typer.Exit(1)


def register(spec: CommandSpec) -> None:
    """A Typer command from a spec: its options dataclass's fields become the flags (their types
    are the shared option types of neuro_scan.options), plus --verbose."""
    hints = typing.get_type_hints(spec.options, include_extras=True)
    hidden = getattr(spec.options, "NOT_OPTIONS", ())
    fields = [f for f in dataclasses.fields(spec.options) if f.name not in hidden]
    parameters = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                                    default=inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
                  for f in fields]
    parameters.append(inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, annotation=Verbose, default=False))

    def command(**values) -> None:
        values.pop("verbose", None)
        run_and_print(spec, spec.options(**values))

    command.__name__ = spec.name
    command.__doc__ = spec.help
    command.__signature__ = inspect.Signature(parameters)
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    app.command(spec.name)(user_errors(command))


for _spec in COMMANDS.values():
    register(_spec)


@app.command("probes")
@user_errors
def probes_command(verbose: Verbose = False) -> None:
    """List the built-in probes."""
    from neuro_scan.probes import builtin_probe_names, load_builtin

    table = Table("name", "group", "samples", "answer type", "description")
    for name in builtin_probe_names():
        probe = load_builtin(name)
        table.add_row(probe.name, probe.group, str(len(probe.samples)), probe.answer_type, probe.description)
    out.print(table)


def _print_fetched(fetched) -> None:
    from neuro_scan.hub.fetch import summary

    for part in summary(fetched):
        out.print(part, highlight=False) if isinstance(part, str) else out.print(part)


@app.command("fetch")
@user_errors
def fetch_command(model: HubModel = None, probe: HubProbe = "math", repo: HubRepo = DEFAULT_REPO,
                  output: ReportOutput = None, list_: ListReports = False, verbose: Verbose = False) -> None:
    """Download a pre-computed report from the Hugging Face Hub (no model, no GPU) and summarise it."""
    from neuro_scan.hub.fetch import fetch_report, list_reports

    if list_:
        table = Table("model", "probe", "layers", "scan date", "tool version")
        for entry in list_reports(repo, model):
            table.add_row(*(escape(str(v or "")) for v in (entry.model, entry.probe, entry.layers, entry.scan_date,
                                                           entry.tool_version)))
        out.print(table)
        return
    if model is None:
        raise UsageError("--model is required (or --list to see the reports in the repository)")
    _print_fetched(fetch_report(repo, model, probe, output))


@app.command("publish")
@user_errors
def publish_command(report: Annotated[str, typer.Argument(help="The report.json to upload (from `neuro-scan map`).",
                                                          show_default=False)],
                    repo: HubRepo = DEFAULT_REPO, model: PublishAs = None, pr: PullRequest = True,
                    verbose: Verbose = False) -> None:
    """Upload a report (and the updated index) to the Hub dataset, as a pull request by default; needs HF_TOKEN."""
    from neuro_scan.hub.publish import publish_report

    published = publish_report(report, repo, model, pr)
    entry = published.entry
    action = "opened a pull request" if published.pull_request else "committed"
    change = "replacing the earlier report" if published.replaced else "new"
    out.print(f"{action} on {escape(published.repo)}: {escape(entry.path)} ({change}) and index.json: {published.url}",
              highlight=False)


@app.command("serve")
@user_errors
def serve_command(results: ServeResults = "./results", host: ServeHost = "127.0.0.1", port: ServePort = 0,
                  token: ServeToken = None, open_: OpenBrowser = False, verbose: Verbose = False) -> None:
    """Browse the reports, start scans and watch their results arrive, in a local web page (docs/serve.md)."""
    from neuro_scan.serve.app import serve

    serve(results, host, port, token, open_, announce=lambda url: out.print(f"neuro-scan serve: {url} (Ctrl-C stops "
                                                                            "it)", highlight=False, soft_wrap=True))


@app.command("version")
def version_command() -> None:
    """Show the installed version."""
    out.print(f"neuro-scan {__version__}")


def main() -> None:
    """Console entry: option-parsing errors become one `error:` line with exit code 2 too."""
    click_usage_error = typer.BadParameter.__mro__[1]  # Typer's (vendored) click UsageError
    try:
        code = app(prog_name="neuro-scan", standalone_mode=False)
    except click_usage_error as error:
        if not error.format_message():  # bare `neuro-scan`: the help was shown
            sys.exit(0)
        where = f"{error.ctx.command_path}: " if getattr(error, "ctx", None) else ""
        console.print(f"[red]error:[/red] {escape(where + error.format_message())}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except typer.Abort:  # Ctrl-C outside a command (while the options are read)
        console.print("interrupted: neuro-scan stopped before it began; nothing was written", highlight=False)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
