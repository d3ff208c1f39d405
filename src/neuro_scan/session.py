"""A command's session: its options, their validation, the model and probe loaded once, and what
every report records about the run.

Order matters for the user: everything that can be checked without the model (options, probe
files, the output folder, the model's location) is checked by :func:`validate` first, so bad
input fails in a second and writes nothing; the model is loaded only after that.

The option dataclasses are also the command line: their fields are typed with the shared option
types of :mod:`neuro_scan.options`, from which the CLI builds each command's flags, so an option
is defined once and means the same in every command, in the Python API and in the web app.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from neuro_scan import events
from neuro_scan.errors import UsageError
from neuro_scan.journal import check_journal
from neuro_scan.options import (Backend, BatchSize, CacheMemory, CustomProbe, Device, DeviceMap, Dtype, MaxMemory,
                                MaxSamples, Model, OffloadFolder, Output, ProbeName, Resume, Seed, TopK, TunedLens)
from neuro_scan.probes import Probe, resolve_probe

if TYPE_CHECKING:
    from neuro_scan.backend.base import Backend as ModelBackend, ModelInfo
    from neuro_scan.engine import Engine
    from neuro_scan.journal import ScanJournal

SEED_MAX = 2**32 - 1
T = TypeVar("T")  # what a phase computes


@dataclass
class RunInfo:
    """What every report records about how it was made."""

    model: ModelInfo
    probe: Probe
    seed: int
    batch_size: int
    top_k: int
    timings: dict[str, float] = field(default_factory=dict)
    lens_file: str | None = None
    scale: dict = field(default_factory=dict)  # device map, cache budget, each probe's cache spacing K (docs/scale.md)


@dataclass
class Phase:
    """How one phase of a command went: "done", "failed" (``error`` says why) or "pending" (not
    reached yet: a report written while the command still runs, so finished phases are on disk)."""

    status: str = "pending"
    error: str | None = None

    @classmethod
    def failed(cls, error: BaseException) -> Phase:
        """The error as one line: its type, message and notes (an out-of-memory note says how much)."""
        text = "; ".join(" ".join(part.split()) for part in [str(error), *getattr(error, "__notes__", [])] if part.strip())
        return cls("failed", f"{type(error).__name__}: {text}" if text else type(error).__name__)


@dataclass
class ScanOptions:
    """The options every command that runs a model on a probe shares."""

    model: Model
    probe: ProbeName = None
    custom_probe: CustomProbe = None
    backend: Backend = "transformers"
    batch_size: BatchSize = 64
    output: Output = "./results"
    top_k: TopK = 10
    dtype: Dtype = "auto"
    device: Device = "auto"
    seed: Seed = 0
    max_samples: MaxSamples = None
    device_map: DeviceMap = None
    max_memory: MaxMemory = None
    offload_folder: OffloadFolder = None
    cache_memory: CacheMemory = None
    resume: Resume = None

    def check(self) -> None:
        """The checks of a command's own options (subclasses extend it); no files, no model."""
        check_positive(("--batch-size", self.batch_size), ("--top-k", self.top_k),
                       ("--max-samples", 1 if self.max_samples is None else self.max_samples))
        self.placement()
        self.cache_bytes()

    def placement(self) -> dict:
        """``--device-map/--max-memory/--offload-folder`` -> the loader's keywords (those given)."""
        from neuro_scan.backend.loading import check_device_map
        from neuro_scan.units import parse_max_memory

        check_device_map(self.device_map, self.device)
        for option, value in (("--max-memory", self.max_memory), ("--offload-folder", self.offload_folder)):
            if value is not None and self.device_map is None:
                raise UsageError(f"{option}: only used with --device-map (auto, balanced, balanced_low_0, sequential)")
        if self.offload_folder is not None and Path(self.offload_folder).exists() and not Path(self.offload_folder).is_dir():
            raise UsageError(f"--offload-folder: {self.offload_folder} is a file; give a folder")
        placement = {"device_map": self.device_map, "offload_folder": self.offload_folder,
                     "max_memory": None if self.max_memory is None else parse_max_memory(self.max_memory)}
        return {key: value for key, value in placement.items() if value is not None}

    def cache_bytes(self) -> int | None:
        """``--cache-memory`` in bytes (None: no limit)."""
        from neuro_scan.units import parse_size

        return None if self.cache_memory is None else parse_size(self.cache_memory, "--cache-memory")

    def resolve_probes(self) -> list[Probe]:
        """The probe(s) the command runs, resolved and limited to ``--max-samples``."""
        return [resolve_probe(self.probe, self.custom_probe).limited(self.max_samples)]


