"""Hostile input: batchspawner's old API exploit and unsafe user options are refused; nothing reaches Slurm."""

from __future__ import annotations

import pwd
import secrets
import time
from pathlib import Path

import pytest
import requests
from conftest import BASE, Hub, browser_session, remove_account, slurm
from test_spawn import environ, job_processes, spawn

pytestmark = pytest.mark.cluster

HOSTILE_OPTIONS = [
    ({"cmd": ["bash", "-c", "touch /tmp/aifl-pwned"]}, "Unknown option 'cmd'"),
    ({"prologue": "touch /tmp/aifl-pwned"}, "Unknown option 'prologue'"),
    ({"exec_prefix": "touch /tmp/aifl-pwned;"}, "Unknown option 'exec_prefix'"),
    ({"options": "--uid=0"}, "Unknown option 'options'"),
    ({"profile": "gpu-1\n#SBATCH --uid=0"}, "Choose one of the offered profiles"),
    ({"profile": "gpu-1; touch /tmp/aifl-pwned"}, "Choose one of the offered profiles"),
    ({"profile": "gpu-1", "hours": "1; touch /tmp/aifl-pwned"}, "whole number"),
    ({"profile": "gpu-1", "hours": 500}, "Hours: choose from 1 to 8."),
]


def jobs_of(name: str, since: str) -> str:
    """Jobs of ``name`` submitted since ``since`` (user ids of removed test users are reused)."""
    return slurm("sacct", "-n", "-X", "-P", "-u", name, "-S", since, "-o", "JobID").strip()


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@pytest.mark.parametrize(("options", "message"), HOSTILE_OPTIONS)
def test_hostile_options_through_the_rest_api_are_refused(hub: Hub, users, options, message):
    since = now()
    name, token = users()
    r = hub.api("POST", f"/users/{name}/server", token=token, json={"user_options": options},
                headers={"Accept-Language": "en"})
    assert r.status_code == 400
    assert message in r.json()["message"]
    assert hub.server(name) is None
    assert jobs_of(name, since) == ""
    assert not Path("/tmp/aifl-pwned").exists()
    # The refused options were not stored: a plain start afterwards uses the defaults and works.
    assert hub.api("GET", f"/users/{name}").json()["servers"] == {}


def test_hostile_spawn_links_and_forms_are_refused(hub: Hub, users):
    since = now()
    name, _token, browser = users.with_login()
    for query in ("cmd=touch+/tmp/aifl-pwned", "profile=gpu-1%0A%23SBATCH+--uid%3D0", "hours=2%3Bid",
                  "exec_prefix=sudo"):
        page = browser.get(f"{BASE}/hub/spawn?{query}", headers={"Accept-Language": "en"}, timeout=30)
        assert page.status_code == 400, query
        assert 'class="alert alert-danger"' in page.text or "alert-danger" in page.text
    # As a browser does: show the form (in Dutch), then post it.
    form = browser.get(f"{BASE}/hub/spawn", headers={"Accept-Language": "nl"}, timeout=30)
    assert "Wat heb je nodig?" in form.content.decode()
    xsrf = browser.cookies.get("_xsrf", "")
    page = browser.post(f"{BASE}/hub/spawn", headers={"Accept-Language": "nl"}, timeout=30,
                        data={"profile": "gpu-1", "profile-option-gpu-1--hours": "99", "_xsrf": xsrf})
    assert page.status_code == 400
    text = page.content.decode()
    assert "Uren: kies van 1 tot 8." in text, text[text.find("alert"):][:300]
    assert hub.server(name) is None
    assert jobs_of(name, since) == ""


def test_old_batchspawner_api_exploit_is_refused(hub: Hub, users):
    name, token = users()
    server = spawn(hub, name, token, {"profile": "cpu-small"})
    job = hub.job_of(name)
    server_token = environ(job_processes(job)[0])["JUPYTERHUB_API_TOKEN"]
    url = f"{BASE}/hub/api/batchspawner"
    hostile = {"exec_prefix": "touch /tmp/aifl-pwned;", "batch_query_cmd": "touch /tmp/aifl-pwned",
               "batch_cancel_cmd": "touch /tmp/aifl-pwned", "ip": "10.0.0.1"}
    for body in (hostile, {**hostile, "port": 4000}, {"port": "4000"}, {"port": 80}, {"port": True}, [4000]):
        r = requests.post(url, json=body, headers={"Authorization": f"token {server_token}"}, timeout=10)
        assert r.status_code == 400, body
    # A valid port report is refused once the server runs (no re-routing a running session)...
    r = requests.post(url, json={"port": 4000}, headers={"Authorization": f"token {server_token}"}, timeout=10)
    assert r.status_code == 409
    # ...and a token that is not the session's own may not report at all.
    r = requests.post(url, json={"port": 4000}, headers={"Authorization": f"token {token}"}, timeout=10)
    assert r.status_code == 403
    time.sleep(6)  # at least one poll of the hub (poll_interval 5 s) runs Slurm commands after the attempts
    assert not Path("/tmp/aifl-pwned").exists()
    assert hub.server(name)["url"] == server["url"]
    assert requests.get(f"{BASE}{server['url']}api/status", headers={"Authorization": f"token {token}"},
                        timeout=10).status_code == 200
    # The hub never logs a session's token.
    assert server_token not in Path("/var/log/aifl/hub.log").read_text(errors="replace")


def test_a_link_cannot_approve_a_sign_up(hub: Hub):
    name, password = f"s{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    with requests.Session() as visitor:
        visitor.get(f"{BASE}/hub/signup", timeout=10)
        r = visitor.post(f"{BASE}/hub/signup", timeout=30, data={
            "username": name, "signup_password": password, "signup_password_confirmation": password,
            "_xsrf": visitor.cookies.get("_xsrf", "")})
        assert r.status_code == 200
    admin_name, admin_password = (line.split(": ", 1)[1] for line in
                                  Path("/etc/aifl/admin-credentials").read_text().splitlines()[:2])
    with browser_session(admin_name, admin_password) as admin:
        # A link (say, in an e-mail) followed by the logged-in admin changes nothing...
        assert admin.get(f"{BASE}/hub/authorize/{name}", timeout=30).status_code == 405
        assert admin.get(f"{BASE}/hub/discard/{name}", timeout=30).status_code == 405
        # ...and a POST without the XSRF token is refused too.
        assert admin.post(f"{BASE}/hub/authorize/{name}", timeout=30).status_code == 403
    with pytest.raises(AssertionError, match="login of"):
        browser_session(name, password)
    with browser_session(admin_name, admin_password) as admin:
        admin.get(f"{BASE}/hub/authorize", timeout=30)
        admin.post(f"{BASE}/hub/discard/{name}", data={"_xsrf": admin.cookies.get("_xsrf", "")}, timeout=30)


def test_a_new_account_never_gets_the_uid_of_a_deleted_one(hub: Hub):
    """Otherwise a newcomer would own a former user's leftover files and see their GPU hours in sacct -u."""
    first = f"u{secrets.token_hex(3)}"
    second = f"u{secrets.token_hex(3)}"
    try:
        assert hub.api("POST", f"/users/{first}").status_code == 201
        uid = pwd.getpwnam(first).pw_uid
        hub.api("DELETE", f"/users/{first}")
        remove_account(first)  # the highest UID is free again: plain useradd would hand it out next
        assert hub.api("POST", f"/users/{second}").status_code == 201
        assert pwd.getpwnam(second).pw_uid > uid
    finally:
        for name in (first, second):
            hub.api("DELETE", f"/users/{name}")
            remove_account(name)
