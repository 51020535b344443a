"""Attacks on the workshops' trust boundary: between a trainer and participants, and on joining.

* A notebook trusted in one account's server (its HTML and JavaScript outputs run) never becomes trusted in
  another's through Collect or Push.
* One participant's odd files (invalid JSON, not a notebook, odd names, a huge listing) do not stop Collect.
* A workshop's folder is its own (it carries the id): the trainer never reads a member's own folder that
  happens to carry the workshop's title, not in the live view, the read-only view or Collect.
* Past the grace period the workshop's rights are gone: a temporary account is locked, without jobs or Slurm
  association; a member can no longer submit under the workshop's account.
* Join codes: the limit counts the address the proxy saw (headers a client writes are not believed), a
  class behind one address still joins with the right code, and many addresses do not guess faster.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
import requests
from aifl_hub.accounts import client_address
from aifl_hub.workshop_handlers import JoinLimiter, WorkshopMixin, notebook_name_ok, untrusted
from aifl_hub.workshops import Participant, Workshop, WorkshopStore, folder_name
from attacker import as_user, shell_as
from conftest import BASE, slurm
from jupyter_server.services.contents.filemanager import FileContentsManager
from nbformat.sign import MemorySignatureStore, NotebookNotary
from requests.adapters import HTTPAdapter
from test_workshop_hub import PROFILE, cleanup_workshop, join, window
from test_workshop_work import logged_in_trainer
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

REVOKE = "/usr/local/sbin/aifl-revoke"
SCRIPT = "<script>document.title = 'ran as ' + location.pathname</script>"
NOW = datetime(2026, 11, 25, 9, 0, 0)


def scripted(trusted: bool | None = None, text: str = "") -> dict:
    """A notebook whose code cell has an HTML output with a script (``trusted``: the cell's trust mark)."""
    metadata = {} if trusted is None else {"trusted": trusted}
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "markdown", "id": "m1", "metadata": {}, "source": text or "Look"},
        {"cell_type": "code", "id": "c1", "metadata": metadata, "execution_count": 1, "source": "show()",
         "outputs": [{"output_type": "display_data", "metadata": {},
                      "data": {"text/html": SCRIPT, "text/plain": "<HTML>"}}]}]}


def code_trust(model: dict) -> list[bool]:
    """The trust marks a server put on the code cells of a notebook it served (what JupyterLab obeys)."""
    return [c["metadata"].get("trusted") for c in model["content"]["cells"] if c["cell_type"] == "code"]


# ---------------------------------------------------------------- without the lab

def contents_manager(root: Path) -> FileContentsManager:
    """A Jupyter server's contents manager on ``root`` with its own notary (its own secret and signatures)."""
    (root / "data").mkdir(parents=True)
    manager = FileContentsManager(root_dir=str(root))
    manager.notary = NotebookNotary(data_dir=str(root / "data"), store_factory=MemorySignatureStore)
    return manager


def test_a_notebook_trusted_in_one_server_is_not_trusted_where_it_is_copied(tmp_path):
    """Jupyter Server's own code: a server signs what it is handed with trust marks; the copy has none."""
    participant, trainer_server = contents_manager(tmp_path / "p"), contents_manager(tmp_path / "t")
    participant.save({"type": "notebook", "format": "json", "content": scripted(trusted=True)}, "work.ipynb")
    served = participant.get("work.ipynb")
    assert code_trust(served) == [True]  # signed by the participant's server
    # What Collect did before: the served model as it is, into another server, which signs it.
    before = contents_manager(tmp_path / "before")
    before.save({"type": "notebook", "format": "json", "content": json.loads(json.dumps(served["content"]))},
                "as-it-was.ipynb")
    assert code_trust(before.get("as-it-was.ipynb")) == [True]
    trainer_server.save({"type": "notebook", "format": "json", "content": untrusted(served["content"])},
                        "copy.ipynb")
    assert code_trust(trainer_server.get("copy.ipynb")) == [False]
    copy = nbformat.reads((tmp_path / "t" / "copy.ipynb").read_text(), as_version=4)
    assert not trainer_server.notary.check_signature(copy)
    assert untrusted({"nbformat": 4, "cells": "x"}) is None and untrusted([1]) is None
    assert untrusted({"nbformat": 3, "cells": []}) is None


