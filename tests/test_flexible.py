"""Flexible batch runs that wait for a quiet power grid: the checks, the script, and on the local cluster
the hub's grid service holding and releasing them (signal switched through the site's override file).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from aifl_hub.energy import ledger_path, status_path
from aifl_hub.grid_service import Releaser
from aifl_hub.site import load_site
from aifl_notebook.batch import (
    BatchError,
    BatchJob,
    BatchRun,
    Resources,
    build_batch_script,
    check_deadline,
    describe_run,
    grid_line,
)
from test_notebook_batch import ENV, PYTHON, LabUser, _notebook

SITE = load_site("/etc/aifl/site.yaml") if Path("/etc/aifl/site.yaml").exists() else load_site("hub_config/site.yaml")
NOW = datetime(2026, 11, 25, 18, 0)


# ---- the checks and the script (pure) ---------------------------------------------------------------------
def test_a_deadline_is_checked_against_now_the_time_limit_and_the_start():
    assert check_deadline(False, None, 2, "", NOW) == ""
    assert check_deadline(True, "2026-11-26 08:00", 2, "", NOW) == "2026-11-26T08:00:00"
    assert check_deadline(True, NOW + timedelta(hours=2), 2, "", NOW) == "2026-11-25T20:00:00"
    for grid_quiet, deadline, begin, words in (
            (True, None, "", "Say by when the run must be finished"),
            (True, "tomorrow", "", "Give the deadline as a date and time"),
            (True, "2026-11-25 17:59", "", "has already passed"),
            (True, "2026-11-25 19:30", "", "time limit is 2 h, so the deadline must be 2026-11-25 20:00 or later"),
            (True, "2026-11-26 08:00", "2026-11-26T07:00:00", "2026-11-26 09:00 or later"),
            (False, "2026-11-26 08:00", "", "only used for a run that waits for a quiet grid"),
            ("yes", "2026-11-26 08:00", "", "either on (True) or off (False)")):
        with pytest.raises(BatchError, match=re.escape(words)) as error:
            check_deadline(grid_quiet, deadline, 2, begin, NOW)
        assert error.value.field in ("deadline", "grid_quiet")


def test_refusals_in_dutch():
    with pytest.raises(BatchError, match="is al voorbij"):
        check_deadline(True, "2026-11-25 17:00", 1, "", NOW, lang="nl")


def _job(**kw) -> BatchJob:
    values = {"run_dir": "/home/a/batch-runs/x-1", "python": "/opt/aifl/envs/default/bin/python", "workdir": "/home/a",
              "resources": Resources("gpu", 1, 16, 120, 2, "h200"), "export_names": ["HOME", "PATH"],
              "path_dirs": ["/usr/bin"], **kw}
    return BatchJob(**values)


def test_flexible_work_is_submitted_held_and_tagged():
    script = build_batch_script(_job(deadline="2026-11-26T08:00:00"))
    assert "#SBATCH --hold\n" in script
    assert "#SBATCH --comment=aifl-grid:deadline=2026-11-26T08:00:00\n" in script
    assert "--hold" not in build_batch_script(_job()) and "--comment" not in build_batch_script(_job())
    for bad in ("2026-11-26 08:00", "2026-11-26T08:00:00\n#SBATCH --uid=0", "x"):
        with pytest.raises(ValueError, match="deadline"):
            build_batch_script(_job(deadline=bad))


def _run(held: bool, grid_jobs: dict | None, state: str = "PENDING") -> BatchRun:
    meta = {"job_id": "7", "name": "n", "deadline": "2026-11-26T08:00:00"}
    return describe_run(meta, Path("/home/a/batch-runs/n-1"), {"7": (state, "")}, {}, None,
                        held={"7"} if held else (), grid_jobs=grid_jobs, now=NOW)


def test_a_waiting_flexible_run_says_when_it_is_expected_to_start():
    run = _run(True, {"7": {"reason": "waiting", "expected_start": "2026-11-25T23:00:00"}})
    assert run.grid_wait and run.expected_start == "2026-11-25T23:00:00"
    assert run.state_text("en").startswith("waiting for a quiet grid — expected to start around ")
    assert "23:00" in run.state_text("en") and "rustig stroomnet" in run.state_text("nl")
    assert _run(True, None).state_text("en") == "waiting for a quiet grid"
    assert "facility's limit" in _run(True, {"7": {"reason": "cap", "expected_start": None}}).state_text("en")
    released = _run(False, {"7": {"reason": "waiting", "expected_start": "2026-11-25T23:00:00"}})
    assert not released.grid_wait and released.state_text("en") == "waiting"
    running = _run(True, None, state="RUNNING")
    assert not running.grid_wait and running.state_text("en") == "running"
    odd = _run(True, {"7": {"expected_start": "soon; rm -rf /"}})
    assert odd.expected_start == "" and odd.state_text("en") == "waiting for a quiet grid"


def test_the_grid_in_words():
    forecast = [{"start": "2026-11-25T18:00:00", "end": "2026-11-25T23:00:00", "level": "busy"}, "odd",
                {"start": "2026-11-25T23:00:00", "end": "2026-11-26T06:00:00", "level": "quiet"}]
    assert grid_line({"level": "busy", "forecast": forecast}, "en", NOW) == (
        "The power grid is busy now. The next quiet hours begin around 23:00.")
    assert grid_line({"level": "normal", "forecast": forecast[:1]}, "nl", NOW) == (
        "Het stroomnet is nu normaal. Er zijn geen rustige uren in de komende 48 uur.")
    assert grid_line({"level": "quiet"}, "en", NOW) == "The power grid is quiet now."
    assert grid_line({}, "en", NOW) == grid_line({"level": "<b>"}, "en", NOW) == ""


# ---- on the local cluster ---------------------------------------------------------------------------------
API = """
import dataclasses, json, sys
from aifl_notebook import batch
what, arg = sys.argv[1], json.loads(sys.argv[2])
def show(run):
    return {**dataclasses.asdict(run), "folder": str(run.folder), "text": run.state_text("en")}
