"""Shared fixtures: the running lab (started by the tests themselves when it is not up) and a hub client."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
STATE = Path("/var/lib/aifl")
BASE = "http://127.0.0.1:8000"
# A developer running several test sessions against one lab keeps it up with AIFL_KEEP_RUNNING=1 or this file.
KEEP_RUNNING = Path("/run/aifl/keep-running")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the running lab (``lab_system`` among its fixtures) as ``cluster``.

    The rest are the pure tests: ``-m "not cluster and not browser"`` selects exactly them (the
    fixed-moment runs under ``faketime`` in ``./lab test`` do).
    """
    for item in items:
        if "lab_system" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


CLOCK_VARIABLES = ("LD_PRELOAD", "FAKETIME", "FAKETIME_SHARED", "FAKETIME_DONT_RESET", "TZ")


def clock_environment() -> dict[str, str]:
    """The variables that set this test run's clock and time zone (``faketime``'s, ``TZ``), where set.

    A child started with a clean environment gets them too, so that it lives at the same moment as the
    test that started it (``./lab test`` runs the pure tests under ``faketime`` at fixed moments).
    """
    return {name: os.environ[name] for name in CLOCK_VARIABLES if name in os.environ}



def lab(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """Run ./lab with ``args`` and return the completed process (output captured)."""
    return subprocess.run([str(REPO / "lab"), *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def lab_system():
    """The whole system (cluster, proxy, hub). Started here if it is not running; then stopped again."""
    if os.geteuid() != 0:
        pytest.skip("the lab's integration tests run as root (they start system services)")
    started_here = lab("status").returncode != 0
    if started_here:
        up = lab("up")
        assert up.returncode == 0, f"./lab up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
    yield
    if started_here and not (os.environ.get("AIFL_KEEP_RUNNING") or KEEP_RUNNING.exists()):
        lab("down")


def slurm(*argv: str) -> str:
    """Run a Slurm client command as root and return its stdout."""
    return subprocess.run(list(argv), capture_output=True, text=True, check=True, timeout=60).stdout


def remove_account(name: str) -> None:
    """Remove a test user's Unix account, home and Slurm association (the lab itself never deletes them)."""
    subprocess.run(["sacctmgr", "-i", "delete", "user", name], capture_output=True, check=False, timeout=60)
    subprocess.run(["userdel", "--remove", name], capture_output=True, check=False, timeout=60)


@dataclass
class Hub:
    """A small REST client for the hub, with the lab's service token."""

    base: str = BASE
    token: str = field(default_factory=lambda: (STATE / "lab-service-token").read_text().strip())

    def api(self, method: str, path: str, token: str | None = None, headers: dict | None = None,
            **kw) -> requests.Response:
        headers = {"Authorization": f"token {token or self.token}", **(headers or {})}
        return requests.request(method, f"{self.base}/hub/api{path}", headers=headers, timeout=60, **kw)

    def new_user(self, prefix: str = "t", org: str | None = "umcg") -> tuple[str, str]:
        """Create a fresh user (and their Unix account) in organisation ``org`` (None: none yet);
        return (name, that user's own API token)."""
        name = f"{prefix}{secrets.token_hex(3)}"
        r = self.api("POST", f"/users/{name}")
        assert r.status_code == 201, r.text
        if org:
            self.join(name, org)
        r = self.api("POST", f"/users/{name}/tokens", json={"note": "tests", "expires_in": 3600})
        assert r.status_code == 201, r.text
        return name, r.json()["token"]

    def join(self, name: str, org: str) -> None:
        """Make ``name`` a member of organisation ``org`` (the hub group ``org-<org>``), as an admin confirms it."""
        assert self.api("POST", f"/groups/org-{org}", json={}).status_code in (201, 409)
        r = self.api("POST", f"/groups/org-{org}/users", json={"users": [name]})
        assert r.status_code == 200, r.text

    def server(self, name: str) -> dict | None:
        r = self.api("GET", f"/users/{name}")
        return None if r.status_code == 404 else r.json()["servers"].get("")

    def wait_ready(self, name: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.server(name)
            if server and server["ready"]:
                return server
            time.sleep(0.2)
        raise AssertionError(f"{name}'s server was not ready within {timeout} s: {self.server(name)}")

    def wait_gone(self, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server(name) is None:
                return
            time.sleep(0.5)
        raise AssertionError(f"{name}'s server still exists after {timeout} s")

    def job_of_pending(self, name: str, exclude: list[str], timeout: float = 30) -> str:
        """The id of the user's pending session job (not one of ``exclude``), once Slurm has it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = [j for j in slurm("squeue", "-h", "-t", "PENDING", "-u", name, "-o", "%i").split()
                    if j not in exclude]
            if jobs:
                return jobs[0]
            time.sleep(0.2)
        raise AssertionError(f"no pending session job of {name}")

    def job_of(self, name: str) -> str:
        """The Slurm job id of the user's session, from Slurm itself."""
        jobs = slurm("squeue", "-h", "-u", name, "-o", "%i").split()
        assert len(jobs) == 1, f"expected one job of {name}, found {jobs}"
        return jobs[0]


def browser_session(name: str, password: str, *, signup: bool = False, organisation: str = "") -> requests.Session:
    """A logged-in cookie session for ``name`` (signing up first — saying ``organisation`` — and approved by
    the admin, if ``signup``)."""
    session = requests.Session()
    session.get(f"{BASE}/hub/login", timeout=10)
    xsrf = session.cookies.get("_xsrf", "")
    if signup:
        r = session.post(f"{BASE}/hub/signup", timeout=30, data={
            "username": name, "signup_password": password, "signup_password_confirmation": password, "_xsrf": xsrf,
            "organisation": organisation})
        assert r.status_code == 200, r.text[-500:]
        admin_name, admin_password = (line.split(": ", 1)[1] for line in
                                      Path("/etc/aifl/admin-credentials").read_text().splitlines()[:2])
        with browser_session(admin_name, admin_password) as admin:
            admin.get(f"{BASE}/hub/authorize", timeout=30)
            r = admin.post(f"{BASE}/hub/authorize/{name}", data={"_xsrf": admin.cookies.get("_xsrf", "")}, timeout=30)
            assert r.status_code == 200, r.text[-500:]
    r = session.post(f"{BASE}/hub/login", data={"username": name, "password": password, "_xsrf": xsrf},
                     timeout=60, allow_redirects=False)
    assert r.status_code in (302, 303), f"login of {name} failed: HTTP {r.status_code}"
    return session


@pytest.fixture(scope="session")
def hub(lab_system) -> Hub:
    """A hub client; waits until the hub answers through the proxy."""
    client = Hub()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if client.api("GET", "/").status_code == 200:
                return client
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError("the hub did not answer through the proxy")


@pytest.fixture
def users(hub):
    """Make fresh users with ``users()``; their servers are stopped and the users removed afterwards."""
    made: list[str] = []

    def make(prefix: str = "t", org: str | None = "umcg") -> tuple[str, str]:
        name, token = hub.new_user(prefix, org)
        made.append(name)
        return name, token

    def make_with_login(prefix: str = "w", org: str | None = "umcg") -> tuple[str, str, requests.Session]:
        """A user who signed up with a password, was approved, is in ``org`` and is logged in (cookie session)."""
        name, password = f"{prefix}{secrets.token_hex(3)}", secrets.token_urlsafe(12)
        session = browser_session(name, password, signup=True)
        made.append(name)
        if org:
            hub.join(name, org)
        r = hub.api("POST", f"/users/{name}/tokens", json={"note": "tests", "expires_in": 3600})
        assert r.status_code == 201, r.text
        return name, r.json()["token"], session

    make.with_login = make_with_login

    yield make
    for name in made:
        if hub.server(name) is not None:
            hub.api("DELETE", f"/users/{name}/server")
            hub.wait_gone(name)
        hub.api("DELETE", f"/users/{name}")
        remove_account(name)
