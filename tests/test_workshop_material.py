"""A trainer's own course material: the checks of an upload (unit tests), and on the running lab a workshop
made with uploaded notebooks whose participant finds them in their home, and bad uploads that create nothing.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import stat
import zipfile
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests
from aifl_hub.options import validate_options
from aifl_hub.script import JobSpec, build_script
from aifl_hub.site import load_site
from aifl_hub.workshop_material import (
    MAX_FILE_BYTES,
    Material,
    check_upload,
    decode_api_upload,
    discard_material,
    store_material,
)
from aifl_hub.workshops import Participant, Workshop, WorkshopError, own_material_folder, seat_for, store_for
from conftest import BASE, STATE, slurm
from test_workshop_hub import cleanup_workshop, join

REPO = Path(__file__).resolve().parents[1]
SITE = load_site(REPO / "hub_config" / "site.yaml")
UPLOADS = Path(SITE["spawner"]["environments_dir"]) / ".workshops"
PROFILE = "workshop-cpu"


def notebook(text: str = "print('hello')") -> bytes:
    """A small notebook in format version 4."""
    return json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": ["# Lesson"]},
        {"cell_type": "code", "metadata": {}, "source": text, "outputs": [], "execution_count": None}]}).encode()


def a_zip(members: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    """A zip of ``members`` (and symbolic links named ``links``)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return out.getvalue()


# ---------------------------------------------------------------- the checks, without the system

def test_notebooks_and_data_files_are_accepted():
    material = check_upload([("Lesson 1.ipynb", notebook()), ("prices.csv", b"a,b\n1,2\n"), ("b.ipynb", notebook())],
                            "en")
    assert [path for path, _data in material.files] == ["Lesson 1.ipynb", "b.ipynb", "prices.csv"]
    assert material.notebooks == 2


def test_a_zip_of_a_folder_gives_its_contents_without_the_metadata_of_zip_tools():
    data = a_zip({"course/": b"", "course/intro.ipynb": notebook(), "course/data/sales.csv": b"x\n",
                  "course/.ipynb_checkpoints/intro-checkpoint.ipynb": notebook(),
                  "__MACOSX/course/._intro.ipynb": b"\0", "course/.DS_Store": b"\0"})
    material = check_upload([("course.zip", data)], "en")
    assert [path for path, _data in material.files] == ["data/sales.csv", "intro.ipynb"]
    assert material.notebooks == 1
    mixed = check_upload([("c.zip", a_zip({"one/a.ipynb": notebook(), "two/b.txt": b"x"}))], "en")
    assert [path for path, _data in mixed.files] == ["one/a.ipynb", "two/b.txt"]  # two folders: kept as they are


@pytest.mark.parametrize(("upload", "message"), [
    ([("../x.ipynb", notebook())], "../x.ipynb is not allowed"),
    ([("a/b.ipynb", notebook())], "a/b.ipynb is not allowed"),
    ([(".hidden.ipynb", notebook())], ".hidden.ipynb is not allowed"),
    ([("x..ipynb", notebook())], "x..ipynb is not allowed"),
    ([("tool.exe", b"MZ"), ("a.ipynb", notebook())], "tool.exe: only notebooks (.ipynb) and data files"),
    ([("a.ipynb", b"not json")], "a.ipynb is not a notebook: it is not valid JSON"),
    ([("a.ipynb", b'{"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": []}')],
     "a.ipynb is not a notebook in Jupyter's format (version 4)"),
    ([("a.ipynb", b'{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": []}]}')],
     "a.ipynb is not a notebook in Jupyter's format"),
    ([("a.ipynb", notebook()), ("big.csv", b"x" * (MAX_FILE_BYTES + 1))], "big.csv is larger than 20 MB"),
    ([(f"{n}.csv", b"x" * (MAX_FILE_BYTES - 10)) for n in range(3)], "Together the files are larger than 50 MB"),
    ([("data.csv", b"x")], "There is no notebook (.ipynb)"),
    ([("a.ipynb", notebook()), ("A.ipynb", notebook())], "A.ipynb is there twice"),
    ([("a.zip", a_zip({"a.ipynb": notebook()})), ("b.ipynb", notebook())], "or one .zip of a folder; not both"),
    ([("a.zip", b"PK but not a zip")], "a.zip is not a zip file that can be read"),
    ([("a.zip", a_zip({"c/a.ipynb": notebook(), "c/../../evil.ipynb": notebook()}))], "c/../../evil.ipynb is not"),
    ([("a.zip", a_zip({"/etc/cron.d/x.ipynb": notebook()}))], "/etc/cron.d/x.ipynb is not allowed"),
    ([("a.zip", a_zip({"c/a.ipynb": notebook(), "c/.env.txt": b"SECRET=1"}))], "c/.env.txt is not allowed"),
    ([("a.zip", a_zip({"c/a.ipynb": notebook()}, links=("c/passwd.txt",)))], "c/passwd.txt in the zip is a link"),
    ([("a.zip", a_zip({"c/a.ipynb": notebook(), "c/run.sh": b"#!/bin/sh"}))], "c/run.sh: only notebooks"),
    ([("a.zip", a_zip({"a/b/c/d/e/f/g.ipynb": notebook()}))], "a/b/c/d/e/f/g.ipynb is not allowed"),
])
def test_a_bad_upload_is_refused_with_a_message_naming_the_problem(upload, message):
    with pytest.raises(WorkshopError) as refused:
        check_upload(upload, "en")
    assert refused.value.field == "material"
    assert message in refused.value.message