@pytest.mark.parametrize("name", ["..", ".", "a/b.ipynb", "../x.ipynb", "x" * 300 + ".ipynb", ".hidden.ipynb",
                                  "a\nb.ipynb", "lesson.txt", ".ipynb", 7, None, "a\\b.ipynb"])
def test_odd_notebook_names_are_not_copied(name):
    assert not notebook_name_ok(name)


def test_plain_notebook_names_are_copied():
    for name in ("lesson.ipynb", "lesson (updated 10-30).ipynb", "Ada's answer.ipynb", "Les 1 – café.ipynb"):
        assert notebook_name_ok(name), name


class FakeServers(WorkshopMixin):
    """Collect's view of the servers: a participant's answers as given (a server the participant controls)."""

    def __init__(self, listing: list, files: dict) -> None:
        self.listing, self.files, self.saved = listing, files, {}
        self.log = SimpleNamespace(info=lambda *a: None)

    async def contents(self, user, path, model=None):
        if user.name == "trainer":
            if model is not None:
                self.saved[path] = model
            return {"type": "directory"}
        if path == "course-abc123":
            return {"type": "directory", "content": self.listing}
        answer = self.files[path]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_one_participant_s_odd_files_are_skipped_and_the_rest_copied():
    from tornado.httpclient import HTTPClientError

    folder = "course-abc123"
    good = {"type": "notebook", "content": scripted(trusted=True)}
    listing = [{"type": "notebook", "name": name, "path": f"{folder}/{name}", "size": size} for name, size in (
        ("good.ipynb", 10), ("..", 1), ("broken.ipynb", 5), ("list.ipynb", 5), ("huge.ipynb", 10**9),
        ("x" * 250 + ".ipynb", 1))] + [
        {"type": "notebook", "name": "elsewhere.ipynb", "path": "other/elsewhere.ipynb"},
        {"type": "directory", "name": "sub", "path": f"{folder}/sub"}, "nonsense"]
    files = {f"{folder}/good.ipynb": good, f"{folder}/broken.ipynb": HTTPClientError(400, "Unreadable Notebook"),
             f"{folder}/list.ipynb": {"type": "notebook", "content": [1, 2]}}
    servers = FakeServers(listing, files)
    workshop = SimpleNamespace(folder=folder, id="abc123")
    skipped = asyncio.run(servers.collect_seat(workshop, SimpleNamespace(name="ada"), SimpleNamespace(name="trainer"),
                                               "collected/ada"))
    assert set(servers.saved) == {"collected/ada/good.ipynb"}
    assert servers.saved["collected/ada/good.ipynb"]["content"]["cells"][1]["metadata"] == {}
    assert skipped[:5] == ["..", "broken.ipynb", "list.ipynb", "huge.ipynb", "x" * 79 + "…"]
    assert "elsewhere.ipynb" in skipped


