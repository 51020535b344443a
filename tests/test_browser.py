"""A real browser end to end: sign up, approval, login, a GPU session in JupyterLab, stop — all on 127.0.0.1.

Playwright's sync API drives Debian's Chromium (never a downloaded browser). Every request the
browser makes is recorded; the test fails if any of them leaves this machine (data sovereignty).
Screenshots go to ``test-artifacts/`` in the repository root.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from conftest import BASE, REPO, Hub, browser_session, remove_account, slurm
from playwright.sync_api import Browser, BrowserContext, Locator, Page, Playwright, expect, sync_playwright

pytestmark = [pytest.mark.cluster, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
]
ARTIFACTS = REPO / "test-artifacts"
LOCAL_HOST = "127.0.0.1"
LAB_TIMEOUT_MS = 120_000
KERNEL_TIMEOUT_MS = 90_000
CELL = """import os
node, job_gpus = os.environ.get("SLURMD_NODENAME"), os.environ.get("SLURM_JOB_GPUS")
gpu = os.environ.get("CUDA_VISIBLE_DEVICES") or job_gpus
print("NODE", node, "GPU", gpu, "JOBGPUS", job_gpus)"""
OUTPUT = re.compile(r"NODE (gpu0\d) GPU (\d) JOBGPUS (\d)")


class RequestLog:
    """Every URL a browser context asks for: HTTP(S) requests and websockets, of all its pages."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.websockets: list[str] = []

    def watch(self, context: BrowserContext) -> None:
        """Record from now on what ``context`` and every page it opens ask for."""
        context.on("request", lambda request: self.requests.append(request.url))
        context.on("page", lambda page: page.on("websocket", lambda ws: self.websockets.append(ws.url)))

    @property
    def urls(self) -> list[str]:
        return self.requests + self.websockets

    @staticmethod
    def host(url: str) -> str | None:
        """The host a URL goes to; ``None`` for URLs that never reach the network (data:, about:)."""
        parts = urlsplit(url)
        if parts.scheme == "blob":  # blob:http://host/uuid belongs to its origin
            return RequestLog.host(parts.path)
        if parts.scheme in ("data", "about"):
            return None
        return parts.hostname or "<none>"

    def foreign(self) -> list[str]:
        """The URLs that went anywhere but this machine's loopback address."""
        return sorted({url for url in self.urls if self.host(url) not in (None, LOCAL_HOST)})


def admin_credentials() -> tuple[str, str]:
    name, password = (line.split(": ", 1)[1] for line in
                      Path("/etc/aifl/admin-credentials").read_text().splitlines()[:2])
    return name, password


def squeue_of(name: str, fmt: str = "%i") -> list[str]:
    return slurm("squeue", "-h", "-u", name, "-o", fmt).split()


def shot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as a test artefact; return its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"browser-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def log_in(page: Page, name: str, password: str, next_path: str = "") -> None:
    """Log in through the hub's login page."""
    page.goto(f"{BASE}/hub/login" + (f"?next={next_path}" if next_path else ""))
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("#login_submit")
    assert "/hub/login" not in page.url, f"login of {name} failed: {page.locator('.login_error').all_inner_texts()}"


def sign_up(page: Page, name: str, password: str,
            notice: str = "Your information has been sent to the admin") -> None:
    """Sign up through the hub's sign-up page (``notice``: what it then says); the admin still has to approve."""
    page.goto(f"{BASE}/hub/signup")
    page.fill("input[name=username]", name)
    page.fill("input[name=signup_password]", password)
    page.fill("input[name=signup_password_confirmation]", password)
    with page.expect_navigation():
        page.click("#signup_submit")
    expect(page.locator(".alert")).to_contain_text(notice)


@contextlib.contextmanager
def signed_up_page(playwright: Playwright, log: RequestLog, name: str, password: str, *, locale: str,
                   notice: str, failure_shot: str) -> Iterator[Page]:
    """A Chromium page of ``name``, who signed up, was approved by the admin and logged in (``locale``).

    The browser's requests go into ``log``; a failure inside leaves a screenshot ``failure_shot`` in ARTIFACTS.
    """
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    context = browser.new_context(locale=locale, viewport={"width": 1400, "height": 900})
    context.set_default_timeout(30_000)
    log.watch(context)
    page = context.new_page()
    try:
        sign_up(page, name, password, notice)
        approve(browser, log, name)
        log_in(page, name, password)
        yield page
    except BaseException:
        page.screenshot(path=str(ARTIFACTS / failure_shot), full_page=True)
        raise
    finally:
        context.close()
        browser.close()


