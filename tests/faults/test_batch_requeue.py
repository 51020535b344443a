"""Flexible batch work gives its GPUs to regional work and starts again: the promise, and nothing is lost.

On the real local cluster: a national organisation's notebook run (QOS ``flex``) runs on four GPUs while
its sessions hold the other twelve; a regional job arrives; Slurm preempts the run (``PreemptMode=REQUEUE``)
and it starts again from the notebook's start, with the earlier output kept beside the fresh one.
"""

from __future__ import annotations

import json

import pytest
from conftest import slurm
from test_notebook_batch import LabUser, _notebook
from test_regional import jobs_cancelled_after, sbatch, states, wait_for

pytestmark = pytest.mark.cluster


def test_flexible_batch_work_is_requeued_for_regional_work_and_restarts_beside_its_earlier_output(users):
    other, _ = users(org="tu-eindhoven")
    runner = LabUser(*users("b", org="tu-eindhoven"),
                     env={"AIFL_ACCOUNT": "tu-eindhoven", "AIFL_BATCH_QOS": "flex"})  # as a session gives it
    slurm("sacctmgr", "-i", "add", "user", runner.name, "account=tu-eindhoven")  # as the hub does at a start
    runner.write("long.ipynb", _notebook("print('ATTEMPT')", "import time\ntime.sleep(20)\nprint('RESULT=done')"))
    sessions = [sbatch(other, "tu-eindhoven", "interactive", 4) for _ in range(3)]  # 12 GPUs: the cap
    with jobs_cancelled_after(sessions):
        wait_for(lambda: all(s == "RUNNING" for s, _r in states(sessions).values()), timeout=60,
                 what=f"12 GPUs busy: {slurm('squeue', '-h', '-o', '%i|%u|%T|%b|%r')}")
        run = runner.api("submit", {"notebook": "long.ipynb", "profile": "gpu-4", "hours": 1})
        assert "field" not in run, run
        job, folder = run["job_id"], runner.home / "batch-runs" / run["run_id"]
        wait_for(lambda: "ATTEMPT" in (folder / "output.ipynb").read_text() if (folder / "output.ipynb").exists()
                 else False, timeout=90, what="the first attempt to print")
        regional, _ = users(org="umcg")
        claim = sbatch(regional, "umcg", "regional", 1, minutes=5)
        with jobs_cancelled_after([claim]):
            wait_for(lambda: states([claim])[claim][0] == "RUNNING", timeout=60, what="the regional job to start")
            assert states([job])[job][0] in ("PENDING", "REQUEUED"), states([job])
        done = runner.wait_done(run["run_id"], timeout=180)
    assert done["state"] == "completed", (done, (folder / "run.log").read_text()[-2000:])
    assert len(done["restarts"]) == 1 and done["requeued_by"] == "preempted", done
    earlier = json.loads((folder / "output-before-restart-1.ipynb").read_text())
    fresh = json.loads((folder / "output.ipynb").read_text())
    printed = ["".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
               for nb in (earlier, fresh)]
    assert "ATTEMPT" in printed[0] and "RESULT=done" not in printed[0]  # cut off where it was preempted
    assert "ATTEMPT" in printed[1] and "RESULT=done" in printed[1]  # the restart ran from the start to the end
    assert (folder / "run.log").read_text().count("ATTEMPT") >= 2  # one log, appended by both attempts