try:
    if what == "submit":
        print(json.dumps(show(batch.submit(batch.BatchOptions(**arg)))))
    elif what == "list":
        print(json.dumps([show(r) for r in batch.list_runs()]))
    elif what == "start_now":
        batch.start_now(arg)
        print("{}")
    else:
        batch.cancel(arg)
        print("{}")
except batch.BatchError as error:
    print(json.dumps({"error": error.message, "field": error.field}))
"""


class FlexUser(LabUser):
    """A lab user whose batch API also has ``start_now`` and shows the state in words."""

    def api(self, what: str, arg: object) -> dict | list:
        env = {"PATH": f"{ENV}/bin:/usr/bin:/bin", "HOME": str(self.home), "USER": self.name, "LANG": "C.UTF-8",
               "JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api", "JUPYTERHUB_API_TOKEN": self.token,
               "JUPYTERHUB_SERVICE_PREFIX": f"/user/{self.name}/", "AIFL_LANG": "en",
               "SLURM_JOB_ACCOUNT": "lab", "SLURM_JOB_QOS": "interactive"}
        result = subprocess.run(["runuser", "-u", self.name, "--", "env", "-i",
                                 *(f"{k}={v}" for k, v in env.items()), str(PYTHON), "-c", API, what, json.dumps(arg)],
                                capture_output=True, text=True, timeout=120, check=False, cwd="/")
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout)

    def run(self, run_id: str) -> dict:
        return next(r for r in self.api("list", None) if r["run_id"] == run_id)


GRID = SITE.get("grid", {})
INTERVAL = GRID.get("check_interval", 60)
OVERRIDE = Path(GRID.get("override_file", "/nonexistent"))
STATUS = status_path(SITE)


def _status() -> dict:
    try:
        return json.loads(STATUS.read_text())
    except (OSError, ValueError):
        return {}


def set_signal(level: str | None) -> None:
    """Override the live signal (None: remove the override) and wait until the service has seen it."""
    if level is None:
        OVERRIDE.unlink(missing_ok=True)
    else:
        OVERRIDE.write_text(json.dumps({"level": level}))
        shutil.chown(OVERRIDE, SITE["hub"]["service_user"], SITE["hub"]["service_user"])
    written = datetime.now().replace(microsecond=0)
    wait_for(lambda: _status().get("updated", "") > written.isoformat() and
             (level is None or (_status().get("source"), _status().get("level")) == ("override", level)),
             f"the grid service to see the signal {level}", 3 * INTERVAL + 60)


def wait_for(condition, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.5)


def job_line(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T|%r|%k"], capture_output=True,
                          text=True, check=False, timeout=60).stdout.strip()


def service_pid() -> int | None:
    """The pid of the hub's grid service (its command line names the module)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"aifl_hub.grid_service" in (proc / "cmdline").read_bytes():
                    return int(proc.name)
            except OSError:
                continue
    return None


