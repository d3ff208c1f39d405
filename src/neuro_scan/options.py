"""Options shared by commands, defined once so every command spells them the same way."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

Model = Annotated[str, typer.Option("--model", "-m", help="Model folder, .gguf file, Hugging Face id, or 'demo' (built in).")]
ProbeName = Annotated[str, typer.Option("--probe", "-p", help="Built-in probe name (see `neuro-scan probes`) or a probe JSON file.")]
CustomProbe = Annotated[Optional[str], typer.Option("--custom-probe", help="Probe JSON file (our format or the reference's digits format).")]
Backend = Annotated[str, typer.Option("--backend", "-b", help="transformers (exllamav2: not in this version).")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Most token rows per forward pass; ablations are stacked up to it.")]
Output = Annotated[str, typer.Option("--output", "-o", help="Folder for the results.")]
TopK = Annotated[int, typer.Option("--top-k", "-k", help="How many top layers to highlight.")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16.")]
Device = Annotated[str, typer.Option("--device", help="auto (best available), cpu, cuda, mps.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for torch and the bootstrap intervals.")]
MaxSamples = Annotated[Optional[int], typer.Option("--max-samples", help="Use only the first N samples of the probe.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show library logs and full tracebacks.")]
TunedLens = Annotated[Optional[str], typer.Option("--tuned-lens", help="Tuned-lens file from `neuro-scan calibrate`.")]
