"""A participant's work: the trainer reads a notebook read-only, the participant downloads a zip.

Both go through ``aifl-work``, run by the hub as the participant (homes are 0700). Tested on the running
lab: the helper itself (as a real lab user, and refused as root), the read-only page (nothing in a notebook
becomes HTML) and who may see it, and the zip during and after the workshop. The renderer also without it.
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import zipfile
from pathlib import Path

import pytest
import requests
from aifl_hub.workshop_files import notebook_cells
from conftest import BASE, REPO
from test_workshop_hub import PROFILE, cleanup_workshop, join, window

HELPER = "/usr/local/sbin/aifl-work"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(16)).decode()


def notebook(*cells: dict) -> dict:
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": list(cells)}


def code(source: str, *outputs: dict) -> dict:
    return {"cell_type": "code", "source": source, "metadata": {}, "execution_count": 1, "outputs": list(outputs)}


def markdown(source: str) -> dict:
    return {"cell_type": "markdown", "source": source, "metadata": {}}


def as_user(user: str, *argv: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` as ``user`` (as the hub runs the helper)."""
    return subprocess.run(["sudo", "-n", "-u", user, *argv], input=data, capture_output=True, timeout=60, check=False)


def put(user: str, path: str, content: bytes) -> None:
    """Write ``content`` to ``~user/path`` as that user (folders made as needed)."""
    target = Path(f"/home/{user}") / path
    assert as_user(user, "mkdir", "-p", str(target.parent)).returncode == 0
    assert as_user(user, "tee", str(target), data=content).returncode == 0


# ---------------------------------------------------------------- the renderer, without the system

def test_cells_are_plain_text_and_only_real_png_images():
    cells = notebook_cells(notebook(
        markdown(["# Title\n", "<script>alert(1)</script>"]),
        code("print('<b>hi</b>')",
             {"output_type": "stream", "name": "stdout", "text": ["<b>hi</b>\n"]},
             {"output_type": "display_data", "data": {"text/html": "<img src=x onerror=alert(1)>",
                                                     "text/plain": "<HTML object>"}},
             {"output_type": "display_data", "data": {"image/png": PNG, "text/plain": "<Figure>"}},
             {"output_type": "display_data", "data": {"image/png": base64.b64encode(b"GIF89a").decode(),
                                                     "text/plain": "not a png"}},
             {"output_type": "execute_result", "data": {"image/png": "%%% not base64"}},
             {"output_type": "error", "ename": "ValueError", "evalue": "bad", "traceback": []}),
        {"cell_type": "unknown", "source": "x"}, "not a cell"))
    assert [c.kind for c in cells] == ["markdown", "code"]
    assert cells[0].source == "# Title\n<script>alert(1)</script>"
    outputs = [(o.kind, o.text, o.png) for o in cells[1].outputs]
    assert outputs == [("text", "<b>hi</b>\n", ""), ("text", "<HTML object>", ""), ("image", "", PNG),
                       ("text", "not a png", ""), ("error", "ValueError: bad", "")]
    assert notebook_cells({"cells": "nonsense"}) == []


# ---------------------------------------------------------------- on the running lab


@pytest.fixture
def person(hub, users):
    """A lab user with a workshop folder ``course`` holding a notebook, a sub-folder and links out of it."""
    name, _ = users("wk")
    put(name, "course/lesson.ipynb", json.dumps(notebook(markdown("hello"))).encode())
    put(name, "course/part 2/oefening (1).ipynb", json.dumps(notebook()).encode())
    put(name, "course/data.csv", b"a,b\n1,2\n")
    put(name, "secret.ipynb", b"{}")
    put(name, "elsewhere/other.ipynb", b"{}")
    home = f"/home/{name}"
    for target, link in ((f"{home}/secret.ipynb", "course/link.ipynb"), (f"{home}/elsewhere", "course/linked"),
                         ("/etc/passwd", "course/passwd.ipynb"), (f"{home}/course", "linkfolder")):
        assert as_user(name, "ln", "-s", target, f"{home}/{link}").returncode == 0
    return name


@pytest.mark.usefixtures("lab_system")
def test_the_installed_helper_is_the_project_s():
    assert Path(HELPER).read_text() == (REPO / "extensions/hub/aifl_hub/workshop_work.py").read_text()
    assert Path(HELPER).stat().st_uid == 0 and Path(HELPER).stat().st_mode & 0o022 == 0