@pytest.fixture
def grid_user(users, hub) -> FlexUser:
    if not (PYTHON.exists() and subprocess.run([str(PYTHON), "-c", "import papermill"], check=False).returncode == 0):
        pytest.fail("the notebook environment has no papermill: run ./lab up")
    if not OVERRIDE.parent.is_dir() or service_pid() is None:
        pytest.fail("the grid service is not running: run ./lab up")
    user = FlexUser(*users("g"))
    yield user
    set_signal(None)


@pytest.mark.cluster
def test_busy_holds_a_restart_loses_nothing_quiet_releases(grid_user):
    set_signal("busy")
    grid_user.write("flex/hello.ipynb", _notebook("print('FLEX-DONE')"))
    deadline = (datetime.now() + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M")
    run = grid_user.api("submit", {"notebook": "flex/hello.ipynb", "profile": "cpu-small", "hours": 1,
                                   "grid_quiet": True, "deadline": deadline})
    assert "field" not in run, run
    job = run["job_id"]
    assert job_line(job) == f"PENDING|JobHeldUser|aifl-grid:deadline={deadline}:00"

    # A check of the service later the job is still held, and the user is told when it is expected to start.
    submitted = datetime.now().replace(microsecond=0).isoformat()
    wait_for(lambda: _status().get("updated", "") > submitted, "a check of the grid service", 3 * INTERVAL)
    assert job_line(job).startswith("PENDING|JobHeldUser|")
    listed = grid_user.run(run["run_id"])
    assert listed["grid_wait"] and listed["expected_start"]
    assert listed["text"].startswith("waiting for a quiet grid — expected to start around ")

    # The service restarts (the hub starts it again): the held job is still there, still held.
    old = service_pid()
    os.kill(old, 15)
    wait_for(lambda: service_pid() not in (None, old), "the hub to restart the grid service", 120)
    restarted = datetime.now().replace(microsecond=0).isoformat()
    wait_for(lambda: _status().get("updated", "") > restarted, "a check of the restarted service", 3 * INTERVAL)
    assert job_line(job).startswith("PENDING|JobHeldUser|")

    # Quiet: released at the service's next check; the result lands in the user's home.
    quiet_at = datetime.now().replace(microsecond=0).isoformat()
    set_signal("quiet")
    wait_for(lambda: not job_line(job).startswith("PENDING|JobHeldUser"), "the release", INTERVAL + 10)
    done = grid_user.wait_done(run["run_id"])
    assert done["state"] == "completed", done
    assert "FLEX-DONE" in (Path(run["folder"]) / "output.ipynb").read_text()
    assert Path(run["folder"]).parent == grid_user.home / "batch-runs"
    entries = [json.loads(line) for line in ledger_path(SITE).read_text().splitlines()]
    (entry,) = [e for e in entries if e["job"] == job]
    assert entry["reason"] == "quiet" and entry["user"] == grid_user.name and entry["released"] >= quiet_at[:16]


@pytest.mark.cluster
def test_a_deadline_releases_even_when_busy_and_start_now(grid_user):
    set_signal("busy")
    grid_user.write("due.ipynb", _notebook("print('DUE')"))
    # One hour of time limit and a deadline just over an hour away: its latest start is now.
    deadline = (datetime.now() + timedelta(hours=1, seconds=INTERVAL // 2)).strftime("%Y-%m-%dT%H:%M:%S")
    due = grid_user.api("submit", {"notebook": "due.ipynb", "profile": "cpu-small", "hours": 1,
                                   "grid_quiet": True, "deadline": deadline})
    assert "field" not in due, due
    later = grid_user.api("submit", {"notebook": "due.ipynb", "profile": "cpu-small", "hours": 1, "grid_quiet": True,
                                     "deadline": (datetime.now() + timedelta(hours=8)).isoformat(timespec="minutes")})
    wait_for(lambda: not job_line(due["job_id"]).startswith("PENDING|JobHeldUser"), "the deadline release",
             2 * INTERVAL + 10)
    assert grid_user.wait_done(due["run_id"])["state"] == "completed"
    entries = [json.loads(line) for line in ledger_path(SITE).read_text().splitlines()]
    assert [e["reason"] for e in entries if e["job"] == due["job_id"]] == ["deadline"]
    assert job_line(later["job_id"]).startswith("PENDING|JobHeldUser|")  # busy, its deadline far: still held

    # The user starts it now instead.
    assert grid_user.api("start_now", later["run_id"]) == {}
    assert not job_line(later["job_id"]).startswith("PENDING|JobHeldUser")
    assert grid_user.wait_done(later["run_id"])["state"] == "completed"


@pytest.mark.cluster
def test_bad_deadlines_submit_nothing(grid_user):
    grid_user.write("bad.ipynb", _notebook("print(1)"))
    past = (datetime.now() - timedelta(minutes=5)).isoformat(timespec="minutes")
    short = (datetime.now() + timedelta(minutes=30)).isoformat(timespec="minutes")
    for deadline, words in ((past, "has already passed"), (short, "time limit is 1 h"),
                            (None, "Say by when the run must be finished")):
        answer = grid_user.api("submit", {"notebook": "bad.ipynb", "profile": "cpu-small", "hours": 1,
                                          "grid_quiet": True, "deadline": deadline})
        assert words in answer["error"] and answer["field"] == "deadline"
    assert not (grid_user.home / "batch-runs").exists() or not list((grid_user.home / "batch-runs").iterdir())
    assert subprocess.run(["squeue", "-h", "-u", grid_user.name], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip() == ""


@pytest.mark.cluster
def test_an_unreadable_grid_file_falls_back_to_the_weekly_profile_with_a_warning(lab_system, tmp_path):
    """The releaser itself against the real queue: a broken source gives the built-in profile and a warning."""
    broken = tmp_path / "grid.json"
    broken.write_text("{this is not json")
    busy = tmp_path / "override.json"
    busy.write_text(json.dumps({"level": "busy"}))  # so that this check releases nobody's work
    site = {**SITE, "grid": {**GRID, "source": "file", "file": str(broken), "override_file": str(busy),
                             "status_file": str(tmp_path / "status.json")},
            "hub": {**SITE["hub"], "state_dir": str(tmp_path)}}
    asyncio.run(Releaser(site).check())
    status = json.loads((tmp_path / "status.json").read_text())
    assert "cannot be used" in status["warning"] and "built-in weekly profile is used instead" in status["warning"]
    assert status["level"] == "busy" and status["source"] == "override"
    assert not (tmp_path / "grid-releases.jsonl").exists()


@pytest.mark.cluster
def test_the_widget_offers_the_quiet_grid_and_start_now(lab_system):
    """The ipywidgets view in the notebook environment (ipywidgets is only there), in Dutch."""
    code = """
import json
from pathlib import Path
from aifl_notebook.batch import BatchRun
from aifl_notebook.widgets.batch import BatchPanel
p = BatchPanel(notebook="/nowhere/x.ipynb", lang="nl")
run = BatchRun("r-1", Path("/tmp/r-1"), "r", "r.ipynb", "cpu-small", "7", "", "waiting", deadline="2026-11-26T08:00:00",
               grid_wait=True, expected_start="2026-11-25T23:00:00")
row = p._row(run)
print(json.dumps([p.grid_quiet.description, p.deadline.description, row.children[0].value,
                  [b.description for b in row.children[1:]]]))
"""
    result = subprocess.run([str(ENV / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=120,
                            check=False, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[1] /
                                                                                        "extensions" / "notebook")})
    assert result.returncode == 0, result.stderr[-2000:]
    tick, deadline, text, buttons = json.loads(result.stdout)
    assert (tick, deadline) == ("Draai als het stroomnet rustig is", "Klaar vóór")
    assert "wacht op een rustig stroomnet — start naar verwachting rond " in text
    assert buttons == ["Nu starten", "Annuleren"]