@dataclass
class LensOptions(ScanOptions):
    """Options of the commands that read the stream through a lens."""

    tuned_lens: TunedLens = None


def check_positive(*options: tuple[str, int]) -> None:
    """Whole-number options that must be >= 1, as (option name, value) pairs."""
    for name, value in options:
        if value <= 0:
            raise UsageError(f"{name}: must be a whole number >= 1, got {value}")


def check_seed(seed: int) -> None:
    """``--seed`` of every command: numpy's generators refuse negative seeds and torch's overflow
    above 2**64 - 1, so one range that every seeded library takes (32 bits, as numpy's legacy seeding)."""
    if not 0 <= seed <= SEED_MAX:
        raise UsageError(f"--seed: must be a whole number from 0 to {SEED_MAX}, got {seed}")


def check_number(option: str, value: float, low: float, high: float = math.inf, *, low_open: bool = False) -> None:
    """A number option within [low, high] (``low_open``: low itself not allowed)."""
    too_low = value <= low if low_open else value < low
    if not math.isfinite(value) or too_low or value > high:
        allowed = f"> {low}" if low_open else f">= {low}"
        allowed += "" if high == math.inf else f" and <= {high}"
        raise UsageError(f"{option}: must be a number {allowed}, got {value}")


def parse_counts(text: str, option: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]: whole numbers >= 1, each once, in the order given."""
    values = [item.strip() for item in text.split(",")]
    if not all(v.isdecimal() and int(v) >= 1 for v in values):
        raise UsageError(f"{option}: '{text}' is not a comma-separated list of whole numbers >= 1")
    if len(set(map(int, values))) != len(values):
        raise UsageError(f"{option}: '{text}' lists a number twice")
    return [int(v) for v in values]


def check_model_options(backend: str, dtype: str, device: str, seed: int, *, gradients: bool = False) -> None:
    """The options that say how to load and run a model (nothing is opened or imported)."""
    from neuro_scan.backend import check_backend
    from neuro_scan.backend.loading import check_dtype_and_device

    check_seed(seed)
    check_backend(backend, gradients=gradients)
    check_dtype_and_device(dtype, device)


@dataclass
class Validated:
    """What validation found: the probes to run and the output folder (held until the end)."""

    probes: list[Probe]
    output: Path

    @property
    def probe(self) -> Probe:
        return self.probes[0]


def validate(options: ScanOptions) -> Validated:
    """Every check that needs no model: options first, then files, then the model's location."""
    from neuro_scan.backend.loading import resolve_source
    from neuro_scan.report import prepare_output_dir

    options.check()
    check_model_options(options.backend, options.dtype, options.device, options.seed)
    probes = options.resolve_probes()
    tuned_lens = getattr(options, "tuned_lens", None)
    if tuned_lens is not None:
        from neuro_scan.analysis.tuned_lens import read_lens_record

        read_lens_record(tuned_lens)
    output = prepare_output_dir(options.output)
    check_journal(output, probes, options.resume)
    resolve_source(options.model)
    return Validated(probes, output)


