"""Model sources -> (model, tokenizer): a local folder, a .gguf file, a Hub id, or ``demo``.

Every failure a user can cause becomes a one-line :class:`UsageError`: a folder without weights,
a truncated or corrupt weight file (named), an unreachable Hub (after one quick request, not
huggingface_hub's retries).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from neuro_scan.errors import UsageError

DEMO_MODEL = "demo"
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "mps")
# accelerate's big-model placements: layers spread over the GPUs, then the CPU, then disk
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
# what from_pretrained looks for in a model folder (a sharded checkpoint has an index)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

log = logging.getLogger(__name__)


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
    if not model.strip():
        raise UsageError("--model: must not be empty; give a model folder, a .gguf file, a Hub id or 'demo'")
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
        if not any((path / name).is_file() for name in WEIGHT_FILES):
            ggufs = sorted(path.glob("*.gguf"))
            raise UsageError(
                f"--model: folder {model} has a config.json but no weights (none of {', '.join(WEIGHT_FILES)})"
                + (f"; to load {ggufs[0].name}, name the .gguf file" if ggufs else "")
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


def check_device_map(device_map: str | dict | None, device: str) -> None:
    """A placement name (or accelerate's own {module: device} map), and --device left to it."""
    if device_map is None:
        return
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise UsageError(f"--device-map: '{device_map}' is not one of {', '.join(DEVICE_MAPS)}")
    if device != "auto":
        raise UsageError(f"--device-map: the map places the model; leave --device at auto (got --device {device})")


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


def load_model(source: ModelSource, dtype, device, *, device_map: str | dict | None = None,
               max_memory: dict[int | str, int] | None = None, offload_folder: str | None = None):
    """Load a causal LM and its tokenizer; errors a user can fix become UsageError.

    Without ``device_map`` the weights load on the CPU and move to ``device``. With it, accelerate
    places them as they load, layer by layer, over the GPUs, the CPU and disk, each device taking
    at most its ``max_memory`` (bytes; accelerate's defaults without it): the host never holds the
    whole model. Weights offloaded to disk are read from the model's safetensors files where they
    can be; others (a GGUF's, dequantized) are written to ``offload_folder``, by default a
    temporary folder removed when the process ends."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs: dict = {}
    placement: dict = {}
    if device_map is not None:
        placement = {"device_map": device_map, "max_memory": max_memory,
                     "offload_folder": offload_folder or _temporary_offload_folder()}
    if source.kind == "gguf":
        if importlib.util.find_spec("gguf") is None:
            raise UsageError("--model: loading .gguf files needs the gguf package: pip install 'neuro-scan[gguf]'")
        path = Path(source.location)
        location, kwargs["gguf_file"] = str(path.parent), path.name
    else:
        location = source.location
    unreachable = _reach_hub(source.location) if source.kind == "hub" else None
    if unreachable is not None:
        kwargs["local_files_only"] = True  # a cached copy still loads
    with _bars_only_for_downloads(source):
        config = _loaded(source, unreachable, lambda: AutoConfig.from_pretrained(location, **kwargs))
        options = _model_options(config)
        tokenizer = _loaded(source, unreachable, lambda: AutoTokenizer.from_pretrained(location, **kwargs), "tokenizer")
        model = _loaded(source, unreachable,
                        lambda: AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **options, **placement,
                                                                     **kwargs))
    if getattr(model.config, "quantization_config", None) is not None and source.kind == "gguf":
        # dequantized GGUF weights are plain tensors now; the stale config only blocks save_pretrained
        del model.config.quantization_config
    if device_map is None:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def _temporary_offload_folder() -> str:
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="neuro-scan-offload-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _model_options(config) -> dict:
    """Refuse, before any weight loads, what neuro-scan cannot map (encoder-only and encoder-decoder
    models); give older model code eager attention from the start (it cannot switch later, and
    attention entropy needs the weights eager attention computes)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from neuro_scan.backend.architecture import legacy_attention, refusal

    why = refusal(config)
    if why is not None:
        raise UsageError(f"--model: {why}")
    try:
        legacy = legacy_attention(MODEL_FOR_CAUSAL_LM_MAPPING[type(config)])
    except KeyError:  # no causal-LM class: from_pretrained says so
        legacy = False
    return {"attn_implementation": "eager"} if legacy else {}


def context_limit(config) -> int | None:
    """The most token positions the model reads in one row, from its (text) config. A learned
    position table ends there (IndexError beyond); a rotary model runs on but was never trained
    there, so it is held to the same limit. None when the config names no limit: nothing to check."""
    text = config.get_text_config(decoder=True)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def unknown_pieces(tokenizer, text: str) -> list[str]:
    """The pieces of ``text`` that the tokenizer turns into its unknown token, in order; none when it
    has no unknown token (byte-level tokenizers encode everything)."""
    unknown = tokenizer.unk_token_id
    if unknown is None:
        return []
    try:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:  # slow tokenizers give no offsets: each character on its own
        return [c for c in text if unknown in tokenizer(c, add_special_tokens=False)["input_ids"]]
    return [text[start:stop] for token, (start, stop) in zip(encoding["input_ids"], encoding["offset_mapping"])
            if token == unknown and stop > start]


@contextlib.contextmanager
def _bars_only_for_downloads(source: ModelSource) -> Iterator[None]:
    """transformers' own progress bars ("Loading weights") are off while a local model loads: the
    CLI shows its own, and errors stay one line. A Hub model keeps them: they show its download;
    so does a verbose run (``--verbose`` sets transformers' verbosity to info)."""
    from transformers.utils import logging as transformers_logging

    shown = transformers_logging.is_progress_bar_enabled()
    if source.kind != "hub" and transformers_logging.get_verbosity() > logging.INFO:
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            transformers_logging.enable_progress_bar()


def _reach_hub(model_id: str) -> str | None:
    """Before a Hub model loads: say what is being waited for, and ask the Hub once whether it answers
    (huggingface_hub retries an unreachable Hub for about 23 s per file before using its cache).
    Returns why the Hub cannot be reached, or None (also when HF_HUB_OFFLINE is set: nothing is asked)."""
    from huggingface_hub import constants

    from neuro_scan.hub.remote import unreachable

    if constants.is_offline_mode():
        return None
    log.warning("contacting %s for %s (set HF_HUB_OFFLINE=1 to use the local cache only)", constants.ENDPOINT, model_id)
    return unreachable(constants.ENDPOINT)


def _loaded(source: ModelSource, unreachable: str | None, load: Callable, part: str = "model"):
    """``load()``, with every failure a user can fix as a one-line UsageError; anything else is a bug
    and keeps its traceback."""
    try:
        return load()
    except Exception as exc:  # sorted out below: an error nobody explains is raised again
        message = _explain_load_failure(source, exc, unreachable, part)
        if message is None:
            raise
        raise UsageError(message) from None


def _one_line(exc: BaseException) -> str:
    """An exception's whole message on one line (some span several: their first line says nothing)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _explain_load_failure(source: ModelSource, exc: Exception, unreachable: str | None, part: str) -> str | None:
    from huggingface_hub.errors import StrictDataclassError

    broken = _unreadable_file(source)
    if broken is not None:
        return f"--model: {broken}"
    if isinstance(exc, StrictDataclassError):  # transformers checks configs as strict dataclasses
        return f"--model: {source.location}: its config is not valid: {_one_line(exc)}"
    if not isinstance(exc, (OSError, ValueError, KeyError, ImportError)):
        return None
    if source.kind == "hub":
        from huggingface_hub import constants

        from neuro_scan.hub.remote import cannot_reach

        if unreachable is not None:
            return f"--model: {cannot_reach(constants.ENDPOINT, unreachable, repr(source.location))}"
        why = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else "the Hub may be unreachable or the id wrong"
        return (
            f"--model: could not load '{source.location}' from the Hugging Face Hub or its local cache "
            f"({why}): {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}"
        )
    if "does not recognize this architecture" in str(exc) or isinstance(exc, KeyError):
        return f"--model: {source.location}: architecture not supported by the installed transformers: {_one_line(exc)}"
    what = "the tokenizer of " if part == "tokenizer" else ""
    return f"--model: could not load {what}{source.location}: {_one_line(exc)}"


def _unreadable_file(source: ModelSource) -> str | None:
    """The weight file of a local model that cannot be read, and why; None when every one reads
    (only headers are read: a GGUF's metadata and tensor table, a safetensors file's header)."""
    import struct

    if source.kind == "gguf":
        from gguf import GGUFReader

        try:
            GGUFReader(source.location)
        except (ValueError, IndexError, struct.error, OSError) as exc:
            return f"{source.location} is not a readable GGUF file (truncated or corrupt: {_one_line(exc)})"
    elif source.kind == "folder":
        from safetensors import SafetensorError, safe_open

        for file in sorted(Path(source.location).glob("*.safetensors")):
            try:
                with safe_open(str(file), framework="numpy"):
                    pass
            except (SafetensorError, OSError) as exc:
                return f"{file} is not a readable safetensors file (truncated or corrupt: {_one_line(exc)})"
    return None