def test_workshop_folders_carry_the_id_and_stored_older_workshops_still_load(tmp_path):
    assert folder_name("Batch runs", "abc123") == "batch-runs-abc123"
    with pytest.raises(ValueError):
        folder_name("x", "../etc")
    stored = {"workshops": [{
        "id": "old111", "title": "Batch runs", "starts_at": "2026-11-25T09:00:00", "ends_at": "2026-11-25T12:00:00",
        "seats": 4, "profile": "workshop-cpu", "material": "", "folder": "batch-runs", "trainer": "tina",
        "code": "OLD11111", "partition": "cpu", "created_at": "2026-11-24T09:00:00", "ended_at": None,
        "expired": False, "participants": {
            "ann": {"name": "ann", "display_name": "ann", "temporary": False, "joined_at": "2026-11-25T09:01:00"},
            "ws-old111-01": {"name": "ws-old111-01", "display_name": "Ada", "temporary": True,
                             "joined_at": "2026-11-25T09:02:00"}}}]}
    (tmp_path / "workshops.json").write_text(json.dumps(stored))
    old = WorkshopStore(tmp_path / "workshops.json").get("old111")
    assert old.folder == "batch-runs"
    # A folder named after the title only may be a member's own: reached in temporary accounts only.
    assert old.reaches(old.participants["ws-old111-01"]) and not old.reaches(old.participants["ann"])
    new = Workshop(id="abc123", title="Batch runs", starts_at=NOW, ends_at=NOW + timedelta(hours=2), seats=2,
                   profile="workshop-cpu", material="", folder=folder_name("Batch runs", "abc123"), trainer="tina",
                   code="ABCD2345", partition="cpu", created_at=NOW)
    assert new.reaches(Participant("ann", "ann", False, "2026-11-25T09:01:00"))


def request_from(peer: str, headers: dict[str, str]) -> HTTPServerRequest:
    """A request as the hub's server gets it from a connection with ``peer`` (the headers as sent)."""
    connection = SimpleNamespace(context=SimpleNamespace(address=(peer, 40000), remote_ip=peer))
    return HTTPServerRequest(start_line=RequestStartLine("POST", "/hub/join", "HTTP/1.1"),
                             headers=HTTPHeaders({"Host": "lab", **headers}), connection=connection)


def test_the_client_address_is_what_the_proxy_saw():
    assert client_address(request_from("127.0.0.1", {"X-Forwarded-For": "10.0.0.7"})) == "10.0.0.7"
    # A client's own X-Forwarded-For comes first; the proxy appends the real peer last.
    assert client_address(request_from("127.0.0.1", {"X-Forwarded-For": "1.2.3.4, 5.6.7.8,10.0.0.7",
                                                     "X-Real-IP": "9.9.9.9"})) == "10.0.0.7"
    assert client_address(request_from("127.0.0.1", {"X-Forwarded-For": "::ffff:10.0.0.8"})) == "10.0.0.8"
    # Not through the proxy: the headers say nothing.
    assert client_address(request_from("192.0.2.5", {"X-Forwarded-For": "10.0.0.7", "X-Real-IP": "1.1.1.1"})) == \
        "192.0.2.5"
    assert client_address(request_from("127.0.0.1", {"X-Forwarded-For": "garbage"})) == "127.0.0.1"


def test_the_join_limiter_counts_wrong_codes_per_address_and_overall():
    limiter = JoinLimiter(allowed=3, overall=10, window=60, addresses=5)
    for n in range(3):
        assert not limiter.limited("a", n)
        limiter.failed("a", n)
    assert limiter.limited("a", 3) and limiter.heard("a", 3)  # told "too many", but a right code still joins
    assert not limiter.limited("b", 3)
    assert not limiter.limited("a", 64)  # the window passed
    # Many addresses together: once the overall cap is reached, addresses that tried a wrong code are not heard.
    for n in range(10):
        limiter.failed(f"r{n}", 100)
    assert not limiter.heard("r9", 101) and limiter.heard("fresh", 101)
    assert limiter.heard("r9", 161)
    assert len(limiter._by_address) == 5  # the table is bounded: the oldest addresses are dropped


# ---------------------------------------------------------------- on the running lab

def create_workshop(hub, token: str, body: dict) -> dict:
    """Create a workshop; while other tests hold the CPU node Slurm cannot reserve it, so wait a little."""
    deadline = time.monotonic() + 300
    while True:
        r = hub.api("POST", "/workshops", token=token, json=body, headers={"Accept-Language": "en"})
        if r.status_code == 201 or "busy" not in r.text or time.monotonic() > deadline:
            assert r.status_code == 201, r.text
            return r.json()
        time.sleep(10)