def approve(browser: Browser, log: RequestLog, name: str) -> None:
    """The admin approves ``name`` on the authorization page, in a browser context of their own."""
    admin, password = admin_credentials()
    context = browser.new_context(locale="en-US")
    log.watch(context)
    try:
        page = context.new_page()
        log_in(page, admin, password, next_path="/hub/authorize")
        page.goto(f"{BASE}/hub/authorize")
        row = page.locator(f"tr#{name}")
        expect(row).to_contain_text("No")
        row.get_by_role("button", name="Authorize", exact=True).click()
        expect(page.locator(f"tr#{name}")).to_have_class(re.compile(r"\bsuccess\b"))
        expect(page.locator(f"tr#{name}")).to_contain_text("Yes")
    finally:
        context.close()


def spawn_gpu_session(page: Page, name: str) -> None:
    """Start a one-GPU session for one hour from the spawn form; wait until JupyterLab is up."""
    page.goto(f"{BASE}/hub/spawn")
    page.check("#profile-gpu-1")
    page.fill("#profile-option-gpu-1--hours", "1")
    expect(page.locator("#profile-gpu-1")).to_be_checked()
    shot(page, "1-spawn-form")
    page.click("#spawn_form [type=submit]")
    page.wait_for_url(re.compile(rf"/user/{name}/lab"), timeout=LAB_TIMEOUT_MS)
    expect(page.locator("#main.jp-LabShell")).to_be_visible(timeout=LAB_TIMEOUT_MS)


def run_cell(page: Page, code: str, index: int = 0) -> Locator:
    """Type ``code`` into cell ``index`` of the open notebook, run it and return the cell's output area.

    Typing waits until the kernel is connected and idle: while it starts, JupyterLab moves the focus around.
    JupyterLab drops a run silently when the kernel is not attached yet (the prompt stays ``[ ]:``);
    the run is then asked for again, as a person would.
    """
    notebook = page.locator(".jp-NotebookPanel:visible")
    expect(notebook.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')).to_be_attached(
        timeout=KERNEL_TIMEOUT_MS)
    cell = notebook.locator(".jp-CodeCell").nth(index)
    editor = cell.locator(".cm-content")
    editor.click()
    page.keyboard.insert_text(code)
    expect(editor).to_contain_text(code.splitlines()[-1])
    prompt = cell.locator(".jp-InputPrompt")
    for _ in range(3):
        editor.click()
        notebook.locator('[data-command="notebook:run-cell-and-select-next"]').click()
        try:
            expect(prompt).not_to_have_text(re.compile(r"^\s*\[ \]:\s*$"), timeout=15_000)
            break
        except AssertionError:
            continue
    else:
        raise AssertionError(f"JupyterLab never ran cell {index}")
    return cell.locator(".jp-OutputArea-output")


def run_in_new_notebook(page: Page, code: str) -> str:
    """Open a new Python notebook from the launcher, run ``code`` in its first cell; return the output text."""
    page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click(timeout=LAB_TIMEOUT_MS)
    output = run_cell(page, code)
    expect(output).to_contain_text("NODE", timeout=KERNEL_TIMEOUT_MS)
    return output.inner_text()


def stop_from_home(page: Page) -> None:
    """Stop the session with the home page's "Stop My Server" button."""
    page.goto(f"{BASE}/hub/home")
    stop = page.locator("#stop")
    expect(stop).to_be_visible()
    stop.click()
    expect(stop).to_be_hidden(timeout=60_000)
    expect(page.locator("#start")).to_have_text("Start My Server")


