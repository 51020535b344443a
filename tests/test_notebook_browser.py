"""JupyterLab in a real browser: Dutch when the hub's language is Dutch, and the session warnings.

Jupyter servers of the notebook environment, opened in Debian's Chromium. With a fake Slurm end ten
minutes away: the Dutch menu bar, the "ends in 10 minutes" notification, and Slurm's save signal
(SIGUSR1 to the server) saving an open, edited file and saying so. In English: the idle warning,
gone again once there is activity (an open JupyterLab tab is itself activity, so the session API's
answer is stubbed there). Every request must stay on 127.0.0.1.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aifl_notebook.singleuser import language_environment
from playwright.sync_api import Page, Playwright, Route, expect, sync_playwright
from test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, RequestLog
from test_notebook_session import NotebookServer, notebook_server

pytestmark = pytest.mark.browser

POLL_S = 30  # the plugin asks the server every 30 s


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (./lab test installs it)")
    with sync_playwright() as p:
        yield p


def open_lab(playwright: Playwright, server: NotebookServer, path: str, log: RequestLog) -> Page:
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    context = browser.new_context(locale="en-US", viewport={"width": 1400, "height": 900})
    context.set_default_timeout(60_000)
    log.watch(context)
    page = context.new_page()
    page.goto(f"{server.url}{path}?token={server.token}")
    return page


def test_dutch_jupyterlab_warns_before_the_end_and_saves_on_slurms_signal(
        playwright: Playwright, tmp_path: Path) -> None:
    env = {"AIFL_LANG": "nl", **language_environment({"AIFL_LANG": "nl"}),
           "SLURM_JOB_END_TIME": str(int(time.time()) + 600), "AIFL_SAVE_LEAD": "600"}
    log = RequestLog()
    with notebook_server(tmp_path, env) as server:
        notes = server.home / "notes.txt"
        notes.write_text("")
        page = open_lab(playwright, server, "lab/tree/notes.txt", log)
        try:
            # Dutch menu bar (the language pack), and the 15-minute warning is due at once: 10 minutes left.
            expect(page.locator("#jp-menu-panel, .lm-MenuBar").get_by_text("Bestand", exact=True)).to_be_visible()
            expect(page.get_by_text("Je sessie eindigt over 10 minuten — sla je werk op.")).to_be_visible()

            editor = page.locator(".jp-FileEditor .cm-content")
            editor.click()
            page.keyboard.type("kept by the save signal")
            assert notes.read_text() == "", "the file must not be saved before the signal"

            assert server.process is not None
            server.process.send_signal(signal.SIGUSR1)
            expect(page.get_by_text(
                "je open notebooks zijn opgeslagen", exact=False)).to_be_visible(timeout=(POLL_S + 15) * 1000)
            assert "kept by the save signal" in notes.read_text()
        finally:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "notebook-session-warnings.png"))
            page.context.browser.close()
    assert log.requests, "the browser made no requests at all"
    assert not log.foreign(), f"requests that left the machine: {log.foreign()}"


def test_idle_warning_in_english_until_there_is_activity(playwright: Playwright, tmp_path: Path) -> None:
    idle = {"seconds_left": None, "save_signal": False, "idle_timeout": 3600, "idle_seconds": 3300}

    def session_answer(route: Route) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(idle))

    log = RequestLog()
    with notebook_server(tmp_path, {"AIFL_LANG": "en", **language_environment({"AIFL_LANG": "en"})}) as server:
        page = open_lab(playwright, server, "lab", log)
        try:
            page.route("**/aifl/session*", session_answer)
            expect(page.locator(".lm-MenuBar").get_by_text("File", exact=True)).to_be_visible()
            warning = page.get_by_text(
                "This session stops in 5 minutes because it has not been used; keep working to keep it.")
            expect(warning).to_be_visible()
            idle["idle_seconds"] = 10  # someone worked: the next poll takes the warning away
            expect(warning).to_be_hidden(timeout=(POLL_S + 15) * 1000)
        finally:
            page.context.browser.close()
    assert not log.foreign(), f"requests that left the machine: {log.foreign()}"