def test_the_refusal_is_in_dutch_for_dutch_trainers():
    with pytest.raises(WorkshopError) as refused:
        check_upload([("tool.exe", b"MZ")], "nl")
    assert refused.value.message.startswith("tool.exe: alleen notebooks (.ipynb) en databestanden")


def test_the_api_upload_is_base64():
    files = decode_api_upload([{"name": "a.ipynb", "content": base64.b64encode(notebook()).decode()}], "en")
    assert files == [("a.ipynb", notebook())]
    for bad in ("a.ipynb", [{"name": "a.ipynb"}], [{"name": "a.ipynb", "content": "not base64!"}], [["a", "b"]]):
        with pytest.raises(WorkshopError, match="give a list of files"):
            decode_api_upload(bad, "en")


def test_the_material_is_stored_readable_by_everyone_and_removed_again(tmp_path):
    folder = tmp_path / ".workshops" / "abc123" / "material"
    folder.parent.parent.mkdir()
    store_material(folder, Material((("data/prices.csv", b"1,2\n"), ("lesson.ipynb", notebook()))))
    assert (folder / "lesson.ipynb").read_bytes() == notebook()
    assert stat.S_IMODE((folder / "data" / "prices.csv").stat().st_mode) == 0o644
    assert {stat.S_IMODE(p.stat().st_mode) for p in (folder, folder / "data", folder.parent)} == {0o755}
    assert [p.name for p in folder.parent.iterdir()] == ["material"]  # the staging folder is gone
    discard_material(folder)
    assert not folder.parent.exists()


def test_a_failed_store_leaves_nothing(tmp_path):
    folder = tmp_path / ".workshops" / "abc123" / "material"
    folder.parent.parent.mkdir()
    with pytest.raises(OSError):  # a file where the upload has a folder of the same name
        store_material(folder, Material((("a", b"x"), ("a/b.ipynb", notebook()))))
    assert list(folder.parent.iterdir()) == []


def test_a_seat_of_a_workshop_with_own_material_copies_the_stored_folder(tmp_path):
    site = {**SITE, "hub": {**SITE["hub"], "state_dir": str(tmp_path)}}
    now = datetime(2026, 11, 25, 9, 0, 0)
    old = {"id": "own123", "title": "Own", "starts_at": "2026-11-25T09:00:00", "ends_at": "2026-11-25T12:00:00",
           "seats": 2, "profile": PROFILE, "material": "", "folder": "own", "trainer": "tina", "code": "ABCD2345",
           "partition": "cpu", "created_at": "2026-11-24T09:00:00"}
    assert Workshop.from_json(old).own_notebooks == 0  # a workshops.json from before uploads
    workshop = Workshop.from_json({**old, "own_notebooks": 2})
    workshop.participants["ann"] = Participant("ann", "ann", False, "2026-11-25T09:01:00")
    store_for(str(tmp_path)).add(workshop)
    seat = seat_for(site, "ann", PROFILE, now + timedelta(minutes=5))
    assert seat.material == "/opt/aifl/envs/.workshops/own123/material" == str(own_material_folder(site, "own123"))
    request = validate_options(site, {"profile": PROFILE}, groups=["workshop"])
    script = build_script(request, JobSpec(username="ann", home="/home/ann", log_path="/home/ann/x.log",
                                           command=["/bin/true"], export_names=[], path_dirs=["/usr/bin"],
                                           material=(seat.material, "/home/ann/own")))
    assert "cp -R /opt/aifl/envs/.workshops/own123/material /home/ann/own" in script


