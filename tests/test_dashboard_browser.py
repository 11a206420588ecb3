"""End to end in a real browser: trials upload their figures, ``hpo dashboard`` serves them.

Headless Chromium from Debian's ``chromium`` package (``.ci/run`` installs it), driven by
Playwright for Python with ``executable_path``: no browser is downloaded.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from hpo.storage.resilient import open_storage
from hpo.workers import run_worker

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _require_browser():
    missing = None
    if not Path(CHROMIUM).exists():
        missing = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "playwright is not installed (pip install -e '.[test]')"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing}; CI=true requires the browser test to run")
        pytest.skip(missing)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_dashboard(args, cwd, env=None):
    hpo = shutil.which("hpo", path=str(Path(sys.executable).parent)) or "hpo"
    proc = subprocess.Popen([hpo, "dashboard", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"})
    lines = []
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("dashboard: "):
            return proc, line.split()[1], lines
    proc.kill()
    pytest.fail("hpo dashboard printed no URL:\n" + "".join(lines))


def _wait_http(url: str) -> None:
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def test_dashboard_shows_the_study_and_a_trial_figure(small_spec, tmp_path, monkeypatch):
    _require_browser()
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("HPO_ARTIFACTS", str(tmp_path / "artifacts"))
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = small_spec("name='browser-e2e'")
    run_worker(spec, url, trials=2)

    # each trial uploaded its figure to the study's artifact store
    storage = open_storage(url)
    study = optuna.load_study(study_name="browser-e2e", storage=storage)
    metas = [optuna.artifacts.get_all_artifact_meta(t, storage=storage) for t in study.trials]
    assert [[m.mimetype for m in ms] for ms in metas] == [["image/png"], ["image/png"]]
    artifact_id = metas[0][0].artifact_id
    assert (tmp_path / "artifacts" / artifact_id).read_bytes().startswith(b"\x89PNG")

    port = _free_port()
    proc, study_url, lines = _start_dashboard(["--study", "browser-e2e", "--storage", url, "--port", str(port)], tmp_path)
    try:
        assert study_url.startswith(f"http://127.0.0.1:{port}/dashboard/studies/")
        assert not any("secret" in line for line in lines)
        _wait_http(f"http://127.0.0.1:{port}/dashboard/")
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
                viewport={"width": 1400, "height": 1000})
            try:
                page = ctx.new_page()
                page.goto(f"http://127.0.0.1:{port}/dashboard/")
                page.get_by_text("browser-e2e").first.wait_for(timeout=30_000)
                page.goto(study_url + "/trials")
                page.get_by_text("2 Trials").wait_for(timeout=30_000)
                img = page.locator(f"img[src*='{artifact_id}']")
                img.wait_for(timeout=30_000)
                img.scroll_into_view_if_needed()
                page.wait_for_function("(el) => el.complete && el.naturalWidth > 0", arg=img.element_handle(), timeout=30_000)
                assert img.evaluate("(el) => el.naturalWidth") == 720  # the uploaded PNG, decoded
                page.screenshot(path=str(tmp_path / "dashboard.png"))
            finally:
                ctx.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
