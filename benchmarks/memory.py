"""Peak memory of `map`, phase by phase, with short and long prompts, measured in one run.

    python benchmarks/memory.py [--model PATH] [--threads 2] [--probes math,8x1000,2x4000] [--json FILE]

Each configuration runs `map` (the library call behind the command) in a child process of its
own. The child resets its peak resident size (VmHWM, which ru_maxrss also reads, through
/proc/self/clear_refs) when the model is loaded and at every phase boundary, so each phase's
peak is its own; every number is resident memory above what the child held once the model was
loaded, and the whole command's peak is the largest of them. A phase's "start" is what it
inherits (the residual cache, and memory the allocator kept from earlier phases): its peak
minus its start is what the phase itself added. Beside the measures, the formulas (L layers, H heads, width d, rows
of T tokens, dtype of `bytes` bytes):

- residual cache, held from the baseline to the end: (L+1) x rows x T x d x bytes;
- attention phase: one layer for one block of rows at a time, rows_per_block x H x T^2 x 4
  bytes, with rows_per_block the most rows under ATTENTION_BUDGET_BYTES (at least 1); the eager
  softmax holds the scores beside the weights for a moment, so the phase peaks near twice that;
- the attention phase before it went layer by layer held every layer at once:
  L x rows_per_batch x H x T^2 x 4 bytes (rows_per_batch = min(rows, --batch-size)).

Configurations (--probes): built-in probes by name (`math`: short prompts) and long prompts cut
from the public-domain corpus, given as ROWSxTOKENS; each one's numbers are printed when it ends. The default model is SmolLM2-135M (GGUF fixture).
Linux only (reads /proc/self/status).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import print_results, smollm2_gguf

MIB = 2**20


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(f"{field}:"))


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # VmHWM := VmRSS


def child(model: str, probe: str, output: str, threads: int, batch_size: int) -> dict:
    """Run map and return each phase's peak resident memory above the loaded model's, in bytes."""
    import torch

    from neuro_scan import events
    from neuro_scan.commands import MapOptions
    from neuro_scan.runner import run

    torch.set_num_threads(threads)
    peaks: dict[str, int] = {}
    state = {"phase": "loading", "loaded": 0}

    def boundary(next_phase: str) -> None:
        peaks[state["phase"]] = _status("VmHWM") - state["loaded"]
        state["phase"] = next_phase
        _reset_peak()
        peaks[f"{next_phase} start"] = _status("VmRSS") - state["loaded"]  # kept from earlier phases

    def sink(event: events.Event) -> None:
        if isinstance(event, events.PhaseStarted) and event.phase in ("ablation", "attention"):
            boundary(event.phase)  # before the ablation: the baseline run filling the residual cache
        elif isinstance(event, events.PhaseFinished):
            if event.phase == "load":
                state["loaded"] = _status("VmRSS")
                boundary("baseline")
            elif event.phase == "ablation":
                boundary("lens")  # the lens phase and the report written between phases
            elif event.phase == "attention":
                boundary("writing")  # building the report and writing its files

    run("map", MapOptions(model=model, probe=probe, output=output, device="cpu", batch_size=batch_size), sink)
    boundary("done")
    for unmeasured in ("loading", "baseline start", "done start"):
        peaks.pop(unmeasured)
    peaks["whole map"] = max(peaks.values())
    return peaks


def long_probe(backend, text: str, rows: int, tokens: int, folder: Path) -> Path:
    """``rows`` prompts of ``tokens`` tokens each, consecutive stretches of the corpus; answer " the"."""
    ids = backend.tokenize(text, add_special_tokens=False)
    if rows * tokens > len(ids):
        raise SystemExit(f"the corpus has {len(ids)} tokens, fewer than {rows} x {tokens}")
    prompts = [backend.tokenizer.decode(ids[i * tokens:(i + 1) * tokens]) for i in range(rows)]
    path = folder / f"long_{rows}x{tokens}.json"
    path.write_text(json.dumps({"name": f"long-{rows}x{tokens}",
                                "samples": [{"prompt": p, "answer": " the"} for p in prompts]}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model (default: SmolLM2-135M GGUF fixture)")
    parser.add_argument("--probes", default="math,8x1000,2x4000", help="built-in probes and ROWSxTOKENS, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    parser.add_argument("--child", nargs=2, metavar=("PROBE", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    model = args.model or smollm2_gguf()
    if args.child:
        print(json.dumps(child(model, *args.child, args.threads, args.batch_size)))
        return

    from neuro_scan.analysis.attention import ATTENTION_BUDGET_BYTES, attention_bytes, rows_per_forward
    from neuro_scan.backend import open_backend
    from neuro_scan.corpus import builtin_corpus
    from neuro_scan.probes import resolve_probe
    from neuro_scan.scoring import build_plan, split_rows

    backend = open_backend(model, device="cpu")
    info = backend.info
    layers, heads, width = info.num_layers, info.num_heads, info.hidden_size
    dtype_bytes = 2 if info.dtype in ("bfloat16", "float16") else 4
    results: dict = {"model": info.model_id, "layers": layers, "heads": heads, "hidden_size": width,
                     "dtype": info.dtype, "threads": args.threads, "batch_size": args.batch_size,
                     "attention_budget_mib": ATTENTION_BUDGET_BYTES / MIB}
    print_results(results, None)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        text = "\n\n".join(builtin_corpus().documents)
        probes = {}
        for config in args.probes.split(","):
            if config[0].isdigit():
                rows, tokens = (int(v) for v in config.lower().split("x"))
                probes[config] = str(long_probe(backend, text, rows, tokens, folder))
            else:
                probes[config] = config
        plans = {name: build_plan(resolve_probe(probe), backend).sequences for name, probe in probes.items()}
        del backend  # the children load their own copy
        for name, probe in probes.items():
            sequences = plans[name]
            blocks = split_rows(len(sequences), args.batch_size)
            padded = sum((b.stop - b.start) * max(len(s) for s in sequences[b]) for b in blocks)
            longest = max(len(s) for s in sequences)
            per_block = min(len(sequences), args.batch_size, rows_per_forward(heads, longest))
            rows_per_batch = min(len(sequences), args.batch_size)
            command = [sys.executable, __file__, "--child", probe, str(folder / "out"), "--threads", str(args.threads),
                       "--batch-size", str(args.batch_size), *(["--model", args.model] if args.model else [])]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{name}: the child failed:\n{done.stderr[-3000:]}")
            peaks = json.loads(done.stdout.strip().splitlines()[-1])
            results[f"{name}: rows x longest T"] = f"{len(sequences)} x {longest}"
            for phase, value in peaks.items():
                results[f"{name}: measured {phase} MiB"] = round(value / MIB, 1)
            results[f"{name}: formula residual cache MiB"] = round((layers + 1) * padded * width * dtype_bytes / MIB, 1)
            results[f"{name}: formula attention, one layer x {per_block} rows MiB"] = round(
                attention_bytes(per_block, heads, longest) / MIB, 1)
            results[f"{name}: formula attention before (all {layers} layers x {rows_per_batch} rows) MiB"] = round(
                layers * attention_bytes(rows_per_batch, heads, longest) / MIB, 1)
            print_results({k: v for k, v in results.items() if k.startswith(f"{name}: ")}, None)
            sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
