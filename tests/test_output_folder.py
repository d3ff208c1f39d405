"""Output folders: nothing lost, nothing half-written, nothing mixed (issue 11, items 6-9).

Real runs on the built-in demo model, through the real CLI (in-process, or as a subprocess where
a process must be killed or interrupted). The writer is also killed with SIGKILL before each of
its file-system calls in turn (tests/interrupted_writer.py): whatever the moment, the folder holds
the earlier complete set or the new one, and the next run leaves no temporary file behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli_errors import cli_command
from typer.testing import CliRunner

from neuro_scan.cli import app
from neuro_scan.report import ReportFiles, prepare_output_dir, write, write_lens_file
from neuro_scan.report.folder import COMMIT_FILE, MANIFEST_FILE, TEMP_PREFIX
from neuro_scan.report.lock import LOCK_FILE

HERE = Path(__file__).parent
MAP_FILES = {"report.json", "ablation.csv", "ablation.html", "accuracy.html", "logit_lens.html", "entropy_profile.html",
             "block_influence.html", "attention.html", "index.html", "plotly.min.js"}
ABLATE_FILES = {"ablation.json", "ablation.csv", "ablation.html", "accuracy.html", "plotly.min.js"}


# ---------------------------------------------------------------------------------------- helpers


def cli(args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stdout, result.stderr


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_COLOR="1", COLUMNS="300")
    return subprocess.Popen([*cli_command(), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(condition, what: str, limit: float = 120.0) -> None:
    """Poll (every millisecond) until ``condition()``; a safety limit only, no timing is asserted."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.001)


