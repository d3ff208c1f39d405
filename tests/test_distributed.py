"""Several processes sharing one scan (neuro_scan.distributed): started by torchrun as users start
it, the report equals a single process's; the launcher's environment is read strictly."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from neuro_scan.distributed import Place, place
from neuro_scan.errors import UsageError

LAUNCHED = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.fixture
def launcher_env(monkeypatch):
    for name in LAUNCHED:
        monkeypatch.delenv(name, raising=False)

    def set_env(**values):
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env


def test_alone_without_a_launcher_or_with_one_process(launcher_env):
    assert place() is None
    launcher_env(**{**LAUNCHED, "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"})
    assert place() is None


def test_the_place_the_launcher_gives(launcher_env):
    launcher_env(**LAUNCHED)
    assert place() == Place(rank=1, world_size=2, local_rank=1) and not place().main


@pytest.mark.parametrize(("values", "why"), [
    ({"RANK": "x"}, "RANK=x, LOCAL_RANK=1 must be whole numbers"),
    ({"RANK": "2"}, "RANK=2 must be from 0 to WORLD_SIZE-1=1"),
    ({"MASTER_PORT": ""}, "MASTER_PORT not set; start the processes with torchrun or accelerate launch"),
])
def test_a_half_set_launcher_environment_is_refused(launcher_env, values, why):
    launcher_env(**{**LAUNCHED, **values})
    with pytest.raises(UsageError, match=why):
        place()


# -- torchrun, as users start it ------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment(tmp_path: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in LAUNCHED}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "NO_COLOR": "1", "COLUMNS": "200",
            "OMP_NUM_THREADS": "1"}


def neuro_scan(args: list[str], tmp_path: Path, processes: int = 1, launcher: str = "torchrun") -> subprocess.CompletedProcess:
    """``neuro-scan args`` alone, or as ``processes`` processes started by torchrun or accelerate launch."""
    exe = shutil.which("neuro-scan")
    assert exe, "the neuro-scan console script is installed"
    launchers = {
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                     "--master-addr", "127.0.0.1", "--master-port", str(free_port())],
        # accelerate's multi-GPU launch starts torchrun's processes; on a CPU-only machine they use gloo
        "accelerate": [shutil.which("accelerate"), "launch", "--multi_gpu", "--num_processes", str(processes),
                       "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                       "--main_process_port", str(free_port())],
    }
    launcher = launchers[launcher] if processes > 1 else []
    return subprocess.run([*launcher, exe, *args], capture_output=True, text=True, cwd=tmp_path,
                          env=environment(tmp_path), timeout=600)


def without_times(value):
    """A report without what differs between two runs of the same inputs: times, the date and how
    many processes shared the scans."""
    if isinstance(value, dict):
        return {key: without_times(item) for key, item in value.items()
                if key not in ("created_at", "timings", "processes") and not key.endswith("seconds")}
    if isinstance(value, list):
        return [without_times(item) for item in value]
    return value


@pytest.mark.slow
@pytest.mark.parametrize(("launcher", "command", "document"), [
    ("torchrun", ["ablate", "--model", "demo", "--probe", "facts"], "ablation.json"),
    ("torchrun", ["circuit", "--model", "demo", "--probe", "arith", "--strategy", "exhaustive"], "circuit.json"),
    ("torchrun", ["prompt-repeat", "--model", "demo", "--probe", "facts"], "prompt_repeat.json"),
    ("torchrun", ["ablate", "--model", "{tiny}", "--probe", "facts", "--granularity", "head"], "components.json"),
    ("accelerate", ["ablate", "--model", "demo", "--probe", "arith"], "ablation.json"),
])
def test_two_launched_processes_write_the_single_process_report(launcher, command, document, tmp_path,
                                                                 tiny_model_folder):
    command = [str(tiny_model_folder) if part == "{tiny}" else part for part in command]
    alone = neuro_scan([*command, "-o", str(tmp_path / "alone")], tmp_path)
    assert alone.returncode == 0, alone.stderr
    shared = neuro_scan([*command, "-o", str(tmp_path / "shared")], tmp_path, processes=2, launcher=launcher)
    assert shared.returncode == 0, shared.stderr
    assert "process 1 of 2: scored its share; process 0 wrote the report" in shared.stdout
    def written(output: str) -> list[str]:
        return [line for line in output.splitlines() if line.startswith("wrote ")]

    assert len(written(shared.stdout)) == len(written(alone.stdout)) == 1  # only process 0 writes and says so
    expected = json.loads((tmp_path / "alone" / document).read_text())
    found = json.loads((tmp_path / "shared" / document).read_text())
    assert without_times(found) == without_times(expected)
    assert (found["scale"]["processes"], expected["scale"]["processes"]) == (2, 1)
    assert sorted(os.listdir(tmp_path / "shared")) == sorted(os.listdir(tmp_path / "alone"))


@pytest.mark.slow
def test_two_processes_continue_a_killed_single_process_scan_to_the_uninterrupted_report(tmp_path):
    """Every process reads the journal before any adds to it, so all deal out the same remaining
    configurations; process 0 journals everyone's scores and removes the journal at the end."""
    import signal

    from neuro_scan.journal import JOURNAL_FILE
    from test_journal import RUNS, stopped

    args, name, _ = RUNS["circuit"]
    whole = neuro_scan([*args, "-o", str(tmp_path / "whole")], tmp_path)
    assert whole.returncode == 0, whole.stderr
    code, stderr = stopped(args, tmp_path / "shared", tmp_path, 4, signal.SIGKILL)
    assert code == -signal.SIGKILL, stderr
    shared = neuro_scan([*args, "-o", str(tmp_path / "shared")], tmp_path, processes=2)
    assert shared.returncode == 0, shared.stderr
    assert "continuing the interrupted scan journalled in" in shared.stdout + shared.stderr
    expected = json.loads((tmp_path / "whole" / name).read_text())
    assert without_times(json.loads((tmp_path / "shared" / name).read_text())) == without_times(expected)
    assert not (tmp_path / "shared" / JOURNAL_FILE).exists()
