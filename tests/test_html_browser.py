"""Every chart page and the dashboard render in a real headless Chromium, offline, without
console errors. Screenshots are saved to test-artifacts/ for a person to look at."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neuro_scan.cli import app

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no network: a page that needs a CDN stays blank
    "--enable-logging=stderr", "--v=0", "--virtual-time-budget=8000",
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (see .ci/run)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def render(page: Path, profile: Path, screenshot: Path | None = None) -> tuple[str, str]:
    """(DOM after scripts ran, browser log) for a local page."""
    base = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1300,2600"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    if screenshot is not None:
        subprocess.run([*base, f"--screenshot={screenshot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    return dom.stdout, dom.stderr


@pytest.fixture(scope="module")
def demo_map(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("map")
    result = CliRunner().invoke(app, ["map", "--model", "demo", "--probe", "arith", "--output", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_map_pages_are_offline(demo_map):
    for page in demo_map.glob("*.html"):
        text = page.read_text()
        assert not re.search(r"<script[^>]+src=\"https?://", text), page.name
        assert '<script src="plotly.min.js"' in text or 'src="plotly.min.js"' in text, page.name


@pytest.mark.parametrize("page", ["index.html", "ablation.html", "logit_lens.html", "entropy_profile.html", "attention.html",
                                  "accuracy.html", "block_influence.html"])
def test_page_renders_in_chromium(demo_map, tmp_path, page):
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / f"map-{page.replace('.html', '.png')}"
    dom, log = render(demo_map / page, tmp_path / "profile", screenshot)
    plots = dom.count('class="main-svg"')
    expected = 4 if page == "index.html" else 1
    assert plots >= expected, f"{page}: {plots} rendered plotly SVGs"
    console = [line for line in log.splitlines() if "CONSOLE" in line]
    assert not console, console
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
    assert re.search(r"<title>[^<]*demo[^<]*</title>", dom), f"{page} has no title"
    assert 'id="no-plotly"' not in dom  # the script ran: the missing-script message is gone


def test_lens_rows_show_prompt_and_answer(demo_map, tmp_path):
    dom, _ = render(demo_map / "logit_lens.html", tmp_path / "profile")
    report = json.loads((demo_map / "report.json").read_text(encoding="utf-8"))
    first = report["samples"][0]
    assert html.escape(f"1. {first['prompt']} → '{first['answer']}'", quote=False) in dom  # the row's tick label, drawn


def test_dashboard_without_its_script_says_so(demo_map, tmp_path):
    alone = tmp_path / "copied"
    alone.mkdir()
    shutil.copy(demo_map / "index.html", alone / "index.html")  # copied without plotly.min.js
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "map-index-without-plotly.png"
    dom, _ = render(alone / "index.html", tmp_path / "profile", screenshot)
    assert 'id="no-plotly"' in dom and "plotly.min.js</code> in the same folder" in dom
    assert dom.count('class="main-svg"') == 0


@pytest.fixture(scope="module")
def unsolved_map(tmp_path_factory) -> Path:
    """The demo on its own facts with wrong answers: a probe it cannot do."""
    from neuro_scan.probes import load_builtin

    out = tmp_path_factory.mktemp("unsolved")
    colours = [" red.", " blue.", " green.", " yellow.", " purple.", " orange.", " white.", " black."]
    samples = [{"prompt": s.prompt, "answer": colours[(colours.index(s.answer) + 3) % 8]}
               for s in load_builtin("facts").samples[:12]]
    probe = out / "wrong.json"
    probe.write_text(json.dumps({"name": "wrong-facts", "samples": samples}), encoding="utf-8")
    result = CliRunner().invoke(app, ["map", "--model", "demo", "--custom-probe", str(probe), "--output", str(out / "map")])
    assert result.exit_code == 0, result.output
    return out / "map"


def test_dashboard_shows_the_warnings_on_top(unsolved_map, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "map-warnings-index.png"
    dom, log = render(unsolved_map / "index.html", tmp_path / "profile", screenshot)
    report = json.loads((unsolved_map / "report.json").read_text(encoding="utf-8"))
    assert report["warnings"]
    box = dom.index("Read this report with care")
    assert box < dom.index('class="numbers"') and box < dom.index('class="main-svg"')
    for warning in report["warnings"]:
        assert html.escape(warning, quote=False) in dom
    assert "top layers (significant)" in dom
    assert not [line for line in log.splitlines() if "CONSOLE" in line]


def test_logit_and_tuned_lens_side_by_side(tmp_path_factory, tmp_path):
    out = tmp_path_factory.mktemp("tuned")
    runner = CliRunner()
    lens_file = out / "lens.safetensors"
    result = runner.invoke(app, ["calibrate", "--model", "demo", "--steps", "2", "--heldout-tokens", "256",
                                 "--output", str(lens_file)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["map", "--model", "demo", "--probe", "arith", "--max-samples", "12", "--tuned-lens",
                                 str(lens_file), "--output", str(out / "map")])
    assert result.exit_code == 0, result.output
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "map-lens-comparison.png"
    dom, log = render(out / "map" / "lens_comparison.html", tmp_path / "profile", screenshot)
    assert dom.count('class="main-svg"') >= 1 and "logit lens: p(whole answer)" in dom
    assert "tuned lens: p(whole answer)" in dom
    assert not [line for line in log.splitlines() if "CONSOLE" in line]
    assert "Logit lens and tuned lens" in (out / "map" / "index.html").read_text(encoding="utf-8")
