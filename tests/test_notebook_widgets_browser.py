"""In Chromium: a notebook in a real session shows the session panel and starts a small Dask cluster from its widget."""

from __future__ import annotations

import re
import time

import pytest
from conftest import BASE, slurm
from playwright.sync_api import expect, sync_playwright
from test_browser import (  # noqa: F401 - browser_user is a fixture used by name
    ARTIFACTS,
    CHROMIUM,
    KERNEL_TIMEOUT_MS,
    LAB_TIMEOUT_MS,
    LOCAL_HOST,
    RequestLog,
    browser_user,  # a fixture
    run_cell,
    signed_up_page,
)

pytestmark = pytest.mark.cluster


def test_session_panel_and_dask_widget_in_jupyterlab(hub, browser_user):  # noqa: F811 - the fixture
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    name, password = browser_user
    log = RequestLog()
    with sync_playwright() as p, signed_up_page(p, log, name, password, locale="en-US",
                                                notice="Your information has been sent to the admin",
                                                failure_shot="notebook-widgets-failure.png") as page:
        token = hub.api("POST", f"/users/{name}/tokens", json={"expires_in": 3600}).json()["token"]
        hub.join(name, "umcg")
        r = hub.api("POST", f"/users/{name}/server", token=token, json={"user_options": {"profile": "gpu-1"}},
                    headers={"Accept-Language": "en"})
        assert r.status_code in (201, 202), r.text
        hub.wait_ready(name)
        page.goto(f"{BASE}/user/{name}/lab")
        expect(page.locator("#main.jp-LabShell")).to_be_visible(timeout=LAB_TIMEOUT_MS)
        page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click(timeout=LAB_TIMEOUT_MS)
        output = run_cell(page, "from aifl_notebook.panel import show_session\npanel = show_session()", 0)
        expect(output).to_contain_text("Your session (Slurm job", timeout=KERNEL_TIMEOUT_MS)
        expect(output).to_contain_text("One GPU for training a model")
        widget = run_cell(
            page, "from aifl_notebook.widgets.dask import DaskPanel\ndask_panel = DaskPanel()\ndask_panel", 1)
        widget.get_by_role("button", name="Start workers").click(timeout=KERNEL_TIMEOUT_MS)
        expect(widget).to_contain_text("All 2 workers started.", timeout=120_000)
        link = widget.get_by_role("link", name=re.compile("Dashboard"))
        assert re.search(rf"/user/{name}/aifl/dask/[0-9a-f]{{16}}/status", link.get_attribute("href") or "")
        page.screenshot(path=str(ARTIFACTS / "notebook-panel-and-dask.png"), full_page=True)
        workers = [j for j in slurm("squeue", "-h", "-u", name, "-o", "%i|%j").split() if "dask" in j]
        assert len(workers) == 2, workers
        widget.get_by_role("button", name="Close the cluster").click()
        expect(widget).to_contain_text("The cluster is closed", timeout=60_000)
        deadline = time.monotonic() + 30
        while [j for j in slurm("squeue", "-h", "-u", name, "-o", "%j").split() if "dask" in j]:
            assert time.monotonic() < deadline, "Dask workers still queued after closing"
            time.sleep(0.5)
    assert log.foreign() == [], f"the browser contacted hosts other than {LOCAL_HOST}: {log.foreign()}"
