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

from neuro_scan.errors import UsageError
from neuro_scan.probes import Probe, resolve_probe

# (description, total units) -> context manager yielding an advance(units) function
ProgressFactory = Callable[[str, float], contextlib.AbstractContextManager[Callable[[float], None]]]


@contextlib.contextmanager
def no_progress(_description: str, _total: float) -> Iterator[Callable[[float], None]]:
    yield lambda _units: None


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


def validate(options: ScanOptions) -> tuple[Probe, Path]:
    from neuro_scan.backend.loading import DEVICES, DTYPES, resolve_source
    from neuro_scan.report import prepare_output_dir

    for name, value in (("--batch-size", options.batch_size), ("--top-k", options.top_k)):
        if value <= 0:
            raise UsageError(f"{name}: must be a whole number >= 1, got {value}")
    if options.max_samples is not None and options.max_samples <= 0:
        raise UsageError(f"--max-samples: must be a whole number >= 1, got {options.max_samples}")
    if options.backend not in ("transformers", "exllamav2"):
        raise UsageError(f"--backend: '{options.backend}' is not one of transformers, exllamav2")
    if options.dtype not in DTYPES:
        raise UsageError(f"--dtype: '{options.dtype}' is not one of {', '.join(DTYPES)}")
    if options.device not in DEVICES:
        raise UsageError(f"--device: '{options.device}' is not one of {', '.join(DEVICES)}")
    probe = resolve_probe(options.probe, options.custom_probe).limited(options.max_samples)
    output = prepare_output_dir(options.output)
    resolve_source(options.model)
    return probe, output


def open_scan(options: ScanOptions, progress: ProgressFactory = no_progress) -> Scan:
    probe, output = validate(options)
    import torch

    from neuro_scan.backend.transformers import open_backend
    from neuro_scan.engine import Engine

    torch.manual_seed(options.seed)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with progress(f"loading {options.model}", 1) as advance:
        backend = open_backend(options.model, backend=options.backend, dtype=options.dtype, device=options.device)
        advance(1)
    timings["load_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    engine = Engine(backend, probe, batch_size=options.batch_size)
    timings["baseline_seconds"] = time.perf_counter() - started
    return Scan(options, probe, output, engine, timings)


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
    from neuro_scan.analysis.influence import block_influence
    from neuro_scan.analysis.labels import label_layers
    from neuro_scan.analysis.lens import run_lens
    from neuro_scan.report import write_map_outputs
    from neuro_scan.report.build import map_report

    if options.tuned_lens is not None:
        raise UsageError("--tuned-lens: the tuned lens is not available in this version")
    scan = open_scan(options, progress)
    ablation = _ablation(scan, progress)
    started = time.perf_counter()
    lens = run_lens(scan.engine, top_k=5)
    influence = block_influence(scan.engine)
    labels = label_layers(ablation, influence, lens.probe_emergence)
    scan.timings["lens_and_influence_seconds"] = time.perf_counter() - started
    report = map_report(scan.run_info(), ablation, lens, influence, labels)
    return report, write_map_outputs(scan.output, report)