def lock_holder_pid(folder: Path) -> int | None:
    try:
        return json.loads((folder / LOCK_FILE).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def visible(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


def leftovers(folder: Path) -> set[str]:
    """Hidden files of ours that must not outlive a run: temporary files, commit record, lock."""
    return {p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX) or p.name in (COMMIT_FILE, LOCK_FILE)}


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    return lines[0]


class Run:
    """The files one run wrote, read from its folder: recognises them by content."""

    def __init__(self, folder: Path, names: set[str]):
        report_file = folder / ("report.json" if "report.json" in names else "ablation.json")
        report = json.loads(report_file.read_bytes())
        self.names = names
        self.json = report_file.read_bytes()
        csv = folder / "ablation.csv"  # no timings or dates in it: same inputs, same bytes
        self.csv = csv.read_bytes() if "ablation.csv" in names else None
        self.marker = f"probe {report['probe']} ({report['sample_count']} samples)"  # in every chart's title
        self.created_at = report["created_at"]  # on the dashboard

    def owns(self, path: Path, others: list[Run]) -> bool:
        data = path.read_bytes()
        if path.suffix == ".json":
            return data == self.json
        if path.suffix == ".csv":
            return data == self.csv
        if path.suffix == ".html":
            text = data.decode("utf-8")
            return (self.marker in text and not any(o.marker in text for o in others if o.marker != self.marker)
                    and (path.name != "index.html" or self.created_at in text))
        from plotly.offline import get_plotlyjs

        return data == get_plotlyjs().encode("utf-8")

    def is_complete_in(self, folder: Path, others: list[Run], extra: set[str] = frozenset()) -> bool:
        """Exactly this run's files (plus ``extra``, the user's own), each of them this run's."""
        return visible(folder) == self.names | extra and all(self.owns(folder / n, others) for n in self.names)


def one_run(folder: Path, expected: list[Run]) -> Run | None:
    """The run whose files the folder holds when they all come from one run with the results of
    one of ``expected`` (all of them, or as far as the run had written: `map` writes report.json
    after each phase); None for a mix of runs."""
    names = visible(folder)
    if not names & {"report.json", "ablation.json"}:
        return None
    found = Run(folder, names)
    same = [e for e in expected if e.marker == found.marker and found.csv in (None, e.csv)]
    return found if same and all(found.owns(folder / name, expected) for name in names) else None


@pytest.fixture(scope="module")
def demo_maps(tmp_path_factory) -> dict[str, Path]:
    """`neuro-scan map --model demo` on the facts and the arith probes: two complete folders."""
    base = tmp_path_factory.mktemp("maps")
    for probe in ("facts", "arith"):
        rc, stdout, stderr = cli(["map", "--model", "demo", "--probe", probe, "-o", str(base / probe)])
        assert rc == 0, stdout + stderr
    return {probe: base / probe for probe in ("facts", "arith")}


def copy_of(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target)
    return target


# ------------------------------------------------------------------ 6: paths that cannot be written

UNWRITABLE = ["afile/sub", "/proc/x", "/sys/kernel/x"]


@pytest.mark.parametrize("command", ["map", "compare"])
@pytest.mark.parametrize("output", UNWRITABLE)
def test_an_output_folder_that_cannot_be_made_fails_before_any_work(command, output, demo_maps, tmp_path,
                                                                     no_model_loading, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("keep me\n")
    args = (["map", "--model", "demo", "--probe", "arith"] if command == "map"
            else ["compare", str(demo_maps["facts"] / "report.json"), str(demo_maps["arith"] / "report.json")])
    rc, stdout, stderr = cli([*args, "-o", output])
    assert rc == 2, stdout + stderr
    line = one_error_line(stderr)
    assert line.startswith(f"error: --output: cannot write to {output}: "), line
    assert not os.path.lexists(output)
    assert (tmp_path / "afile").read_text() == "keep me\n" and sorted(os.listdir(tmp_path)) == ["afile"]


def test_calibrate_checks_the_lens_files_folder_before_loading(tmp_path, no_model_loading):
    (tmp_path / "afile").write_text("")
    lens = tmp_path / "afile" / "sub" / "lens.safetensors"
    rc, stdout, stderr = cli(["calibrate", "--model", "demo", "-o", str(lens)])
    assert rc == 2
    assert one_error_line(stderr).startswith(f"error: --output: cannot write to {lens.parent}: ")


def test_a_run_that_fails_removes_the_folders_it_made(tmp_path):
    """The check creates the folder; a run stopped by bad input before writing leaves nothing."""
    output = tmp_path / "new" / "deep" / "results"
    rc, stdout, stderr = cli(["map", "--model", str(tmp_path / "no-such-model"), "-o", str(output)])
    assert rc == 2 and "no-such-model" in one_error_line(stderr)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ 7: one run at a time


def test_a_folder_held_by_another_run_is_refused_before_loading(demo_maps, tmp_path, no_model_loading):
    folder = copy_of(demo_maps["facts"], tmp_path / "results")
    before = {name: (folder / name).read_bytes() for name in visible(folder)}
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom neuro_scan.report import output_session, prepare_output_dir\n"
         "with output_session('map'):\n    prepare_output_dir(sys.argv[1]); print('held', flush=True); sys.stdin.read()",
         str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        rc, stdout, stderr = cli(["map", "--model", "demo", "--probe", "arith", "-o", str(folder)])
        assert rc == 2
        line = one_error_line(stderr)
        assert f"error: --output: {folder} is being written by neuro-scan map (pid {holder.pid}, started " in line
        assert line.endswith("; wait for it or choose another folder")
        assert {name: (folder / name).read_bytes() for name in visible(folder)} == before
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0 and leftovers(folder) == set()
    # the holder is gone: the folder is free again
    rc, stdout, stderr = cli(["compare", str(demo_maps["facts"] / "report.json"), str(demo_maps["arith"] / "report.json"),
                              "-o", str(folder)])
    assert rc == 0, stderr
    assert visible(folder) == MAP_FILES | {"comparison.json", "comparison.html"}


@pytest.mark.slow
def test_two_cli_runs_into_one_folder(demo_maps, tmp_path):
    folder = tmp_path / "results"
    first = start(["map", "--model", "demo", "--probe", "arith", "-o", str(folder)], tmp_path)
    wait_for(lambda: lock_holder_pid(folder) == first.pid or first.poll() is not None, "the first run's lock")
    second = start(["map", "--model", "demo", "--probe", "facts", "-o", str(folder)], tmp_path)
    _, second_err = second.communicate(timeout=120)
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert second.returncode == 2, second_err
    assert f"is being written by neuro-scan map (pid {first.pid}, started" in one_error_line(second_err)
    arith, facts = Run(demo_maps["arith"], MAP_FILES), Run(demo_maps["facts"], MAP_FILES)
    found = one_run(folder, [arith, facts])
    assert found.marker == arith.marker and found.names == MAP_FILES
    assert leftovers(folder) == set()


# --------------------------------------------------------------------- 7: killed at any moment


@pytest.fixture(scope="module", params=["map", "ablate"])
def killed_writes(request, demo_maps, tmp_path_factory):
    """The writer of `map` (or `ablate`) for the arith probe, into a folder holding the facts map,
    killed before each of its file-system calls in turn -> (work folder, steps, old run, new run)."""
    work = tmp_path_factory.mktemp(f"killed_{request.param}")
    proc = subprocess.run([sys.executable, str(HERE / "interrupted_writer.py"), str(demo_maps["facts"]), str(work),
                           request.param, str(demo_maps["arith"] / "report.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    complete = json.loads(proc.stdout)["complete"]
    old = Run(demo_maps["facts"], MAP_FILES)
    new = Run(work / str(complete), MAP_FILES if request.param == "map" else ABLATE_FILES)
    return work, complete, old, new


@pytest.mark.slow
def test_a_writer_killed_at_any_step_leaves_one_complete_set(killed_writes):
    work, complete, old, new = killed_writes
    runs = [old, new]
    seen = {"old": 0, "new": 0, "committed, not yet applied": 0}
    for k in range(1, complete + 1):
        folder = work / str(k)
        if (folder / COMMIT_FILE).exists():
            seen["committed, not yet applied"] += 1
        else:  # no record: what a reader sees is already one whole set
            assert old.is_complete_in(folder, runs) or new.is_complete_in(folder, runs), (k, sorted(os.listdir(folder)))
        prepare_output_dir(folder)  # what the next run does first on taking the folder
        if old.is_complete_in(folder, runs):
            seen["old"] += 1
        else:
            assert new.is_complete_in(folder, runs), (k, sorted(os.listdir(folder)))
            seen["new"] += 1
        assert leftovers(folder) == set(), (k, leftovers(folder))
        manifest = json.loads((folder / MANIFEST_FILE).read_text())["files"]
        assert set(manifest) == visible(folder), k
    assert all(seen.values()), seen  # every phase was hit: before, during and after the commit
    assert complete > 20


@pytest.mark.slow
def test_each_file_is_fsynced_before_its_rename_and_the_folder_after(killed_writes):
    work, complete, _, new = killed_writes
    trace = json.loads((work / "trace.json").read_text())
    folder = str(work / str(complete))
    renames = [i for i, call in enumerate(trace) if call[0] == "replace"]
    assert {Path(trace[i][2]).name for i in renames} >= new.names - {"plotly.min.js"} | {MANIFEST_FILE, COMMIT_FILE}
    for i in renames:
        temp = trace[i][1]
        assert ["fsync", temp] in trace[:i], f"{temp} renamed before it was fsynced"
    commit = next(i for i in renames if Path(trace[i][2]).name == COMMIT_FILE)
    first_applied = next(i for i in renames if i > commit)
    assert ["fsync", folder] in trace[commit:first_applied], "the commit record was not made durable before use"
    removal = trace.index(["unlink", f"{folder}/{COMMIT_FILE}"])
    assert ["fsync", folder] in trace[renames[-1]:removal], "the renames were not made durable before the record went"


@pytest.mark.slow
def test_killed_cli_runs_leave_one_complete_set_and_the_next_run_cleans_up(demo_maps, tmp_path):
    folder = copy_of(demo_maps["facts"], tmp_path / "results")
    old = Run(demo_maps["facts"], MAP_FILES)
    new = Run(demo_maps["arith"], MAP_FILES)
    for moment in ("validated", "scanning", "writing"):
        run = start(["map", "--model", "demo", "--probe", "arith", "-o", str(folder)], tmp_path)
        wait_for(lambda: lock_holder_pid(folder) == run.pid or run.poll() is not None, "the run's lock")  # noqa: B023
        if moment == "scanning":
            time.sleep(2)  # inside the model load or the scan (the demo map takes several seconds)
        elif moment == "writing":
            wait_for(lambda: run.poll() is not None or any(  # noqa: B023
                n.startswith(TEMP_PREFIX) or n == COMMIT_FILE for n in os.listdir(folder)), "the writing")
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=60)
        if not (folder / COMMIT_FILE).exists():  # else the next run completes the commit first
            assert old.is_complete_in(folder, [old, new]) or one_run(folder, [new]), (moment, os.listdir(folder))
    rc, stdout, stderr = cli(["map", "--model", "demo", "--probe", "facts", "-o", str(folder)])
    assert rc == 0, stderr
    found = one_run(folder, [old, new])
    assert found.marker == old.marker and found.names == MAP_FILES
    assert leftovers(folder) == set()


# ----------------------------------------------------------------- 7: runs that do not belong together


def test_another_probe_removes_the_earlier_runs_files_and_keeps_the_users(demo_maps, tmp_path):
    folder = copy_of(demo_maps["facts"], tmp_path / "results")
    (folder / "notes.txt").write_text("mine\n")
    rc, stdout, stderr = cli(["ablate", "--model", "demo", "--probe", "arith", "-o", str(folder)])
    assert rc == 0, stderr
    assert visible(folder) == ABLATE_FILES | {"notes.txt"} and (folder / "notes.txt").read_text() == "mine\n"
    removed = [line for line in stdout.splitlines() if line.startswith("removed")]
    assert removed == ["removed 6 files of an earlier run (map: model demo, probe facts, samples 24, seed 0) from "
                       f"{folder}: report.json, logit_lens.html, entropy_profile.html, block_influence.html, attention.html, "
                       "index.html"]


def test_outputs_of_the_same_run_from_other_commands_stay(demo_maps, tmp_path):
    folder = copy_of(demo_maps["arith"], tmp_path / "results")
    rc, stdout, stderr = cli(["map", "--model", "demo", "--probe", "arith", "-o", str(folder)])  # the same run again
    assert rc == 0 and "removed" not in stdout
    arith = Run(demo_maps["arith"], MAP_FILES)
    assert one_run(folder, [arith]).names == MAP_FILES
    kept = {name: (folder / name).read_bytes() for name in ("report.json", "index.html", "logit_lens.html")}
    rc, stdout, stderr = cli(["ablate", "--model", "demo", "--probe", "arith", "-o", str(folder)])
    assert rc == 0 and "removed" not in stdout
    assert visible(folder) == MAP_FILES | ABLATE_FILES
    assert {name: (folder / name).read_bytes() for name in kept} == kept
    # a comparison belongs to no single run: it removes nothing and stays
    rc, stdout, stderr = cli(["compare", str(demo_maps["facts"] / "report.json"), str(folder / "report.json"),
                              "-o", str(folder)])
    assert rc == 0 and "removed" not in stdout
    assert visible(folder) == MAP_FILES | ABLATE_FILES | {"comparison.json", "comparison.html"}


# --------------------------------------------------------------------------------- support files


def _comparison(folder: Path) -> list[Path]:
    import plotly.graph_objects as go

    return write(folder, ReportFiles({"comparison.json": {"command": "compare"}}, "comparison.json",
                                     figures={"comparison.html": go.Figure()}))


@pytest.mark.parametrize("damage", ["empty", "same size, other content"])
def test_plotly_js_is_rewritten_when_it_is_not_ours(damage, tmp_path):
    from plotly.offline import get_plotlyjs

    shipped = get_plotlyjs().encode("utf-8")
    target = tmp_path / "plotly.min.js"
    target.write_bytes(b"" if damage == "empty" else b"x" * len(shipped))
    _comparison(tmp_path)
    assert target.read_bytes() == shipped


def test_plotly_js_is_left_alone_when_it_is_ours(tmp_path):
    _comparison(tmp_path)
    before = os.stat(tmp_path / "plotly.min.js")
    _comparison(tmp_path)
    after = os.stat(tmp_path / "plotly.min.js")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


# ------------------------------------------------------------------------------------- 8: modes


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["022", "027"])
def test_files_follow_the_umask(umask, tmp_path):
    previous = os.umask(umask)
    try:
        _comparison(tmp_path / "results")
        write_lens_file(tmp_path / "lenses" / "lens.safetensors", b"lens")
    finally:
        os.umask(previous)
    files = [*(tmp_path / "results").iterdir(), tmp_path / "lenses" / "lens.safetensors"]
    assert {p.name for p in files} == {"comparison.json", "comparison.html", "plotly.min.js", MANIFEST_FILE,
                                       "lens.safetensors"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


# ------------------------------------------------------------------------------------- 9: Ctrl-C


@pytest.mark.slow
@pytest.mark.parametrize("earlier", [True, False], ids=["earlier results", "new folder"])
def test_ctrl_c_says_what_was_stopped_and_what_the_folder_holds(earlier, demo_maps, tmp_path):
    folder = copy_of(demo_maps["facts"], tmp_path / "results") if earlier else tmp_path / "results"
    before = {name: (folder / name).read_bytes() for name in visible(folder)} if earlier else None
    run = start(["map", "--model", "demo", "--probe", "arith", "-o", str(folder)], tmp_path)
    # as soon as the run holds its folder: its checks are done and it loads the model, far from writing
    wait_for(lambda: lock_holder_pid(folder) == run.pid or run.poll() is not None, "the run's lock")
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    expected = (f"interrupted: neuro-scan map stopped; the earlier results in {folder} are unchanged" if earlier
                else f"interrupted: neuro-scan map stopped; nothing was written to {folder}")
    assert lines[-1] == expected
    if earlier:
        assert {name: (folder / name).read_bytes() for name in visible(folder)} == before
        assert leftovers(folder) == set()
    else:
        assert not folder.exists()


@pytest.mark.slow
def test_ctrl_c_while_writing_takes_effect_once_the_files_are_in_place(demo_maps, tmp_path):
    """The writing is not cut short: the folder holds the run's files as far as it wrote them."""
    folder = copy_of(demo_maps["facts"], tmp_path / "results")
    run = start(["map", "--model", "demo", "--probe", "arith", "-o", str(folder)], tmp_path)
    wait_for(lambda: run.poll() is not None or any(n.startswith(TEMP_PREFIX) for n in os.listdir(folder)),
             "the writing")
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert [line for line in stderr.splitlines() if line.strip()][-1] == \
        f"interrupted: neuro-scan map stopped; {folder} holds what it had finished"
    assert one_run(folder, [Run(demo_maps["arith"], MAP_FILES)]) is not None, sorted(os.listdir(folder))
    assert leftovers(folder) == set()
