"""Workshops on the running lab: a trainer creates one (a real Slurm reservation), participants join with the
code and get sessions inside it, the trainer sees them and ends it, temporary accounts go after the grace.

Also what may not happen: bad input creates nothing; a participant cannot reach another's server or files;
a trainer reaches only their own participants (REST API, with each one's own token).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from conftest import BASE, remove_account, slurm

PROFILE = "workshop-cpu"
SHARED_GPU = "workshop-gpu-share"
pytestmark = pytest.mark.usefixtures("lab_system")


def reservations() -> str:
    return slurm("scontrol", "show", "reservation")


def window(start_in: timedelta = timedelta(0), hours: int = 2) -> dict[str, str]:
    """The form's window: a date, a start and an end time (a window past midnight ends the next day)."""
    start = datetime.now() + start_in
    end = start + timedelta(hours=hours)
    return {"date": start.strftime("%Y-%m-%d"), "start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}


@pytest.fixture
def trainer(hub, users):
    """A member of the trainers group, with their own token."""
    name, token = users("tr", org=None)
    assert hub.api("POST", "/groups/trainers", json={}).status_code in (201, 409)
    assert hub.api("POST", "/groups/trainers/users", json={"users": [name]}).status_code == 200
    return name, token


def join(code: str, display_name: str) -> tuple[requests.Session, requests.Response]:
    """Join as a person without an account: the join page, then the form; the answer is not followed."""
    session = requests.Session()
    page = session.get(f"{BASE}/hub/join", params={"code": code}, timeout=30)
    assert page.status_code == 200
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    answer = session.post(f"{BASE}/hub/join", data={"code": code, "display_name": display_name, "_xsrf": xsrf},
                          headers={"Accept-Language": "en"}, timeout=120, allow_redirects=False)
    return session, answer


def start_session(session: requests.Session, location: str, timeout: float = 60) -> None:
    """Where joining sends a participant: the spawn form with the workshop's profile filled in, and its Start
    (a link only fills in the form; the form's POST starts the session)."""
    page = session.get(BASE + location, timeout=timeout)
    assert page.status_code == 200, page.text[-300:]
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    profile = parse_qs(urlsplit(location).query)["profile"][0]
    started = session.post(BASE + urlsplit(location).path, data={"_xsrf": xsrf, "profile": profile},
                           timeout=timeout, allow_redirects=False)
    assert started.status_code in (302, 303), started.text[-300:]


def cleanup_workshop(hub, token: str, workshop: dict) -> None:
    """End the workshop if it still runs; remove what the temporary accounts left (the lab itself keeps it)."""
    hub.api("POST", f"/workshops/{workshop['id']}/end", token=token)
    state = hub.api("GET", f"/workshops/{workshop['id']}", token=token).json()
    for participant in state.get("participants", []):
        if participant["temporary"]:
            hub.api("DELETE", f"/users/{participant['name']}")
            deadline = time.monotonic() + 60  # userdel refuses while the user's session job still exits
            while subprocess.run(["squeue", "-h", "-u", participant["name"]], capture_output=True, text=True,
                                 check=False).stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.5)
            remove_account(participant["name"])


def test_bad_input_creates_nothing(hub, trainer):
    _, token = trainer
    before = reservations()
    cases = [
        ({**window(-timedelta(hours=5), 1), "seats": 4}, "start"),  # in the past
        ({**window(), "seats": 0}, "seats"),
        ({**window(), "seats": 1000}, "seats"),
        ({**window(), "seats": 17}, "seats"),  # the CPU node has 16 cores: one per seat
        ({**window(), "seats": 2, "profile": "gpu-1"}, "profile"),  # not a workshop profile
        ({**window(), "seats": 2, "material": "../etc"}, "material"),
        ({**window(), "seats": 2, "end": "25:00"}, "end"),
        ({**window(), "seats": 2, "title": ""}, "title"),
    ]
    for body, field in cases:
        r = hub.api("POST", "/workshops", token=token, headers={"Accept-Language": "en"},
                    json={"title": "Bad input", "profile": PROFILE, **body})
        assert r.status_code == 400, (body, r.text)
        assert r.json()["field"] == field, (body, r.json())
        assert r.json()["message"]
    nl = hub.api("POST", "/workshops", token=token, headers={"Accept-Language": "nl"},
                 json={"title": "x", "profile": PROFILE, **window(), "seats": 0})
    assert "plekken" in nl.json()["message"]
    assert hub.api("GET", "/workshops", token=token).json() == []
    assert reservations() == before