def start_seat(hub, name: str, token: str) -> None:
    """Start ``name``'s session with the workshop's profile, as their spawn page does (their own token)."""
    assert hub.api("POST", f"/users/{name}/server", token=token, json={"profile": PROFILE}).status_code in (201, 202)


def token_for(hub, name: str) -> str:
    r = hub.api("POST", f"/users/{name}/tokens", json={"expires_in": 1800})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def server_api(name: str, token: str, method: str, path: str, **kw) -> requests.Response:
    return requests.request(method, f"{BASE}/user/{name}/api/{path}", headers={"Authorization": f"token {token}"},
                            timeout=60, **kw)


def join_own(session: requests.Session, code: str) -> requests.Response:
    """Join with one's own (logged-in) account."""
    page = session.get(f"{BASE}/hub/join", params={"code": code}, timeout=30)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    return session.post(f"{BASE}/hub/join", data={"code": code, "_xsrf": xsrf}, timeout=60, allow_redirects=False)


def test_collect_and_push_carry_no_trust_skip_odd_files_and_stay_in_the_workshop_folder(hub, users):
    token, trainer_session = logged_in_trainer(hub, users, "tra")
    trainer_name = hub.api("GET", "/user", token=token).json()["name"]
    member, member_token, member_session = users.with_login("wme", org="umcg")
    # The member's own folder that happens to carry the title of the workshop they are about to join.
    assert shell_as(member, "mkdir -p ~/batch-runs && echo '{\"nbformat\": 4, \"nbformat_minor\": 5, "
                            "\"metadata\": {}, \"cells\": []}' > ~/batch-runs/private.ipynb").returncode == 0
    workshop = create_workshop(hub, token, {"title": "Batch runs", **window(), "seats": 2, "profile": PROFILE})
    folder, wid = workshop["folder"], workshop["id"]
    try:
        assert folder == f"batch-runs-{wid}"
        _, answer = join(workshop["code"], "Ada")
        assert answer.status_code == 303, answer.text[-300:]
        ada = re.search(r"/hub/spawn/([a-z0-9-]+)\?", answer.headers["Location"]).group(1)
        ada_token = token_for(hub, ada)
        start_seat(hub, ada, ada_token)
        joined = join_own(member_session, workshop["code"])
        assert joined.status_code == 303, joined.text[-300:]
        start_seat(hub, member, member_token)
        assert hub.api("POST", f"/users/{trainer_name}/server", token=token,
                       json={"profile": "cpu-small"}).status_code in (201, 202)
        for name in (ada, member, trainer_name):
            hub.wait_ready(name, timeout=240)

        # Ada's notebook with a script output, signed as trusted by her own server.
        assert server_api(ada, ada_token, "PUT", f"contents/{folder}", json={"type": "directory"}).status_code in (
            200, 201)
        put = server_api(ada, ada_token, "PUT", f"contents/{folder}/evil.ipynb",
                         json={"type": "notebook", "format": "json", "content": scripted(trusted=True)})
        assert put.status_code in (200, 201), put.text
        assert code_trust(server_api(ada, ada_token, "GET", f"contents/{folder}/evil.ipynb").json()) == [True]
        # ... and files that are no notebooks, or have odd names, beside a good one.
        home = Path(f"/home/{ada}/{folder}")
        long_name = "l" * 240 + ".ipynb"
        for name, text in (("broken.ipynb", "{not json"), ("words.ipynb", "hello"), ("list.ipynb", "[1, 2]"),
                           (long_name, json.dumps(scripted())), ("good.ipynb", json.dumps(scripted(text="good")))):
            assert as_user(ada, ["tee", str(home / name)], input=text).returncode == 0
        # The member opens their own notebook outside the workshop folder.
        opened = server_api(member, member_token, "POST", "sessions", json={
            "path": "batch-runs/private.ipynb", "name": "private.ipynb", "type": "notebook",
            "kernel": {"name": "python3"}})
        assert opened.status_code == 201, opened.text

        # The live view shows nothing of the member's own folder; the read-only view refuses it.
        rows = {p["name"]: p for p in hub.api("GET", f"/workshops/{wid}", token=token).json()["participants"]}
        assert rows[member]["notebooks"] == [] and rows[member]["files"] == []
        assert f"{folder}/evil.ipynb" in rows[ada]["files"]
        view = trainer_session.get(f"{BASE}/hub/workshops/{wid}/seats/{member}/view",
                                   params={"path": "batch-runs/private.ipynb"}, timeout=60)
        assert view.status_code == 400

        # Collect: the good notebooks arrive untrusted; Ada's odd files are skipped and said; nobody else stops.
        collected = hub.api("POST", f"/workshops/{wid}/collect", token=token, headers={"Accept-Language": "en"})
        assert collected.status_code == 200, collected.text
        outcome = collected.json()
        assert sorted(outcome["collected"]) == sorted([ada, member]) and outcome["failed"] == []
        assert sorted(outcome["skipped"]) == sorted(f"{ada}/{name}" for name in (
            "broken.ipynb", "words.ipynb", "list.ipynb", "l" * 79 + "…")), outcome
        mine = Path(f"/home/{trainer_name}/collected-{folder}")
        assert sorted(p.name for p in (mine / ada).glob("*.ipynb")) == ["evil.ipynb", "good.ipynb"]
        assert not list(Path(f"/home/{trainer_name}").rglob("private.ipynb"))
        copy = server_api(trainer_name, token, "GET", f"contents/collected-{folder}/{ada}/evil.ipynb")
        assert copy.status_code == 200 and code_trust(copy.json()) == [False]
        assert _notary_trusts(trainer_name, mine / ada / "evil.ipynb") == "False"
        assert _notary_trusts(ada, home / "evil.ipynb") == "True"  # the check itself sees trust where it is
        live = trainer_session.get(f"{BASE}/hub/workshops/{wid}", timeout=60)
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', live.text).group(1)
        page = trainer_session.post(f"{BASE}/hub/workshops/{wid}/collect", headers={"Accept-Language": "en"},
                                    data={"_xsrf": xsrf}, timeout=120)
        assert page.status_code == 200 and "Skipped, because they are not notebooks" in page.text

        # Push: the trainer's trusted notebook lands untrusted in every participant's server.
        lesson = server_api(trainer_name, token, "PUT", "contents/lesson.ipynb", json={
            "type": "notebook", "format": "json", "content": scripted(trusted=True, text="The lesson")})
        assert lesson.status_code in (200, 201), lesson.text
        assert code_trust(server_api(trainer_name, token, "GET", "contents/lesson.ipynb").json()) == [True]
        pushed = hub.api("POST", f"/workshops/{wid}/push", token=token, json={"path": "lesson.ipynb"})
        assert pushed.status_code == 200 and sorted(pushed.json()["copied"]) == sorted([ada, member]), pushed.text
        for name, their_token in ((ada, ada_token), (member, member_token)):
            copy = server_api(name, their_token, "GET", f"contents/{folder}/lesson.ipynb")
            assert copy.status_code == 200 and code_trust(copy.json()) == [False], name
        assert not Path(f"/home/{member}/batch-runs/lesson.ipynb").exists()
    finally:
        hub.api("DELETE", f"/users/{trainer_name}/server")
        cleanup_workshop(hub, token, workshop)


