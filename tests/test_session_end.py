"""A session whose job leaves RUNNING outside the lab: the spawner's poll notices it and says why in plain words.

Pure tests: the spawner talks to a fake Slurm client that answers as ``squeue -t all`` would.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
from aifl_hub.slurm import JobInfo
from aifl_hub.spawner import REQUEUED, SlurmLabSpawner

SITE = Path(__file__).resolve().parents[1] / "hub_config" / "site.yaml"


class FakeSlurm:
    """Answers ``job`` with a fixed state and records cancellations."""

    def __init__(self, state: str | None, node: str = "gpu01", reason: str = "None") -> None:
        self.info = None if state is None else JobInfo("4242", state, node, reason)
        self.cancelled: list[tuple[str, str]] = []

    async def job(self, job_id: str) -> JobInfo | None:
        return self.info

    async def cancel(self, user: str, job_id: str) -> None:
        self.cancelled.append((user, job_id))


def running_session(state: str | None, reason: str = "None") -> tuple[SlurmLabSpawner, FakeSlurm]:
    """A spawner whose session (job 4242 on gpu01) had started, with Slurm now reporting ``state``."""
    spawner = SlurmLabSpawner(user=SimpleNamespace(name="alice", groups=[], url="/user/alice/"),
                              site_file=str(SITE))
    fake = FakeSlurm(state, reason=reason)
    spawner.slurm = fake
    spawner.job_id = "4242"
    spawner.session = {"profile": "gpu-1", "node": "gpu01", "gpus": "0"}
    return spawner, fake


@pytest.mark.parametrize("state", ["RUNNING", "COMPLETING"])
def test_a_running_session_is_left_alone(state: str) -> None:
    spawner, fake = running_session(state)
    assert asyncio.run(spawner.poll()) is None
    assert spawner.job_id == "4242" and spawner.session and fake.cancelled == []


def test_a_job_still_queued_for_its_first_start_is_not_a_requeue() -> None:
    spawner, fake = running_session("PENDING", reason="Priority")
    spawner.session = {}
    assert asyncio.run(spawner.poll()) is None
    assert fake.cancelled == []


def test_a_session_whose_job_went_back_to_the_queue_ends_and_is_cancelled() -> None:
    spawner, fake = running_session("PENDING", reason="BeginTime")
    assert asyncio.run(spawner.poll()) == 1
    assert fake.cancelled == [("alice", "4242")]  # no second JupyterLab later that nobody waits for
    assert spawner.last_end == {"job_id": "4242", "state": REQUEUED, "node": "gpu01"}
    assert spawner.job_id == "" and spawner.session == {}
    words = spawner.end_message("en")
    assert words.startswith("Your last session (job 4242) ended because the computer it ran on (gpu01) "
                            "stopped working.")
    assert "Your files in your home folder are safe" in words and "~/.aifl/logs/session-4242.log" in words
    assert "Start a new session" in words
    assert spawner.end_message("nl").startswith(
        "Je laatste sessie (taak 4242) is gestopt omdat de computer waarop hij draaide (gpu01) uitviel.")


@pytest.mark.parametrize(("state", "english", "dutch"), [
    ("NODE_FAIL", "ended because the computer it ran on (gpu01) stopped working.", "uitviel"),
    ("PREEMPTED", "was stopped to make room for work with priority on gpu01.", "werk met voorrang op gpu01"),
    ("TIMEOUT", "reached the end of the time you asked for.", "einde bereikt van de tijd"),
    ("OUT_OF_MEMORY", "needed more memory than its profile gives", "meer geheugen nodig"),
])
def test_each_way_a_session_ends_is_told_in_plain_words(state: str, english: str, dutch: str) -> None:
    spawner, fake = running_session(state)
    assert asyncio.run(spawner.poll()) == 1
    assert fake.cancelled == []  # it has ended already
    assert english in spawner.end_message("en") and "safe" in spawner.end_message("en")
    assert dutch in spawner.end_message("nl") and "veilig" in spawner.end_message("nl")


@pytest.mark.parametrize(("state", "reported"), [("CANCELLED", "CANCELLED"), ("FAILED", "FAILED"), (None, "GONE")])
def test_other_ends_name_slurms_state(state: str | None, reported: str) -> None:
    spawner, _fake = running_session(state)
    assert asyncio.run(spawner.poll()) == 1
    assert spawner.end_message("en") == (
        f"Your last session (job 4242) was ended outside the lab: Slurm reports {reported}. "
        "Your files are kept; the job log is in ~/.aifl/logs/session-4242.log.")
