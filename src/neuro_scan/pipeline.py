"""Commands as library calls: validate inputs, load the model once, run analyses, write reports.

Order matters for the user: everything that can be checked without the model (options, probe
files, the output folder) is checked first, so bad input fails in a second and writes nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from neuro_scan.errors import UsageError
from neuro_scan.probes import Probe, resolve_probe

# (description, total units) -> context manager yielding an advance(units, status=None) function;
# a status string, when given, is shown beside the bar (calibrate shows its current loss there)
ProgressFactory = Callable[[str, float], contextlib.AbstractContextManager[Callable[..., None]]]
T = TypeVar("T")  # what a phase of a command computes


@contextlib.contextmanager
def no_progress(_description: str, _total: float) -> Iterator[Callable[..., None]]:
    yield lambda _units, _status=None: None


@dataclass
class ScanOptions:
    model: str
    probe: str = "math"
    custom_probe: str | None = None
    backend: str = "transformers"
    dtype: str = "auto"
    device: str = "auto"
    batch_size: int = 64
    seed: int = 0
    max_samples: int | None = None
    top_k: int = 10
    output: str = "./results"
    tuned_lens: str | None = None


@dataclass
class Scan:
    """A loaded model, a probe and its baseline run, ready for analyses."""

    options: ScanOptions
    probe: Probe
    output: Path
    engine: object  # neuro_scan.engine.Engine (imported lazily: torch is heavy)
    timings: dict[str, float]

    def run_info(self):
        from neuro_scan.report.build import RunInfo

        return RunInfo(model=self.engine.backend.info, probe=self.probe, seed=self.options.seed,
                       batch_size=self.options.batch_size, top_k=self.options.top_k, timings=self.timings,
                       lens_file=self.options.tuned_lens)


def check_positive(*options: tuple[str, int]) -> None:
    """Whole-number options that must be >= 1, as (option name, value) pairs."""
    for name, value in options:
        if value <= 0:
            raise UsageError(f"{name}: must be a whole number >= 1, got {value}")


SEED_MAX = 2**32 - 1


def check_seed(seed: int) -> None:
    """``--seed`` of every command: numpy's generators refuse negative seeds and torch's overflow
    above 2**64 - 1, so one range that every seeded library takes (32 bits, as numpy's legacy seeding)."""
    if not 0 <= seed <= SEED_MAX:
        raise UsageError(f"--seed: must be a whole number from 0 to {SEED_MAX}, got {seed}")


def validate(options: ScanOptions) -> tuple[Probe, Path]:
    from neuro_scan.backend import check_backend
    from neuro_scan.backend.loading import check_dtype_and_device, resolve_source
    from neuro_scan.report import prepare_output_dir

    check_positive(("--batch-size", options.batch_size), ("--top-k", options.top_k),
                   ("--max-samples", 1 if options.max_samples is None else options.max_samples))
    check_seed(options.seed)
    check_backend(options.backend)
    check_dtype_and_device(options.dtype, options.device)
    probe = resolve_probe(options.probe, options.custom_probe).limited(options.max_samples)
    output = prepare_output_dir(options.output)
    resolve_source(options.model)
    return probe, output


def open_scan(options: ScanOptions, progress: ProgressFactory = no_progress,
              check: Callable[[object, Probe], None] | None = None) -> Scan:
    """``check(backend, probe)``: checks that need the loaded model, run before any forward."""
    probe, output = validate(options)
    from neuro_scan.engine import Engine

    backend, timings = load_backend(options, progress)
    if check is not None:
        check(backend, probe)
    started = time.perf_counter()
    engine = Engine(backend, probe, batch_size=options.batch_size)
    timings["baseline_seconds"] = time.perf_counter() - started
    return Scan(options, probe, output, engine, timings)


def load_backend(options: ScanOptions, progress: ProgressFactory = no_progress):
    """Seed torch and load the model of already validated options -> (backend, timings)."""
    import torch

    from neuro_scan.backend import open_backend

    torch.manual_seed(options.seed)
    started = time.perf_counter()
    with progress(f"loading {options.model}", 1) as advance:
        backend = open_backend(options.model, backend=options.backend, dtype=options.dtype, device=options.device)
        advance(1)
    return backend, {"load_seconds": time.perf_counter() - started}


def _ablation(scan: Scan, progress: ProgressFactory):
    from neuro_scan.analysis.ablation import run_ablation

    with progress(f"ablating {scan.engine.num_layers} layers", scan.engine.num_layers) as advance:
        result = run_ablation(scan.engine, seed=scan.options.seed, progress=advance)
    scan.timings["ablation_seconds"] = result.seconds
    return result


def run_ablate(options: ScanOptions, progress: ProgressFactory = no_progress) -> tuple[dict, list[Path]]:
    from neuro_scan.report import write_ablation_outputs
    from neuro_scan.report.build import ablation_report

    scan = open_scan(options, progress)
    ablation = _ablation(scan, progress)
    report = ablation_report(scan.run_info(), ablation)
    return report, write_ablation_outputs(scan.output, report)


def run_map(options: ScanOptions, progress: ProgressFactory = no_progress) -> tuple[dict, list[Path]]:
    """Phases in order: baseline, ablation, lens (logit lens, block influence, labels), attention.

    report.json is written after the ablation and after each later phase, so what has finished is
    on disk if a later phase dies. A later phase that fails (out of memory, say) is named in the
    report's ``phases`` with its error, and every other phase is still reported. A failure in the
    baseline or the ablation stops the command: the report is built on them."""
    from neuro_scan.analysis.influence import block_influence
    from neuro_scan.analysis.labels import label_layers
    from neuro_scan.analysis.lens import run_lens
    from neuro_scan.report import write_map_outputs, write_outputs
    from neuro_scan.report.build import Phase, map_report

    check_lens_file(options)
    scan = open_scan(options, progress)
    tuned, record = load_tuned_lens(options, scan)
    ablation = _ablation(scan, progress)
    phases = {"baseline": Phase("done"), "ablation": Phase("done"), "lens": Phase(), "attention": Phase()}
    results: dict = {}

    def report() -> dict:
        return map_report(scan.run_info(), ablation, phases, tuned=record, **results)

    def lens_phase() -> dict:
        lens = run_lens(scan.engine, top_k=5, translator=tuned, seed=options.seed)
        influence = block_influence(scan.engine)
        return {"lens": lens, "block_influence": influence, "labels": label_layers(ablation, influence, lens)}

    write_outputs(scan.output, {"report.json": report()}, {})
    results |= _run_phase("lens", phases, scan.timings, lens_phase, "lens_and_influence_seconds") or {}
    write_outputs(scan.output, {"report.json": report()}, {})
    results["attention"] = _run_phase("attention", phases, scan.timings, lambda: _attention(scan, progress))
    final = report()
    return final, write_map_outputs(scan.output, final)


def _attention(scan: Scan, progress: ProgressFactory):
    from neuro_scan.analysis.attention import attention_blocks, run_attention

    with progress("attention entropy", len(attention_blocks(scan.engine))) as advance:
        return run_attention(scan.engine, advance)


def _run_phase(name: str, phases: dict, timings: dict[str, float], work: Callable[[], T],
               timing: str | None = None) -> T | None:
    """``work()`` as the phase ``name`` of a command that reports its other phases whatever
    happens to this one: an error other than bad input (out of memory, a model that cannot do
    this analysis) is recorded in ``phases`` and gives None."""
    from neuro_scan.report.build import Phase

    started = time.perf_counter()
    try:
        result = work()
        phases[name] = Phase("done")
        return result
    except UsageError:
        raise
    except Exception as error:  # MemoryError, torch.OutOfMemoryError, RuntimeError, ...
        phases[name] = Phase.failed(error)
        return None
    finally:
        timings[timing or f"{name}_seconds"] = time.perf_counter() - started


def run_attention_command(options: ScanOptions, progress: ProgressFactory = no_progress) -> tuple[dict, list[Path]]:
    from neuro_scan.report import charts, write_outputs
    from neuro_scan.report.build import Phase, attention_report

    scan = open_scan(options, progress)
    phases = {"baseline": Phase("done"), "attention": Phase()}
    attention = _run_phase("attention", phases, scan.timings, lambda: _attention(scan, progress))
    report = attention_report(scan.run_info(), attention, phases)
    figures = {"attention.html": charts.attention_figure(report)} if attention is not None else {}
    return report, write_outputs(scan.output, {"attention.json": report}, figures)


def parse_counts(text: str, option: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]: whole numbers >= 1, each once, in the order given."""
    values = [item.strip() for item in text.split(",")]
    if not all(v.isdecimal() and int(v) >= 1 for v in values):
        raise UsageError(f"{option}: '{text}' is not a comma-separated list of whole numbers >= 1")
    if len(set(map(int, values))) != len(values):
        raise UsageError(f"{option}: '{text}' lists a number twice")
    return [int(v) for v in values]


@dataclass
class CircuitOptions:
    strategy: str = "fast"
    top_k_pairs: int = 10


def _stored_or_new_ablation(scan: Scan, progress: ProgressFactory):
    """A matching single-layer scan from report.json/ablation.json in the output folder, else a new one."""
    import json

    from neuro_scan.analysis.circuit import stored_singles

    for name in ("report.json", "ablation.json"):
        path = scan.output / name
        try:
            stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, ValueError, RecursionError):
            continue
        singles = stored_singles(stored, scan.engine, scan.options.seed) if isinstance(stored, dict) else None
        if singles is not None:
            return singles, f"reused from {path}"
    return _ablation(scan, progress), "computed"


def run_circuit_command(options: ScanOptions, circuit: CircuitOptions, progress: ProgressFactory = no_progress,
                        notify: Callable[[str], None] = lambda _message: None) -> tuple[dict, list[Path]]:
    from neuro_scan.analysis.circuit import check_strategy, layer_similarity, plan_pairs, run_circuit
    from neuro_scan.report import write_outputs
    from neuro_scan.report.circuit_charts import circuit_figure, circuit_report

    check_strategy(circuit.strategy)
    if circuit.top_k_pairs <= 0:
        raise UsageError(f"--top-k-pairs: must be a whole number >= 1, got {circuit.top_k_pairs}")
    scan = open_scan(options, progress)
    singles, source = _stored_or_new_ablation(scan, progress)
    similarity = None
    if circuit.strategy == "thorough":
        started = time.perf_counter()
        similarity = layer_similarity(scan.engine)
        scan.timings["similarity_seconds"] = time.perf_counter() - started
    plan = plan_pairs(circuit.strategy, singles, circuit.top_k_pairs, similarity)
    notify(f"circuit ({circuit.strategy}): {len(plan.pairs)} pair evaluations on {len(scan.probe.samples)} samples; "
           f"single-layer scan {source}")
    with progress(f"ablating {len(plan.pairs)} layer pairs", len(plan.pairs)) as advance:
        result = run_circuit(scan.engine, singles, plan, scan.options.seed, advance)
    scan.timings["pairs_seconds"] = result.seconds
    report = circuit_report(scan.run_info(), result, source)
    return report, write_outputs(scan.output, {"circuit.json": report}, {"circuit.html": circuit_figure(report)})


def run_cross_probe_command(options: ScanOptions, probes: str,
                            progress: ProgressFactory = no_progress) -> tuple[dict, list[Path]]:
    """``probes``: built-in names and probe files, comma-separated; one model load for all."""
    from dataclasses import replace

    names = [name.strip() for name in probes.split(",")]
    if len(names) < 2 or not all(names):
        raise UsageError(f"--probes: give two or more probes separated by commas (built-in names or probe files), got '{probes}'")
    first, output = validate(replace(options, probe=names[0], custom_probe=None))
    resolved = [first, *(resolve_probe(name).limited(options.max_samples) for name in names[1:])]
    seen: set[str] = set()
    for probe in resolved:
        if probe.name in seen:
            raise UsageError(f"--probes: two of the probes are named '{probe.name}'")
        seen.add(probe.name)

    from neuro_scan.analysis.cross_probe import run_cross_probe
    from neuro_scan.report import write_outputs
    from neuro_scan.report.build import RunInfo
    from neuro_scan.report.cross_probe_charts import cross_probe_documents, cross_probe_figure

    backend, timings = load_backend(options, progress)
    from neuro_scan.scoring import build_plan

    for probe in resolved:  # every probe must fit the model before the first one runs
        build_plan(probe, backend)
    total = backend.num_layers * len(resolved)
    with progress(f"ablating {backend.num_layers} layers under {len(resolved)} probes", total) as advance:
        result = run_cross_probe(backend, resolved, options.batch_size, options.seed, advance)
    timings["cross_probe_seconds"] = result.seconds
    run = RunInfo(model=backend.info, probe=first, seed=options.seed, batch_size=options.batch_size,
                  top_k=options.top_k, timings=timings)
    documents = cross_probe_documents(run, result)
    report = documents["cross_probe.json"]
    return report, write_outputs(output, documents, {"cross_probe.html": cross_probe_figure(report)})


def _read_report(path: str) -> object:
    import json

    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{path}: no such report file")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not a neuro-scan report (not valid JSON: {exc})") from None
    except RecursionError:
        raise UsageError(f"{path}: not a neuro-scan report (its JSON is nested too deeply to read)") from None


def run_compare_command(reports: list[str], output: str = "./results", tolerance: float | None = None) -> tuple[dict, list[Path]]:
    """Compare report files (ours or the reference's). Imports no torch: it only reads JSON."""
    from neuro_scan.analysis.compare import DEFAULT_TOLERANCE, compare, profile_from_report
    from neuro_scan.report import prepare_output_dir, write_outputs
    from neuro_scan.report.compare_charts import comparison_figure, comparison_report

    tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
    if len(reports) < 2:
        raise UsageError(f"compare: give two or more report files, got {len(reports)}")
    if not 0 <= tolerance <= 1:
        raise UsageError(f"--tolerance: a relative depth between 0 and 1, got {tolerance}")
    folder = prepare_output_dir(output)
    profiles = [profile_from_report(_read_report(path), path) for path in reports]
    report = comparison_report(compare(profiles, tolerance))
    return report, write_outputs(folder, {"comparison.json": report}, {"comparison.html": comparison_figure(report)})


def run_prompt_repeat_command(options: ScanOptions, repeat_counts: str = "1,2,3,4", dup_sizes: str | None = None,
                              progress: ProgressFactory = no_progress) -> tuple[dict, list[Path]]:
    """``dup_sizes``: block sizes K to duplicate at every position (default 1, 2, 4, ... up to L/2)."""
    counts = parse_counts(repeat_counts, "--repeat-counts")
    sizes = parse_counts(dup_sizes, "--dup-sizes") if dup_sizes is not None else None
    from neuro_scan.analysis.prompt_repeat import default_block_sizes, duplication_blocks, repeated_probe, run_prompt_repeat
    from neuro_scan.report import write_outputs
    from neuro_scan.report.prompt_repeat_charts import prompt_repeat_figure, prompt_repeat_report
    from neuro_scan.scoring import build_plan

    def check(backend, probe: Probe) -> None:
        """The blocks fit the model's layers and every repeated prompt its positions."""
        if sizes is not None and max(sizes) > backend.num_layers:
            raise UsageError(f"--dup-sizes: a block of {max(sizes)} layers does not fit in this model's "
                             f"{backend.num_layers} layers")
        for count in sorted({1, *counts}):
            build_plan(repeated_probe(probe, count), backend,
                       f" with its prompt repeated {count} times (--repeat-counts)" if count > 1 else "")

    scan = open_scan(options, progress, check)
    layers = scan.engine.num_layers
    if sizes is None:
        sizes = default_block_sizes(layers)
    units = len(counts) + len(duplication_blocks(layers, sizes))
    with progress(f"{len(counts)} repeat counts, {units - len(counts)} duplicated blocks", units) as advance:
        result = run_prompt_repeat(scan.engine, counts, sizes, scan.options.seed, advance)
    scan.timings["prompt_repeat_seconds"] = result.seconds
    report = prompt_repeat_report(scan.run_info(), result)
    return report, write_outputs(scan.output, {"prompt_repeat.json": report}, {"prompt_repeat.html": prompt_repeat_figure(report)})


# -- lenses ---------------------------------------------------------------------------------------


def check_lens_file(options: ScanOptions) -> None:
    """``--tuned-lens FILE`` must be a neuro-scan lens file: checked before the model is loaded."""
    if options.tuned_lens is not None:
        from neuro_scan.analysis.tuned_lens import read_lens_record

        read_lens_record(options.tuned_lens)


def load_tuned_lens(options: ScanOptions, scan: Scan):
    """The ``--tuned-lens`` on the scan's model -> (lens, its record), or (None, None) for the logit lens."""
    if options.tuned_lens is None:
        return None, None
    from neuro_scan.analysis.tuned_lens import load_lens

    return load_lens(options.tuned_lens, scan.engine.backend)


def run_logit_lens(options: ScanOptions, progress: ProgressFactory = no_progress) -> tuple[dict, list[Path]]:
    """`logit-lens`: every layer read through the logit lens (or ``--tuned-lens``) at the answers."""
    from neuro_scan.analysis.lens import run_lens
    from neuro_scan.report import write_lens_outputs
    from neuro_scan.report.build import lens_report

    check_lens_file(options)
    scan = open_scan(options, progress)
    tuned, record = load_tuned_lens(options, scan)
    started = time.perf_counter()
    lens = run_lens(scan.engine, top_k=options.top_k, translator=tuned, seed=options.seed)
    scan.timings["lens_seconds"] = time.perf_counter() - started
    report = lens_report(scan.run_info(), lens, record)
    return report, write_lens_outputs(scan.output, report)


@dataclass
class CalibrateOptions:
    model: str
    corpus: str | None = None
    output: str = "tuned_lens.safetensors"
    steps: int = 64
    tokens_per_step: int = 1024
    lr: float = 1.0
    rank: int | None = None
    heldout_tokens: int = 2048
    backend: str = "transformers"
    dtype: str = "auto"
    device: str = "auto"
    seed: int = 0


def validate_calibrate(options: CalibrateOptions):
    """Every check that needs no model -> (corpus, lens file path)."""
    from neuro_scan.backend import check_backend
    import math

    from neuro_scan.backend.loading import check_dtype_and_device, resolve_source
    from neuro_scan.corpus import resolve_corpus

    check_positive(("--steps", options.steps), ("--tokens-per-step", options.tokens_per_step),
                   ("--heldout-tokens", options.heldout_tokens), ("--rank", 1 if options.rank is None else options.rank))
    check_seed(options.seed)
    if not (math.isfinite(options.lr) and options.lr > 0):
        raise UsageError(f"--lr: must be a number > 0, got {options.lr}")
    check_backend(options.backend, gradients=True)
    check_dtype_and_device(options.dtype, options.device)
    output = Path(options.output)
    if output.suffix != ".safetensors" or output.is_dir():
        raise UsageError(f"--output: give the path of a .safetensors file for the lens, not '{options.output}'")
    from neuro_scan.report import prepare_output_dir

    prepare_output_dir(output.parent, lock=False)  # lens files of many models share a folder: no lock
    corpus = resolve_corpus(options.corpus)
    resolve_source(options.model)
    return corpus, output


def run_calibrate(options: CalibrateOptions, progress: ProgressFactory = no_progress):
    """`calibrate`: train a tuned lens on the corpus, compare it with the logit lens on held-out
    text and write the lens file -> (Calibration, path written)."""
    corpus, output = validate_calibrate(options)
    from neuro_scan.analysis.tuned_lens import TrainSettings, calibrate, fitted_settings, lens_file_bytes
    from neuro_scan.report import write_lens_file

    backend, _timings = load_backend(ScanOptions(model=options.model, backend=options.backend, dtype=options.dtype,
                                                 device=options.device, seed=options.seed), progress)
    settings = fitted_settings(backend, TrainSettings(steps=options.steps, tokens_per_step=options.tokens_per_step,
                                                      lr=options.lr, rank=options.rank,
                                                      heldout_tokens=options.heldout_tokens, seed=options.seed))
    total = settings.steps + settings.heldout_tokens / settings.tokens_per_step
    with progress(f"calibrating: {settings.steps} steps x {settings.tokens_per_step} tokens", total) as advance:
        calibration = calibrate(backend, corpus, settings, advance)
    return calibration, write_lens_file(output, lens_file_bytes(calibration.lens, calibration.record))