def test_a_reservation_slurm_refuses_is_explained_and_nothing_is_created(hub, trainer):
    """Sixteen whole-GPU seats need all four GPU nodes; one of them is reserved already in that window."""
    _, token = trainer
    day = (datetime.now() + timedelta(days=2)).strftime("%Y-%m-%d")
    blocker = f"aifl-test-{os.getpid()}"
    workshop_reservations = set(re.findall(r"ReservationName=(aifl-ws-\w+)", reservations()))
    slurm("scontrol", "create", "reservation", f"ReservationName={blocker}", f"StartTime={day}T03:00:00",
          f"EndTime={day}T05:00:00", "PartitionName=gpu", "NodeCnt=1", "Users=root")
    try:
        r = hub.api("POST", "/workshops", token=token, headers={"Accept-Language": "en"}, json={
            "title": "Too big", "date": day, "start": "03:30", "end": "04:30", "seats": 16,
            "profile": "workshop-seat"})
        assert r.status_code == 400, r.text
        assert r.json()["field"] == "seats"
        assert "Slurm cannot reserve 16 seats" in r.json()["message"] and "Nothing was created" in r.json()["message"]
        assert hub.api("GET", "/workshops", token=token).json() == []
        assert set(re.findall(r"ReservationName=(aifl-ws-\w+)", reservations())) == workshop_reservations
    finally:
        slurm("scontrol", "delete", f"ReservationName={blocker}")


def test_only_trainers_create_workshops(hub, users):
    _, token = users("nt")
    r = hub.api("POST", "/workshops", token=token, json={"title": "x", "profile": PROFILE, **window(), "seats": 1})
    assert r.status_code == 403
    assert hub.api("GET", "/workshops", token=token).status_code == 403


def test_workshop_from_creation_to_expiry(hub, trainer, users):
    _, token = trainer
    r = hub.api("POST", "/workshops", token=token, json={
        "title": "Intro to notebooks", **window(), "seats": 3, "profile": PROFILE, "material": "getting-started"})
    assert r.status_code == 201, r.text
    workshop = r.json()
    try:
        _run_workshop(hub, token, workshop, users)
    finally:
        cleanup_workshop(hub, token, workshop)


