"""The `neuro-scan` command line: parse options, call the library, print a summary."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from neuro_scan import __version__
from neuro_scan.errors import UsageError
from neuro_scan.options import (Backend, BatchSize, CustomProbe, Device, Dtype, MaxSamples, Model, Output, ProbeName,
                                Seed, TopK, TunedLens, Verbose)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Map what each transformer layer of a causal LLM does.")
console = Console(stderr=True)
out = Console()


def user_errors(command: Callable) -> Callable:
    """Bad input -> one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        verbose = kwargs.get("verbose", False)
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
        # read by transformers when (and if) it is imported: no import cost for fast commands
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if verbose else "error")
        try:
            return command(*args, **kwargs)
        except UsageError as error:
            fail(str(error))

    return wrapper


def fail(message: str) -> None:
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)

    return wrapper


@contextlib.contextmanager
def progress_bar(description: str, total: float) -> Iterator[Callable[[float], None]]:
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal and total <= 1) as bar:
        task = bar.add_task(description, total=total)
        yield lambda units: bar.advance(task, units)


def _scan_options(**kwargs):
    from neuro_scan.pipeline import ScanOptions

    kwargs.pop("verbose", None)
    return ScanOptions(**kwargs)


def _print_summary(report: dict, written) -> None:
    base = report["baseline"]
    out.print(f"[bold]{report['model']}[/bold] · probe [bold]{report['probe']}[/bold] · {report['sample_count']} samples · "
              f"{report['total_layers']} layers · {report['dtype']} on {report['device']}")
    out.print(f"baseline: answer log-prob {base['score']:.3f} (95% CI {base['score_ci'][0]:.3f}..{base['score_ci'][1]:.3f}), "
              f"accuracy {base['accuracy']:.3f}")
    table = Table("layer", "damage (nats)", "95% CI", "accuracy without", "label")
    labels = report.get("layer_labels", {})
    rows = {r["layer_idx"]: r for r in report["ablation_results"]}
    for layer in report["top_important_layers"]:
        row = rows[layer]
        table.add_row(str(layer), f"{row['score_delta']:.4f}", f"{row['score_delta_ci'][0]:.4f}..{row['score_delta_ci'][1]:.4f}",
                      f"{row['accuracy']:.3f}", labels.get(str(layer), ""))
    out.print(table)
    if report.get("improving_layers"):
        out.print(f"layers whose removal improves the score: {report['improving_layers']}")
    out.print("wrote " + ", ".join(str(p) for p in written))


@app.command("map")
@user_errors
def map_command(model: Model, probe: ProbeName = "math", custom_probe: CustomProbe = None, backend: Backend = "transformers",
                batch_size: BatchSize = 64, output: Output = "./results", top_k: TopK = 10, dtype: Dtype = "auto",
                device: Device = "auto", seed: Seed = 0, max_samples: MaxSamples = None, tuned_lens: TunedLens = None,
                verbose: Verbose = False) -> None:
    """Full map: ablation + logit lens + block influence + labels, from one baseline pass."""
    options = _scan_options(**locals())
    from neuro_scan.pipeline import run_map

    report, written = run_map(options, progress_bar)
    _print_summary(report, written)


@app.command("ablate")
@user_errors
def ablate_command(model: Model, probe: ProbeName = "math", custom_probe: CustomProbe = None, backend: Backend = "transformers",
                   batch_size: BatchSize = 64, output: Output = "./results", top_k: TopK = 10, dtype: Dtype = "auto",
                   device: Device = "auto", seed: Seed = 0, max_samples: MaxSamples = None, verbose: Verbose = False) -> None:
    """Layer ablation scan: skip each layer in turn and measure the damage."""
    options = _scan_options(**locals())
    from neuro_scan.pipeline import run_ablate

    report, written = run_ablate(options, progress_bar)
    _print_summary(report, written)


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
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
