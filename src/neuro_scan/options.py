"""Options shared by commands, defined once so every command spells them the same way."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from neuro_scan.hub.layout import REPO_ENV

Model = Annotated[str, typer.Option("--model", "-m", help="Model folder, .gguf file, Hugging Face id, or 'demo' (built in).")]
ProbeName = Annotated[Optional[str], typer.Option("--probe", "-p", help="Built-in probe name (see `neuro-scan probes`) or a "
                                                  "probe JSON file [default: math].", show_default=False)]
CustomProbe = Annotated[Optional[str], typer.Option("--custom-probe", help="Probe JSON file (our format or the reference's digits format).")]
Backend = Annotated[str, typer.Option("--backend", "-b", help="transformers (exllamav2: not in this version).")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Most token rows per forward pass; ablations are stacked up to it.")]
Output = Annotated[str, typer.Option("--output", "-o", help="Folder for the results.")]
TopK = Annotated[int, typer.Option("--top-k", "-k", help="How many top layers to highlight.")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16.")]
Device = Annotated[str, typer.Option("--device", help="auto (best available), cpu, cuda, mps.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for torch and the bootstrap intervals.")]
MaxSamples = Annotated[Optional[int], typer.Option("--max-samples", help="Use only the first N samples of the probe.")]
DeviceMap = Annotated[Optional[str], typer.Option("--device-map", help="Place a model larger than one device over the "
                                                "GPUs, the CPU and disk (accelerate): auto, balanced, balanced_low_0 "
                                                "or sequential; --device stays auto (docs/scale.md).")]
MaxMemory = Annotated[Optional[str], typer.Option("--max-memory", help="With --device-map: the most each device takes, "
                                                 "as DEVICE=SIZE pairs, e.g. 0=20GiB,1=20GiB,cpu=64GB.")]
OffloadFolder = Annotated[Optional[str], typer.Option("--offload-folder", help="With --device-map: where weights offloaded "
                                                     "to disk are saved when they must be (default: a temporary folder).")]
CacheMemory = Annotated[Optional[str], typer.Option("--cache-memory", help="The most memory the cached residual streams "
                                                   "take, e.g. 8GB: every K-th layer boundary is kept, the rest "
                                                   "recomputed; the same scores (default: no limit, K = 1).")]
Resume = Annotated[Optional[bool], typer.Option("--resume/--no-resume", help="Continue the interrupted scan journalled in "
                                               "--output (the default when its inputs match), or (--no-resume) discard "
                                               "its journal and start afresh.", show_default=False)]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show library logs and full tracebacks.")]
TunedLens = Annotated[Optional[str], typer.Option("--tuned-lens", help="Tuned-lens file from `neuro-scan calibrate`.")]
Strategy = Annotated[str, typer.Option("--strategy", help="Pairs to test: fast (top-K layers + neighbours), thorough "
                                       "(+ layers with similar outputs), exhaustive (all L(L-1)/2 pairs).")]
TopKPairs = Annotated[int, typer.Option("--top-k-pairs", help="How many of the most damaging layers are paired (fast, thorough).")]
Probes = Annotated[str, typer.Option("--probes", help="Comma-separated probes: built-in names and/or probe JSON files.")]
RepeatCounts = Annotated[str, typer.Option("--repeat-counts", "-r", help="Comma-separated prompt repeat counts N.")]
DupSizes = Annotated[Optional[str], typer.Option("--dup-sizes", help="Comma-separated sizes K of the duplicated layer "
                                                 "blocks, each tried at every position (default 1, 2, 4, ... up to L/2).")]
Tolerance = Annotated[Optional[float], typer.Option("--tolerance", help="Relative depth within which reasoning layers "
                                                    "of different models count as shared (default 0.05).")]
HubRepo = Annotated[str, typer.Option("--repo", envvar=REPO_ENV, show_envvar=True,
                                      help="Hugging Face dataset repository of pre-computed reports.")]
HubModel = Annotated[Optional[str], typer.Option("--model", "-m", help="Model id of the report: the exact id, or a "
                                                 "unique case-insensitive name such as qwen2-7b.")]
HubProbe = Annotated[str, typer.Option("--probe", "-p", help="Probe the report was made with.")]
ReportOutput = Annotated[Optional[str], typer.Option("--output", "-o", help="Also save the report as this JSON file "
                                                     "(readable by compare and layer-scan annotate).")]
ListReports = Annotated[bool, typer.Option("--list", help="List the reports in the repository (of --model only, if given).")]
PublishAs = Annotated[Optional[str], typer.Option("--model", "-m", help="Hub model id to publish the report under "
                                                  "(default: the report's 'model'; needed for a local folder).")]
PullRequest = Annotated[bool, typer.Option("--pr/--no-pr", help="Open a pull request (default) or commit to main "
                                           "(needs write access).")]
TopTokens = Annotated[int, typer.Option("--top-tokens", help="How many top tokens the lens records per layer and sample.")]
Corpus = Annotated[Optional[str], typer.Option("--corpus", help="Calibration text: a .txt file, or a .jsonl file with a "
                                               "'text' field per line (default: the built-in public-domain corpus).")]
LensFile = Annotated[str, typer.Option("--output", "-o", help="Tuned-lens file to write (.safetensors).")]
Steps = Annotated[int, typer.Option("--steps", help="Optimiser steps.")]
TokensPerStep = Annotated[int, typer.Option("--tokens-per-step", help="Corpus tokens per optimiser step.")]
LearningRate = Annotated[float, typer.Option("--lr", help="Learning rate in the paper's units (SGD lr = lr x (1 - momentum 0.9)); "
                                             "decays linearly to 0.")]
Rank = Annotated[Optional[int], typer.Option("--rank", help="Low-rank translators A = U V^T of this rank (default: full d x d).")]
HeldoutTokens = Annotated[int, typer.Option("--heldout-tokens", help="Held-out corpus tokens on which both lenses are compared.")]
ServeResults = Annotated[str, typer.Option("--results", "-r", help="Folder of the reports to list; jobs started from the "
                                           "page write into RESULTS/jobs/<job>.")]
ServeHost = Annotated[str, typer.Option("--host", help="Address to listen on; any but 127.0.0.1 needs the token "
                                        "(docs/serve.md).")]
ServePort = Annotated[int, typer.Option("--port", help="Port to listen on (0: a free one).")]
ServeToken = Annotated[Optional[str], typer.Option("--token", envvar="NEURO_SCAN_TOKEN", show_envvar=True,
                                                   help="The token every request must carry (default: generated, "
                                                   "and required only off 127.0.0.1).")]
OpenBrowser = Annotated[bool, typer.Option("--open", help="Open the page in the default browser.")]
Granularity = Annotated[str, typer.Option("--granularity", help="What is removed in turn: layer (whole layers), sublayer "
                                          "(each layer's attention block, then its MLP block) or head (each attention head).")]
AblationKind = Annotated[str, typer.Option("--ablation", help="zero (the part's contribution removed) or mean (replaced by "
                                           "its mean over the probe's real tokens in the baseline run).")]
VerifyTopK = Annotated[int, typer.Option("--verify-top-k", help="Nodes with the largest estimates checked by exact ablation.")]
VerifySample = Annotated[int, typer.Option("--verify-sample", help="Other nodes, drawn at random (seeded), checked by exact "
                                           "ablation: bounds what the estimate missed.")]
GradDrop = Annotated[bool, typer.Option("--graddrop/--no-graddrop", help="AtP*'s GradDrop correction against cancellation.")]
QkFix = Annotated[bool, typer.Option("--qk-fix/--no-qk-fix", help="AtP*'s exact recomputation of the next attention softmax.")]

GRANULARITIES = ("layer", "sublayer", "head")  # --granularity
ABLATION_KINDS = ("zero", "mean")  # --ablation (backend.base.ABLATIONS is this tuple)


def check_choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    """A choice option; no heavy import, so a bad choice fails before torch loads."""
    if value not in allowed:
        from neuro_scan.errors import UsageError

        raise UsageError(f"{option}: '{value}' is not one of {', '.join(allowed)}")
