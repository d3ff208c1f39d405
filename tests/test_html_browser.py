"""Every chart page and the dashboard render in a real headless Chromium, offline, without
console errors. Screenshots are saved to test-artifacts/ for a person to look at."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neuro_scan.cli import app

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


@pytest.mark.parametrize("page", ["index.html", "ablation.html", "logit_lens.html", "entropy_profile.html", "attention.html"])
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
