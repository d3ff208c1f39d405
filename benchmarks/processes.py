"""One command alone against the same command as N processes under torchrun, in one run.

    python benchmarks/processes.py [--model PATH] [--processes 2] [--threads 2] [--json FILE] [-- COMMAND ARGS]

Default command: `circuit --strategy exhaustive --probe tests/data/capitals.json` on SmolLM2-135M
(GGUF fixture). The single process gets --threads threads; each of the N processes gets
threads / N, so both use the same cores. Reported: each run's wall seconds (loading included:
every process loads its own replica), each timing the report records (the scans are what is
shared), their ratios (alone / shared: above 1 means the processes helped), and whether the two
reports are equal (timings and dates aside). With --repeats R the two runs alternate R times and
every figure is the fastest of its R: on a shared machine another job can slow either one by
several times, and the minimum is the figure that reproduces.

On a CPU machine the processes compete for the same cores as the threads of a single process, so
expect little gain; with one GPU per process the scans' share of the time divides by about N.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import print_results, smollm2_gguf

CAPITALS = Path(__file__).resolve().parents[1] / "tests" / "data" / "capitals.json"
DOCUMENTS = {"map": "report.json", "ablate": "ablation.json", "circuit": "circuit.json",
             "prompt-repeat": "prompt_repeat.json", "cross-probe": "cross_probe.json"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def steady(value):
    """A report without its timings, date and process count."""
    if isinstance(value, dict):
        return {k: steady(v) for k, v in value.items()
                if k not in ("created_at", "timings", "processes") and "seconds" not in k}
    return [steady(v) for v in value] if isinstance(value, list) else value


def timed(command: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model (default: SmolLM2-135M GGUF fixture)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="threads of the single process (shared by the N)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the fastest counts")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    parser.add_argument("command", nargs="*", help="neuro-scan command and its options (after --)")
    args = parser.parse_args()
    command = args.command or ["circuit", "--strategy", "exhaustive", "--probe", str(CAPITALS)]
    command = [*command, "--model", args.model or smollm2_gguf()]
    exe = shutil.which("neuro-scan") or sys.exit("neuro-scan is not installed")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.processes),
                "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    document = DOCUMENTS[command[0]]
    results: dict = {"command": " ".join(command), "processes": args.processes, "threads": args.threads,
                     "repeats": args.repeats}
    runs: dict[str, list[tuple[float, dict]]] = {"alone": [], "shared": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, prefix, threads in (("alone", [], args.threads),
                                          ("shared", launcher, max(1, args.threads // args.processes))):
                folder = Path(tmp) / f"{name}{repeat}"
                seconds = timed([*prefix, exe, *command, "-o", str(folder)], threads)
                runs[name].append((seconds, json.loads((folder / document).read_text())))
    alone = runs["alone"][0][1]
    for name in ("alone", "shared"):
        results[f"{name}: wall_seconds"] = min(seconds for seconds, _ in runs[name])
    for timing in alone.get("timings", {}):
        fastest = {name: min(report["timings"][timing] for _, report in runs[name]) for name in runs}
        results[f"alone: {timing}"], results[f"shared: {timing}"] = fastest["alone"], fastest["shared"]
        results[f"ratio alone/shared: {timing}"] = fastest["alone"] / fastest["shared"]
    results["ratio alone/shared: wall_seconds"] = results["alone: wall_seconds"] / results["shared: wall_seconds"]
    results["reports_equal"] = all(steady(report) == steady(alone) for name in runs for _, report in runs[name])
    print_results(results, args.json)


if __name__ == "__main__":
    main()
