"""Kill a real report writer with SIGKILL before each of its file-system calls in turn.

Run by tests/test_output_folder.py:

    python interrupted_writer.py PRISTINE WORK WRITER REPORT

For k = 1, 2, ... a fresh copy of the folder PRISTINE is made at WORK/k, and a forked child runs
the writer (report.write of the files ``map`` or ``ablate`` makes from its report) on the report file
REPORT into it, sending itself SIGKILL just before its k-th call of os.open, os.fsync,
os.replace, os.rename, os.unlink, os.mkdir, os.rmdir, os.ftruncate or os.pwrite (nothing is
faked: the real code runs and the process really dies there). The first k the writer survives
ends the loop; WORK/k is then the uninterrupted result and WORK/trace.json its calls in order
as [call, path] pairs, failed calls included (fsync of a file descriptor names the path it was opened with). Prints
{"complete": k}.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path

CALLS = ("open", "fsync", "replace", "rename", "unlink", "mkdir", "rmdir", "ftruncate", "pwrite")


def run_writer(writer, folder: Path, report: dict, stop_at: int, trace: list) -> None:
    """In the child: count file-system calls, die at call ``stop_at``, log each call to ``trace``."""
    real = {name: getattr(os, name) for name in CALLS}
    opened: dict[int, str] = {}
    count = 0

    def guarded(name):
        def call(*args, **kwargs):
            nonlocal count
            count += 1
            if count == stop_at:
                os.kill(os.getpid(), signal.SIGKILL)
            target = opened.get(args[0], "?") if name in ("fsync", "ftruncate", "pwrite") else str(args[0])
            trace.append([name, target] if name not in ("replace", "rename") else [name, target, str(args[1])])
            result = real[name](*args, **kwargs)
            if name == "open":
                opened[result] = str(args[0])
            return result

        return call

    for name in CALLS:
        setattr(os, name, guarded(name))
    try:
        writer(folder, report)
    finally:
        for name in CALLS:
            setattr(os, name, real[name])


def main() -> None:
    pristine, work, kind, report_file = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    from neuro_scan.report import ablation, map as map_report, write

    files_of = {"map": map_report.files_of, "ablate": ablation.files_of}[kind]

    def writer(folder: Path, report: dict) -> list[Path]:
        return write(folder, files_of(report))

    report = json.loads(report_file.read_text(encoding="utf-8"))
    warm = work / "warm-up"  # imports and plotly's script are loaded before any child starts
    writer(warm, report)
    shutil.rmtree(warm)
    for k in range(1, 1000):
        folder = work / str(k)
        shutil.copytree(pristine, folder, symlinks=True)
        pid = os.fork()
        if pid == 0:
            trace: list = []
            code = 1
            try:
                run_writer(writer, folder, report, k, trace)
                (work / "trace.json").write_text(json.dumps(trace), encoding="utf-8")
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            print(json.dumps({"complete": k}))
            return
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            raise SystemExit(f"the writer stopped at step {k} with status {status}, not by SIGKILL")
    raise SystemExit("the writer never completed")


if __name__ == "__main__":
    main()