def wait_no_jobs(name: str, timeout: float = 30) -> list[str]:
    """Poll Slurm until ``name`` has no jobs (or ``timeout`` seconds pass); return what is left."""
    deadline = time.monotonic() + timeout
    while (jobs := squeue_of(name)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return jobs


def admin_action(admin: requests.Session, verb: str, name: str) -> int:
    """Press the authorization page's ``verb`` button (authorize, discard) for ``name``: a POST with
    the XSRF token, or the older link (GET) where the hub does not take POSTs there."""
    url = f"{BASE}/hub/{verb}/{name}"
    code = admin.post(url, data={"_xsrf": admin.cookies.get("_xsrf", "")}, timeout=30).status_code
    return admin.get(url, timeout=30).status_code if code == 405 else code


def discard_signup(name: str) -> None:
    """Remove a sign-up that never became a hub user (only unapproved sign-ups can be discarded)."""
    with browser_session(*admin_credentials()) as admin:
        page = admin.get(f"{BASE}/hub/authorize", timeout=30).text
        row = re.search(rf"<tr[^>]*\bid=\"?{name}\b[^>]*>", page)
        if row is None:
            return
        if "success" in row.group(0):  # approved: revoke first
            admin_action(admin, "authorize", name)
        admin_action(admin, "discard", name)


@pytest.fixture
def browser_user(hub: Hub) -> Iterator[tuple[str, str]]:
    """A fresh (name, password) for the browser to sign up with; the server and the user are removed after."""
    name, password = f"b{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    yield name, password
    if hub.api("GET", f"/users/{name}").status_code == 200:
        if hub.server(name) is not None:
            hub.api("DELETE", f"/users/{name}/server")
            hub.wait_gone(name)
        hub.api("DELETE", f"/users/{name}")
    else:  # signed up but never logged in: discard the sign-up
        discard_signup(name)
    if squeue_of(name):  # last resort: nothing of the test's may keep holding a GPU
        subprocess.run(["scancel", "-u", name], check=False, timeout=60)
    remove_account(name)


@pytest.fixture
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    with sync_playwright() as p:
        yield p


def test_browser_signs_up_runs_a_gpu_notebook_and_stops_without_leaving_the_machine(
        hub: Hub, browser_user: tuple[str, str], playwright: Playwright) -> None:
    name, password = browser_user
    for stale in ARTIFACTS.glob("browser-failure*"):
        stale.unlink()
    log = RequestLog()
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    context = browser.new_context(locale="en-US", viewport={"width": 1400, "height": 900})
    context.set_default_timeout(30_000)
    log.watch(context)
    context.tracing.start(screenshots=True, snapshots=True)
    page = context.new_page()
    try:
        sign_up(page, name, password)
        approve(browser, log, name)
        log_in(page, name, password)
        hub.join(name, "umcg")  # the administrator confirms the user's organisation

        spawn_gpu_session(page, name)
        output = run_in_new_notebook(page, CELL)
        shot(page, "2-lab-cell-output")
        match = OUTPUT.search(output)
        assert match, f"unexpected cell output: {output!r}"
        node, gpu, job_gpus = match.groups()
        # Slurm agrees: the user's one job runs on that node, with that GPU, for the one hour asked for.
        (job,) = squeue_of(name)
        assert squeue_of(name, "%N|%l") == [f"{node}|1:00:00"]
        detail = slurm("scontrol", "show", "job", "-d", job)
        assert re.search(rf"GRES=gpu:h200:1\(IDX:{job_gpus}\)", detail), detail
        assert gpu in ("0", job_gpus)  # CUDA_VISIBLE_DEVICES may be renumbered from 0 within the job

        stop_from_home(page)
        assert wait_no_jobs(name) == [], f"Slurm still runs a job of {name} after stop"
        page.reload()
        expect(page.locator("#stop")).to_have_count(0)
        expect(page.locator("#aifl-session-ended")).to_have_count(0)  # stopped in the lab, not outside it
        shot(page, "3-home-after-stop")
    except BaseException:
        with contextlib.suppress(Exception):  # never hide the failure behind one of its artefacts
            shot(page, "failure")
            context.tracing.stop(path=str(ARTIFACTS / "browser-failure-trace.zip"))  # `playwright show-trace`
        raise
    else:
        context.tracing.stop()
    finally:
        context.close()
        browser.close()
    # The recorder saw the traffic (the kernel's websocket included) and none of it left the machine.
    assert any(f"/user/{name}/api/kernels/" in url for url in log.websockets), log.websockets
    assert log.foreign() == [], f"the browser contacted hosts other than {LOCAL_HOST}: {log.foreign()}"


def test_browser_in_dutch_corrects_a_value_waits_in_the_queue_and_cancels(
        hub: Hub, browser_user: tuple[str, str], playwright: Playwright) -> None:
    """Issue 4's path: the spawn page in Dutch, an out-of-range value refused next to its field, fixed, the
    queue explained while every GPU is busy, and Cancel removes the job. Screenshots of the page in NL and EN."""
    name, password = browser_user
    log = RequestLog()
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    context = browser.new_context(locale="nl-NL", viewport={"width": 1280, "height": 800})
    context.set_default_timeout(30_000)
    log.watch(context)
    page = context.new_page()
    fillers: list[str] = []
    try:
        sign_up_nl = page.goto(f"{BASE}/hub/signup")
        assert sign_up_nl is not None and sign_up_nl.ok
        page.fill("input[name=username]", name)
        page.fill("input[name=signup_password]", password)
        page.fill("input[name=signup_password_confirmation]", password)
        with page.expect_navigation():
            page.click("#signup_submit")
        approve(browser, log, name)
        log_in(page, name, password, next_path="/hub/spawn")
        hub.join(name, "umcg")
        page.goto(f"{BASE}/hub/spawn")
        expect(page.locator("legend")).to_have_text("Wat heb je nodig?")
        shot(page, "spawn-page-nl")
        # Keyboard only: move to the GPU card and type an hour count the profile does not allow.
        page.focus("#profile-cpu-small")
        page.keyboard.press("ArrowDown")
        expect(page.locator("#profile-gpu-1")).to_be_checked()
        hours = page.locator("#profile-option-gpu-1--hours")
        hours.fill("12")
        page.evaluate("document.getElementById('spawn_form').noValidate = true")  # let the server judge it
        page.click("#spawn_form [type=submit]")
        error = page.locator("#profile-option-gpu-1--hours-error")
        expect(error).to_have_text("Uren: kies van 1 tot 8.")
        expect(page.locator("#profile-gpu-1")).to_be_checked()
        shot(page, "spawn-page-nl-error")
        assert squeue_of(name) == []
        # Every GPU busy: the corrected request has to wait, and the page says why.
        slurm("sacctmgr", "-i", "add", "user", name, "account=umcg")
        sbatch = ["runuser", "-u", name, "--", "sbatch", "--parsable", "-p", "gpu", "-A", "umcg", "--gres=gpu:4",
                  "-c", "1", "--mem=1G", "-t", "10", "-o", "/dev/null", "--chdir=/tmp", "--wrap", "sleep 600"]
        fillers = [slurm(*sbatch).strip() for _ in range(4)]
        deadline = time.monotonic() + 30
        while len(squeue_of(name, "%T")) != 4 or set(squeue_of(name, "%T")) != {"RUNNING"}:
            assert time.monotonic() < deadline, squeue_of(name, "%i|%T")
            time.sleep(0.3)
        page.locator("#profile-option-gpu-1--hours").fill("2")
        page.click("#spawn_form [type=submit]")
        expect(page.locator("#aifl-phase")).to_have_text("Je sessie wacht op een vrije plek")
        expect(page.locator("#progress-message")).to_contain_text("plaats 1 van 1", timeout=30_000)
        expect(page.locator("#progress-message")).to_contain_text("Reden", timeout=30_000)
        shot(page, "pending-nl")
        (job,) = [j for j in squeue_of(name) if j not in fillers]
        page.click("#aifl-cancel")
        page.wait_for_url(re.compile(r"/hub/home"))
        expect(page.locator("#aifl-session-ended")).to_contain_text("Je hebt de start geannuleerd.")
        assert job not in squeue_of(name)
        # The same page in English, for the record.
        page.goto(f"{BASE}/hub/spawn")
        page.locator("button", has_text="English").first.click()
        expect(page.locator("legend")).to_have_text("What do you need?")
        shot(page, "spawn-page-en")
    finally:
        if fillers:
            subprocess.run(["scancel", *fillers], check=False, timeout=60)
        context.close()
        browser.close()
    assert log.foreign() == [], f"the browser contacted hosts other than {LOCAL_HOST}: {log.foreign()}"
