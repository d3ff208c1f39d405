"""The `neuro-scan` command line: parse options, call the library, print a summary."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from neuro_scan import __version__
from neuro_scan.errors import UsageError
from neuro_scan.hub.layout import DEFAULT_REPO
from neuro_scan.options import (Backend, BatchSize, Corpus, CustomProbe, Device, Dtype, DupSizes, HeldoutTokens,
                                HubModel, HubProbe, HubRepo, LearningRate, LensFile, LensTopK, ListReports, MaxSamples,
                                Model, Output, ProbeName, Probes, PublishAs, PullRequest, Rank, RepeatCounts,
                                ReportOutput, Seed, Steps, Strategy, TokensPerStep, Tolerance, TopK, TopKPairs, TunedLens,
                                Verbose)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Map what each transformer layer of a causal LLM does.")
console = Console(stderr=True)
out = Console()


def user_errors(command: Callable) -> Callable:
    """Bad input -> one line on stderr and exit code 2, never a traceback. Ctrl-C -> one line
    saying what was stopped and what the output folder holds, exit code 130. The command's
    output folder is held (locked) from its validation to the end of its writing."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from neuro_scan.report.folder import output_session

        verbose = kwargs.get("verbose", False)
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
        # read by transformers when (and if) it is imported: no import cost for fast commands
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if verbose else "error")
        # same for huggingface_hub: its retry warnings would break the one-line errors
        os.environ.setdefault("HF_HUB_VERBOSITY", "info" if verbose else "error")
        with output_session(command.__name__.removesuffix("_command").replace("_", "-")) as session:
            try:
                result = command(*args, **kwargs)
            except UsageError as error:
                fail(str(error))
            except KeyboardInterrupt:
                console.print(escape(session.interruption()), highlight=False, soft_wrap=True)
                raise typer.Exit(130) from None
            for note in session.notes():
                out.print(escape(note), highlight=False, soft_wrap=True)
            return result

    return wrapper


def fail(message: str) -> None:
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def progress_bar(description: str, total: float) -> Iterator[Callable[..., None]]:
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal and total <= 1) as bar:
        task = bar.add_task(description, total=total, status="")

        def advance(units: float, status: str | None = None) -> None:
            bar.update(task, advance=units, **({} if status is None else {"status": status}))

        yield advance


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
    _exit_if_a_phase_failed(report)


