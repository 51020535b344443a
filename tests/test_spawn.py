"""Spawning on the real local cluster: user, node, GPU, accounting, stop, hub restart, outside scancel."""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from conftest import BASE, Hub, lab, slurm
from test_notebook_dask import Kernel

pytestmark = pytest.mark.cluster


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def job_processes(job_id: str) -> list[int]:
    """The job's processes (all virtual nodes share this host: find them by their SLURM_JOB_ID)."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return sorted(pid for pid in pids if environ(pid).get("SLURM_JOB_ID") == job_id)


def spawn(hub: Hub, name: str, token: str, options: dict, lang: str = "en") -> dict:
    r = hub.api("POST", f"/users/{name}/server", token=token, json={"user_options": options},
                headers={"Accept-Language": lang})
    assert r.status_code in (201, 202), r.text
    return hub.wait_ready(name)


def test_gpu_session_runs_as_the_user_with_one_gpu_and_is_accounted(hub, users):
    name, token, browser = users.with_login()
    server = spawn(hub, name, token, {"profile": "gpu-1", "hours": 1})
    # The server answers through the proxy, for its user.
    status = requests.get(f"{BASE}{server['url']}api/status", headers={"Authorization": f"token {token}"}, timeout=10)
    assert status.status_code == 200
    job = hub.job_of(name)
    user, node, partition, gres = slurm("squeue", "-h", "-j", job, "-o", "%u|%N|%P|%b").strip().split("|")
    assert (user, partition) == (name, "gpu")
    assert node.startswith("gpu")
    assert gres.endswith("gpu:h200:1")
    # The server process runs as the user's own Unix account and sees exactly one GPU.
    pids = job_processes(job)
    assert pids
    uid = pwd.getpwnam(name).pw_uid
    assert all(os.stat(f"/proc/{pid}").st_uid == uid for pid in pids)
    env = environ(pids[0])
    assert env["SLURM_JOB_GPUS"] in {"0", "1", "2", "3"}
    assert env.get("CUDA_VISIBLE_DEVICES", env["SLURM_JOB_GPUS"]).count(",") == 0
    assert "CONFIGPROXY_AUTH_TOKEN" not in env
    # The home page shows the session in plain words: profile, node, the GPU it got, time left.
    home = browser.get(f"{BASE}/hub/home", headers={"Accept-Language": "en"}, timeout=10).content.decode()
    card = home[home.index('id="aifl-session"'):]
    for label, value in (("Profile", "One GPU for training a model"), ("Node", node), ("GPU", env["SLURM_JOB_GPUS"])):
        assert f'<dt class="col-5">{label}</dt><dd class="col-7">{value}</dd>' in card
    assert re.search(r'<dt class="col-5">Time left</dt><dd class="col-7">0 h (59|[0-5][0-9]) min</dd>', card)
    # Accounting: the job is under the user's account, with one GPU.
    deadline = time.monotonic() + 20
    while True:  # slurmdbd fills in the QOS of a just-started job a moment later
        acct = slurm("sacct", "-n", "-X", "-P", "-j", job, "-o", "User,Account,QOS,AllocTRES").strip().split("|")
        if acct[2] != "Unknown" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert acct[:3] == [name, "umcg", "regional"]  # charged to the user's (regional) organisation
    assert "gres/gpu=1" in acct[3]
    # Stop cancels the job.
    assert hub.api("DELETE", f"/users/{name}/server", token=token).status_code in (202, 204)
    hub.wait_gone(name)
    deadline = time.monotonic() + 30
    while "RUNNING" in slurm("sacct", "-n", "-X", "-j", job, "-o", "State") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "CANCELLED" in slurm("sacct", "-n", "-X", "-j", job, "-o", "State")


def test_cpu_profile_runs_on_the_cpu_partition_without_gpu(hub, users):
    name, token = users()
    spawn(hub, name, token, {"profile": "cpu-small"})
    job = hub.job_of(name)
    partition, gres = slurm("squeue", "-h", "-j", job, "-o", "%P|%b").strip().split("|")
    assert partition == "cpu"
    assert "gpu" not in gres
    assert "SLURM_JOB_GPUS" not in environ(job_processes(job)[0])
    hub.api("DELETE", f"/users/{name}/server", token=token)
    hub.wait_gone(name)


def test_hub_restart_keeps_the_session_and_its_connections(hub, users):
    name, token = users()
    server = spawn(hub, name, token, {"profile": "cpu-small"})
    job = hub.job_of(name)
    url = f"{BASE}{server['url']}api/status"
    headers = {"Authorization": f"token {token}"}
    failures: list[str] = []
    stop = threading.Event()
    # The user is working in the session (the server knows them) before the hub goes away.
    assert requests.get(url, headers=headers, timeout=10).status_code == 200

    def keep_asking() -> None:
        # A user's open session keeps talking to its server while the hub restarts.
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    code = session.get(url, headers=headers, timeout=10).status_code
                    if code != 200:
                        failures.append(str(code))
                except requests.RequestException as exc:
                    failures.append(type(exc).__name__)
                time.sleep(0.1)

    watcher = threading.Thread(target=keep_asking)
    watcher.start()
    try:
        hub_pid = int(Path("/run/aifl/hub.pid").read_text())
        os.kill(hub_pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{hub_pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # the session is served while no hub runs at all
        up = lab("up")
        assert up.returncode == 0, up.stderr[-2000:]
    finally:
        stop.set()
        watcher.join()
    assert failures == []
    assert hub.job_of(name) == job
    assert hub.wait_ready(name)["url"] == server["url"]
    assert requests.get(url, headers=headers, timeout=10).status_code == 200
    hub.api("DELETE", f"/users/{name}/server", token=token)
    hub.wait_gone(name)


def test_scancel_from_outside_is_noticed_and_explained(hub, users):
    name, token, browser = users.with_login()
    spawn(hub, name, token, {"profile": "cpu-small"}, lang="nl")
    job = hub.job_of(name)
    slurm("scancel", job)
    hub.wait_gone(name, timeout=60)
    page = browser.get(f"{BASE}/hub/home", timeout=10)
    assert page.status_code == 200
    assert page.url.endswith("/hub/home")
    # In the language the user started the session in.
    assert f"Je laatste sessie (taak {job}) is buiten het lab beëindigd: Slurm meldt CANCELLED" in page.content.decode()
    log = Path(pwd.getpwnam(name).pw_dir) / ".aifl" / "logs" / f"session-{job}.log"
    assert log.exists()


def test_a_refused_submission_is_explained_in_plain_words(hub, users):
    name, token = users(org=None)
    slurm("sacctmgr", "-i", "delete", "user", name)  # no Slurm association: sbatch refuses the job
    r = hub.api("POST", f"/users/{name}/server", token=token, json={"user_options": {"profile": "cpu-small"}},
                headers={"Accept-Language": "en"})
    assert r.status_code >= 400
    progress = hub.api("GET", f"/users/{name}/server/progress", token=token, stream=True).text
    assert ("The cluster did not accept the session: Invalid account or account/partition combination specified"
            in progress)
    assert hub.server(name) is None


@contextmanager
def waiting_session(hub, name: str, token: str) -> Iterator[str]:
    """All 16 GPUs busy with sleeping jobs of ``name``, then a one-GPU session that must wait: yield its job id.

    The sleeping jobs are cancelled afterwards.
    """
    sbatch = ["runuser", "-u", name, "--", "sbatch", "--parsable", "-p", "gpu", "-A", "umcg", "--gres=gpu:4",
              "-c", "1", "--mem=1G", "-t", "10", "-o", "/dev/null", "--chdir=/tmp", "--wrap", "sleep 600"]
    if not slurm("sacctmgr", "-nP", "show", "assoc", f"user={name}", "account=umcg", "format=user").strip():
        slurm("sacctmgr", "-i", "add", "user", name, "account=umcg")  # as the hub does at the first GPU start
    fillers = [slurm(*sbatch).strip() for _ in range(4)]
    try:
        deadline = time.monotonic() + 30
        while slurm("squeue", "-h", "-t", "RUNNING", "-j", ",".join(fillers), "-o", "%i").split() != sorted(
                fillers, key=int) and time.monotonic() < deadline:
            time.sleep(0.3)
        r = hub.api("POST", f"/users/{name}/server", token=token, json={"user_options": {"profile": "gpu-1"}},
                    headers={"Accept-Language": "en"})
        assert r.status_code == 202
        yield hub.job_of_pending(name, exclude=fillers)
    finally:
        slurm("scancel", *fillers)


def test_waiting_session_shows_place_reason_and_can_be_cancelled(hub, users):
    name, token = users()
    with waiting_session(hub, name, token) as job:
        messages: list[str] = []
        with hub.api("GET", f"/users/{name}/server/progress", token=token, stream=True) as stream:
            for line in stream.iter_lines(decode_unicode=True):
                if line.startswith("data:"):
                    messages.append(json.loads(line[5:])["message"])
                    if "Reason:" in messages[-1]:
                        break
        assert messages[-1].startswith("Waiting in the queue: place 1 of 1. Reason: ")
        assert "all places that fit this profile are in use" in messages[-1] or "go first" in messages[-1]
        # Cancelling the waiting session removes its job from the queue.
        assert hub.api("DELETE", f"/users/{name}/server", token=token).status_code in (202, 204)
        hub.wait_gone(name)
        assert job not in slurm("squeue", "-h", "-o", "%i").split()


def test_deleting_a_user_cancels_their_waiting_start(hub, users):
    name, token = users()
    with waiting_session(hub, name, token) as job:
        assert hub.api("DELETE", f"/users/{name}").status_code == 204  # JupyterHub alone: 500, job left behind
        assert hub.api("GET", f"/users/{name}").status_code == 404
        assert job not in slurm("squeue", "-h", "-o", "%i").split()


@contextmanager
def site_changed(tmp_path: Path, old: str, new: str, more: dict[str, str] | None = None) -> Iterator[None]:
    """Run the lab with lines of the shipped site file changed (``old`` → ``new``, then ``more``);
    the shipped file is back afterwards."""
    shipped = (Path(__file__).resolve().parents[1] / "hub_config" / "site.yaml").read_text()
    changed = shipped
    for before, after in {old: new, **(more or {})}.items():
        assert before in changed
        changed = changed.replace(before, after, 1)
    site = tmp_path / "site.yaml"
    site.write_text(changed)
    up = lab("--site", str(site), "up")
    assert up.returncode == 0, up.stderr[-2000:]
    try:
        yield
    finally:
        assert lab("up").returncode == 0


def test_waiting_too_long_in_the_queue_withdraws_the_request_with_a_reason(hub, users, tmp_path):
    with site_changed(tmp_path, "queue_timeout: 86400", "queue_timeout: 10"):
        name, token = users()
        with waiting_session(hub, name, token) as job:
            hub.wait_gone(name, timeout=60)
            progress = hub.api("GET", f"/users/{name}/server/progress", token=token).text
            assert "No place came free within 10 seconds, so the request was withdrawn." in progress
            assert job not in slurm("squeue", "-h", "-o", "%i").split()


def test_an_idle_session_is_stopped_a_busy_one_lives_and_files_stay(hub, users, tmp_path):
    with site_changed(tmp_path, "idle_timeout: 3600", "idle_timeout: 20"):
        busy_name, busy_token = users()
        busy = Kernel(BASE + spawn(hub, busy_name, busy_token, {"profile": "cpu-small"})["url"], busy_token)
        name, token = users()
        spawn(hub, name, token, {"profile": "cpu-small"})
        work = Path(pwd.getpwnam(name).pw_dir) / "analysis.txt"
        work.write_text("results\n")
        # A silent cell computing for more than twice the idle limit, with nobody at the screen: not idle.
        started = time.monotonic()
        assert busy.run("import time\ntime.sleep(50)\nprint('DONE 1')", timeout=120) == {"DONE": 1}
        assert time.monotonic() - started >= 50
        assert hub.server(busy_name) is not None, "a session whose kernel was busy was stopped as idle"
        hub.wait_gone(name, timeout=30)  # nobody used it: the culler stopped it meanwhile
        hub.wait_gone(busy_name, timeout=90)  # once the cell is done and nobody comes back, it is idle too
        deadline = time.monotonic() + 30
        while slurm("squeue", "-h", "-u", name, "-o", "%i").strip() and time.monotonic() < deadline:
            time.sleep(0.5)  # the cancelled job may be completing for a moment
        assert slurm("squeue", "-h", "-u", name, "-o", "%i").strip() == ""
        assert work.read_text() == "results\n"


def test_an_association_removed_in_slurm_is_made_again(hub, users):
    """The hub remembers associations it made; one removed since (by an administrator) is made again."""
    name, token = users()
    spawn(hub, name, token, {"profile": "cpu-small"})
    assert slurm("squeue", "-h", "-j", hub.job_of(name), "-o", "%a").strip() == "umcg"
    assert hub.api("DELETE", f"/users/{name}/server", token=token).status_code in (202, 204)
    hub.wait_gone(name)
    slurm("sacctmgr", "-i", "delete", "user", name, "account=umcg")
    assert "umcg" not in slurm("sacctmgr", "-nP", "show", "assoc", f"user={name}", "format=Account").split()
    spawn(hub, name, token, {"profile": "cpu-small"})
    assert slurm("squeue", "-h", "-j", hub.job_of(name), "-o", "%a").strip() == "umcg"
