"""Hostile input: batchspawner's old API exploit and unsafe user options are refused; nothing reaches Slurm."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from conftest import BASE, Hub, slurm
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
    ({"profile": "gpu-1", "hours": 500}, "Choose between 1 and 8 hours"),
]


def jobs_of(name: str) -> str:
    return slurm("sacct", "-n", "-X", "-P", "-u", name, "-S", "now-1hours", "-o", "JobID").strip()


@pytest.mark.parametrize(("options", "message"), HOSTILE_OPTIONS)
def test_hostile_options_through_the_rest_api_are_refused(hub: Hub, users, options, message):
    name, token = users()
    r = hub.api("POST", f"/users/{name}/server", token=token, json={"user_options": options},
                headers={"Accept-Language": "en"})
    assert r.status_code == 400
    assert message in r.json()["message"]
    assert hub.server(name) is None
    assert jobs_of(name) == ""
    assert not Path("/tmp/aifl-pwned").exists()
    # The refused options were not stored: a plain start afterwards uses the defaults and works.
    assert hub.api("GET", f"/users/{name}").json()["servers"] == {}


def test_hostile_spawn_links_and_forms_are_refused(hub: Hub, users):
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
    page = browser.post(f"{BASE}/hub/spawn", data={"profile": "gpu-1", "hours": "99", "_xsrf": xsrf},
                        headers={"Accept-Language": "nl"}, timeout=30)
    assert page.status_code == 400
    text = page.content.decode()
    assert "Kies tussen 1 en 8 uur voor dit profiel." in text, text[text.find("alert"):][:300]
    assert hub.server(name) is None
    assert jobs_of(name) == ""


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