# ---------------------------------------------------------------- on the running lab

def window() -> dict[str, str]:
    start = datetime.now()  # an hour from now (past midnight it ends the next day)
    return {"date": start.strftime("%Y-%m-%d"), "start": start.strftime("%H:%M"),
            "end": (start + timedelta(hours=1)).strftime("%H:%M")}


def orphan_reservations() -> set[str]:
    """Workshop reservations in Slurm that belong to no workshop of the hub (its store, read after Slurm)."""
    shown = set(re.findall(r"ReservationName=aifl-ws-([a-z0-9]{6})", slurm("scontrol", "show", "reservation")))
    return shown - {w["id"] for w in json.loads((STATE / "workshops.json").read_text())["workshops"]}


@pytest.fixture
def trainer(hub, users):
    """A trainer with a token and a logged-in browser session."""
    name, token, session = users.with_login("tm", org=None)
    assert hub.api("POST", "/groups/trainers", json={}).status_code in (201, 409)
    assert hub.api("POST", "/groups/trainers/users", json={"users": [name]}).status_code == 200
    return name, token, session


def end_and_remove(hub, token: str, workshop_id: str) -> None:
    """End the workshop, remove its temporary accounts and its stored material."""
    cleanup_workshop(hub, token, {"id": workshop_id})
    shutil.rmtree(UPLOADS / workshop_id, ignore_errors=True)


@pytest.mark.usefixtures("lab_system")
def test_a_participant_finds_the_trainers_own_notebooks_in_their_home(hub, trainer):
    _, token, session = trainer
    upload = [{"name": "lesson.ipynb", "content": base64.b64encode(notebook("answer = 42")).decode()},
              {"name": "prices.csv", "content": base64.b64encode(b"day,price\n1,3\n").decode()}]
    r = hub.api("POST", "/workshops", token=token, json={
        "title": "Own material", **window(), "seats": 1, "profile": PROFILE, "upload": upload})
    assert r.status_code == 201, r.text
    workshop = r.json()
    try:
        assert (workshop["own_notebooks"], workshop["material"]) == (1, "")
        stored = UPLOADS / workshop["id"] / "material"
        assert sorted(p.name for p in stored.iterdir()) == ["lesson.ipynb", "prices.csv"]
        assert stat.S_IMODE((stored / "lesson.ipynb").stat().st_mode) == 0o644
        assert stored.owner() == "aifl-hub"
        view = session.get(f"{BASE}/hub/workshops/{workshop['id']}", headers={"Accept-Language": "en"}, timeout=30)
        folder = workshop["folder"]
        assert folder == f"own-material-{workshop['id']}"
        assert "Your own notebooks: 1" in view.text and f"~/{folder}" in view.text

        _, answer = join(workshop["code"], "Ada")
        assert answer.status_code == 303, answer.text[-500:]
        user = re.search(r"/hub/spawn/([a-z0-9-]+)\?", answer.headers["Location"]).group(1)
        assert hub.api("POST", f"/users/{user}/server", json={"profile": PROFILE}).status_code in (201, 202)
        hub.wait_ready(user, timeout=180)
        user_token = hub.api("POST", f"/users/{user}/tokens", json={"expires_in": 600}).json()["token"]
        headers = {"Authorization": f"token {user_token}"}
        got = requests.get(f"{BASE}/user/{user}/api/contents/{folder}/lesson.ipynb", headers=headers, timeout=30)
        assert got.status_code == 200, got.text
        assert got.json()["type"] == "notebook"
        assert got.json()["content"]["cells"][1]["source"] == "answer = 42"
        data = requests.get(f"{BASE}/user/{user}/api/contents/{folder}/prices.csv", headers=headers, timeout=30)
        assert data.json()["content"] == "day,price\n1,3\n"
    finally:
        end_and_remove(hub, token, workshop["id"])