def _notary_trusts(name: str, path: Path) -> str:
    """Whether ``name``'s own Jupyter notary (their secret and signature database) trusts the notebook."""
    check = ("import sys, nbformat\nfrom nbformat.sign import NotebookNotary\n"
             "nb = nbformat.read(sys.argv[1], as_version=4)\nprint(NotebookNotary().check_signature(nb))")
    done = as_user(name, ["/opt/aifl/envs/default/bin/python", "-c", check, str(path)], timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    return done.stdout.strip()


def expiry(name: str) -> str:
    """The account expiry field of ``name``'s shadow entry ("" when it never expires)."""
    return subprocess.run(["getent", "shadow", name], capture_output=True, text=True, check=True).stdout.split(":")[7]


def sbatch_as(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return as_user(name, ["sbatch", "--parsable", "-o", "/dev/null", *args, "--wrap", "sleep 300"])


def test_no_right_outlives_the_workshop(hub, users):
    token, _ = logged_in_trainer(hub, users, "trr")
    member, member_token, member_session = users.with_login("wmr", org="umcg")
    default = slurm("sacctmgr", "-nP", "show", "user", member, "format=defaultaccount").strip()
    # A window two days ahead: its seats wait for it, but joining gives the rights at once.
    workshop = create_workshop(hub, token, {"title": "Short lived", **window(timedelta(days=2)), "seats": 2,
                                            "profile": PROFILE})
    held: list[str] = []
    try:
        _, answer = join(workshop["code"], "Ada")
        assert answer.status_code == 303, answer.text[-300:]
        ada = re.search(r"/hub/spawn/([a-z0-9-]+)\?", answer.headers["Location"]).group(1)
        joined = join_own(member_session, workshop["code"])
        assert joined.status_code == 303
        start_seat(hub, member, member_token)
        deadline = time.monotonic() + 120  # its start gives the member the workshop's account, as it does
        while "expertise-centre" not in slurm("sacctmgr", "-nP", "show", "assoc", f"user={member}",
                                              "format=account").split():
            assert time.monotonic() < deadline, "the seat's start gave no association"
            time.sleep(1)
        assert expiry(ada) == ""
        # During the workshop both may work under its account (a job that waits, to be left behind).
        for name in (ada, member):
            submitted = sbatch_as(name, "--account=expertise-centre", "--hold")
            assert submitted.returncode == 0, (name, submitted.stderr)
            held.append(submitted.stdout.strip().split(";")[0])
        assert hub.api("POST", f"/workshops/{workshop['id']}/end", token=token).status_code == 200
        hub.wait_gone(member)
        as_of = (datetime.now() + timedelta(days=8)).strftime("%Y-%m-%dT%H:%M:%S")
        r = hub.api("POST", "/workshops/tend", json={"as_of": as_of})
        assert r.status_code == 200 and workshop["id"] in r.json()["disabled"], r.text

        # The temporary account: locked and expired, no jobs, no association; its files stay.
        assert subprocess.run(["passwd", "-S", ada], capture_output=True, text=True,
                              check=True).stdout.split()[1] == "L"
        assert expiry(ada) == "1"  # expired since 2 January 1970: no way in, not even with a key
        assert slurm("squeue", "-h", "-u", ada, "-o", "%i").strip() == ""
        assert slurm("sacctmgr", "-nP", "show", "assoc", f"user={ada}", "format=account").strip() == ""
        assert sbatch_as(ada, "--hold").returncode != 0
        assert Path(f"/home/{ada}").is_dir()
        # The member: no more jobs or submissions under the workshop's account; their own still work.
        assert slurm("squeue", "-h", "-u", member, "-A", "expertise-centre", "-o", "%i").strip() == ""
        refused = sbatch_as(member, "--account=expertise-centre", "--hold")
        assert refused.returncode != 0 and "account" in refused.stderr.lower(), refused.stderr
        own = sbatch_as(member, "--hold")
        assert own.returncode == 0, own.stderr
        held.append(own.stdout.strip().split(";")[0])
        assert slurm("sacctmgr", "-nP", "show", "user", member, "format=defaultaccount").strip() == default
    finally:
        for job in held:
            subprocess.run(["scancel", job], capture_output=True, check=False)
        cleanup_workshop(hub, token, workshop)


def test_the_revoke_helper_refuses_what_is_not_a_workshop_s(lab_system, users):
    name, _ = users("rv")
    before = slurm("sacctmgr", "-nP", "show", "assoc", f"user={name}", "format=account")
    for args in (["member", "root", "expertise-centre"], ["member", name, "umcg"], ["member", "../x", "lab"],
                 ["temporary", name], ["temporary", "root"], ["temporary", "ws-x", "extra"], ["lock", name], [],
                 ["member", "daemon", "expertise-centre"]):
        done = subprocess.run([REVOKE, *args], capture_output=True, text=True, check=False, timeout=60)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
    assert expiry(name) == ""  # not expired: nothing was done to the account
    assert slurm("sacctmgr", "-nP", "show", "assoc", f"user={name}", "format=account") == before
    # The hub's account may run it as root, and only through sudo's rule.
    listed = subprocess.run(["sudo", "-l", "-U", "aifl-hub"], capture_output=True, text=True, check=True).stdout
    assert REVOKE in listed
    assert subprocess.run(["stat", "-c", "%U %a", REVOKE], capture_output=True, text=True,
                          check=True).stdout.split() == ["root", "755"]


class FromAddress(HTTPAdapter):
    """Connections from one loopback address of our choosing (the proxy sees it as the client's)."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, source_address=(self.address, 0), **kwargs)


def client_at(address: str) -> requests.Session:
    session = requests.Session()
    session.mount("http://", FromAddress(address))
    return session


def try_code(session: requests.Session, code: str, headers: dict[str, str] | None = None,
             display_name: str = "Someone") -> requests.Response:
    """The join form, then the code (``headers`` on both: the hub's XSRF token of a visitor hangs on its address)."""
    page = session.get(f"{BASE}/hub/join", params={"code": code}, headers=headers, timeout=30)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    return session.post(f"{BASE}/hub/join", data={"code": code, "display_name": display_name, "_xsrf": xsrf},
                        headers={"Accept-Language": "en", **(headers or {})}, timeout=120, allow_redirects=False)


def test_rotating_forwarding_headers_does_not_escape_the_join_limit_and_the_class_still_joins(hub, users):
    token, _ = logged_in_trainer(hub, users, "trj")
    address = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
    attacker, classmate = client_at(address), client_at(address)
    workshop = create_workshop(hub, token, {"title": "Behind one address", **window(timedelta(days=2)), "seats": 2,
                                            "profile": PROFILE})
    try:
        statuses = []
        for n in range(24):
            fake = f"10.{n}.{n}.{n + 1}"
            statuses.append(try_code(attacker, f"WRONG{n:04d}", {"X-Real-IP": fake, "X-Forwarded-For": fake})
                            .status_code)
        assert statuses[0] == 400 and statuses[-5:] == [429] * 5, statuses
        for headers in ({"X-Real-IP": "10.99.0.1"}, {"X-Forwarded-For": "10.99.0.2"},
                        {"X-Forwarded-For": "10.99.0.3", "X-Real-IP": "10.99.0.4"}, {}):
            limited = try_code(attacker, "WRONGAGAIN", headers)
            assert limited.status_code == 429 and "Too many attempts" in limited.text, headers
        # Someone else behind the same address, with the right code: not guessing, so they join.
        answer = try_code(classmate, workshop["code"], display_name="Grace")
        assert answer.status_code == 303, answer.text[-300:]
        assert "/hub/spawn/" in answer.headers["Location"]
        # Another address is not affected by this one's wrong codes.
        neighbour = address.rsplit(".", 1)[0] + (".1" if not address.endswith(".1") else ".2")
        assert try_code(client_at(neighbour), "WRONGOTHER").status_code == 400
    finally:
        cleanup_workshop(hub, token, workshop)
