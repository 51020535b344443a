"""Attacks on the hub's own trust boundary: sign-up names, admins, login lock-out, spawn links, leaving an organisation.

The live tests act as real HTTP clients through the proxy (http://127.0.0.1:8000), each from its own
loopback address (the proxy sees 127.x.y.z as the peer, as it would see a client's address), and as
real Unix lab users for Slurm. The pure tests check the rules themselves, also for an admin name that
nobody has signed up yet (the first-run race).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from aifl_hub.accounts import (
    ADMIN_NAME,
    PROVIDER_NAME_RESERVED,
    SYSTEM_NAME,
    USED_NAME,
    WORKSHOP_NAME,
    LabOAuthenticator,
    LoginThrottle,
    client_address,
    signup_refusal,
    socket_owner,
)
from aifl_hub.site import load_site
from attacker import as_user
from conftest import BASE, Hub, browser_session, remove_account, slurm
from requests.adapters import HTTPAdapter
from tornado.web import HTTPError

CREDENTIALS = Path("/etc/aifl/admin-credentials")
SITE_FILE = Path(__file__).resolve().parents[2] / "hub_config" / "site.yaml"
ADMIN_WORDS = "is reserved for the lab&#39;s administrators"
LOCKED_WORDS = "Too many failed logins. Try again in"


# ---- the rules, without the lab ---------------------------------------------------------------------

def never(_name: str) -> bool:
    return False


@pytest.mark.parametrize("typed", ["admin", "Admin", "ADMIN", " admin", "admin ", "\tAdMiN\n", "HelpDesk"])
def test_an_admin_name_nobody_signed_up_yet_is_reserved_in_every_variant(typed):
    # Before `lab up` signs up the admin there is no account of that name: still nobody else may take it.
    rule = {"admin_names": ["admin", "helpdesk"], "used_before": never, "system_account": never}
    assert signup_refusal(typed, typed.lower(), may_name_admins=False, **rule) == ADMIN_NAME
    assert signup_refusal(typed, typed.lower(), may_name_admins=True, **rule) is None  # the lab service


def test_workshop_used_and_system_names_are_refused_with_their_own_reason():
    rule = {"admin_names": ["admin"], "may_name_admins": True}
    assert signup_refusal("ws-3-01", "ws-3-01", used_before=never, system_account=never, **rule) == WORKSHOP_NAME
    assert signup_refusal(" WS-x", " ws-x", used_before=never, system_account=never, **rule) == WORKSHOP_NAME
    assert signup_refusal("ann", "ann", used_before=lambda n: n == "ann", system_account=never, **rule) == USED_NAME
    assert signup_refusal("daemon", "daemon", used_before=never, system_account=lambda n: True, **rule) == SYSTEM_NAME
    assert signup_refusal("bea", "bea", used_before=never, system_account=never, **rule) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_throttle_locks_a_name_per_address_and_an_address_and_stays_bounded():
    clock = Clock()
    throttle = LoginThrottle(per_pair=3, per_address=5, seconds=60, max_entries=50, clock=clock)
    for _ in range(3):
        assert throttle.wait("ann", "10.0.0.1") == 0
        throttle.failed("ann", "10.0.0.1")
    assert throttle.wait("ann", "10.0.0.1") == 60
    assert throttle.wait("ann", "10.0.0.2") == 0  # Ann herself, elsewhere, is not locked out
    assert throttle.wait("bob", "10.0.0.1") == 0
    throttle.failed("bob", "10.0.0.1")
    throttle.failed("cas", "10.0.0.1")  # five failures from this address now
    assert throttle.wait("dee", "10.0.0.1") == 60
    clock.now += 45
    assert throttle.wait("dee", "10.0.0.1") == 15  # says when
    clock.now += 15
    assert throttle.wait("ann", "10.0.0.1") == 0 and throttle.wait("dee", "10.0.0.1") == 0
    throttle.failed("eve", "10.0.0.3")
    throttle.succeeded("eve", "10.0.0.3")
    assert ("pair", "eve", "10.0.0.3") not in throttle.failures
    for n in range(200):
        throttle.failed(f"u{n}", f"10.1.{n}.1")
    assert len(throttle.failures) <= 50


def request_from(peer: str, headers: dict[str, str], port: int = 40000) -> SimpleNamespace:
    return SimpleNamespace(connection=SimpleNamespace(context=SimpleNamespace(address=(peer, port))),
                           headers=headers)


def test_the_client_address_is_what_the_trusted_proxy_saw_never_a_client_header():
    proxies = ["127.0.0.1"]
    forged = {"X-Real-IP": "6.6.6.6", "X-Forwarded-For": "7.7.7.7, 10.0.0.9"}
    assert client_address(request_from("127.0.0.1", forged), proxies) == "10.0.0.9"  # the proxy's own entry
    assert client_address(request_from("127.0.0.1", {"X-Real-IP": "6.6.6.6"}), proxies) == "127.0.0.1"
    assert client_address(request_from("192.0.2.5", forged), proxies) == "192.0.2.5"  # not through the proxy


def test_on_loopback_only_the_proxys_own_connection_may_name_the_client():
    # A local program (a lab user's job) that reaches the hub's port directly is not the proxy, even from
    # 127.0.0.1: the proxy's end of the connection belongs to the hub's service account.
    with socket.create_server(("127.0.0.1", 0)) as server, socket.create_connection(server.getsockname()) as mine:
        accepted, _ = server.accept()
        with accepted:
            port = mine.getsockname()[1]
            forged = {"X-Forwarded-For": "10.0.0.9"}
            assert socket_owner("127.0.0.1", port) == os.getuid()
            assert client_address(request_from("127.0.0.1", forged, port), ["127.0.0.1"], os.getuid()) == "10.0.0.9"
            assert client_address(request_from("127.0.0.1", forged, port), ["127.0.0.1"], os.getuid() + 4321) \
                == "127.0.0.1"


# ---- against the running lab --------------------------------------------------------------------------

class SourceAdapter(HTTPAdapter):
    """Connections from one loopback address, so that the proxy sees a client of its own."""

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def loopback() -> str:
    """A fresh loopback address for one client of this test run."""
    return "127." + ".".join(str(secrets.randbelow(250) + 2) for _ in range(3))


def client(source: str) -> requests.Session:
    session = requests.Session()
    session.mount("http://", SourceAdapter(source))
    return session


def sign_up(session: requests.Session, name: str, password: str, headers: dict | None = None) -> requests.Response:
    session.get(f"{BASE}/hub/signup", headers=headers, timeout=30)
    return session.post(f"{BASE}/hub/signup", headers=headers, timeout=30, data={
        "username": name, "signup_password": password, "signup_password_confirmation": password,
        "_xsrf": session.cookies.get("_xsrf", "")})


def log_in(source: str, name: str, password: str, headers: dict | None = None) -> requests.Response:
    """One login through the proxy from ``source``, as a fresh browser (its own XSRF cookie)."""
    with client(source) as session:
        session.get(f"{BASE}/hub/login", headers=headers, timeout=30)
        return session.post(f"{BASE}/hub/login", headers=headers, timeout=60, allow_redirects=False, data={
            "username": name, "password": password, "_xsrf": session.cookies.get("_xsrf", "")})


def admin_credentials() -> tuple[str, str]:
    name, password = (line.split(": ", 1)[1] for line in CREDENTIALS.read_text().splitlines()[:2])
    return name, password


def pending_sign_ups() -> str:
    with browser_session(*admin_credentials()) as admin:
        return admin.get(f"{BASE}/hub/authorize", timeout=30).text


def test_nobody_signs_up_with_an_admins_name_in_any_variant(hub: Hub, users):
    admin, password = admin_credentials()
    _name, own_token = users()
    before = pwd.getpwnam(admin)
    for typed in (admin.upper(), admin.capitalize(), f" {admin}", f"{admin} ", f"\t{admin.upper()}"):
        with client(loopback()) as session:
            r = sign_up(session, typed, secrets.token_urlsafe(12), {"Accept-Language": "en"})
        assert r.status_code == 400, typed
        assert ADMIN_WORDS in r.text, (typed, r.text[-800:])
    # A plain user's own token does not make one an administrator's stand-in; in Dutch the reason is Dutch.
    with client(loopback()) as session:
        r = sign_up(session, admin, secrets.token_urlsafe(12),
                    {"Accept-Language": "nl", "Authorization": f"token {own_token}"})
    assert r.status_code == 400 and "is gereserveerd voor de beheerders van het lab" in r.content.decode()
    # The lab's own service token (what `lab up` signs the first admin up with) passes this check; the
    # admin exists already, so NativeAuthenticator then says the name is taken.
    with client(loopback()) as session:
        r = sign_up(session, admin, secrets.token_urlsafe(12),
                    {"Accept-Language": "en", "Authorization": f"token {hub.token}"})
    assert r.status_code == 200 and "username is already in use" in r.text, r.text[-800:]
    # No Unix account came of it, and the admin's is as it was.
    assert [e.pw_name for e in pwd.getpwall() if e.pw_name.strip().casefold() == admin] == [admin]
    assert pwd.getpwnam(admin) == before
    assert log_in(loopback(), admin, password).status_code == 302  # the admin's password is still theirs


def test_workshop_former_and_system_names_are_refused_at_sign_up(hub: Hub, users):
    former, _token = users()  # a user who had an account ...
    home = Path(pwd.getpwnam(former).pw_dir)
    (home / "patients.csv").write_text("private\n")
    assert hub.api("DELETE", f"/users/{former}").status_code == 204  # ... and was deleted from the hub
    cases = ((f"ws-{secrets.token_hex(2)}-01", "are reserved for the temporary accounts of workshops"),
             (former, "was used before in this lab"),
             ("aifl-hub", "belongs to a system account of this computer"),
             ("daemon", "belongs to a system account of this computer"))
    for name, words in cases:
        with client(loopback()) as session:
            r = sign_up(session, name, secrets.token_urlsafe(12), {"Accept-Language": "en"})
        assert r.status_code == 400 and words in r.text, (name, r.text[-800:])
    with client(loopback()) as session:
        r = sign_up(session, former, secrets.token_urlsafe(12), {"Accept-Language": "nl"})
    assert r.status_code == 400 and "is al eerder in dit lab gebruikt" in r.content.decode()
    waiting = pending_sign_ups()
    assert all(f">{name}<" not in waiting for name, _ in cases)  # nothing waits for an admin's approval
    assert (home / "patients.csv").read_text() == "private\n"


@pytest.fixture
def person(hub: Hub):
    """A signed-up, approved user with a password (name, password); removed afterwards."""
    name, password = f"lk{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    browser_session(name, password, signup=True).close()
    yield name, password
    hub.api("DELETE", f"/users/{name}")
    remove_account(name)


def test_failing_someones_password_does_not_lock_them_out_and_forged_headers_do_not_escape(hub: Hub, person):
    name, password = person
    attacker = loopback()
    for n in range(5):
        forged = {"X-Real-IP": f"10.9.{n}.1", "X-Forwarded-For": f"10.8.{n}.1", "Accept-Language": "en"}
        r = log_in(attacker, name, "wrong-password", forged)
        assert r.status_code == 200 and "Invalid username or password." in r.text, n
    # Locked from the attacker's address: even the right password, whatever the headers claim.
    for n in range(5, 8):
        forged = {"X-Real-IP": f"10.9.{n}.1", "X-Forwarded-For": f"10.8.{n}.1", "Accept-Language": "en"}
        r = log_in(attacker, name, password, forged)
        assert r.status_code == 429 and LOCKED_WORDS in r.text, (n, r.status_code, r.text[-500:])
        assert re.search(r"Try again in \d+ seconds\.", r.text)
    r = log_in(attacker, name, password, {"Accept-Language": "nl"})
    assert r.status_code == 429 and "Probeer het over" in r.content.decode()
    # The person herself, from her own address, logs in as always.
    assert log_in(loopback(), name, password).status_code == 302


def test_one_address_trying_many_names_waits(hub: Hub, person):
    name, password = person
    sprayer = loopback()
    for n in range(20):
        r = log_in(sprayer, f"nobody{n}x{secrets.token_hex(2)}", "wrong-password",
                   {"X-Real-IP": f"10.7.{n}.1", "Accept-Language": "en"})
        assert r.status_code == 200, n
    r = log_in(sprayer, name, password, {"X-Forwarded-For": "10.6.0.1", "Accept-Language": "en"})
    assert r.status_code == 429 and LOCKED_WORDS in r.text
    assert log_in(loopback(), name, password).status_code == 302


def no_jobs(name: str) -> bool:
    return slurm("squeue", "-h", "-u", name, "-o", "%i").strip() == ""


def test_a_link_only_fills_in_the_spawn_form_and_a_post_with_the_xsrf_token_starts(hub: Hub, users):
    name, _token, browser = users.with_login()
    for path in ("/hub/spawn?profile=gpu-1", f"/hub/spawn/{name}?profile=gpu-1&hours=3"):
        r = browser.get(f"{BASE}{path}", headers={"Accept-Language": "en"}, timeout=30)
        assert r.status_code == 200, (path, r.text[-500:])
        assert re.search(r'id="profile-gpu-1"[^>]*checked', r.text), path  # the link's profile is chosen
        assert 'id="spawn_form"' in r.text
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert hub.server(name) is None and no_jobs(name), path
            time.sleep(0.5)
    r = browser.get(f"{BASE}/hub/spawn?profile=gpu-1&hours=3", timeout=30)
    assert 'name="profile-option-gpu-1--hours"' in r.text and re.search(
        r'name="profile-option-gpu-1--hours"[^>]*value="3"|value="3"[^>]*name="profile-option-gpu-1--hours"', r.text)
    # The form's POST without the XSRF token (a page elsewhere posting it) is refused.
    r = browser.post(f"{BASE}/hub/spawn", data={"profile": "cpu-small"}, timeout=30, allow_redirects=False)
    assert r.status_code == 403
    assert hub.server(name) is None and no_jobs(name)
    r = browser.post(f"{BASE}/hub/spawn", timeout=60, allow_redirects=False,
                     data={"profile": "cpu-small", "_xsrf": browser.cookies.get("_xsrf", "")})
    assert r.status_code in (302, 303), r.text[-500:]
    # The session starts: the hub has it and its job is in Slurm (running or waiting for a free place).
    server = hub.server(name)
    assert server is not None and (server["ready"] or server["pending"] == "spawn"), server
    deadline = time.monotonic() + 60
    while no_jobs(name):
        assert time.monotonic() < deadline, f"no Slurm job of {name} after the form's POST: {hub.server(name)}"
        time.sleep(0.5)


def submit(name: str, *account: str) -> subprocess.CompletedProcess[str]:
    """``sbatch`` as the real Unix user (held, so it never runs)."""
    return as_user(name, ["sbatch", "--parsable", "--hold", "--partition=cpu", *account, "--wrap", "true"])


def test_someone_removed_from_an_organisation_cannot_charge_it_any_more(hub: Hub, users):
    name, _token = users(org="umcg")
    subprocess.run(["/usr/local/sbin/aifl-mkuser", name, "umcg"], check=True, capture_output=True, timeout=120)
    first = submit(name, "--account=umcg")
    assert first.returncode == 0, first.stderr
    slurm("scancel", first.stdout.strip())
    r = hub.api("DELETE", "/groups/org-umcg/users", json={"users": [name]})
    assert r.status_code == 200, r.text
    assert name not in [u for u in hub.api("GET", "/groups/org-umcg").json()["users"]]
    refused = submit(name, "--account=umcg")
    assert refused.returncode != 0 and "account" in refused.stderr.lower(), refused
    assert slurm("sacctmgr", "-nP", "show", "assoc", f"user={name}", "account=umcg", "format=user").strip() == ""
    own = submit(name)  # the lab's default account is left
    assert own.returncode == 0, own.stderr
    slurm("scancel", own.stdout.strip())


DIRECT_LOGINS = r"""
import http.client, json, re, sys
name, password = sys.stdin.read().split()
codes = []
for n in range(8):
    forged = {"X-Forwarded-For": f"10.5.{n}.1", "X-Real-IP": f"10.4.{n}.1"}
    hub = http.client.HTTPConnection("127.0.0.1", 8081, timeout=60)
    hub.request("GET", "/hub/login", headers=forged)
    answer = hub.getresponse()
    answer.read()
    xsrf = re.search(r"_xsrf=([^;]+)", answer.getheader("Set-Cookie") or "").group(1)
    body = f"username={name}&password={password if n >= 5 else 'wrong-password'}&_xsrf={xsrf}"
    hub.request("POST", "/hub/login", body=body, headers={**forged, "Cookie": f"_xsrf={xsrf}",
                                                            "Content-Type": "application/x-www-form-urlencoded"})
    codes.append(hub.getresponse().status)
    hub.close()