@pytest.mark.usefixtures("lab_system")
def test_a_zip_uploaded_on_the_page_becomes_the_material(hub, trainer):
    _, token, session = trainer
    page = session.get(f"{BASE}/hub/workshops", headers={"Accept-Language": "en"}, timeout=30)
    assert 'name="material_upload"' in page.text and "or one .zip of a folder" in page.text
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    data = a_zip({"course/one.ipynb": notebook(), "course/two.ipynb": notebook(), "course/img/plot.png": b"\x89PNG"})
    r = session.post(f"{BASE}/hub/workshops", data={"_xsrf": xsrf, "title": "Zipped", **window(), "seats": "1",
                                                    "warm": "0", "profile": PROFILE, "material": ""},
                     files=[("material_upload", ("course.zip", data, "application/zip"))], timeout=60,
                     allow_redirects=False)
    assert r.status_code == 303, r.text[-1500:]
    workshop_id = r.headers["Location"].rstrip("/").rsplit("/", 1)[1]
    try:
        stored = UPLOADS / workshop_id / "material"
        assert sorted(str(p.relative_to(stored)) for p in stored.rglob("*")) == [
            "img", "img/plot.png", "one.ipynb", "two.ipynb"]
        view = session.get(f"{BASE}{r.headers['Location']}", headers={"Accept-Language": "nl"}, timeout=30)
        assert "Je eigen notebooks: 2" in view.text
    finally:
        end_and_remove(hub, token, workshop_id)


@pytest.mark.usefixtures("lab_system")
def test_a_bad_upload_creates_nothing(hub, trainer):
    _, token, session = trainer
    before = sorted(UPLOADS.iterdir())

    def upload(name: str, data: bytes) -> dict[str, str]:
        return {"name": name, "content": base64.b64encode(data).decode()}

    cases = [
        ([upload("c.zip", a_zip({"c/a.ipynb": notebook(), "c/../../../x.ipynb": notebook()}))], "is not allowed"),
        ([upload("lesson.ipynb", b"<html>not a notebook</html>")], "is not a notebook"),
        ([upload("lesson.ipynb", notebook()), upload("setup.exe", b"MZ")], "setup.exe: only notebooks"),
        ([upload("c.zip", a_zip({"c/a.ipynb": notebook()}, links=("c/key.txt",)))], "is a link"),
    ]
    for files, message in cases:
        r = hub.api("POST", "/workshops", token=token, headers={"Accept-Language": "en"},
                    json={"title": "Bad upload", **window(), "seats": 1, "profile": PROFILE, "upload": files})
        assert r.status_code == 400, r.text
        assert r.json()["field"] == "material" and message in r.json()["message"], r.json()
    both = hub.api("POST", "/workshops", token=token, headers={"Accept-Language": "en"}, json={
        "title": "Both", **window(), "seats": 1, "profile": PROFILE, "material": "getting-started",
        "upload": [upload("a.ipynb", notebook())]})
    assert both.status_code == 400 and "not both" in both.json()["message"]

    # On the page: too big, in Dutch.
    page = session.get(f"{BASE}/hub/workshops", timeout=30)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    r = session.post(f"{BASE}/hub/workshops", headers={"Accept-Language": "nl"}, data={
        "_xsrf": xsrf, "title": "Too big", **window(), "seats": "1", "profile": PROFILE, "material": ""},
        files=[("material_upload", ("a.ipynb", notebook(), "application/json")),
               ("material_upload", ("big.csv", b"x" * (MAX_FILE_BYTES + 1), "text/csv"))], timeout=120)
    assert r.status_code == 400
    assert "big.csv is groter dan 20 MB" in r.text and 'id="aifl-workshop-error"' in r.text

    assert hub.api("GET", "/workshops", token=token).json() == []
    assert orphan_reservations() == set()
    assert sorted(UPLOADS.iterdir()) == before
