"""neuro-scan: map what each transformer layer of a causal LLM does."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("neuro-scan")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
