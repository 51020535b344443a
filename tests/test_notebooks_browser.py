"""In Chromium, in Dutch: a new user's JupyterLab opens the welcome example from ``~/examples`` (copied there at
the session's start) and runs it top to bottom; it reaches the result it states, without leaving this machine."""

from __future__ import annotations

import ast
import re

import pytest
from conftest import BASE
from playwright.sync_api import expect, sync_playwright
from test_browser import (  # noqa: F401 - browser_user is a fixture used by name
    ARTIFACTS,
    CHROMIUM,
    LAB_TIMEOUT_MS,
    LOCAL_HOST,
    RequestLog,
    browser_user,  # a fixture
    signed_up_page,
)

pytestmark = [pytest.mark.cluster, pytest.mark.browser]

NOTEBOOK = "examples/getting-started/welcome.nl.ipynb"


def test_the_dutch_welcome_notebook_runs_in_jupyterlab(hub, browser_user):  # noqa: F811 - the fixture
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    name, password = browser_user
    log = RequestLog()
    with sync_playwright() as p, signed_up_page(
            p, log, name, password, locale="nl-NL", notice="Je aanvraag is naar de beheerder gestuurd",
            failure_shot="notebook-welcome-nl-failure.png") as page:
        token = hub.api("POST", f"/users/{name}/tokens", json={"expires_in": 3600}).json()["token"]
        hub.join(name, "umcg")
        r = hub.api("POST", f"/users/{name}/server", token=token,
                    json={"user_options": {"profile": "cpu-small"}}, headers={"Accept-Language": "nl"})
        assert r.status_code in (201, 202), r.text
        hub.wait_ready(name)
        page.goto(f"{BASE}/user/{name}/lab/tree/{NOTEBOOK}")
        notebook = page.locator(".jp-NotebookPanel:visible")
        expect(notebook.locator("h1").first).to_contain_text("Welkom in het AI Factory Lab",
                                                              timeout=LAB_TIMEOUT_MS)
        expect(notebook.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')).to_be_attached(
            timeout=LAB_TIMEOUT_MS)
        first = notebook.locator(".jp-CodeCell").first.locator(".jp-InputPrompt")
        for _ in range(3):  # JupyterLab drops a run while the kernel is not attached yet: ask again
            page.locator(".lm-MenuBar-itemLabel", has_text="Uitvoeren").click()  # JupyterLab in Dutch
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            try:
                expect(first).not_to_have_text(re.compile(r"^\s*\[ \]:\s*$"), timeout=15_000)
                break
            except AssertionError:
                continue
        else:
            raise AssertionError("JupyterLab never ran the notebook")
        output = notebook.locator(".jp-CodeCell").last.locator(".jp-OutputArea-output")  # the summary
        expect(output).to_contain_text("'accuracy'", timeout=180_000)
        result = ast.literal_eval(output.inner_text())
        assert result["accuracy"] >= 0.85 and result["device"] == "cpu"
        # The note says what did the work and how long it took; the plot is there.
        expect(notebook).to_contain_text("trained on CPU in")
        expect(notebook.locator(".jp-RenderedImage img")).to_have_count(1)
        page.screenshot(path=str(ARTIFACTS / "notebook-welcome-nl.png"), full_page=True)
    assert log.foreign() == [], f"the browser contacted hosts other than {LOCAL_HOST}: {log.foreign()}"