def _run_workshop(hub, token: str, workshop: dict, users) -> None:
    resv = workshop["reservation"]
    shown = slurm("scontrol", "show", "reservation", resv)
    assert "Accounts=expertise-centre" in shown and "PartitionName=cpu" in shown and "CoreCnt=3" in shown
    assert workshop["join_url"].endswith(f"/hub/join?code={workshop['code']}")

    # Two people without an account join with the code and land in their session.
    joined = {}
    for person in ("Ada Lovelace", "Grace Hopper"):
        session, answer = join(workshop["code"].lower(), person)  # a code typed in lower case is fine
        assert answer.status_code == 303, answer.text[-500:]
        user = re.search(r"/hub/spawn/([a-z0-9-]+)\?profile=" + PROFILE, answer.headers["Location"]).group(1)
        start_session(session, answer.headers["Location"])
        joined[user] = session
    for user in joined:
        hub.wait_ready(user, timeout=180)
        job = slurm("squeue", "-h", "-u", user, "-o", "%v|%a|%P").strip()
        assert job == f"{resv}|expertise-centre|cpu", job
    # An existing account joins with its own login.
    member, _, member_session = users.with_login("wm", org="umcg")
    page = member_session.get(f"{BASE}/hub/join", params={"code": workshop["code"]}, timeout=30)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    r = member_session.post(f"{BASE}/hub/join", data={"code": workshop["code"], "_xsrf": xsrf}, timeout=60,
                            allow_redirects=False)
    assert r.status_code == 303 and f"/hub/spawn/{member}?" in r.headers["Location"]

    # The material is in each temporary participant's home, private to them.
    for user in joined:
        home = Path(f"/home/{user}")
        assert stat.S_IMODE(home.stat().st_mode) & 0o077 == 0
        assert (home / workshop["folder"]).is_dir() and workshop["folder"] == f"intro-to-notebooks-{workshop['id']}"
        assert list((home / workshop["folder"]).rglob("*.ipynb"))

    # The seats are full now.
    _, full = join(workshop["code"], "Late Comer")
    assert full.status_code == 400 and "All 3 seats" in full.text

    # The trainer's live view lists everyone; the page shows them too.
    view = hub.api("GET", f"/workshops/{workshop['id']}", token=token).json()
    rows = {p["name"]: p for p in view["participants"]}
    assert set(rows) == {*joined, member}
    assert {rows[u]["display_name"] for u in joined} == {"Ada Lovelace", "Grace Hopper"}
    assert all(rows[u]["server"] == "running" and rows[u]["temporary"] for u in joined)
    assert rows[member]["temporary"] is False

    # Participants reach only their own server; the trainer reaches participants and nobody else.
    first, second = sorted(joined)
    first_token = hub.api("POST", f"/users/{first}/tokens", json={"expires_in": 600}).json()["token"]
    assert hub.api("GET", f"/users/{second}", token=first_token).status_code in (403, 404)
    other = requests.get(f"{BASE}/user/{second}/api/contents", headers={"Authorization": f"token {first_token}"},
                         timeout=30, allow_redirects=False)
    assert other.status_code in (302, 403, 404)
    mine = requests.get(f"{BASE}/user/{first}/api/contents", headers={"Authorization": f"token {first_token}"},
                        timeout=30)
    assert mine.status_code == 200
    # The trainer sees which notebook a participant has open.
    notebook = str(sorted((Path(f"/home/{first}") / workshop["folder"]).rglob("*.ipynb"))[0]
                   .relative_to(f"/home/{first}"))
    opened = requests.post(f"{BASE}/user/{first}/api/sessions", headers={"Authorization": f"token {first_token}"},
                           json={"path": notebook, "name": notebook, "type": "notebook",
                                 "kernel": {"name": "python3"}}, timeout=60)
    assert opened.status_code == 201, opened.text
    rows = {p["name"]: p for p in hub.api("GET", f"/workshops/{workshop['id']}", token=token).json()["participants"]}
    assert rows[first]["notebooks"] == [notebook] and rows[second]["notebooks"] == []
    assert subprocess.run(["sudo", "-n", "-u", first, "ls", f"/home/{second}"], capture_output=True,
                          check=False).returncode != 0
    assert hub.api("GET", f"/users/{second}", token=token).status_code == 200
    # Reading about a participant, yes; their server, no (not even their trainer: notebooks are shown read-only).
    status = requests.get(f"{BASE}/user/{second}/api/status", headers={"Authorization": f"token {token}"},
                          timeout=30, allow_redirects=False)
    assert status.status_code in (302, 403)
    assert status.status_code == 403 or "/hub/api/oauth2/authorize" in status.headers["Location"]
    other_trainer, other_token = users("tro", org=None)
    assert hub.api("POST", "/groups/trainers/users", json={"users": [other_trainer]}).status_code == 200
    for method, path in (("GET", ""), ("POST", "/end"), ("POST", "/push"), ("POST", "/collect")):
        assert hub.api(method, f"/workshops/{workshop['id']}{path}", token=other_token, json={}).status_code == 404
    assert hub.api("GET", "/workshops", token=other_token).json() == []
    assert hub.api("GET", f"/users/{second}", token=other_token).status_code in (403, 404)
    outsider, _ = users("out")
    assert hub.api("GET", f"/users/{outsider}", token=token).status_code in (403, 404)
    assert hub.api("GET", "/users", token=token).status_code in (200, 403)
    listed = hub.api("GET", "/users", token=token)
    if listed.status_code == 200:
        assert {u["name"] for u in listed.json()} <= {*joined, member}

    # Ending stops the seats' sessions and removes the reservation; temporary accounts still work (grace).
    r = hub.api("POST", f"/workshops/{workshop['id']}/end", token=token)
    assert r.status_code == 200 and r.json()["finished"]
    for user in joined:
        hub.wait_gone(user)
    assert resv not in reservations()
    assert hub.api("GET", f"/users/{first}").status_code == 200
    _, closed = join(workshop["code"], "After the end")
    assert closed.status_code == 400 and "not belong to a workshop that is open" in closed.text

    # Past the grace period the temporary accounts are disabled; the existing account stays.
    as_of = (datetime.now() + timedelta(days=8)).strftime("%Y-%m-%dT%H:%M:%S")
    r = hub.api("POST", "/workshops/tend", json={"as_of": as_of})
    assert r.status_code == 200 and workshop["id"] in r.json()["disabled"]
    for user, session in joined.items():
        assert hub.api("GET", f"/users/{user}").status_code == 404
        assert session.get(f"{BASE}/hub/api/user", timeout=30).status_code == 403
        assert Path(f"/home/{user}/{workshop['folder']}").is_dir()  # files stay
    assert hub.api("GET", f"/users/{member}").status_code == 200
    assert not {"workshop", f"workshop-{workshop['id']}"} & set(hub.api("GET", f"/users/{member}").json()["groups"])
    assert hub.api("GET", f"/users/{second}", token=token).status_code in (403, 404)


