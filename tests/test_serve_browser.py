"""The page in a real browser: Debian's Chromium driven by Selenium through Debian's
chromium-driver, with no network (a page that needed a CDN would stay blank). Start the demo map
from the form, see its bars while it runs, open the finished dashboard, compare two reports; no
console errors. Screenshots go to test-artifacts/ for a person to look at."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'neuro-scan[serve]'")

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra)")

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from serve_process import Server

ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"
WAIT_SECONDS = 600  # the longest wait for the page to show something (a job on a busy 2-core machine)


def programs() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium and chromium-driver (see .ci/run)")
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    binary, driver = programs()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,1700", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: no driver downloads
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    yield chrome
    chrome.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    done = subprocess.run([sys.executable, "-m", "neuro_scan.cli", "ablate", "--model", "demo", "--probe", "arith",
                           "--output", str(results / "earlier")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    running = Server(results)
    yield running
    running.stop()


def wait(chrome, condition, what: str):
    return WebDriverWait(chrome, WAIT_SECONDS, poll_frequency=0.2).until(lambda _driver: condition(), message=what)


def js(chrome, script: str):
    return chrome.execute_script(f"return {script}")


def state(chrome) -> str:
    return js(chrome, "document.getElementById('job-state').textContent")


def dashboard_drawn(chrome, plots: int) -> bool:
    """The job's iframe shows its dashboard with ``plots`` Plotly charts drawn."""
    frame = chrome.find_element(By.ID, "job-frame")
    if not frame.is_displayed():
        return False
    chrome.switch_to.frame(frame)
    try:
        return len(chrome.find_elements(By.CSS_SELECTOR, "svg.main-svg")) >= plots
    finally:
        chrome.switch_to.default_content()


def test_demo_map_from_the_form_fills_in_then_compares(browser, server):
    ARTIFACTS.mkdir(exist_ok=True)
    browser.get(server.url + "#new")
    wait(browser, lambda: len(Select(browser.find_element(By.ID, "scan-command")).options) > 1, "the form's commands")
    Select(browser.find_element(By.ID, "scan-command")).select_by_value("map")
    model = browser.find_element(By.ID, "scan-model")
    model.clear()
    model.send_keys("demo")
    Select(browser.find_element(By.ID, "scan-probe")).select_by_value("arith")
    browser.find_element(By.CSS_SELECTOR, "#view-new details summary").click()
    batch = browser.find_element(By.CSS_SELECTOR, "#scan-options input[name=batch_size]")
    batch.clear()
    batch.send_keys("4")
    browser.find_element(By.ID, "scan-start").click()
    wait(browser, lambda: js(browser, "location.hash").startswith("#job/"), "the job's page")
    job_id = js(browser, "location.hash").split("/", 1)[1]

    # the bars appear while the job runs (the ablation's results arrive before the job ends)
    seen_running = []
    def bars_while_running() -> bool:
        points = js(browser, "(document.getElementById('chart-ablation') || {dataset: {}}).dataset.points")
        now = state(browser)
        if points and now == "running":
            seen_running.append(int(points))
            return True
        # "" while the job's page asks for the job
        assert now not in ("finished", "failed", "interrupted", "cancelled"), f"the job ended ({now}) before any bar was seen"
        return False
    wait(browser, bars_while_running, "ablation bars while the job runs")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#chart-ablation g.point")) == seen_running[-1] >= 1
    assert js(browser, "document.getElementById('job-log').children.length") >= 3
    browser.save_screenshot(str(ARTIFACTS / "serve-mid-scan.png"))

    wait(browser, lambda: state(browser) in ("finished", "failed", "interrupted"), "the job's end")
    assert state(browser) == "finished", js(browser, "document.getElementById('job-message').textContent")
    assert js(browser, "document.getElementById('chart-ablation').dataset.points") == "4"
    wait(browser, lambda: dashboard_drawn(browser, 4), "the finished dashboard in the page")
    assert browser.find_element(By.ID, "job-frame").get_attribute("src").endswith(f"/files/jobs/{job_id}/index.html")
    assert not browser.find_element(By.ID, "job-cancel").is_displayed()
    browser.save_screenshot(str(ARTIFACTS / "serve-finished.png"))

    # a reload replays the job from its events
    browser.refresh()
    wait(browser, lambda: state(browser) == "finished" and dashboard_drawn(browser, 4), "the job after a reload")
    assert js(browser, "document.getElementById('chart-ablation').dataset.points") == "4"

    # the report list has the job's report and the earlier one: compare them
    browser.get(server.url + "#reports")
    wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#report-table tbody tr")) >= 2, "the report list")
    for path in (f"jobs/{job_id}/report.json", "earlier/ablation.json"):
        browser.find_element(By.CSS_SELECTOR, f"#report-table input[data-path='{path}']").click()
    browser.find_element(By.ID, "compare").click()
    wait(browser, lambda: js(browser, "document.getElementById('job-title').textContent") == "compare · 2 reports"
         and state(browser) == "finished", "the comparison job")
    wait(browser, lambda: dashboard_drawn(browser, 1), "the comparison's page")
    assert browser.find_element(By.ID, "job-frame").get_attribute("src").endswith("/comparison.html")
    browser.save_screenshot(str(ARTIFACTS / "serve-compare.png"))

    # a report opens as its dashboard
    browser.get(server.url + "#reports")
    wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#report-table tbody tr")) >= 3, "the report list")
    browser.find_element(By.LINK_TEXT, "demo").click()
    wait(browser, lambda: browser.find_element(By.ID, "report-frame").get_attribute("src") or "", "a report's page")

    problems = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert not problems, problems