print(json.dumps(codes))
"""


def test_a_local_user_reaching_the_hub_port_directly_cannot_forge_the_proxys_header(hub: Hub, users, person):
    name, password = person
    attacker, _token = users()  # a real lab user on this host, whose jobs may reach the hub's port
    done = as_user(attacker, ["python3", "-I", "-c", DIRECT_LOGINS], input=f"{name} {password}", timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [200] * 5 + [429] * 3  # five tries, then locked whatever the headers say
    assert log_in(loopback(), name, password).status_code == 302  # through the proxy, from elsewhere: fine


@pytest.mark.parametrize(("argv", "words"), [
    (["root", "umcg"], "is not a lab account"),
    (["aifl-hub", "umcg"], "is not a lab account"),
    (["ann", "lab"], "is not an organisation account"),  # the lab's default account is never taken away
    (["ann", "root"], "is not an organisation account"),
    (["ann;id", "umcg"], "usage"),
    (["ann"], "usage"),
])
def test_the_revoke_helper_refuses_anything_but_a_lab_user_and_an_organisation(lab_system, argv, words):
    done = subprocess.run(["/usr/local/sbin/aifl-org-revoke", *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and words in done.stderr, done


@pytest.mark.parametrize("name", ["ws-ab12cd-01", "daemon", "aifl-hub"])
def test_a_login_providers_name_of_a_temporary_or_system_account_cannot_log_in(tmp_path, name):
    site = load_site(SITE_FILE)
    site["hub"]["state_dir"] = str(tmp_path)
    authenticator = LabOAuthenticator(site_file=str(SITE_FILE))
    authenticator.site = site
    with pytest.raises(HTTPError) as refused:
        authenticator.check_blocked_users(name)
    assert refused.value.status_code == 403 and refused.value.log_message == PROVIDER_NAME_RESERVED
    assert authenticator.check_blocked_users(f"ann{secrets.token_hex(3)}") is True
