"""Model sources -> (model, tokenizer): a local folder, a .gguf file, a Hub id, or ``demo``.

Every failure a user can cause becomes a one-line :class:`UsageError`.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from neuro_scan.errors import UsageError

DEMO_MODEL = "demo"
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "mps")


def demo_model_dir() -> Path:
    return Path(str(resources.files("neuro_scan") / "data" / "demo_model"))


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``kind`` is 'folder', 'gguf' or 'hub'."""

    kind: str
    location: str  # folder path, .gguf path or hub id
    display_name: str


def resolve_source(model: str) -> ModelSource:
    """Decide what ``--model`` names, before anything heavy is imported or loaded."""
    if model == DEMO_MODEL:
        return ModelSource("folder", str(demo_model_dir()), DEMO_MODEL)
    path = Path(model).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise UsageError(f"--model: GGUF file {model} does not exist")
        return ModelSource("gguf", str(path), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ModelSource("gguf", str(ggufs[0]), ggufs[0].name)
            raise UsageError(
                f"--model: folder {model} is not a model folder (no config.json"
                + (f"; it holds {len(ggufs)} .gguf files, name one" if ggufs else "")
                + ")"
            )
        return ModelSource("folder", str(path), path.name if model in (".", "./") else model)
    if path.exists():
        raise UsageError(f"--model: {model} is a file, not a model folder, a .gguf file or a Hub id")
    looks_like_path = model.startswith((".", "/", "~")) or os.sep + os.sep in model or model.count("/") > 1
    if looks_like_path:
        raise UsageError(f"--model: no such model folder or file: {model}")
    return ModelSource("hub", model, model)


def check_dtype_and_device(dtype: str, device: str) -> None:
    """The names alone, before torch is imported (availability is checked at load)."""
    check_dtype(dtype)
    check_device(device)


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise UsageError(f"--dtype: '{dtype}' is not one of {', '.join(DTYPES)}")


def check_device(device: str) -> None:
    if device not in DEVICES:
        raise UsageError(f"--device: '{device}' is not one of {', '.join(DEVICES)}")


def resolve_device(device: str):
    import torch

    check_device(device)
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device: cuda was asked for but no CUDA GPU is available to torch")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device: mps was asked for but Apple's MPS is not available to torch")
    return torch.device(device)


def resolve_dtype(dtype: str, device):
    """``auto``: float32 on CPU (float16 matmuls are several times slower there), bfloat16 on CUDA."""
    import torch

    check_dtype(dtype)
    if dtype == "auto":
        return {"cuda": torch.bfloat16, "mps": torch.float16}.get(device.type, torch.float32)
    return getattr(torch, dtype)


def load_model(source: ModelSource, dtype, device):
    """Load a causal LM and its tokenizer; errors a user can fix become UsageError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict = {"dtype": dtype}
    if source.kind == "gguf":
        if importlib.util.find_spec("gguf") is None:
            raise UsageError("--model: loading .gguf files needs the gguf package: pip install 'neuro-scan[gguf]'")
        path = Path(source.location)
        location, kwargs["gguf_file"] = str(path.parent), path.name
    else:
        location = source.location
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **{k: v for k, v in kwargs.items() if k == "gguf_file"})
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise UsageError(_explain_load_failure(source, exc)) from None
    if getattr(model.config, "quantization_config", None) is not None and source.kind == "gguf":
        # dequantized GGUF weights are plain tensors now; the stale config only blocks save_pretrained
        del model.config.quantization_config
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def _explain_load_failure(source: ModelSource, exc: Exception) -> str:
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if source.kind == "hub":
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub may be unreachable or the id wrong"
        return (
            f"--model: could not load '{source.location}' from the Hugging Face Hub or its local cache "
            f"({why}): {first_line}"
        )
    if "does not recognize this architecture" in str(exc) or isinstance(exc, KeyError):
        return f"--model: {source.location}: architecture not supported by the installed transformers: {first_line}"
    return f"--model: could not load {source.location}: {first_line}"
