"""The web page (`edensplit ui`) in a real headless Chromium, against real servers: a 2-second clip uploaded, 2x
chosen, progress seen moving, the result downloaded and its frames equal to the command line's for the same
options; a job cancelled mid-way leaves no upload and no partial file behind after UI_UPLOAD_TTL_S. Also the
page's API refusals (size and count of uploads, Host, Origin, key, bad requests) in the error envelope.

Chromium is Debian's `chromium` package (or the binary EDENSPLIT_CHROMIUM names), driven by playwright through
`executable_path`: nothing is downloaded. Without one the tests fail, saying how to install it.
`EDENSPLIT_UPDATE_SCREENSHOTS=1` also writes the screenshots the README shows (docs/ui-running.png, docs/ui-done.png),
with the page's servers running the tiny EDEN (MODEL_PATH=tiny) so that they show an interpolation.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from edensplit.servers.launch import ServerProcess
from edensplit.settings import UiSettings
from edensplit.ui.app import create_ui_app
from edensplit.video.reading import read_frames
from edensplit.video.sample import make_sample_clip
from tests.conftest import ROOT, run_cli, wait_until

TTL_S = 2.0
MAX_UPLOAD_MB = 1
MAX_UPLOADS = 4
INSTALL = ("install Debian's Chromium (`apt-get update && apt-get install -y chromium`; the README's test command "
           "does), or set EDENSPLIT_CHROMIUM to a Chrome/Chromium binary (on other systems, e.g. the one "
           "`playwright install chromium` fetches)")
DOCS = ROOT / "docs"


def chromium() -> str:
    """The Chromium binary to drive; the test fails, saying how to install one, when there is none."""
    named = os.environ.get("EDENSPLIT_CHROMIUM")
    found = named if named and Path(named).is_file() else next(
        (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None)
    if found is None:
        pytest.fail(f"no Chromium found for the web page's test: {INSTALL}", pytrace=False)
    return found


class UiProcess(ServerProcess):
    """`python -m edensplit ui --port P` (the command a person runs), ready once its /health/ready answers."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "edensplit", "ui", "--host", self.host, "--port", str(self.port)]


@pytest.fixture(scope="module")
def ui_tmp(tmp_path_factory) -> Path:
    """The UI process's TMPDIR: its private folder is made in there, so the tests can see what is left."""
    return tmp_path_factory.mktemp("ui-tmp")


UPDATING = os.environ.get("EDENSPLIT_UPDATE_SCREENSHOTS") == "1"


@pytest.fixture(scope="module")
def page_servers(request, workdir) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """The suite's servers (random weights of a small config); the tiny EDEN (MODEL_PATH=tiny) when the docs'
    screenshots are being made, so that they show an interpolation."""
    if not UPDATING:
        yield request.getfixturevalue("servers")
        return
    env = {"MODEL_PATH": "tiny", "DEVICE": "cpu"}
    with ServerProcess("edensplit.cloud:app", env=env, log_path=workdir / "tiny-cloud.log") as cloud, \
            ServerProcess("edensplit.edge:app", env=env, log_path=workdir / "tiny-edge.log") as edge:
        yield cloud, edge


@pytest.fixture(scope="module")
def ui(page_servers, ui_tmp, workdir) -> Iterator[UiProcess]:
    cloud, edge = page_servers
    env = {"CLOUD_SERVER_URL": cloud.url, "EDGE_SERVER_URL": edge.url, "TMPDIR": str(ui_tmp),
           "UI_UPLOAD_TTL_S": str(TTL_S), "UI_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB), "UI_MAX_UPLOADS": str(MAX_UPLOADS)}
    with UiProcess("edensplit ui", env=env, cwd=ROOT, log_path=workdir / "ui.log") as process:
        yield process


@pytest.fixture(scope="module")
def two_seconds(workdir) -> Path:
    """A 2-second clip: 48 frames at 24 fps, lossless."""
    return make_sample_clip(workdir / "two-seconds.mkv", n_frames=48, width=96, height=72, rate=Fraction(24))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'", pytrace=False)
    path = chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, headless=True,
                                              args=["--no-sandbox", "--disable-background-networking"])
        yield launched
        launched.close()


def left_behind(ui_tmp: Path) -> list[Path]:
    """Every file under the UI's temporary folder (its private folder's uploads and jobs)."""
    return [p for p in ui_tmp.rglob("*") if p.is_file()]