def test_a_full_class_joins_and_starts_at_the_same_moment(hub, trainer):
    """32 people join with the code at the same moment, each with an eighth of a GPU (gres/shard): all 32
    sessions run inside the reservation, on one GPU node, none fails; the trainer's view lists them."""
    _, token = trainer
    seats = 32
    r = hub.api("POST", "/workshops", token=token, json={
        "title": "Full class", **window(), "seats": seats, "profile": SHARED_GPU, "material": "getting-started"})
    assert r.status_code == 201, r.text
    workshop = r.json()
    try:
        assert "NodeCnt=1 " in slurm("scontrol", "show", "reservation", workshop["reservation"])
        barrier = threading.Barrier(seats)

        def one(n: int) -> str:
            session = requests.Session()
            page = session.get(f"{BASE}/hub/join", params={"code": workshop["code"]}, timeout=60)
            xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
            barrier.wait(timeout=120)
            answer = session.post(f"{BASE}/hub/join", data={"code": workshop["code"], "display_name": f"P {n}",
                                                            "_xsrf": xsrf}, timeout=300, allow_redirects=False)
            assert answer.status_code == 303, answer.text[-300:]
            start_session(session, answer.headers["Location"], timeout=300)
            return answer.headers["Location"].split("/hub/spawn/")[1].split("?")[0]

        with ThreadPoolExecutor(seats) as pool:
            names = list(pool.map(one, range(seats)))
        assert len(set(names)) == seats
        for name in names:
            hub.wait_ready(name, timeout=600)
        jobs = [line.split("|") for line in slurm("squeue", "-h", "-o", "%u|%T|%N|%b", "-R",
                                                     workshop["reservation"]).split()]
        assert sorted(user for user, *_ in jobs) == sorted(names)
        assert {(state, gres) for _, state, _, gres in jobs} == {("RUNNING", "gres:shard:1")}
        assert len({node for _, _, node, _ in jobs}) == 1  # 32 seats share the 4 GPUs of one node
        view = hub.api("GET", f"/workshops/{workshop['id']}", token=token).json()
        assert sorted(p["name"] for p in view["participants"]) == sorted(names)
        assert all(p["server"] == "running" for p in view["participants"])
        assert hub.api("POST", f"/workshops/{workshop['id']}/end", token=token).status_code == 200
        for name in names:
            hub.wait_gone(name)
        assert workshop["reservation"] not in reservations()
    finally:
        cleanup_workshop(hub, token, workshop)


