"""Memory and time of the residual cache against K (every K-th boundary kept) and --cache-memory,
and of rows bucketed by length, measured in one run.

    python benchmarks/cache.py [--model PATH] [--probe math] [--threads 2] [--long 4x512] [--spacings 1,2,3,5,10,31]
                               [--budgets 24MB,6MB] [--json FILE]

For each probe (the built-in `math`, short prompts, and long prompts cut from the public-domain
corpus, ROWSxTOKENS) and each setting, a child process of its own loads the model, resets its
peak resident memory, then builds the engine (the baseline run filling the cache) and runs the
single-layer scan, the logit lens and block influence (what `map` computes before attention).
Reported per setting:

- K and the cache it keeps: floor(L / K) x boundary_bytes, with boundary_bytes = rows x width x
  d_model x bytes per value summed over the row blocks (see docs/scale.md);
- peak: the child's peak resident memory above the loaded model (the cache, the forwards'
  activations and the lens's logits);
- baseline, scan, lens seconds (the lens and block influence read every boundary: those not kept
  are recomputed, in order, about one forward in all);
- the largest difference of any per-sample score from K = 1's (exactness: ~0).

Rows: with K = 1, the padding share and the scan time with rows in probe order (bucket off) and
bucketed by length (on). The default model is SmolLM2-135M (GGUF fixture, saved once as a float32
folder for the children). Linux only (reads /proc/self/status).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import print_results, reset_peak_memory, resident_memory, saved_as_folder, smollm2_gguf

MIB = 2**20


def child(model: str, probe_name: str, setting: dict, threads: int, batch_size: int) -> dict:
    import torch

    from neuro_scan.analysis.ablation import run_ablation
    from neuro_scan.analysis.influence import block_influence
    from neuro_scan.analysis.lens import run_lens
    from neuro_scan.backend import open_backend
    from neuro_scan.engine import Engine
    from neuro_scan.probes import resolve_probe

    torch.set_num_threads(threads)
    backend = open_backend(model, device="cpu")
    probe = resolve_probe(probe_name)
    loaded = resident_memory()
    reset_peak_memory()
    started = time.perf_counter()
    engine = Engine(backend, probe, batch_size=batch_size, **setting)
    built = time.perf_counter()
    singles = run_ablation(engine, seed=0)
    scanned = time.perf_counter()
    lens = run_lens(engine)
    block_influence(engine)
    done = time.perf_counter()
    return {"keep_every": engine.keep_every, "cache_bytes": engine.cache_bytes, "boundary_bytes": engine.boundary_bytes,
            "padding_share": engine.padding_share, "blocks": len(engine.blocks),
            "peak_bytes": resident_memory("VmHWM") - loaded, "baseline_seconds": built - started,
            "scan_seconds": scanned - built, "lens_seconds": done - scanned,
            "scores": [*engine.baseline.answer_logprob.tolist(), *singles.ablated_logprob.ravel().tolist(),
                       *(p for layer in lens.layers for p in layer.answer_prob.tolist())]}


def settings(layers: int, spacings: list[int], budgets: list[str]) -> dict[str, dict]:
    from neuro_scan.units import parse_size

    chosen = {"bucket off, K=1": {"keep_every": 1, "bucket_rows": False}}
    chosen.update({f"K={k}": {"keep_every": k} for k in spacings if k <= layers + 1})
    chosen.update({f"--cache-memory {b}": {"cache_memory": parse_size(b, "--budgets")} for b in budgets})
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model (default: SmolLM2-135M GGUF fixture)")
    parser.add_argument("--probe", default="math", help="the short probe: a built-in name or a file")
    parser.add_argument("--long", default="4x512", help="long-prompt configurations, ROWSxTOKENS,...")
    parser.add_argument("--spacings", default="1,2,3,5,10,31", help="values of K")
    parser.add_argument("--budgets", default="24MB,6MB", help="values of --cache-memory")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "PROBE", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, probe, setting = args.child
        print(json.dumps(child(model, probe, json.loads(setting), args.threads, args.batch_size)))
        return

    from memory import long_probe

    from neuro_scan.backend import open_backend
    from neuro_scan.corpus import builtin_corpus

    backend = open_backend(args.model or smollm2_gguf(), device="cpu")
    info = backend.info
    results: dict = {"model": info.model_id, "layers": info.num_layers, "hidden_size": info.hidden_size,
                     "dtype": info.dtype, "threads": args.threads, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = saved_as_folder(backend, folder / "model") if args.model is None else args.model
        text = "\n\n".join(builtin_corpus().documents)
        probes = {args.probe: args.probe}
        for config in filter(None, args.long.split(",")):
            rows, tokens = (int(v) for v in config.lower().split("x"))
            probes[f"long {rows}x{tokens}"] = str(long_probe(backend, text, rows, tokens, folder))
        spacings = [int(k) for k in args.spacings.split(",")]
        for name, probe in probes.items():
            reference = None
            for label, setting in settings(info.num_layers, spacings, args.budgets.split(",")).items():
                command = [sys.executable, __file__, "--child", model, probe, json.dumps(setting),
                           "--threads", str(args.threads), "--batch-size", str(args.batch_size)]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"{name}, {label}: the child failed:\n{done.stderr[-3000:]}")
                run = json.loads(done.stdout.strip().splitlines()[-1])
                scores = run.pop("scores")
                reference = reference or scores
                key = f"{name}: {label}"
                results[f"{key}: K"] = run["keep_every"]
                results[f"{key}: cache MiB"] = round(run["cache_bytes"] / MIB, 2)
                results[f"{key}: peak above model MiB"] = round(run["peak_bytes"] / MIB, 1)
                for phase in ("baseline", "scan", "lens"):
                    results[f"{key}: {phase} s"] = round(run[f"{phase}_seconds"], 2)
                results[f"{key}: padding share"] = round(run["padding_share"], 3)
                results[f"{key}: largest score difference"] = max(abs(a - b) for a, b in zip(scores, reference))
                print_results({k: v for k, v in results.items() if k.startswith(f"{key}: ")}, None)
                sys.stdout.flush()  # each setting's numbers as soon as they are measured
            results[f"{name}: boundary MiB (bucketed)"] = round(run["boundary_bytes"] / MIB, 3)
    print_results(results, args.json)


if __name__ == "__main__":
    main()
