"""Run neuro-scan under an address-space limit (RLIMIT_AS), for the memory tests.

    python limited_memory.py HEADROOM_MIB MODEL neuro-scan ARGS...   # the CLI, e.g. map --model MODEL ...
    python limited_memory.py HEADROOM_MIB MODEL all-layers PROBE     # every layer's attention at once

Importing torch maps a lot of virtual memory, so the limit is relative: this process first
imports neuro-scan (CLI, runner, report pages) and loads MODEL once, then caps its
address space at its size at that moment plus HEADROOM_MIB. What a command allocates beyond
its imports must fit the headroom. Run with OMP_NUM_THREADS=1 and MALLOC_ARENA_MAX=2 so the
threads' malloc arenas do not make the size depend on the machine's core count.

``all-layers`` captures the attention of the probe's rows the way the attention phase did
before it went layer by layer: every layer's [rows, heads, T, T] weights held at once.
"""

from __future__ import annotations

import resource
import sys


def address_space_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))


def main() -> None:
    headroom, model, mode, args = int(sys.argv[1]) * 2**20, sys.argv[2], sys.argv[3], sys.argv[4:]
    import plotly.graph_objects  # noqa: F401  (the report pages, imported before the limit like the rest)

    from neuro_scan import cli, report, runner  # noqa: F401
    from neuro_scan.backend import open_backend

    backend = open_backend(model, device="cpu")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = address_space_bytes() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    if mode == "all-layers":
        from neuro_scan.engine import Engine
        from neuro_scan.probes import resolve_probe

        engine = Engine(backend, resolve_probe(args[0]))
        weights = backend.attention_weights(engine.blocks[0].batch)
        print(f"held {sum(w.numel() * 4 for w in weights)} bytes of attention weights")
        return
    sys.argv = ["neuro-scan", *args]
    cli.main()


if __name__ == "__main__":
    main()
