"""Every command, declared once: its name, its options, the analysis that runs it and the report
module that writes and summarises its result.

The CLI registers these specs (nothing else), the Python API and the web app run them through
the same runner (:mod:`neuro_scan.runner`). Adding an analysis: an analysis module with
``execute(session, options) -> result``, a report module with ``files(result, run)`` and
``summary(document)``, and one :func:`register` line here (docs/architecture.md).

Nothing here imports torch: the CLI reads these specs at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

from neuro_scan.errors import UsageError
from typing import Annotated

import typer

from neuro_scan.options import (ABLATION_KINDS, GRANULARITIES, AblationKind, Backend, Corpus, GradDrop, Granularity, QkFix, VerifySample, VerifyTopK, Device, Dtype, DupSizes, HeldoutTokens, LearningRate, LensFile, Model,
                                Output, Probes, Rank, RepeatCounts, Seed, Steps, Strategy, Tolerance, TokensPerStep,
                                TopKPairs, TopTokens, check_choice)
from neuro_scan.probes import Probe, resolve_probe
from neuro_scan.session import LensOptions, ScanOptions, check_positive, parse_counts


@dataclass(frozen=True)
class CommandSpec:
    name: str
    help: str
    options: type  # a dataclass: its fields are the command's options
    analysis: str  # module with execute(session, options) (or execute(options) without a model)
    report: str  # module with files(result, run) and summary(document)
    loads_model: bool = True


COMMANDS: dict[str, CommandSpec] = {}


def register(spec: CommandSpec) -> None:
    COMMANDS[spec.name] = spec


def command(name: str) -> CommandSpec:
    if name not in COMMANDS:
        raise UsageError(f"command: '{name}' is not one of {', '.join(COMMANDS)}")
    return COMMANDS[name]


# -- the options of each command, beyond the shared ones --------------------------------------------


@dataclass
class MapOptions(LensOptions):
    pass


@dataclass
class AblateOptions(ScanOptions):
    granularity: Granularity = "layer"
    ablation: AblationKind = "zero"

    def check(self) -> None:
        super().check()
        check_choice("--granularity", self.granularity, GRANULARITIES)
        check_choice("--ablation", self.ablation, ABLATION_KINDS)


@dataclass
class AttributeOptions(ScanOptions):
    ablation: AblationKind = "zero"
    verify_top_k: VerifyTopK = 20
    verify_sample: VerifySample = 20
    graddrop: GradDrop = True
    qk_fix: QkFix = True

    def check(self) -> None:
        super().check()
        check_choice("--ablation", self.ablation, ABLATION_KINDS)
        check_positive(("--verify-top-k", self.verify_top_k))
        if self.verify_sample < 0:
            raise UsageError(f"--verify-sample: must be a whole number >= 0, got {self.verify_sample}")


@dataclass
class LogitLensOptions(LensOptions):
    top_tokens: TopTokens = 5

    def check(self) -> None:
        super().check()
        check_positive(("--top-tokens", self.top_tokens))


STRATEGIES = ("fast", "thorough", "exhaustive")


@dataclass
class CircuitOptions(ScanOptions):
    strategy: Strategy = "fast"
    top_k_pairs: TopKPairs = 10

    def check(self) -> None:
        super().check()
        if self.strategy not in STRATEGIES:
            raise UsageError(f"--strategy: '{self.strategy}' is not one of {', '.join(STRATEGIES)}")
        check_positive(("--top-k-pairs", self.top_k_pairs))


@dataclass
class CrossProbeOptions(ScanOptions):
    NOT_OPTIONS = ("probe", "custom_probe")  # the probes come from --probes

    probes: Probes = "math,eq,json"

    def probe_names(self) -> list[str]:
        names = [name.strip() for name in self.probes.split(",")]
        if len(names) < 2 or not all(names):
            raise UsageError("--probes: give two or more probes separated by commas (built-in names or probe "
                             f"files), got '{self.probes}'")
        return names

    def check(self) -> None:
        super().check()
        self.probe_names()

    def resolve_probes(self) -> list[Probe]:
        resolved = [resolve_probe(name).limited(self.max_samples) for name in self.probe_names()]
        names = [probe.name for probe in resolved]
        twice = next((name for name in names if names.count(name) > 1), None)
        if twice is not None:
            raise UsageError(f"--probes: two of the probes are named '{twice}'")
        return resolved


@dataclass
class PromptRepeatOptions(ScanOptions):
    repeat_counts: RepeatCounts = "1,2,3,4"
    dup_sizes: DupSizes = None

    def counts(self) -> list[int]:
        return parse_counts(self.repeat_counts, "--repeat-counts")

    def sizes(self) -> list[int] | None:
        return None if self.dup_sizes is None else parse_counts(self.dup_sizes, "--dup-sizes")

    def check(self) -> None:
        super().check()
        self.counts()
        self.sizes()


@dataclass
class CompareOptions:
    reports: Annotated[list[str], typer.Argument(help="Two or more report.json files (ours or the reference's).",
                                                 show_default=False)]
    output: Output = "./results"
    tolerance: Tolerance = None

    def check(self) -> None:
        from neuro_scan.session import check_number

        if len(self.reports) < 2:
            raise UsageError(f"compare: give two or more report files, got {len(self.reports)}")
        if self.tolerance is not None:
            check_number("--tolerance", self.tolerance, 0, 1)


@dataclass
class CalibrateOptions:
    model: Model
    corpus: Corpus = None
    output: LensFile = "lens.safetensors"
    steps: Steps = 64
    tokens_per_step: TokensPerStep = 1024
    lr: LearningRate = 1.0
    rank: Rank = None
    heldout_tokens: HeldoutTokens = 2048
    backend: Backend = "transformers"
    dtype: Dtype = "auto"
    device: Device = "auto"
    seed: Seed = 0

    def check(self) -> None:
        from neuro_scan.session import check_number

        check_positive(("--steps", self.steps), ("--tokens-per-step", self.tokens_per_step),
                       ("--heldout-tokens", self.heldout_tokens), ("--rank", 1 if self.rank is None else self.rank))
        check_number("--lr", self.lr, 0, low_open=True)


# -- the commands ------------------------------------------------------------------------------------

register(CommandSpec("map", "Full map: ablation + logit lens + block influence + labels, from one baseline pass.",
                     MapOptions, "neuro_scan.analysis.map", "neuro_scan.report.map"))
register(CommandSpec("ablate", "Ablation scan: remove each layer (or each attention/MLP block, or each head) in turn "
                     "and measure the damage.", AblateOptions, "neuro_scan.analysis.ablation", "neuro_scan.report.ablation"))
register(CommandSpec("attribute", "Attribution patching (AtP with AtP* corrections): every layer's, block's and head's "
                     "damage estimated at once, then checked by exact ablation.", AttributeOptions,
                     "neuro_scan.analysis.attribution", "neuro_scan.report.attribution"))
register(CommandSpec("attention", "Attention entropy of every head in every layer (works under any attention "
                     "implementation).", ScanOptions, "neuro_scan.analysis.attention", "neuro_scan.report.attention"))
register(CommandSpec("circuit", "Layer pairs that work together: joint ablation, interaction with a 95% interval per "
                     "pair.", CircuitOptions, "neuro_scan.analysis.circuit", "neuro_scan.report.circuit"))
register(CommandSpec("cross-probe", "Single-layer ablation under several probes: universal and probe-specific layers, "
                     "profile correlations.", CrossProbeOptions, "neuro_scan.analysis.cross_probe",
                     "neuro_scan.report.cross_probe"))
register(CommandSpec("compare", "Compare layer profiles of models (of any depth) from their report files: no model is "
                     "loaded.", CompareOptions, "neuro_scan.analysis.compare", "neuro_scan.report.comparison",
                     loads_model=False))
register(CommandSpec("prompt-repeat", "Does repeating the prompt N times act like running a block of layers twice? "
                     "Both are measured.", PromptRepeatOptions, "neuro_scan.analysis.prompt_repeat",
                     "neuro_scan.report.prompt_repeat"))
register(CommandSpec("logit-lens", "Logit lens (or --tuned-lens): every layer read at the answers; emergence and "
                     "entropy profile.", LogitLensOptions, "neuro_scan.analysis.lens", "neuro_scan.report.lens"))
register(CommandSpec("calibrate", "Train a tuned lens (Belrose et al. 2023) on calibration text and prove its gain on "
                     "held-out text.", CalibrateOptions, "neuro_scan.analysis.tuned_lens", "neuro_scan.report.lens_file"))