def screenshot(page: Any, tmp_path: Path, name: str) -> None:
    """A screenshot into the test's folder, and into docs/ with EDENSPLIT_UPDATE_SCREENSHOTS=1."""
    shot = page.screenshot(path=str(tmp_path / name), full_page=True)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    if UPDATING:
        (DOCS / name).write_bytes(shot)


def test_a_clip_interpolated_in_the_browser_equals_the_command_line(ui, page_servers, two_seconds, browser, ui_tmp,
                                                                     tmp_path):
    cloud, edge = page_servers
    page = browser.new_page(accept_downloads=True, viewport={"width": 900, "height": 720})
    page.goto(ui.url + "/")
    page.set_input_files("input[type=file]", str(two_seconds))
    page.select_option("select", "2")
    page.click("button:text-is('Interpolate')")
    seen: list[float] = []
    shot = False
    deadline = time.monotonic() + 120
    while page.query_selector("a[download]") is None:
        assert time.monotonic() < deadline, f"no result within 120 s: {page.inner_text('#figures')}"
        value = page.eval_on_selector("progress", "p => p.hasAttribute('value') ? p.value : null")
        if value is not None and (not seen or seen[-1] != value):
            seen.append(value)
        if not shot and value and page.is_visible("#preview") and page.eval_on_selector(
                "#preview", "img => img.complete && img.naturalWidth > 0"):
            screenshot(page, tmp_path, "ui-running.png")
            shot = True
        time.sleep(0.03)
    with page.expect_download() as download:  # first: the page stopped polling, UI_UPLOAD_TTL_S runs from here
        page.click("a[download]")
    if UPDATING:  # a fast machine may finish before a preview shows
        assert shot, "no screenshot mid-job: the job ended before a preview showed"
    assert len(set(seen)) >= 2 and seen == sorted(seen), seen  # progress moved, never back
    figures = page.inner_text("#figures")
    assert figures.startswith("95/95 frames, ") and figures.endswith("(done)"), figures
    assert page.eval_on_selector("progress", "p => [p.value, p.max]") == [95, 95]
    got = tmp_path / "downloaded.mp4"
    download.value.save_as(got)
    assert download.value.suggested_filename == "interpolated.mp4"
    screenshot(page, tmp_path, "ui-done.png")
    page.close()

    out = tmp_path / "cli"  # the command line, same options: the clip, 2x, these servers
    run_cli("--video_path", str(two_seconds), "--output_dir", str(out), "--multi", "2", "--cloud_url", cloud.url,
            "--edge_url", edge.url, "--no_progress", env={})
    ours, theirs = list(read_frames(got)), list(read_frames(out / "interpolated.mp4"))
    assert len(ours) == len(theirs) == 95
    for k, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert np.array_equal(a, b), f"frame {k} differs from the command line's"
    assert got.read_bytes() == (out / "interpolated.mp4").read_bytes()  # the same file, byte for byte
    # Downloaded: the upload and the job's files are gone.
    wait_until(lambda: not left_behind(ui_tmp), 5, f"files left after the download: {left_behind(ui_tmp)}")


def test_a_cancelled_job_leaves_nothing_behind(ui, two_seconds, browser, ui_tmp):
    page = browser.new_page()
    page.goto(ui.url + "/")
    page.set_input_files("input[type=file]", str(two_seconds))
    page.select_option("select", "8")  # 329 frames to make: long enough to be cancelled mid-way
    page.click("button:text-is('Interpolate')")
    wait_until(lambda: (page.eval_on_selector("progress", "p => p.hasAttribute('value') ? p.value : 0") or 0) > 4,
               60, "progress")
    assert left_behind(ui_tmp), "the job's upload and partial files should exist while it runs"
    page.click("button:text-is('Cancel')")
    wait_until(lambda: "(cancelled)" in page.inner_text("#figures"), 30, "the page saying cancelled")
    done = page.eval_on_selector("progress", "p => p.value")
    assert 4 < done < 8 * 47 + 1 and page.query_selector("a[download]") is None
    wait_until(lambda: not left_behind(ui_tmp), TTL_S + 1.0,  # UI_UPLOAD_TTL_S and the sweep after it
               "no upload or partial file left after the TTL")
    assert left_behind(ui_tmp) == []
    page.close()