def _exit_if_a_phase_failed(report: dict) -> None:
    """A warning line per failed phase, then exit code 1 (its report is written all the same)."""
    from neuro_scan.report.build import failed_phases

    failed = failed_phases(report)
    for phase, error in failed.items():
        console.print(f"[yellow]warning:[/yellow] the {phase} phase failed, the report has every other phase: "
                      f"{escape(error)}", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


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


@app.command("attention")
@user_errors
def attention_command(model: Model, probe: ProbeName = "math", custom_probe: CustomProbe = None,
                      backend: Backend = "transformers", batch_size: BatchSize = 64, output: Output = "./results",
                      dtype: Dtype = "auto", device: Device = "auto", seed: Seed = 0, max_samples: MaxSamples = None,
                      verbose: Verbose = False) -> None:
    """Attention entropy of every head in every layer (works under any attention implementation)."""
    options = _scan_options(**locals())
    from neuro_scan.pipeline import run_attention_command

    report, written = run_attention_command(options, progress_bar)
    if report["attention"] is not None:
        means = report["attention"]["layer_mean_bits"]
        out.print(f"[bold]{report['model']}[/bold] · probe {report['probe']}: mean attention entropy at the answer "
                  f"position per layer (bits): " + ", ".join(f"{m:.2f}" for m in means))
    out.print("wrote " + ", ".join(str(p) for p in written))
    _exit_if_a_phase_failed(report)


def _ci(values: list[float]) -> str:
    return f"{values[0]:.4f}..{values[1]:.4f}"


@app.command("circuit")
@user_errors
def circuit_command(model: Model, probe: ProbeName = "math", custom_probe: CustomProbe = None,
                    backend: Backend = "transformers", batch_size: BatchSize = 64, output: Output = "./results",
                    top_k: TopK = 10, dtype: Dtype = "auto", device: Device = "auto", seed: Seed = 0,
                    max_samples: MaxSamples = None, strategy: Strategy = "fast", top_k_pairs: TopKPairs = 10,
                    verbose: Verbose = False) -> None:
    """Layer pairs that work together: joint ablation, interaction with a 95% interval per pair."""
    settings = dict(locals())
    from neuro_scan.pipeline import CircuitOptions, run_circuit_command

    circuit = CircuitOptions(strategy=settings.pop("strategy"), top_k_pairs=settings.pop("top_k_pairs"))
    report, written = run_circuit_command(_scan_options(**settings), circuit, progress_bar,
                                          notify=lambda message: out.print(message, highlight=False))
    counts = {kind: sum(p["interaction_type"] == kind for p in report["all_interactions"])
              for kind in ("synergistic", "redundant", "independent")}
    out.print(f"[bold]{report['model']}[/bold] · probe {report['probe']} · {report['strategy']}: {report['total_pairs']} pairs "
              f"in {report['time_seconds']:.1f} s: {counts['synergistic']} synergistic, {counts['redundant']} redundant, "
              f"{counts['independent']} independent (false-discovery rate 5%: about "
              f"{report['expected_false_discoveries']:.1f} of the significant may be chance)")
    table = Table("pair", "type", "interaction (nats)", "95% CI", "joint damage", "damage alone")
    for pair in report["synergistic"][:5] + report["redundant"][:5]:
        table.add_row(f"{pair['layer_i']}+{pair['layer_j']}", pair["interaction_type"], f"{pair['interaction_effect']:+.4f}",
                      _ci(pair["interaction_ci"]), f"{pair['joint_delta']:.4f}",
                      f"{pair['individual_delta_i']:.4f} + {pair['individual_delta_j']:.4f}")
    out.print(table)
    out.print("wrote " + ", ".join(str(p) for p in written))


@app.command("cross-probe")
@user_errors
def cross_probe_command(model: Model, probes: Probes = "math,eq,json", backend: Backend = "transformers",
                        batch_size: BatchSize = 64, output: Output = "./results", top_k: TopK = 10, dtype: Dtype = "auto",
                        device: Device = "auto", seed: Seed = 0, max_samples: MaxSamples = None,
                        verbose: Verbose = False) -> None:
    """Single-layer ablation under several probes: universal and probe-specific layers, profile correlations."""
    settings = dict(locals())
    from neuro_scan.pipeline import run_cross_probe_command

    probe_list = settings.pop("probes")
    report, written = run_cross_probe_command(_scan_options(**settings), probe_list, progress_bar)
    table = Table("probe", "samples", "baseline (nats)", "significant layers", "only here")
    for entry in report["per_probe"]:
        table.add_row(entry["probe"], str(entry["sample_count"]), f"{entry['baseline']:.3f}",
                      str(entry["significant_layers"]), str(report["probe_specific_layers"][entry["probe"]]))
    out.print(table)
    out.print(f"universal layers (significant damage in every probe): {report['universal_layers'] or 'none'}")
    names = report["probes"]
    for i, j in ((i, j) for i in range(len(names)) for j in range(i + 1, len(names))):
        pearson, spearman = report["correlation_matrix"][i][j], report["spearman_matrix"][i][j]
        out.print(f"{names[i]} vs {names[j]}: Pearson {_number(pearson)}, Spearman {_number(spearman)}")
    out.print("wrote " + ", ".join(str(p) for p in written))


def _number(value: float | None) -> str:
    return "n/a (flat profile)" if value is None else f"{value:.3f}"


@app.command("compare")
@user_errors
def compare_command(reports: Annotated[list[str], typer.Argument(help="Two or more report.json files (ours or the reference's).",
                                                                  show_default=False)],
                    output: Output = "./results", tolerance: Tolerance = None, verbose: Verbose = False) -> None:
    """Compare layer profiles of models (of any depth) from their report files: no model is loaded."""
    from neuro_scan.pipeline import run_compare_command

    report, written = run_compare_command(reports, output, tolerance)
    table = Table("model", "layers", "probe", "mean damage", "most damaging layer (depth)", "reasoning layers")
    for model in report["models"]:
        table.add_row(model["name"], str(model["total_layers"]), model["probe"], f"{model['mean_sensitivity']:.4f}",
                      f"{model['most_damaging_layer']} ({model['most_damaging_relative_depth']:.2f})",
                      str(model["reasoning_layers"]))
    out.print(table)
    names = report["names"]
    for i, j in ((i, j) for i in range(len(names)) for j in range(i + 1, len(names))):
        out.print(f"{names[i]} vs {names[j]}: Pearson {_number(report['similarity_matrix'][i][j])}, "
                  f"Spearman {_number(report['spearman_matrix'][i][j])}")
    shared = [f"{s['relative_depth']:.2f}" for s in report["shared_reasoning_layers"]]
    out.print(f"shared reasoning depths (±{report['relative_depth_tolerance']}): {', '.join(shared) or 'none'}")
    out.print("wrote " + ", ".join(str(p) for p in written))


@app.command("prompt-repeat")
@user_errors
def prompt_repeat_command(model: Model, probe: ProbeName = "math", custom_probe: CustomProbe = None,
                          backend: Backend = "transformers", batch_size: BatchSize = 64, output: Output = "./results",
                          dtype: Dtype = "auto", device: Device = "auto", seed: Seed = 0, max_samples: MaxSamples = None,
                          repeat_counts: RepeatCounts = "1,2,3,4", dup_sizes: DupSizes = None,
                          verbose: Verbose = False) -> None:
    """Does repeating the prompt N times act like running a block of layers twice? Both are measured."""
    settings = dict(locals())
    from neuro_scan.pipeline import run_prompt_repeat_command

    counts, sizes = settings.pop("repeat_counts"), settings.pop("dup_sizes")
    report, written = run_prompt_repeat_command(_scan_options(**settings), counts, sizes, progress_bar)
    table = Table("N", "change (95% CI)", "closest: layers run twice", "their change", "difference (95% CI)", "verdict")
    for rep in report["repetitions"]:
        best = rep["best_matches"][0]
        layers = str(best["first"]) if best["size"] == 1 else f"{best['first']}..{best['stop'] - 1}"
        table.add_row(str(rep["count"]), f"{rep['change']:+.3f} ({rep['change_ci'][0]:+.3f}..{rep['change_ci'][1]:+.3f})",
                      layers, f"{best['change']:+.3f}",
                      f"{best['difference']:+.3f} ({best['difference_ci'][0]:+.3f}..{best['difference_ci'][1]:+.3f})",
                      rep["verdict"].replace("_", " "))
    out.print(f"[bold]{report['model']}[/bold] · probe {report['probe']} ({report['sample_count']} samples) · "
              f"{len(report['duplications'])} duplicated blocks of sizes {report['block_sizes']}")
    out.print(table)
    out.print("wrote " + ", ".join(str(p) for p in written))


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
    info = fetched.report.info
    out.print(f"[bold]{escape(info.model)}[/bold] · probe [bold]{escape(info.probe or '?')}[/bold] · "
              f"{info.total_layers} layers · scanned {escape(info.created_at or 'on an unrecorded date')} "
              f"by {escape(info.made_by)}")
    out.print(f"from {escape(fetched.repo)}: {escape(fetched.path)}", highlight=False)
    if info.baseline_score is not None:
        stderr = f" ± {info.baseline_stderr:.3f} (standard error)" if info.baseline_stderr is not None else ""
        out.print(f"baseline score: {info.baseline_score:.3f}{stderr}")
    table = Table("top layer", "damage (score_delta)", "label")
    for top in info.top_layers:
        table.add_row(str(top.layer), "n/a" if top.score_delta is None else f"{top.score_delta:.4f}", escape(top.label or ""))
    out.print(table)
    runs = [f"{first}{'' if first == last else f'-{last}'} {label}" for first, last, label in info.label_runs()]
    out.print("labels: " + escape(" · ".join(runs) or "none"), highlight=False)
    if fetched.saved_to is not None:
        out.print(f"wrote {fetched.saved_to}")


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


@app.command("logit-lens")
@user_errors
def logit_lens_command(model: Model, probe: ProbeName = "math", custom_probe: CustomProbe = None,
                       backend: Backend = "transformers", batch_size: BatchSize = 64, output: Output = "./results",
                       top_k: LensTopK = 5, dtype: Dtype = "auto", device: Device = "auto", seed: Seed = 0,
                       max_samples: MaxSamples = None, tuned_lens: TunedLens = None, verbose: Verbose = False) -> None:
    """Logit lens (or --tuned-lens): every layer read at the answers; emergence and entropy profile."""
    options = _scan_options(**locals())
    from neuro_scan.pipeline import run_logit_lens

    report, written = run_logit_lens(options, progress_bar)
    lens = report["logit_lens"]
    name = "tuned lens " + str(report["tuned_lens_file"]) if lens["lens"] == "tuned" else "logit lens"
    out.print(f"[bold]{report['model']}[/bold] · probe [bold]{report['probe']}[/bold] · {report['sample_count']} samples "
              f"· {name}")
    table = Table("layer", "mean p(answer)", "top-1 fraction", "entropy (bits)", "KL to final (bits)")
    for layer, values in enumerate(zip(lens["mean_answer_prob"], lens["top1_fraction"], lens["mean_entropy_bits"],
                                       lens["mean_kl_to_final_bits"])):
        table.add_row(str(layer), *(f"{v:.3f}" for v in values))
    out.print(table)
    out.print(f"emergence (answer stays top-1 for half the samples): layer {lens['emergence_layer']}; "
              f"p(answer) >= {lens['prob_emergence_threshold']}: layer {lens['prob_emergence_layer']}")
    out.print("wrote " + ", ".join(str(p) for p in written))


@app.command("calibrate")
@user_errors
def calibrate_command(model: Model, corpus: Corpus = None, output: LensFile = "tuned_lens.safetensors",
                      steps: Steps = 64, tokens_per_step: TokensPerStep = 1024, lr: LearningRate = 1.0,
                      rank: Rank = None, heldout_tokens: HeldoutTokens = 2048, backend: Backend = "transformers",
                      dtype: Dtype = "auto", device: Device = "auto", seed: Seed = 0, verbose: Verbose = False) -> None:
    """Train a tuned lens (Belrose et al. 2023) on calibration text and prove its gain on held-out text."""
    options = {name: value for name, value in locals().items() if name != "verbose"}
    from neuro_scan.pipeline import CalibrateOptions, run_calibrate

    calibration, written = run_calibrate(CalibrateOptions(**options), progress_bar)
    record = calibration.record
    held = record.heldout
    out.print(f"[bold]{record.model_id}[/bold] · {record.settings['steps']} steps x {record.settings['tokens_per_step']} "
              f"tokens in {record.training['seconds']:.0f} s · held-out: {held.tokens} tokens of {record.corpus['name']}")
    table = Table("layer", "logit lens KL (bits)", "tuned lens KL (bits)", "saved (bits)")
    for layer, (logit, tuned, saved) in enumerate(zip(held.logit_kl_bits, held.tuned_kl_bits, held.saved_bits)):
        table.add_row(str(layer), f"{logit:.3f}", f"{tuned:.3f}", f"{saved:.3f}")
    out.print(table)
    out.print(f"wrote {written} ({written.stat().st_size / 2**20:.1f} MiB)")


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