def test_warm_seats_run_before_anyone_joins_and_people_land_in_them(hub, trainer):
    _, token = trainer
    r = hub.api("POST", "/workshops", token=token, json={
        "title": "Warm class", **window(), "seats": 2, "warm": 2, "profile": PROFILE})
    assert r.status_code == 201, r.text
    workshop = r.json()
    try:
        # What the tender service does every minute (it may be the one that starts them: wait for both).
        assert hub.api("POST", "/workshops/tend", json={}).status_code == 200
        deadline = time.monotonic() + 120
        while len(seats := hub.api("GET", f"/workshops/{workshop['id']}", token=token).json()["participants"]) < 2:
            assert time.monotonic() < deadline, seats
            time.sleep(0.5)
        assert len(seats) == 2 and all(s["warm_seat_free"] for s in seats)
        warm = {s["name"] for s in seats}
        for name in warm:
            hub.wait_ready(name, timeout=180)
            assert slurm("squeue", "-h", "-u", name, "-o", "%v").strip() == workshop["reservation"]
        session, answer = join(workshop["code"], "Ada Lovelace")
        assert answer.status_code == 303
        name = re.fullmatch(r"/user/([a-z0-9-]+)/lab", answer.headers["Location"]).group(1)  # straight in
        assert name in warm
        assert session.get(BASE + answer.headers["Location"], timeout=60).status_code == 200
        view = hub.api("GET", f"/workshops/{workshop['id']}", token=token).json()
        rows = {p["name"]: p for p in view["participants"]}
        assert rows[name]["display_name"] == "Ada Lovelace" and not rows[name]["warm_seat_free"]
        assert join(workshop["code"], "Grace Hopper")[1].headers["Location"] == f"/user/{(warm - {name}).pop()}/lab"
        assert join(workshop["code"], "Late Comer")[1].status_code == 400
    finally:
        cleanup_workshop(hub, token, workshop)


def first_cell(path: Path) -> str:
    """The text of a notebook file's first cell (files keep it as a list of lines)."""
    source = json.loads(path.read_text())["cells"][0]["source"]
    return "".join(source) if isinstance(source, list) else source


def notebook(text: str) -> dict:
    return {"type": "notebook", "format": "json", "content": {
        "nbformat": 4, "nbformat_minor": 5, "metadata": {},
        "cells": [{"cell_type": "markdown", "id": "a1", "metadata": {}, "source": text}]}}