def envelope_error(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert body["status"] == "error" and body["data"] is None, body
    return response.status_code, body["error"]["code"]


def test_the_page_refuses_in_the_servers_envelope(ui, ui_tmp, two_seconds):
    with httpx.Client(base_url=ui.url, timeout=30) as http:
        assert envelope_error(http.get("/", headers={"Host": "evil.example"})) == (400, "INVALID_HOST")
        post = http.post("/api/uploads", params={"name": "a.mkv"}, content=b"x",
                         headers={"Origin": "http://evil.example"})
        assert envelope_error(post) == (403, "FORBIDDEN_ORIGIN")
        big = http.post("/api/uploads", params={"name": "big.mkv"}, content=b"\0" * (MAX_UPLOAD_MB * 2**20 + 1))
        assert envelope_error(big) == (413, "PAYLOAD_TOO_LARGE")
        page = {"X-Page-ID": "page-1"}
        bad = http.post("/api/jobs", json={"uploads": ["nope"], "multi": 3}, headers=page)
        assert envelope_error(bad) == (422, "INVALID_PARAMETER")
        assert envelope_error(http.post("/api/jobs", json={"uploads": ["nope"]}, headers=page)) == (404, "NOT_FOUND")
        assert envelope_error(http.post("/api/jobs", content=b"{", headers=page)) == (422, "INVALID_REQUEST")
        assert envelope_error(http.get("/api/jobs/nope")) == (404, "NOT_FOUND")
        # One job at a time per page.
        video = http.post("/api/uploads", params={"name": "clip.mkv"}, content=two_seconds.read_bytes())
        first = http.post("/api/jobs", json={"uploads": [video.json()["data"]["upload_id"]], "multi": 8},
                          headers=page)
        assert first.status_code == 200 and first.json()["data"]["state"] == "running", first.text
        again = http.post("/api/uploads", params={"name": "clip.mkv"}, content=two_seconds.read_bytes())
        second = http.post("/api/jobs", json={"uploads": [again.json()["data"]["upload_id"]], "multi": 2},
                           headers=page)
        assert envelope_error(second) == (409, "JOB_RUNNING") and "running a job" in second.text
        other = http.post("/api/jobs", json={"uploads": [again.json()["data"]["upload_id"]], "multi": 2},
                          headers={"X-Page-ID": "page-2"})  # another page: its own job, its own folder
        assert other.status_code == 200, other.text
        for started in (first, other):
            job = started.json()["data"]["id"]
            assert http.post(f"/api/jobs/{job}/cancel").json()["data"]["state"] in ("cancelled", "done")
        wait_until(lambda: not left_behind(ui_tmp), TTL_S + 5, "the cancelled jobs' files")
        # Count: UI_MAX_UPLOADS kept at once; the unused ones expire after UI_UPLOAD_TTL_S.
        kept = [http.post("/api/uploads", params={"name": f"{k}.png"}, content=b"png") for k in range(MAX_UPLOADS)]
        assert [r.status_code for r in kept] == [200] * MAX_UPLOADS
        more = http.post("/api/uploads", params={"name": "more.png"}, content=b"png")
        assert envelope_error(more) == (503, "OVERLOADED")
        wait_until(lambda: not left_behind(ui_tmp), TTL_S + 5, "unused uploads expiring")
        assert http.post("/api/uploads", params={"name": "again.png"}, content=b"png").status_code == 200


def test_with_a_key_the_page_api_asks_for_it():
    app = create_ui_app(UiSettings(edensplit_api_key="sesame"))
    try:
        client = TestClient(app)
        assert client.get("/").status_code == 200  # the page holds no data
        assert client.get("/api/config").json()["data"]["keyed"] is True
        refused = client.post("/api/uploads", params={"name": "a.png"}, content=b"png")
        assert envelope_error(refused) == (401, "UNAUTHORIZED")
        taken = client.post("/api/uploads", params={"name": "a.png"}, content=b"png",
                            headers={"Authorization": "Bearer sesame"})
        assert taken.status_code == 200 and taken.json()["data"]["bytes"] == 3
    finally:
        app.state.jobs.close()


def test_local_without_a_model_named_runs_what_the_demo_runs(no_tiny, tmp_path, monkeypatch, capsys):
    from edensplit.commands.ui import trying_out

    for name in ("MODEL_PATH", "EDEN_RANDOM_WEIGHTS", "EDEN_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    options = trying_out(tmp_path)  # no tiny EDEN in this copy: random weights of a small config, said
    assert options == ["--random_weights", "--config", str(tmp_path / "demo_eden.yaml")]
    assert "RANDOM weights" in capsys.readouterr().out
    monkeypatch.setenv("MODEL_PATH", "hf://zhZ524/EDEN/eden.pt")
    assert trying_out(tmp_path) == []  # MODEL_PATH: the jobs read it themselves
