"""A node dies under a session: the hub notices within a poll, says so in plain words, and nothing is lost.

On the real local cluster: the session's node is set DOWN in Slurm (what slurmctld does when a node stops
answering); the session's job is not requeued (sessions are submitted with ``--no-requeue``).
"""

from __future__ import annotations

import pwd
import time
from pathlib import Path

import pytest
import requests
from aifl_hub.site import load_site
from conftest import BASE, slurm
from test_spawn import spawn

pytestmark = pytest.mark.cluster


def test_a_session_whose_node_fails_is_ended_and_explained_and_its_files_stay(hub, users):
    name, token, browser = users.with_login()
    server = spawn(hub, name, token, {"profile": "cpu-small"}, lang="en")
    job = hub.job_of(name)
    node = slurm("squeue", "-h", "-j", job, "-o", "%N").strip()
    # The user saves a notebook through JupyterLab's own contents API.
    notebook = {"type": "notebook", "content": {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}}
    saved = requests.put(f"{BASE}{server['url']}api/contents/before-the-failure.ipynb", json=notebook,
                         headers={"Authorization": f"token {token}"}, timeout=30)
    assert saved.status_code == 201, saved.text
    poll = load_site("/etc/aifl/site.yaml")["spawner"].get("poll_interval", 5)
    try:
        slurm("scontrol", "update", f"nodename={node}", "state=down", "reason=aifl fault test")
        hub.wait_gone(name, timeout=poll + 15)  # within a poll and a few seconds
        # Slurm's accounting hears of the job's end a moment after slurmctld: wait for it.
        deadline = time.monotonic() + 30
        while (states := slurm("sacct", "-nP", "-X", "-j", job, "-o", "State").split())[-1:] != ["NODE_FAIL"] \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        assert states[-1:] == ["NODE_FAIL"], states
        assert slurm("squeue", "-h", "-u", name, "-o", "%i").strip() == ""  # not queued again
    finally:
        # The local cluster returns a node to service when its slurmd registers again (ReturnToService=2):
        # resume it here only if that has not happened yet.
        if "down" in slurm("sinfo", "-h", "-n", node, "-o", "%T"):
            slurm("scontrol", "update", f"nodename={node}", "state=resume")
    home = browser.get(f"{BASE}/hub/home", headers={"Accept-Language": "en"}, timeout=30).text
    assert f"Your last session (job {job}) ended because the computer it ran on ({node}) stopped working." in home
    assert "Your files in your home folder are safe" in home
    kept = Path(pwd.getpwnam(name).pw_dir) / "before-the-failure.ipynb"
    assert kept.is_file() and '"nbformat": 4' in kept.read_text()
    # The node is back and the user starts again.
    deadline = time.monotonic() + 60
    while "idle" not in slurm("sinfo", "-h", "-n", node, "-o", "%T") and time.monotonic() < deadline:
        time.sleep(1)
    assert spawn(hub, name, token, {"profile": "cpu-small"})["ready"]
