"""A user's home folder fills up: saving fails in plain words, the saved version stays, and everything works on.

On the real local cluster: the test user's home is a small file system of its own (a 6 MB tmpfs mounted
over it before the session starts), filled by the user; JupyterLab's own contents API is what JupyterLab
calls when the user saves.
"""

from __future__ import annotations

import errno
import json
import pwd
import re
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from aifl_notebook.contents import disk_full, full_message
from conftest import BASE
from test_spawn import spawn


@contextmanager
def small_home(name: str, size: str = "6m") -> Iterator[Path]:
    """``name``'s home folder on a file system of ``size`` of its own, with what the home held."""
    entry = pwd.getpwnam(name)
    staging = tempfile.mkdtemp(prefix="aifl-small-home-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700,uid={entry.pw_uid},gid={entry.pw_gid}",
                    "tmpfs", staging], check=True, timeout=30)
    subprocess.run(["cp", "-a", f"{entry.pw_dir}/.", staging], check=True, timeout=30)
    subprocess.run(["mount", "--move", staging, entry.pw_dir], check=True, timeout=30)
    try:
        yield Path(entry.pw_dir)
    finally:
        subprocess.run(["umount", "--lazy", entry.pw_dir], check=True, timeout=30)
        Path(staging).rmdir()


def notebook(*sources: str) -> dict:
    cells = [{"cell_type": "code", "metadata": {}, "source": s, "outputs": [], "execution_count": None, "id": f"c{i}"}
             for i, s in enumerate(sources)]
    return {"type": "notebook", "content": {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}}


@pytest.mark.cluster
def test_a_full_home_refuses_a_save_in_plain_words_and_keeps_the_saved_version_and_the_session(hub, users):
    name, token, browser = users.with_login()
    with small_home(name) as home:
        server = spawn(hub, name, token, {"profile": "cpu-small"}, lang="en")
        headers = {"Authorization": f"token {token}"}
        url = f"{BASE}{server['url']}api/contents/work.ipynb"
        saved = requests.put(url, json=notebook("print('the saved version')"), headers=headers, timeout=30)
        assert saved.status_code == 201, saved.text
        # The user fills the home folder (dd stops at "No space left on device").
        subprocess.run(["runuser", "-u", name, "--", "dd", "if=/dev/zero", f"of={home}/filler", "bs=64k"],
                       capture_output=True, timeout=60, check=False)
        more = notebook(*[f"step_{i} = {i}  # a longer notebook than the space that is left" for i in range(3000)])
        refused = requests.put(url, json=more, headers=headers, timeout=30)
        assert refused.status_code == 507, refused.text
        message = refused.json()["message"]
        assert message.startswith("Your home folder is full, so work.ipynb was not saved. The version you saved "
                                  "before is kept. Delete or move files you no longer need, then save again.")
        assert re.search(r"In use: [0-9.]+ MB of [0-9.]+ MB\.$", message), message
        kept = json.loads((home / "work.ipynb").read_text())
        assert ["".join(c["source"]) for c in kept["cells"]] == ["print('the saved version')"]
        # The session, the hub and the user's other files go on working.
        assert requests.get(f"{BASE}{server['url']}api/status", headers=headers, timeout=30).status_code == 200
        assert browser.get(f"{BASE}/hub/home", timeout=30).status_code == 200
        assert hub.server(name)["ready"]
        (home / "filler").unlink()
        again = requests.put(url, json=more, headers=headers, timeout=30)
        assert again.status_code == 200, again.text
        assert len(json.loads((home / "work.ipynb").read_text())["cells"]) == 3000
        hub.api("DELETE", f"/users/{name}/server", token=token)
        hub.wait_gone(name)


def test_the_full_home_message_is_in_dutch_too(tmp_path: Path) -> None:
    dutch = full_message("werk.ipynb", str(tmp_path), "nl")
    assert dutch.startswith("Je thuismap is vol, dus werk.ipynb is niet opgeslagen. De versie die je eerder opsloeg, "
                            "blijft bewaard.")
    assert "In gebruik: " in dutch and " van " in dutch
    assert full_message("x.ipynb", str(tmp_path / "gone"), "en").endswith("then save again.")  # no figures to give


def test_what_counts_as_a_full_disk(tmp_path: Path) -> None:
    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not disk_full(OSError(errno.EACCES, "Permission denied")) and not disk_full(None)
    database = sqlite3.connect(tmp_path / "x.db")
    database.execute("create table t (x)")
    database.execute("pragma max_page_count = 2")  # a database that cannot grow: SQLite reports SQLITE_FULL
    with pytest.raises(sqlite3.OperationalError) as full:
        database.executemany("insert into t values (?)", [("x" * 4000,)] * 10)
    assert disk_full(full.value) and not disk_full(sqlite3.OperationalError("no such table: y"))