def test_a_bad_probe_file_is_refused_in_the_page(browser, server, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "bad", "samples": []}')
    browser.get(server.url + "#new")
    wait(browser, lambda: len(Select(browser.find_element(By.ID, "scan-command")).options) > 1, "the form")
    before = {path.name for path in (server.results / "jobs").glob("*")}
    browser.find_element(By.ID, "scan-probe-file").send_keys(str(bad))
    problem = browser.find_element(By.ID, "problem")
    wait(browser, problem.is_displayed, "the error line")
    assert problem.text == "error: probe file bad.json: field 'samples' must be a non-empty list"
    assert browser.find_element(By.ID, "scan-probe-file").get_attribute("value") == ""
    assert {path.name for path in (server.results / "jobs").glob("*")} == before


def test_an_interrupted_job_is_resumed_from_its_page(browser, server):
    """A head ablation cancelled once its journal holds some configurations: its page offers Resume,
    which continues it in its folder to the end; the page then replays its events from the first."""
    from serve_process import resume, wait_for_sigint
    from test_serve_resume import HEADS, paused_with_a_journal

    browser.get_log("browser")  # the earlier tests' entries (a refused probe upload) are theirs
    job = server.start("ablate", **HEADS)
    worker = paused_with_a_journal(server, job)
    assert server.json("POST", f"/api/jobs/{job['id']}/cancel")[0] == 200
    wait_for_sigint(worker)
    resume(worker)
    assert server.finish(job["id"])[-1]["state"] == "interrupted"
    browser.get(server.url + f"#job/{job['id']}")
    button = browser.find_element(By.ID, "job-resume")
    wait(browser, lambda: state(browser) == "interrupted" and button.is_displayed(), "the Resume button")
    button.click()
    wait(browser, lambda: state(browser) in ("queued", "running"), "the resumed job")
    assert not button.is_displayed()
    wait(browser, lambda: state(browser) in ("finished", "failed", "interrupted"), "the resumed job's end")
    assert state(browser) == "finished", js(browser, "document.getElementById('job-message').textContent")
    wait(browser, lambda: dashboard_drawn(browser, 1), "the resumed job's page")
    assert not browser.find_element(By.ID, "job-progress").is_displayed()
    log = js(browser, "document.getElementById('job-log').textContent")
    assert "resumed: queued again" in log and "configurations already scored are not run again" in log
    assert not button.is_displayed()
    browser.save_screenshot(str(ARTIFACTS / "serve-resumed.png"))
    problems = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert not problems, problems