@pytest.mark.usefixtures("lab_system")
def test_the_helper_never_runs_as_root():
    done = subprocess.run([HELPER, "list", "course"], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2 and "never as root" in done.stderr and done.stdout == ""


def test_the_helper_reads_only_inside_the_folder(person):
    listed = as_user(person, HELPER, "list", "course")
    assert listed.returncode == 0, listed.stderr
    assert [n["path"] for n in json.loads(listed.stdout)] == ["course/lesson.ipynb",
                                                               "course/part 2/oefening (1).ipynb"]
    shown = as_user(person, HELPER, "show", "course/lesson.ipynb")
    assert shown.returncode == 0 and json.loads(shown.stdout)["cells"][0]["source"] == "hello"
    assert as_user(person, HELPER, "show", "course/part 2/oefening (1).ipynb").returncode == 0
    assert json.loads(as_user(person, HELPER, "list", "nothing-here").stdout) == []
    refused = [
        ("list", "../etc"), ("list", ".hidden"), ("list", "course/sub"), ("list", "/etc"), ("list", "Course"),
        ("show", "course/../secret.ipynb"), ("show", "course/../../etc/passwd.ipynb"), ("show", "/etc/passwd"),
        ("show", "course/data.csv"), ("show", "course/.ipynb_checkpoints/x.ipynb"), ("show", "lesson.ipynb"),
        ("show", "course/link.ipynb"), ("show", "course/passwd.ipynb"), ("show", "course/linked/other.ipynb"),
        ("show", "linkfolder/lesson.ipynb"), ("zip", "linkfolder"), ("zip", "../course"), ("zip", "course/"),
        ("remove", "course"), ("list", "course", "extra"),
    ]
    for args in refused:
        done = as_user(person, HELPER, *args)
        assert done.returncode == 2, (args, done.returncode, done.stderr)
        assert done.stdout == b"", args
    assert as_user(person, HELPER, "show", "course/gone.ipynb").returncode == 3
    assert as_user(person, HELPER, "zip", "no-such-folder").returncode == 3
    zipped = as_user(person, HELPER, "zip", "course")
    assert zipped.returncode == 0, zipped.stderr
    with zipfile.ZipFile(io.BytesIO(zipped.stdout)) as archive:
        assert sorted(archive.namelist()) == ["course/data.csv", "course/lesson.ipynb",
                                              "course/part 2/oefening (1).ipynb"]
        assert archive.read("course/data.csv") == b"a,b\n1,2\n"


def test_the_helper_reads_nothing_of_another_user(person, users):
    other, _ = users("wo")
    done = as_user(other, HELPER, "list", "course")
    assert done.returncode == 0 and json.loads(done.stdout) == []  # their own home: no such folder
    assert as_user(other, HELPER, "show", f"../{person}/course/lesson.ipynb").returncode == 2


def logged_in_trainer(hub, users, prefix: str) -> tuple[str, requests.Session]:
    """A member of the trainers group who is logged in (pages need the login cookie); with their token."""
    name, token, session = users.with_login(prefix, org=None)
    assert hub.api("POST", "/groups/trainers", json={}).status_code in (201, 409)
    assert hub.api("POST", "/groups/trainers/users", json={"users": [name]}).status_code == 200
    return token, session


def test_trainer_reads_a_notebook_and_participants_download_their_work(hub, users):
    token, trainer_session = logged_in_trainer(hub, users, "trv")
    r = hub.api("POST", "/workshops", token=token, json={"title": "Read along", **window(), "seats": 2,
                                                         "profile": PROFILE})
    assert r.status_code == 201, r.text
    workshop = r.json()
    try:
        _read_and_download(hub, token, trainer_session, workshop, users)
    finally:
        cleanup_workshop(hub, token, workshop)


def _participant(workshop: dict, display_name: str) -> tuple[str, requests.Session]:
    session, answer = join(workshop["code"], display_name)
    assert answer.status_code == 303, answer.text[-500:]
    return re.search(r"/hub/spawn/([a-z0-9-]+)\?", answer.headers["Location"]).group(1), session


def _read_and_download(hub, token: str, trainer_session: requests.Session, workshop: dict, users) -> None:
    folder, wid = workshop["folder"], workshop["id"]
    first, first_session = _participant(workshop, "Ada")
    second, second_session = _participant(workshop, "Grace")
    sneaky = notebook(markdown("<script>alert('md')</script> **bold**"),
                      code("x = '<script>alert(1)</script>'\nprint(x)",
                           {"output_type": "stream", "name": "stdout", "text": "<script>alert(2)</script>\n"},
                           {"output_type": "display_data", "data": {"text/html": "<script>alert(3)</script>",
                                                                   "text/plain": "<IPython.core.display.HTML>"}},
                           {"output_type": "display_data", "data": {"image/png": PNG}}))
    put(first, f"{folder}/sneaky.ipynb", json.dumps(sneaky).encode())
    put(second, f"{folder}/mine.ipynb", json.dumps(notebook(code("print(2)"))).encode())

    # The live view links each participant's notebooks (their servers are not running).
    rows = {p["name"]: p for p in hub.api("GET", f"/workshops/{wid}", token=token).json()["participants"]}
    assert rows[first]["files"] == [f"{folder}/sneaky.ipynb"] and rows[second]["files"] == [f"{folder}/mine.ipynb"]
    live = trainer_session.get(f"{BASE}/hub/workshops/{wid}", timeout=60)
    assert live.status_code == 200
    view_url = f"/hub/workshops/{wid}/seats/{first}/view?path={folder}/sneaky.ipynb"
    assert view_url in live.text

    # The trainer reads it: every source and output as text, the image as PNG data, no script of the notebook.
    page = trainer_session.get(BASE + view_url, headers={"Accept-Language": "en"}, timeout=60)
    assert page.status_code == 200, page.text[-500:]
    assert "&lt;script&gt;alert(&#39;md&#39;)&lt;/script&gt; **bold**" in page.text
    assert "x = &#39;&lt;script&gt;alert(1)&lt;/script&gt;&#39;" in page.text
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page.text and "&lt;IPython.core.display.HTML&gt;" in page.text
    assert f'src="data:image/png;base64,{PNG}"' in page.text
    assert not re.search(r"<script>alert", page.text) and "alert(3)" not in page.text
    assert "Notebook of Ada" in page.text and "read-only" in page.text
    nl = trainer_session.get(BASE + view_url, headers={"Accept-Language": "nl"}, timeout=60)
    assert "alleen lezen" in nl.text

    # Paths outside the folder, files that are not there, and people who are not its trainer get nothing.
    view = f"{BASE}/hub/workshops/{wid}/seats"
    for path, status in ((f"{folder}/../secret.ipynb", 400), ("other/x.ipynb", 400), (f"{folder}/gone.ipynb", 404),
                         (f"{folder}/x.txt", 400)):
        assert trainer_session.get(f"{view}/{first}/view", params={"path": path},
                                   timeout=60).status_code == status, path
    outsider, _ = users("wx")
    put(outsider, f"{folder}/theirs.ipynb", json.dumps(notebook()).encode())
    assert trainer_session.get(f"{view}/{outsider}/view", params={"path": f"{folder}/theirs.ipynb"},
                               timeout=60).status_code == 404
    _, other_trainer = logged_in_trainer(hub, users, "trw")
    assert other_trainer.get(BASE + view_url, timeout=60).status_code == 404
    assert second_session.get(BASE + view_url, timeout=60).status_code == 403
    assert second_session.get(f"{BASE}/hub/workshops/{wid}/seats/{second}/view",
                              params={"path": f"{folder}/mine.ipynb"}, timeout=60).status_code == 403

    # Participants find their workshops and download their own folder, also after the workshop ended.
    mine = first_session.get(f"{BASE}/hub/workshops/mine", headers={"Accept-Language": "en"}, timeout=60)
    assert mine.status_code == 200 and "Read along" in mine.text and f"/hub/workshops/{wid}/my-work.zip" in mine.text
    assert 'href="/hub/workshops/mine"' in first_session.get(f"{BASE}/hub/home", timeout=60).text

    def download(session: requests.Session) -> dict[str, bytes]:
        answer = session.get(f"{BASE}/hub/workshops/{wid}/my-work.zip", timeout=120)
        assert answer.status_code == 200, answer.text[-500:]
        assert answer.headers["Content-Type"] == "application/zip"
        assert answer.headers["Content-Disposition"] == f'attachment; filename="{folder}.zip"'
        with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
            return {name: archive.read(name) for name in archive.namelist()}

    assert json.loads(download(first_session)[f"{folder}/sneaky.ipynb"]) == sneaky
    assert list(download(second_session)) == [f"{folder}/mine.ipynb"]
    r = hub.api("POST", f"/workshops/{wid}/end", token=token)
    assert r.status_code == 200 and r.json()["finished"]
    assert list(download(second_session)) == [f"{folder}/mine.ipynb"]
    assert "Read along" in second_session.get(f"{BASE}/hub/workshops/mine", timeout=60).text

    # Someone who did not join gets nothing; an empty workshop folder is said plainly.
    _, _, member_session = users.with_login("wz")
    assert member_session.get(f"{BASE}/hub/workshops/{wid}/my-work.zip", timeout=60).status_code == 404
    assert "Read along" not in member_session.get(f"{BASE}/hub/workshops/mine", timeout=60).text
    assert as_user(second, "rm", "-r", f"/home/{second}/{folder}").returncode == 0
    gone = second_session.get(f"{BASE}/hub/workshops/{wid}/my-work.zip", headers={"Accept-Language": "en"},
                              timeout=60)
    assert gone.status_code == 404 and f"~/{folder} does not exist" in gone.text
