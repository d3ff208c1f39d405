"""neuro-scan: map what each transformer layer of a causal LLM does.

The Python API (see docs/python-api.md): ``neuro_scan.run``, ``neuro_scan.load``,
``neuro_scan.analyse``, ``neuro_scan.read_report``. They are imported on first use, so that
``import neuro_scan`` (and the CLI) stays fast.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("neuro-scan")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["analyse", "load", "options", "read_report", "run", "__version__"]


def __getattr__(name: str):
    if name in ("analyse", "load", "options", "read_report", "run"):
        from neuro_scan import api

        return getattr(api, name)
    raise AttributeError(f"module 'neuro_scan' has no attribute {name!r}")