def test_push_reaches_running_seats_without_overwriting_and_collect_gathers_the_work(hub, trainer):
    name, token = trainer
    r = hub.api("POST", "/workshops", token=token, json={"title": "Push class", **window(), "seats": 2,
                                                         "profile": PROFILE})
    assert r.status_code == 201, r.text
    workshop = r.json()
    auth = {"Authorization": f"token {token}"}
    try:
        assert hub.api("POST", f"/workshops/{workshop['id']}/push", token=token,
                       json={"path": "../etc/passwd"}).json()["field"] == "path"
        refused = hub.api("POST", f"/workshops/{workshop['id']}/push", token=token, json={"path": "lesson.ipynb"},
                          headers={"Accept-Language": "en"})
        assert refused.status_code == 400 and "Start your own server first" in refused.json()["message"]
        people = []
        for person in ("Ada", "Grace"):
            session, answer = join(workshop["code"], person)
            start_session(session, answer.headers["Location"])
            people.append(answer.headers["Location"].split("/hub/spawn/")[1].split("?")[0])
        assert hub.api("POST", f"/users/{name}/server", token=token, json={"profile": "cpu-small"}).status_code in (
            201, 202)
        for person in [*people, name]:
            hub.wait_ready(person, timeout=180)
        put = requests.put(f"{BASE}/user/{name}/api/contents/lesson.ipynb", headers=auth,
                           json=notebook("version 1"), timeout=60)
        assert put.status_code in (200, 201), put.text
        first = hub.api("POST", f"/workshops/{workshop['id']}/push", token=token, json={"path": "lesson.ipynb"})
        assert first.status_code == 200, first.text
        assert sorted(first.json()["copied"]) == sorted(people) and first.json()["beside"] == []
        for person in people:
            assert first_cell(Path(f"/home/{person}/{workshop['folder']}/lesson.ipynb")) == "version 1"
        # Ada works on her copy; the trainer updates theirs and pushes again: her work stays, the new one lands beside.
        requests.put(f"{BASE}/user/{name}/api/contents/lesson.ipynb", headers=auth, json=notebook("version 2"),
                     timeout=60)
        ada = Path(f"/home/{people[0]}/{workshop['folder']}/lesson.ipynb")
        work = json.loads(ada.read_text())
        work["cells"][0]["source"] = "Ada's answer"
        subprocess.run(["sudo", "-n", "-u", people[0], "tee", str(ada)], input=json.dumps(work), text=True,
                       capture_output=True, check=True)
        second = hub.api("POST", f"/workshops/{workshop['id']}/push", token=token, json={"path": "lesson.ipynb"})
        assert sorted(second.json()["beside"]) == sorted(people)
        assert first_cell(ada) == "Ada's answer"
        beside = list(ada.parent.glob("lesson (updated *).ipynb"))
        assert len(beside) == 1 and first_cell(beside[0]) == "version 2"
        # At the end the trainer collects everyone's notebooks into their own home.
        collected = hub.api("POST", f"/workshops/{workshop['id']}/collect", token=token)
        assert sorted(collected.json()["collected"]) == sorted(people), collected.text
        mine = Path(f"/home/{name}/collected-{workshop['folder']}")
        assert first_cell(mine / people[0] / "lesson.ipynb") == "Ada's answer"
        assert sorted(p.name for p in (mine / people[0]).glob("*.ipynb")) == sorted([beside[0].name, "lesson.ipynb"])
    finally:
        hub.api("DELETE", f"/users/{name}/server")
        cleanup_workshop(hub, token, workshop)


def test_tending_needs_its_scope(hub, users):
    _, token = users("tn")
    assert hub.api("POST", "/workshops/tend", token=token, json={}).status_code == 403


def test_wrong_codes_are_refused_politely_then_rate_limited(hub):
    """Last in this file: it leaves this address limited for a minute, so it waits that out at the end."""
    _, first = join("WRONGCODE", "Someone")
    assert first.status_code == 400 and "Please check it with your trainer" in first.text
    statuses = [join(f"WRONG{n:04d}", "Someone")[1].status_code for n in range(25)]
    assert statuses[0] == 400 and statuses[-1] == 429
    limited = join("WRONGAGAIN", "Someone")[1]
    assert limited.status_code == 429 and "Too many attempts" in limited.text
    time.sleep(61)


def test_a_seat_never_moves_a_members_default_slurm_account(hub, users):
    """A member of an organisation who joins a workshop keeps working for their organisation by default."""
    name, _token = users(org="umcg")
    mkuser = ["/usr/local/sbin/aifl-mkuser", name]
    subprocess.run([*mkuser, "umcg"], check=True, capture_output=True, timeout=60)
    subprocess.run([*mkuser, "expertise-centre"], check=True, capture_output=True, timeout=60)  # as a seat does
    assert slurm("sacctmgr", "-nP", "show", "user", name, "format=DefaultAccount").strip() == "umcg"
    accounts = slurm("sacctmgr", "-nP", "show", "assoc", f"user={name}", "format=Account").split()
    assert {"umcg", "expertise-centre"} <= set(accounts)