class Session:
    """A loaded model and the probe of one command, with its events and timings.

    The engine (the probe's baseline run, with its residual streams cached) is made on first use,
    so a command can check the loaded model against its inputs before any forward."""

    def __init__(self, options: ScanOptions, validated: Validated, backend: ModelBackend,
                 sink: events.EventSink = events.ignore, timings: dict[str, float] | None = None,
                 journal: ScanJournal | None = None):
        self.options = options
        self.probes = validated.probes
        self.probe = validated.probe
        self.output = validated.output
        self.backend = backend
        self.sink = sink
        self.timings: dict[str, float] = timings if timings is not None else {}
        self._engine: Engine | None = None
        self.journal = journal  # scores of the configurations already run (neuro_scan.journal)
        self.keep_every: dict[str, int] = {}  # each probe's cache spacing K, as its engine chose it

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self.engine_for(self.probe, timing="baseline_seconds")
        return self._engine

    def engine_for(self, probe: Probe, timing: str | None = None) -> Engine:
        """A baseline run of ``probe`` on this session's model, as a phase."""
        with self.phase("baseline", f"baseline run of {probe.name} ({len(probe.samples)} samples)", 1,
                        timing=timing) as advance:
            return self.new_engine(probe, advance)

    def new_engine(self, probe: Probe, progress: Callable[[float], None] | None = None) -> Engine:
        """An engine (the baseline run of ``probe``) with the session's cache budget, its scans
        journalled (and continued from the journal) when the session has one, and shared between
        processes when launched as several."""
        from neuro_scan.distributed import workers
        from neuro_scan.engine import Engine

        engine = Engine(self.backend, probe, batch_size=self.options.batch_size,
                        cache_memory=self.options.cache_bytes(), progress=progress)
        self.keep_every[probe.name] = engine.keep_every
        engine.journal = self.journal.for_probe(probe) if self.journal is not None else None
        engine.workers = workers()  # None unless launched as several processes (torchrun, accelerate launch)
        return engine

    @contextlib.contextmanager
    def phase(self, name: str, description: str, total: float, timing: str | None = None) -> Iterator[Callable[..., None]]:
        """A phase of the command: events for its progress, and its seconds in ``timings[timing]``."""
        started = time.perf_counter()
        try:
            with events.phase(self.sink, name, description, total) as advance:
                yield advance
        finally:
            if timing is not None:
                self.timings[timing] = time.perf_counter() - started

    def guarded(self, name: str, phases: dict[str, Phase], work: Callable[[], T]) -> T | None:
        """``work()`` as phase ``name`` of a command that reports its other phases whatever happens
        to this one: an error other than bad input or Ctrl-C (out of memory, a model that cannot do
        this analysis) is recorded in ``phases`` and gives None."""
        try:
            result = work()
        except UsageError:
            raise
        except Exception as error:  # MemoryError, torch.OutOfMemoryError, RuntimeError, ...
            phases[name] = Phase.failed(error)
            self.notice(f"the {name} phase failed; the report has every other phase: {phases[name].error}", "warning")
            return None
        phases[name] = Phase("done")
        return result

    def save_progress(self, partial: object) -> None:
        """Write a partial result (the runner sets this), so finished phases survive a later failure."""

    def notice(self, message: str, level: str = "info") -> None:
        self.sink(events.Notice(level, message))

    def run_info(self, probe: Probe | None = None) -> RunInfo:
        return RunInfo(model=self.backend.info, probe=probe or self.probe, seed=self.options.seed,
                       batch_size=self.options.batch_size, top_k=self.options.top_k, timings=self.timings,
                       lens_file=getattr(self.options, "tuned_lens", None), scale=self.scale())

    def scale(self) -> dict:
        """How the model was placed and the cache bounded: the options given and what they chose;
        how many processes shared the scans (:mod:`neuro_scan.distributed`)."""
        from neuro_scan.distributed import process_count

        options = self.options
        devices = [str(self.backend.layer_device(layer)) for layer in range(self.backend.num_layers)]
        return {"device_map": options.device_map, "max_memory": options.max_memory,
                "layer_devices": {device: devices.count(device) for device in dict.fromkeys(devices)},
                "cache_memory": options.cache_memory, "cache_memory_bytes": options.cache_bytes(),
                "cache_keep_every": dict(self.keep_every), "processes": process_count()}

    def finish(self) -> None:
        """The report is written: the journal of the scans is no longer needed."""
        if self.journal is not None:
            self.journal.remove()

    def tuned_lens(self):
        """The ``--tuned-lens`` fitted to this model -> (lens, its record), or (None, None)."""
        path = getattr(self.options, "tuned_lens", None)
        if path is None:
            return None, None
        from neuro_scan.analysis.tuned_lens import load_lens

        return load_lens(path, self.backend)


def load_backend(model: str, backend: str, dtype: str, device: str, seed: int,
                 sink: events.EventSink = events.ignore, placement: dict | None = None) -> tuple[ModelBackend, dict[str, float]]:
    """Seed torch and load a model whose options are validated -> (backend, timings); ``placement``:
    the device map's keywords (:meth:`ScanOptions.placement`)."""
    import torch

    from neuro_scan.backend import open_backend

    torch.manual_seed(seed)
    started = time.perf_counter()
    shown = Path(model).name if Path(model).exists() else model  # a file's name: the bar stays readable
    with events.phase(sink, "load", f"loading {shown}", 1) as advance:
        loaded = open_backend(model, backend=backend, dtype=dtype, device=device, **(placement or {}))
        advance(1)
    return loaded, {"load_seconds": time.perf_counter() - started}


def open_session(options: ScanOptions, validated: Validated, sink: events.EventSink = events.ignore, *,
                 record: bool = True) -> Session:
    """Load the model and open the scans' journal in the output folder (``record=False``: read it
    only, as a process that does not write the report)."""
    from neuro_scan.distributed import synchronize
    from neuro_scan.journal import open_journal

    backend, timings = load_backend(options.model, options.backend, options.dtype, options.device, options.seed, sink,
                                    options.placement())
    session = Session(options, validated, backend, sink, timings)
    if validated.output is not None:
        session.journal = open_journal(validated.output, validated.probes, backend, options.resume, session.notice,
                                       record=record)
    synchronize()  # launched as several processes: each has read the journal before any scan adds to it
    return session
