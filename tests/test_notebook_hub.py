"""A session started through the hub: its session API, its language and Slurm's save signal."""

from __future__ import annotations

import time

import pytest
import requests
from conftest import BASE, slurm

pytestmark = pytest.mark.cluster


def test_dutch_session_through_the_hub_reports_its_job_and_gets_the_save_signal(hub, users) -> None:
    name, token = users("nl")
    r = hub.api("POST", f"/users/{name}/server", token=token, json={"user_options": {"profile": "cpu-small"}},
                headers={"Accept-Language": "nl"})
    assert r.status_code in (201, 202), r.text
    url = BASE + hub.wait_ready(name)["url"]
    headers = {"Authorization": f"token {token}"}

    status = requests.get(f"{url}aifl/session", headers=headers, timeout=30).json()
    job = hub.job_of(name)
    assert (status["job_id"], status["language"], status["save_signal"]) == (job, "nl", False)
    limit = slurm("squeue", "-h", "-j", job, "-o", "%L").strip()  # e.g. 59:58 or 1:59:58
    assert 0 < status["seconds_left"] <= sum(int(p) * 60 ** i for i, p in enumerate(reversed(limit.split(":"))))
    assert requests.get(f"{url}aifl/session", timeout=30).status_code == 403  # not without the user's token

    settings = requests.get(f"{url}lab/api/settings/@jupyterlab/translation-extension:plugin",
                            headers=headers, timeout=30).json()
    assert settings["schema"]["properties"]["locale"]["default"] == "nl_NL"

    slurm("scancel", "--signal=USR1", "--batch", job)  # what Slurm sends save_lead seconds before the end
    deadline = time.monotonic() + 20
    while not (status := requests.get(f"{url}aifl/session", headers=headers, timeout=30).json())["save_signal"]:
        assert time.monotonic() < deadline, "the save signal did not reach the session's server"
        time.sleep(0.5)
    assert slurm("squeue", "-h", "-j", job, "-o", "%T").strip() == "RUNNING"  # a warning, not the end
