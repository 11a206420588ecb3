"""End to end in a real browser: trials upload their figures, ``hpo dashboard`` serves them.

Headless Chromium from Debian's ``chromium`` package (``.ci/run`` installs it), driven by
Playwright for Python with ``executable_path``: no browser is downloaded.
"""

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path

import optuna
import pytest

from hpo.storage.artifacts.stores import artifact_store
from hpo.storage.database.resilient import open_storage
from hpo.search.workers import run_worker

from db_servers import free_port, study_database

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
            missing = "playwright is not installed (pip install '.[test]')"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing}; CI=true requires the browser test to run")
        pytest.skip(missing)




def _start_dashboard(args, cwd, env=None):
    hpo = shutil.which("hpo", path=str(Path(sys.executable).parent)) or "hpo"
    proc = subprocess.Popen([hpo, "dashboard", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"})
    lines = _read_url(proc)
    return proc, lines[-1].split()[1], lines


def _read_url(proc):
    """The dashboard's output up to its "dashboard: URL" line (fails the test if none comes)."""
    lines = []
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("dashboard: "):
            return lines
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


def _live(study, number):
    """A ``optuna.Trial`` handle on a finished trial: what optuna_dashboard.get_note takes."""
    return optuna.Trial(study, study.trials[number]._trial_id)


def _shots(tmp_path: Path) -> Path:
    """Where the screenshots go: $HPO_TEST_SCREENSHOTS (CI keeps them as run artifacts), else tmp_path."""
    folder = Path(os.environ.get("HPO_TEST_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _trained_study(kind, url, small_spec, tmp_path, monkeypatch):
    """Two trials of study 'browser-e2e' in ``url``; checks what they stored and returns what the browser must find.

    On SQLite with a folder store ($HPO_ARTIFACTS); on PostgreSQL with the figures in the database.
    """
    folder = tmp_path / kind
    folder.mkdir()
    if kind == "sqlite":
        monkeypatch.setenv("HPO_ARTIFACTS", str(folder / "artifacts"))
    else:
        monkeypatch.delenv("HPO_ARTIFACTS", raising=False)
    worker_dir = folder / "worker"
    worker_dir.mkdir()
    monkeypatch.chdir(worker_dir)
    # the figures and notes do not depend on the subset's size: the smallest that trains 2 epochs in steps
    spec = small_spec("name='browser-e2e'", "data.max_train=256", "data.max_valid=128", "data.max_len=80")
    run_worker(spec, url, trials=2)

    # each trial uploaded its figures (epoch curves, steps) and its step telemetry to the artifact store
    storage = open_storage(url)
    study = optuna.load_study(study_name="browser-e2e", storage=storage)
    metas = [{m.filename: m for m in optuna.artifacts.get_all_artifact_meta(t, storage=storage)} for t in study.trials]
    assert [sorted(ms) for ms in metas] == [
        [f"trial-{n}-curves.png", f"trial-{n}-steps.npz", f"trial-{n}-steps.png"] for n in (0, 1)]
    artifact_id = metas[0]["trial-0-curves.png"].artifact_id
    steps_id = metas[0]["trial-0-steps.png"].artifact_id
    with artifact_store(study).open_reader(artifact_id) as f:
        assert f.read().startswith(b"\x89PNG")
    if kind == "sqlite":
        assert (folder / "artifacts" / artifact_id).is_file()
    else:
        assert not (worker_dir / "hpo-artifacts").exists()
    # the notes: each trial's says what happened, the study's holds the report's reading
    from optuna_dashboard import get_note

    trial_note = get_note(_live(study, 0))
    assert trial_note.startswith("**") and "grad norm peaked" in trial_note and "rates: lr_embedding" in trial_note
    study_note = get_note(study)
    assert study_note.startswith("### Reading (2 finished trials") and "Of 2 finished trials" in study_note
    assert "### Figures" in study_note and "](/artifacts/" in study_note  # links to the best trial's figures
    if kind != "sqlite":
        storage.engine.dispose()
    viewer = folder / "viewer"
    viewer.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "HPO_ARTIFACTS" or kind == "sqlite"}
    return dict(kind=kind, url=url, viewer=viewer, env=env, artifact_id=artifact_id, steps_id=steps_id)


@pytest.mark.e2e
def test_dashboard_shows_the_study_and_a_trial_figure(small_spec, tmp_path, monkeypatch):
    """One study on SQLite with a folder store ($HPO_ARTIFACTS), one on PostgreSQL with the figures
    in the database, its dashboard started from another folder with no $HPO_ARTIFACTS; one
    Chromium session visits both dashboards (a browser start costs more than a page)."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    with ExitStack() as stack:
        studies = []
        for kind in ("sqlite", "postgres"):
            url = stack.enter_context(study_database(kind, tmp_path))
            studies.append(_trained_study(kind, url, small_spec, tmp_path, monkeypatch))
        dashboards = [stack.enter_context(_dashboard(s)) for s in studies]  # both start at once
        for d in dashboards:
            d["study_url"] = d["started"]()
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
                viewport={"width": 1400, "height": 1000})
            try:
                page = ctx.new_page()
                for d in dashboards:
                    _show_in_browser(page, d, _shots(tmp_path) / d["kind"])
            finally:
                ctx.close()
    for d in dashboards:
        assert (d["viewer"] / "dashboard.png").stat().st_size > 10_000
        assert sorted(p.name for p in d["viewer"].iterdir()) == ["dashboard.png"]  # the dashboard wrote nothing there


@contextmanager
def _dashboard(study):
    """``hpo dashboard`` for ``study``, started in its viewer folder; ``started()`` waits for its URL and page."""
    port = free_port()
    hpo = shutil.which("hpo", path=str(Path(sys.executable).parent)) or "hpo"
    args = ["--study", "browser-e2e", "--storage", study["url"], "--port", str(port)]
    proc = subprocess.Popen([hpo, "dashboard", *args], cwd=study["viewer"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**study["env"], "PYTHONUNBUFFERED": "1"})

    def started():
        lines = _read_url(proc)
        study_url = lines[-1].split()[1]
        assert study_url.startswith(f"http://127.0.0.1:{port}/dashboard/studies/")
        assert not any("secret" in line for line in lines)
        _wait_http(f"http://127.0.0.1:{port}/dashboard/")
        return study_url

    try:
        yield {**study, "port": port, "started": started}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _show_in_browser(page, d, shots):
    """Chromium finds the study, its trials, both figures and the notes on dashboard ``d``."""
    shots.mkdir(parents=True, exist_ok=True)
    port, study_url, artifact_id, steps_id = d["port"], d["study_url"], d["artifact_id"], d["steps_id"]
    page.goto(f"http://127.0.0.1:{port}/dashboard/")
    page.get_by_text("browser-e2e").first.wait_for(timeout=30_000)
    page.goto(study_url + "/trials")
    page.get_by_text("2 Trials").wait_for(timeout=30_000)
    img = page.locator(f"img[src*='{artifact_id}']")
    img.wait_for(timeout=30_000)
    img.scroll_into_view_if_needed()
    page.wait_for_function("(el) => el.complete && el.naturalWidth > 0", arg=img.element_handle(), timeout=30_000)
    assert img.evaluate("(el) => el.naturalWidth") == 720  # the uploaded PNG, decoded
    steps = page.locator(f"img[src*='{steps_id}']")  # the step-level figure, on the same trial page
    steps.wait_for(timeout=30_000)
    steps.scroll_into_view_if_needed()
    page.wait_for_function("(el) => el.complete && el.naturalWidth > 0", arg=steps.element_handle(), timeout=30_000)
    assert steps.evaluate("(el) => [el.naturalWidth, el.naturalHeight]") == [720, 648]
    page.get_by_text("grad norm peaked").first.wait_for(timeout=30_000)  # trial 0's note, rendered
    page.screenshot(path=str(shots / "trial.png"))
    page.goto(study_url + "/note")  # the study's note page
    page.get_by_text("Of 2 finished trials").first.wait_for(timeout=30_000)
    page.screenshot(path=str(shots / "study-note.png"))
    # its first figure link, as the browser resolved it, fetched over HTTP: an image
    link = page.locator("a[href*='/artifacts/']").first
    link.wait_for(timeout=30_000)
    assert link.inner_text().startswith("best trial ")
    with urllib.request.urlopen(link.evaluate("(a) => a.href"), timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "image/png"
        assert r.read(8) == b"\x89PNG\r\n\x1a\n"
    page.goto(study_url + "/trials")
    page.get_by_text("2 Trials").wait_for(timeout=30_000)
    page.screenshot(path=str(d["viewer"] / "dashboard.png"))
