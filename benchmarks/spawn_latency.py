"""Spawn-to-ready latency: this project's spawner, stock batchspawner, and the bare server start.

Run as root on the machine where the lab runs (``./lab up``)::

    /work/main/.venv/bin/python benchmarks/spawn_latency.py

In one run, on the same cluster, it measures spawn-to-ready: from ``POST /hub/api/users/NAME/server``
until ``GET /user/NAME/api/status`` answers 200 through the proxy, for

* ours: ``SlurmLabSpawner`` in the running hub (:8000), 1 user x N sequential spawns and M users at once;
* stock: batchspawner's ``SlurmSpawner`` with its default settings, in a second hub that this script
  starts as root with its own temporary directory and its own configurable-http-proxy (:8100, API :8101,
  hub API :8181); the resources match our profiles, so the jobs are the same size. It runs twice:
  on a stock environment (``stock``: the notebook environment as ``pip install jupyterlab`` leaves it)
  and on our notebook environment (``stock@ours``: the same packages and settings as our sessions,
  plus batchspawner), so that the spawner's own effect and the environment's are shown apart;
* floor: the server started directly as the user (no Slurm, no hub spawn), timed until
  ``/user/NAME/api/status`` answers 200 with a token of that user, twice: ``bare`` is
  ``jupyterhub-singleuser`` as installed, ``floor`` the server as our session job starts it
  (``aifl-singleuser``: the example notebooks, the language, ``run_server``; without the job's port
  report to the hub). The CPU seconds that one
  ``floor`` start takes (its process and children, at the moment it answers) give the CPU-bound floor
  of M starts at once: M x CPU seconds / CPU cores.

Single-user spawns use the site's default profile (cpu-small); the concurrent wave uses a profile that
fits M sessions at once (gpu-1: 16 x 1 GPU fills the 4 x 4 GPU nodes exactly). Single-user rounds
interleave bare, floor, ours, stock@ours and stock (after a warm-up of each); a round during which other
users' jobs were queued is repeated. Concurrent waves run ours, stock@ours, stock, then the reverse
(``--waves 2``). Before each spawn a random pause of up to 1 s puts the submission at a random phase of
slurmctld's ~1 s scheduling loop. Each spawn is split into steps from slurmctld's and slurmd's logs and
the server's own log. Everything printed also goes to ``benchmarks/results/spawn-latency-<date>-<commit>.txt``.

It uses fixed benchmark users ``bench01``.. (Unix accounts and Slurm associations made by the hub's
account helper are kept for the next run; the hub users are removed at the end). Everything it starts
(the second hub, its proxy, the users' servers and jobs, the temporary directory) is stopped and removed
on exit, also on Ctrl-C or an error. Readiness is seen by polling the proxy's route table (not the hub)
every 50 ms and then asking the server itself, so the polling does not load the hub.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import requests
import yaml
from record import recorded

# ---- the running lab ---------------------------------------------------------------------------
MAIN_PUBLIC = "http://127.0.0.1:8000"
MAIN_PROXY_API = "http://127.0.0.1:8001"
MAIN_HUB_API = "http://127.0.0.1:8081/hub/api"  # what jobs of the main hub use (for the floor's environment)
STATE = Path("/var/lib/aifl")
SITE_FILE = Path("/etc/aifl/site.yaml")
NOTEBOOK_ENV = Path("/opt/aifl/envs/default")
REPO = Path(__file__).resolve().parents[1]
HUB_ENV = Path("/opt/aifl/hub")
PROXY_MAIN = Path("/opt/aifl/proxy/node_modules/configurable-http-proxy/bin/configurable-http-proxy")
SLURM_LOGS = Path("/var/log/slurm")
SLURM_BIN = Path("/usr/bin")

# ---- the stock hub this script starts ----------------------------------------------------------
STOCK_PUBLIC_PORT, STOCK_PROXY_API_PORT, STOCK_HUB_PORT = 8100, 8101, 8181
BATCHSPAWNER = "batchspawner==1.3.0"
# What pip's resolver puts into a stock JupyterLab environment that images/default leaves out.
STOCK_EXTRAS = ("rfc3987-syntax==1.1.0", "lark==1.3.1")

CASES = ("bare", "floor", "ours-1", "stock@ours-1", "stock-1", "ours-N", "stock@ours-N", "stock-N")
SINGLE = ("ours-1", "stock@ours-1", "stock-1")  # spawns of one user through a hub
WAVES = ("ours-N", "stock@ours-N", "stock-N")
# The floor: our session job's server start (aifl-singleuser's main without the port report), run directly.
FLOOR_CODE = ("import os, sys; from aifl_notebook.examples import install_at_start; "
              "from aifl_notebook.singleuser import language_environment, run_server; install_at_start(); "
              "os.environ.update(language_environment(os.environ)); run_server(sys.argv[1:])")
POLL_S = 0.05  # readiness polling interval (all three cases)
USER_PREFIX = "bench"
_T0 = time.monotonic()


def say(message: str) -> None:
    """Progress line with the seconds since the start of the run."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", flush=True)


class BenchError(RuntimeError):
    """The benchmark cannot go on (message for the operator)."""


def run(argv: list[str], timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run argv (no shell) and capture its output."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_times() -> tuple[int, int]:
    """The host's CPU time so far in clock ticks, all CPUs: (total without guest time, idle + iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields[:8]), fields[3] + fields[4]


def busy_seconds(before: tuple[int, int], after: tuple[int, int]) -> float:
    """CPU seconds the host spent not idle between two :func:`cpu_times` samples (all CPUs together)."""
    return ((after[0] - after[1]) - (before[0] - before[1])) / os.sysconf("SC_CLK_TCK")


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of the host's CPU time that was not idle over ``seconds`` (from /proc/stat)."""
    total0, idle0 = cpu_times()
    time.sleep(seconds)
    total1, idle1 = cpu_times()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``condition`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException, OSError, subprocess.SubprocessError):
            if condition():
                return True
        time.sleep(interval)
    return False


# ---- site profiles -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Resources:
    """The Slurm request of one of our profiles, for the stock spawner's ``req_*`` settings."""

    slug: str
    partition: str
    cpus: int
    memory_gb: int
    gpus: int
    hours: int
    gpu_type: str
    shards: int = 0

    def stock_options(self) -> dict[str, str]:
        """batchspawner's template variables for the same request (its ``user_options`` override them)."""
        gres = f"gpu:{self.gpu_type + ':' if self.gpu_type else ''}{self.gpus}" if self.gpus else ""
        if self.shards:
            gres = f"shard:{self.shards}"
        return {"partition": self.partition, "nprocs": str(self.cpus), "memory": f"{self.memory_gb}G",
                "gres": gres, "runtime": f"{self.hours}:00:00"}


@dataclass(frozen=True)
class Site:
    resources: dict[str, Resources]
    default_profile: str
    account: str
    qos: str
    job_log_dir: str
    language: str

    @classmethod
    def load(cls, path: Path) -> Site:
        data = yaml.safe_load(path.read_text())
        gpu_type = data["cluster"].get("gpu_nodes", {}).get("gpu_type", "")
        resources = {}
        profiles = data["spawner"]["profile_list"]
        for profile in profiles:
            o = profile["slurm_override"]
            resources[profile["slug"]] = Resources(profile["slug"], o["partition"], o["cpus"], o["memory_gb"],
                                                   o["gpus"], o["hours"], gpu_type, o.get("shards", 0))
        default = next((p for p in profiles if p.get("default")), profiles[0])["slug"]
        # Both hubs charge the benchmark users to the same organisation (GPU work needs one).
        orgs = data.get("organisations")
        org = orgs["list"][0] if orgs and orgs["list"] else None
        account = org["name"] if org else data["accounting"]["default_account"]
        qos = orgs["categories"][org["category"]]["session_qos"] if org else data["accounting"]["default_qos"]
        return cls(resources, default, account, qos, data["spawner"].get("job_log_dir", ".aifl/logs"),
                   data["site"].get("default_language", "en"))


# ---- Slurm -------------------------------------------------------------------------------------
def jobs_of(users: Iterable[str]) -> list[str]:
    """Job ids (any state squeue shows) of ``users``."""
    names = ",".join(users)
    if not names:
        return []
    return run([str(SLURM_BIN / "squeue"), "-h", "-u", names, "-o", "%i"]).stdout.split()


def other_jobs(ours: set[str]) -> list[str]:
    """'id user state' of every job in the queue that is not one of ``ours`` users'."""
    lines = run([str(SLURM_BIN / "squeue"), "-h", "-o", "%i %u %T"]).stdout.splitlines()
    return [line.strip() for line in lines if line.split() and line.split()[1] not in ours]


def wait_for_idle_cluster(ours: set[str], timeout: float) -> bool:
    """Wait (up to ``timeout`` s) until no one else has jobs; True if the cluster is ours alone."""
    deadline = time.monotonic() + timeout
    shown = 0.0
    while True:
        others = other_jobs(ours)
        if not others:
            return True
        if time.monotonic() >= deadline:
            say(f"WARNING: {len(others)} other job(s) still in the queue after {timeout:.0f} s; measuring anyway")
            return False
        if time.monotonic() - shown > 15:
            say(f"waiting for an idle cluster: {len(others)} other job(s), e.g. {others[0]}")
            shown = time.monotonic()
        time.sleep(1)


def cancel_jobs_of(users: list[str], timeout: float = 60) -> None:
    """scancel every job of ``users`` (ours alone) and wait until Slurm shows none."""
    if not jobs_of(users):
        return
    for name in users:
        run([str(SLURM_BIN / "scancel"), "-u", name], check=False)
    if not wait_until(lambda: not jobs_of(users), timeout, 0.5):
        say(f"WARNING: jobs of the benchmark users are still in the queue: {jobs_of(users)}")


# ---- a hub, through its proxy --------------------------------------------------------------------
@dataclass
class Hub:
    """REST client for one hub plus its proxy's route table."""

    label: str
    public: str
    proxy_api: str
    token: str
    proxy_token: str
    http: requests.Session = field(default_factory=requests.Session)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def api(self, method: str, path: str, timeout: float = 30, **kw: Any) -> requests.Response:
        # a fresh connection per call: the session object is shared with the POST threads
        return requests.request(method, f"{self.public}/hub/api{path}", timeout=timeout,
                                headers={"Authorization": f"token {self.token}"}, **kw)

    def ensure_user(self, name: str) -> str:
        """Create ``name`` (if new) and return a fresh API token of that user."""
        r = self.api("POST", f"/users/{name}", timeout=120)
        if r.status_code not in (201, 409):
            raise BenchError(f"{self.label}: creating user {name} failed: HTTP {r.status_code} {r.text[:300]}")
        r = self.api("POST", f"/users/{name}/tokens", json={"note": "spawn-latency benchmark", "expires_in": 7200})
        if r.status_code != 201:
            raise BenchError(f"{self.label}: token for {name} failed: HTTP {r.status_code} {r.text[:300]}")
        return str(r.json()["token"])

    def join(self, name: str, org: str) -> None:
        """Make ``name`` a member of organisation ``org`` (the hub group ``org-<org>``)."""
        self.api("POST", f"/groups/org-{org}", json={})
        r = self.api("POST", f"/groups/org-{org}/users", json={"users": [name]})
        if r.status_code != 200:
            raise BenchError(f"{self.label}: adding {name} to org-{org} failed: HTTP {r.status_code} {r.text[:300]}")

    def server(self, name: str) -> dict[str, Any] | None:
        r = self.api("GET", f"/users/{name}")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json().get("servers", {}).get("")

    def active_users(self) -> set[str]:
        """Users with a server that is ready or starting (one request, so polling it does not load the hub)."""
        r = self.api("GET", "/users", params={"state": "active", "limit": 1000})
        r.raise_for_status()
        body = r.json()
        return {u["name"] for u in (body["items"] if isinstance(body, dict) else body)}

    def routes(self) -> set[str]:
        """The proxy's routes, without trailing slashes (e.g. '/user/bench01')."""
        with self.lock:
            r = self.http.get(f"{self.proxy_api}/api/routes", timeout=5,
                              headers={"Authorization": f"token {self.proxy_token}"})
        r.raise_for_status()
        return {key.rstrip("/") for key in r.json()}

    def status(self, name: str, user_token: str) -> int:
        with self.lock:
            r = self.http.get(f"{self.public}/user/{name}/api/status", timeout=10, allow_redirects=False,
                              headers={"Authorization": f"token {user_token}"})
        return r.status_code

    def stop_servers(self, names: list[str], timeout: float = 90) -> bool:
        """Stop the servers of ``names``; wait until the hub shows none and their jobs are gone."""
        def stop(name: str) -> None:
            with contextlib.suppress(requests.RequestException):
                self.api("DELETE", f"/users/{name}/server", timeout=timeout)

        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            list(pool.map(stop, names))
        return wait_until(lambda: all(self.server(n) is None for n in names) and not jobs_of(names), timeout, 0.25)

    def delete_users(self, names: list[str]) -> None:
        for name in names:
            with contextlib.suppress(requests.RequestException):
                self.api("DELETE", f"/users/{name}")


# ---- samples -------------------------------------------------------------------------------------
@dataclass
class Sample:
    """One spawn of one user."""

    case: str
    user: str
    t_post: float = 0.0  # monotonic clock, when the request was sent
    wall_post: float = 0.0  # wall clock of the same moment (to line up with log files)
    ready_s: float | None = None
    error: str = ""
    job_id: str = ""
    node: str = ""
    log_file: str = ""
    disturbed: bool = False
    wave: int = 0
    stages: dict[str, float] = field(default_factory=dict)
    cpu_s: float | None = None  # floors only: CPU seconds of the server process (and children) when it answered


def spawn_wave(hub: Hub, tokens: dict[str, str], options: dict[str, Any] | None, case: str,
               timeout: float, wave: int = 0) -> list[Sample]:
    """Start the servers of all ``tokens``' users at once; time each until ready through the proxy."""
    samples = {name: Sample(case, name, wave=wave) for name in tokens}
    body = {"user_options": options} if options is not None else None
    posted: dict[str, threading.Event] = {name: threading.Event() for name in tokens}

    def post(name: str) -> None:
        sample = samples[name]
        sample.t_post, sample.wall_post = time.monotonic(), time.time()
        posted[name].set()
        try:
            r = hub.api("POST", f"/users/{name}/server", json=body, timeout=timeout)
            if r.status_code not in (201, 202):
                sample.error = f"POST: HTTP {r.status_code} {r.text[:200]}"
        except requests.RequestException as exc:
            sample.error = f"POST: {exc}"

    pool = ThreadPoolExecutor(max_workers=len(tokens))
    try:
        futures = {name: pool.submit(post, name) for name in tokens}
        pending = set(tokens)
        deadline = time.monotonic() + timeout
        last_hub_check = time.monotonic()
        while pending and time.monotonic() < deadline:
            try:
                routes = hub.routes()
            except requests.RequestException:
                routes = set()
            for name in sorted(pending):
                sample = samples[name]
                if sample.error:
                    pending.discard(name)
                elif posted[name].is_set() and f"/user/{name}" in routes:
                    with contextlib.suppress(requests.RequestException):
                        if hub.status(name, tokens[name]) == 200:
                            sample.ready_s = time.monotonic() - sample.t_post
                            pending.discard(name)
            if pending and time.monotonic() - last_hub_check > 3:  # a spawn that failed after the POST returned
                last_hub_check = time.monotonic()
                with contextlib.suppress(requests.RequestException):
                    active = hub.active_users()
                    for name in sorted(pending):
                        if futures[name].done() and not samples[name].error and name not in active:
                            samples[name].error = "the hub shows no server (spawn failed; see its log)"
            time.sleep(POLL_S)
        for name in pending:
            samples[name].error = samples[name].error or f"not ready within {timeout:.0f} s"
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for sample in samples.values():  # for the breakdown, read after the timing ended
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            line = run([str(SLURM_BIN / "squeue"), "-h", "-u", sample.user, "-o", "%i %N"]).stdout.split()
            if len(line) == 2:
                sample.job_id, sample.node = line
    return list(samples.values())


# ---- the floor: the server started directly as the user ------------------------------------------
def floor_env(user: str, token: str, port: int, lang: str) -> dict[str, str]:
    """The environment our session jobs give the server (as seen in a job's /proc/PID/environ)."""
    pw = pwd.getpwnam(user)
    prefix = f"/user/{user}/"
    scopes = json.dumps([f"access:servers!server={user}/", f"access:servers!user={user}"])
    return {
        "PATH": f"{NOTEBOOK_ENV}/bin:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "AIFL_LANG": lang,
        "HOME": pw.pw_dir, "USER": user, "LOGNAME": user, "SHELL": pw.pw_shell, "TMPDIR": "/tmp",
        "JUPYTERHUB_API_TOKEN": token, "JPY_API_TOKEN": token,
        "JUPYTERHUB_API_URL": MAIN_HUB_API, "JUPYTERHUB_ACTIVITY_URL": f"{MAIN_HUB_API}/users/{user}/activity",
        "JUPYTERHUB_BASE_URL": "/", "JUPYTERHUB_SERVICE_PREFIX": prefix,
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}{prefix}",
        "JUPYTERHUB_USER": user, "JUPYTERHUB_SERVER_NAME": "", "JUPYTERHUB_CLIENT_ID": f"jupyterhub-user-{user}",
        "JUPYTERHUB_OAUTH_CALLBACK_URL": f"{prefix}oauth_callback", "JUPYTERHUB_OAUTH_SCOPES": scopes,
        "JUPYTERHUB_OAUTH_ACCESS_SCOPES": scopes, "JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES": "[]",
        "JUPYTERHUB_DEFAULT_URL": "/lab", "JUPYTERHUB_DISABLE_USER_CONFIG": "1",
        "JUPYTERHUB_COOKIE_OPTIONS": '{"SameSite": "Lax"}', "JUPYTERHUB_COOKIE_HOST_PREFIX_ENABLED": "0",
        "JUPYTERHUB_HOST": "", "JUPYTERHUB_PUBLIC_URL": "", "JUPYTERHUB_PUBLIC_HUB_URL": "",
    }


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM the process group this script started for ``proc``; SIGKILL it if it does not end."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def floor_command(case: str) -> list[str]:
    """The server command of a floor case: ``bare`` jupyterhub-singleuser or our job's start (``floor``)."""
    if case == "bare":
        return [str(NOTEBOOK_ENV / "bin" / "jupyterhub-singleuser")]
    return [str(NOTEBOOK_ENV / "bin" / "python"), "-c", FLOOR_CODE]


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and of its children that have ended."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def floor_once(case: str, user: str, token: str, lang: str, log_path: Path, timeout: float = 120) -> Sample:
    """Start the server of ``case`` as ``user``; time it until /api/status answers 200 and take its CPU seconds."""
    sample = Sample(case, user, log_file=str(log_path))
    port = free_port()
    pw = pwd.getpwnam(user)
    url = f"http://127.0.0.1:{port}/user/{user}/api/status"
    with log_path.open("wb") as log, requests.Session() as http:
        sample.t_post, sample.wall_post = time.monotonic(), time.time()
        proc = subprocess.Popen(
            [*floor_command(case), f"--port={port}", "--ip=127.0.0.1"],
            env=floor_env(user, token, port, lang), cwd=pw.pw_dir, user=pw.pw_uid, group=pw.pw_gid,
            extra_groups=os.getgrouplist(user, pw.pw_gid), umask=0o077, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = sample.t_post + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                with contextlib.suppress(requests.RequestException):
                    if http.get(url, headers={"Authorization": f"token {token}"}, timeout=5).status_code == 200:
                        sample.ready_s = time.monotonic() - sample.t_post
                        with contextlib.suppress(OSError):
                            sample.cpu_s = cpu_seconds(proc.pid)
                        break
                time.sleep(POLL_S)
            else:
                sample.error = (f"the server exited (code {proc.returncode}); see {log_path}" if proc.poll() is not None
                                else f"not ready within {timeout:.0f} s")
        finally:
            stop_process_group(proc)
    return sample


# ---- the stock hub -------------------------------------------------------------------------------
STOCK_CONFIG = '''\
"""Stock batchspawner hub for benchmarks/spawn_latency.py (written by it into a temporary directory)."""

c = get_config()  # noqa: F821

c.JupyterHub.bind_url = "http://127.0.0.1:{public_port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.JupyterHub.db_url = "sqlite:///{state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{state}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "{state}/jupyterhub.pid"
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.services = [{{"name": "bench", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [{{"name": "bench", "services": ["bench"],
                             "scopes": ["admin:users", "admin:servers", "tokens", "read:hub", "access:servers"]}}]

# Stock batchspawner: only what it needs to run here. The job's resources are those of our
# '{slug}' profile (a spawn's user_options override them, batchspawner's own mechanism).
c.JupyterHub.spawner_class = "batchspawner.SlurmSpawner"
c.SlurmSpawner.req_partition = {partition!r}
c.SlurmSpawner.req_nprocs = {nprocs!r}
c.SlurmSpawner.req_memory = {memory!r}
c.SlurmSpawner.req_gres = {gres!r}
c.SlurmSpawner.req_runtime = {runtime!r}
c.SlurmSpawner.req_options = {options!r}
# sudo's secure_path resets PATH: put the benchmark environment (batchspawner-singleuser) first in the job,
# and export PATH to the srun step (JupyterHub 6 keeps no PATH in the environment, so --export={{keepvars}}
# and with it srun's step environment have none: "execve(): batchspawner-singleuser: No such file").
c.SlurmSpawner.req_prologue = {prologue!r}
c.SlurmSpawner.req_keepvars_extra = "PATH"
# The same hub-side settings as ours (site file), so that neither side gives up earlier or opens another URL.
c.Spawner.default_url = "/lab"
c.Spawner.disable_user_config = True
c.Spawner.http_timeout = {http_timeout}
c.Spawner.start_timeout = {start_timeout}
'''


class StockHub:
    """A second JupyterHub (as root) with stock batchspawner.SlurmSpawner and its own proxy."""

    def __init__(self, workdir: Path, resources: Resources, site: Site) -> None:
        self.workdir = workdir
        self.state = workdir / "hub"
        self.env_dir = workdir / "env"
        self.ours_env_dir = workdir / "env-ours"
        self.resources = resources
        self.site = site
        self.token = os.urandom(32).hex()
        self.proxy_token = os.urandom(32).hex()
        self.procs: list[subprocess.Popen[bytes]] = []

    def _layered_venv(self, path: Path, packages: tuple[str, ...]) -> None:
        """A venv at ``path`` that sees the shipped notebook environment's packages, plus ``packages``."""
        run(["/usr/bin/python3", "-m", "venv", str(path)], timeout=180)
        site_packages = next((path / "lib").glob("python3*/site-packages"))
        notebook_site = next((NOTEBOOK_ENV / "lib").glob("python3*/site-packages"))
        (site_packages / "aifl-notebook-env.pth").write_text(f"{notebook_site}\n")
        run([str(path / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "--no-deps",
             *packages], timeout=300)

    def build_envs(self) -> None:
        """World-readable venvs with stock batchspawner: a stock environment and ours, both layered on ours."""
        say(f"stock: building {self.env_dir} and {self.ours_env_dir} (venvs + {BATCHSPAWNER}, on {NOTEBOOK_ENV})")
        self._layered_venv(self.env_dir, (BATCHSPAWNER, *STOCK_EXTRAS))
        self._layered_venv(self.ours_env_dir, (BATCHSPAWNER,))
        # Ours: the notebook environment's own settings (etc: Jupyter's, Dask's, the profiles; share: the
        # JupyterLab extensions and settings), so only batchspawner-singleuser differs from our sessions.
        for part in ("etc", "share"):
            (self.ours_env_dir / part).symlink_to(NOTEBOOK_ENV / part)
        # Stock = the environment as `pip install jupyterlab` leaves it: every installed server extension
        # on (the packages' own jupyter_server_config.d files), none of our trimming, and the packages
        # pip's resolver adds (STOCK_EXTRAS) that the shipped image leaves out.
        shutil.copytree(NOTEBOOK_ENV / "etc" / "jupyter", self.env_dir / "etc" / "jupyter", symlinks=True)
        ours = REPO / "images" / "default" / "etc" / "jupyter"
        for path in ours.rglob("*"):
            if path.is_file():
                (self.env_dir / "etc" / "jupyter" / path.relative_to(ours)).unlink(missing_ok=True)
        for part in ("share/jupyter", "share/jupyterhub"):
            if (NOTEBOOK_ENV / part).exists():
                (self.env_dir / part).parent.mkdir(parents=True, exist_ok=True)
                (self.env_dir / part).symlink_to(NOTEBOOK_ENV / part)
        for env in (self.env_dir, self.ours_env_dir):
            run(["chmod", "-R", "a+rX", str(env)])
            check = run([str(env / "bin" / "python"), "-c",
                         "import batchspawner.singleuser, jupyterhub.singleuser, jupyterlab, jupyter_core.paths as p;"
                         "print(p.jupyter_config_path()[-1])"], check=False)
            if check.returncode != 0 or not (env / "bin" / "batchspawner-singleuser").exists():
                raise BenchError(f"the benchmark environment {env} is not usable: {check.stderr[-500:]}")

    def prologue(self, env: Path) -> str:
        """batchspawner's ``req_prologue``: the environment ``env`` first on the job's PATH."""
        return f"export PATH={env}/bin:{NOTEBOOK_ENV}/bin:$PATH"

    def on_our_env(self, options: dict[str, str] | None = None) -> dict[str, str]:
        """``user_options`` that run the stock spawner's job on our environment (batchspawner's own override)."""
        return {**(options or {}), "prologue": self.prologue(self.ours_env_dir)}

    def write_config(self) -> Path:
        r = self.resources
        options = self.resources.stock_options()
        text = STOCK_CONFIG.format(
            public_port=STOCK_PUBLIC_PORT, hub_port=STOCK_HUB_PORT, proxy_api_port=STOCK_PROXY_API_PORT,
            state=self.state, token=self.token, slug=r.slug, partition=options["partition"],
            nprocs=options["nprocs"], memory=options["memory"], gres=options["gres"], runtime=options["runtime"],
            options=f"--account={self.site.account} --qos={self.site.qos}",
            prologue=self.prologue(self.env_dir),
            http_timeout=120, start_timeout=900)
        path = self.state / "jupyterhub_config.py"
        path.write_text(text)
        return path

    def _start(self, argv: list[str], log_name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.state / log_name).open("wb") as log:
            proc = subprocess.Popen(argv, env=env, cwd=self.state, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> Hub:
        for port in (STOCK_PUBLIC_PORT, STOCK_PROXY_API_PORT, STOCK_HUB_PORT):
            if port_open(port):
                raise BenchError(f"port {port} is in use (find it with: ss -ltnp 'sport = :{port}')")
        self.state.mkdir(mode=0o700)
        self.build_envs()
        config = self.write_config()
        env = {"PATH": f"{HUB_ENV}/bin:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.state),
               "CONFIGPROXY_AUTH_TOKEN": self.proxy_token}
        say(f"stock: starting configurable-http-proxy on :{STOCK_PUBLIC_PORT} (API :{STOCK_PROXY_API_PORT})")
        proxy = self._start(["node", str(PROXY_MAIN), "--ip", "127.0.0.1", "--port", str(STOCK_PUBLIC_PORT),
                             "--api-ip", "127.0.0.1", "--api-port", str(STOCK_PROXY_API_PORT),
                             "--default-target", f"http://127.0.0.1:{STOCK_HUB_PORT}",
                             "--error-target", f"http://127.0.0.1:{STOCK_HUB_PORT}/hub/error"], "proxy.log", env)
        if not wait_until(lambda: port_open(STOCK_PROXY_API_PORT) or proxy.poll() is not None, 30) or proxy.poll():
            raise BenchError(f"the stock hub's proxy did not start:\n{self.log_tail('proxy.log')}")
        say(f"stock: starting JupyterHub (hub API :{STOCK_HUB_PORT}) with batchspawner.SlurmSpawner")
        hub_proc = self._start([str(HUB_ENV / "bin" / "jupyterhub"), "-f", str(config)], "hub.log", env)
        hub = Hub("stock hub", f"http://127.0.0.1:{STOCK_PUBLIC_PORT}", f"http://127.0.0.1:{STOCK_PROXY_API_PORT}",
                  self.token, self.proxy_token)
        if not wait_until(lambda: hub.api("GET", "/", timeout=3).status_code == 200 or hub_proc.poll() is not None,
                          90, 0.5) or hub_proc.poll() is not None:
            raise BenchError(f"the stock hub did not start:\n{self.log_tail('hub.log')}")
        return hub

    def log_tail(self, name: str, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.state / name).read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """Stop the hub (which stops its servers: cleanup_servers is on by default), then the proxy."""
        for proc in reversed(self.procs):
            stop_process_group(proc, timeout=40)
        self.procs.clear()


# ---- where the time goes: Slurm's and the server's own log lines ---------------------------------
SUBMIT, SCHEDULE, LAUNCH = "hub submits (sbatch done)", "Slurm schedules (allocated)", "slurmd launches the job"
IMPORTS = "server: Python imports, extensions link (1st log line)"
LISTEN, NOTICE, ANSWER = "server: extensions load, listening", "hub notices, proxy route, answer", "answers /api/status"
_SLURM_TS = r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)\] "
_JUPYTER_TS = re.compile(r"^\[[A-Z] (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) ")
_RUNNING = re.compile(r"Jupyter Server [0-9.]+ is running at")


def tail_text(path: Path, max_bytes: int = 8_000_000) -> str:
    with contextlib.suppress(OSError), path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - max_bytes))
        return fh.read().decode(errors="replace")
    return ""


def find_time(text: str, pattern: str) -> float | None:
    match = re.search(_SLURM_TS + pattern, text, re.MULTILINE)
    return datetime.fromisoformat(match.group(1)).timestamp() if match else None


def server_log_times(path: Path) -> tuple[float | None, float | None]:
    """Wall-clock times of the server log's first timestamped line and of 'Jupyter Server ... is running at'."""
    first = running = None
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            match = _JUPYTER_TS.match(line)
            if not match:
                continue
            stamp = datetime.fromisoformat(match.group(1)).timestamp()
            first = first if first is not None else stamp
            if _RUNNING.search(line):
                running = stamp
                break
    return first, running


def add_stages(samples: list[Sample], ctld_log: str, home_log: Callable[[Sample], Path]) -> None:
    """Split each sample's time into steps, from slurmctld's, slurmd's and the server's log lines."""
    slurmd_logs: dict[str, str] = {}
    for s in samples:
        if s.ready_s is None or not s.job_id:
            continue
        ready = s.wall_post + s.ready_s
        submitted = find_time(ctld_log, rf"_slurm_rpc_submit_batch_job: JobId={s.job_id} ")
        # the main scheduling loop logs "sched: Allocate", the backfill loop "sched/backfill: _start_job: Started"
        allocated = find_time(ctld_log, rf"(?:sched: Allocate|sched/backfill: _start_job: Started) JobId={s.job_id} ")
        if s.node not in slurmd_logs:
            slurmd_logs[s.node] = tail_text(SLURM_LOGS / f"slurmd-{s.node}.log")
        launched = find_time(slurmd_logs[s.node], rf"Launching batch job {s.job_id} ")
        s.log_file = str(home_log(s))
        first, running = server_log_times(Path(s.log_file))
        points = [(SUBMIT, submitted), (SCHEDULE, allocated), (LAUNCH, launched), (IMPORTS, first),
                  (LISTEN, running), (NOTICE, ready)]
        previous = s.wall_post
        for name, stamp in points:
            if stamp is None:
                continue
            s.stages[name] = stamp - previous
            previous = stamp


def add_floor_stages(samples: list[Sample]) -> None:
    for s in samples:
        if s.ready_s is None:
            continue
        first, running = server_log_times(Path(s.log_file))
        points = [(IMPORTS, first), (LISTEN, running), (ANSWER, s.wall_post + s.ready_s)]
        previous = s.wall_post
        for name, stamp in points:
            if stamp is not None:
                s.stages[name] = stamp - previous
                previous = stamp


# ---- the report ----------------------------------------------------------------------------------
def times(samples: list[Sample]) -> list[float]:
    return [s.ready_s for s in samples if s.ready_s is not None]


def summary(samples: list[Sample]) -> str:
    values = times(samples)
    failed = len(samples) - len(values)
    if not values:
        return f"no successful spawn ({failed} failed)"
    text = f"{statistics.median(values):6.2f}  [{min(values):5.2f} – {max(values):5.2f}]  n={len(values)}"
    return text + (f"  ({failed} FAILED)" if failed else "")


def median(samples: list[Sample]) -> float | None:
    values = times(samples)
    return statistics.median(values) if values else None


def makespans(samples: list[Sample]) -> list[float]:
    """Per wave: first POST to the last server ready (waves where a spawn failed are left out)."""
    spans = []
    for wave in sorted({s.wave for s in samples}):
        members = [s for s in samples if s.wave == wave]
        if all(s.ready_s is not None for s in members):
            start = min(s.t_post for s in members)
            spans.append(max(s.t_post + (s.ready_s or 0) for s in members) - start)
    return spans


def makespan(samples: list[Sample]) -> float | None:
    spans = makespans(samples)
    return statistics.median(spans) if spans else None


def ratio_line(label: str, a: float | None, b: float | None, target: str = "",
               ok: Callable[[float], bool] | None = None) -> str:
    """``a / b`` with its target (if it has one) and whether it was met."""
    if a is None or b is None or b == 0:
        return f"  {label:<52} n/a (missing measurements)"
    value = a / b
    verdict = f"   target {target:<7} {'met' if ok(value) else 'MISSED'}" if ok is not None else ""
    return f"  {label:<52} {value:5.2f}{verdict}"


def stage_table(cases: list[tuple[str, list[Sample]]]) -> list[str]:
    names: list[str] = []
    for _, samples in cases:
        for s in samples:
            names += [n for n in s.stages if n not in names]
    order = [SUBMIT, SCHEDULE, LAUNCH, IMPORTS, LISTEN, NOTICE, ANSWER]
    names.sort(key=lambda n: order.index(n) if n in order else len(order))
    width = 14
    lines = [f"  {'step (median seconds)':<52}" + "".join(f"{label:>{width}}" for label, _ in cases)]
    for name in names:
        cells = []
        for _, samples in cases:
            values = [s.stages[name] for s in samples if name in s.stages]
            cells.append(f"{statistics.median(values):{width}.2f}" if values else f"{'–':>{width}}")
        lines.append(f"  {name:<52}" + "".join(cells))
    return lines


def stage_rows(samples: list[Sample]) -> list[str]:
    """One line per spawn: its total and its steps, in the order of the stage table."""
    order = [IMPORTS, LISTEN, ANSWER] if samples and samples[0].case in ("bare", "floor") else \
        [SUBMIT, SCHEDULE, LAUNCH, IMPORTS, LISTEN, NOTICE]
    lines = []
    for s in samples:
        steps = " ".join(f"{s.stages[n]:5.2f}" if n in s.stages else "    –" for n in order)
        total = f"{s.ready_s:6.2f}" if s.ready_s is not None else "  FAIL"
        flag = " (other jobs queued)" if s.disturbed else ""
        job = f"job {s.job_id}" if s.job_id else ""
        lines.append(f"    {s.case:<12} {job:<9} {total} = {steps}{flag}" if s.stages else
                     f"    {s.case:<12} {job:<9} {total}{flag} {s.error}")
    return lines


def cpu_median(samples: list[Sample]) -> float | None:
    """Median CPU seconds of the floor starts that were measured."""
    values = [s.cpu_s for s in samples if s.cpu_s is not None]
    return statistics.median(values) if values else None


def report(bench: Bench, elapsed: float) -> None:
    results, n = bench.results, len(bench.users)
    bare, floor = results["bare"], results["floor"]
    ours1, mixed1, stock1 = (results[k] for k in SINGLE)
    ours_n, mixed_n, stock_n = (results[k] for k in WAVES)
    cores = os.cpu_count() or 1
    print("\n" + "=" * 110)
    print("Spawn-to-ready (POST /hub/api/users/NAME/server -> GET /user/NAME/api/status = 200 via the proxy)")
    print("seconds: median  [min – max]  n\n")
    rows = [("bare: jupyterhub-singleuser started directly", bare),
            ("floor: our job's server start, started directly", floor),
            ("ours  (SlurmLabSpawner), 1 user", ours1),
            ("stock spawner on our environment, 1 user", mixed1),
            ("stock (batchspawner + stock environment), 1 user", stock1),
            (f"ours,  {n} users at once (each user)", ours_n),
            (f"stock spawner on our env, {n} at once (each)", mixed_n),
            (f"stock, {n} users at once (each user)", stock_n)]
    for label, samples in rows:
        print(f"  {label:<50} {summary(samples)}")
    for label, samples in ((f"ours,  {n} at once: all ready after", ours_n),
                           (f"stock spawner on our env, {n}: all ready after", mixed_n),
                           (f"stock, {n} at once: all ready after", stock_n)):
        spans = makespans(samples)
        print(f"  {label:<50} {statistics.median(spans):6.2f}  (waves: {', '.join(f'{v:.2f}' for v in spans)})"
              if spans else f"  {label:<50} n/a (some failed)")
    cpu_bare, cpu_floor = cpu_median(bare), cpu_median(floor)
    cpu_bound = cpu_floor * n / cores if cpu_floor is not None else None
    print("\nCPU seconds of one server start (its process and children, when it first answered; median)")
    print(f"  bare {cpu_bare if cpu_bare is not None else float('nan'):.2f} s, "
          f"floor (our job's start) {cpu_floor if cpu_floor is not None else float('nan'):.2f} s")
    if cpu_bound is not None:
        print(f"  CPU-bound floor of {n} starts at once: {n} x {cpu_floor:.2f} s / {cores} cores = {cpu_bound:.2f} s")
    if bench.wave_cpu:
        starts = f"{n * cpu_floor:.1f}" if cpu_floor is not None else "n/a"
        print(f"  host CPU seconds from a wave's first POST until all were ready (everything on the machine: the "
              f"servers, hubs, Slurm, this script; {n} floor starts take {starts} s): "
              + ", ".join(f"{k} {v:.1f}" for k, v in bench.wave_cpu.items()))
    print("\nRatios of medians (same run, same cluster)")
    print(ratio_line("ours / bare server start (1 user)", median(ours1), median(bare), "<= 1.2", lambda v: v <= 1.2))
    print(ratio_line("ours / floor (1 user: what Slurm and the hub add)", median(ours1), median(floor)))
    print(ratio_line("stock / ours (1 user)", median(stock1), median(ours1), ">= 1.6", lambda v: v >= 1.6))
    print(ratio_line("stock spawner / ours, both on our env (1 user)", median(mixed1), median(ours1)))
    print(ratio_line("stock env / our env, both stock spawner (1 user)", median(stock1), median(mixed1)))
    print(ratio_line(f"ours all ready / CPU-bound floor ({n} at once)", makespan(ours_n), cpu_bound, "<= 1.25",
                     lambda v: v <= 1.25))
    print(ratio_line(f"ours / stock ({n} at once, each)", median(ours_n), median(stock_n), "<= 0.8",
                     lambda v: v <= 0.8))
    print(ratio_line(f"ours / stock ({n} at once, all ready)", makespan(ours_n), makespan(stock_n), "<= 0.8",
                     lambda v: v <= 0.8))
    print(ratio_line(f"stock spawner / ours, our env ({n}, all ready)", makespan(mixed_n), makespan(ours_n)))
    print(ratio_line(f"stock env / our env, stock spawner ({n}, all ready)", makespan(stock_n), makespan(mixed_n)))
    print("\nWhere the time goes (from slurmctld's and slurmd's logs and the server's own log; medians)")
    columns = [(key.replace("-N", f"-{n}"), results[key]) for key in CASES]
    for line in stage_table(columns):
        print(line)
    print("\nEach single-user spawn: total = the steps above, in that order (seconds)")
    for key in ("bare", "floor", *SINGLE):
        for line in stage_rows(results[key]):
            print(line)
    for key in WAVES:
        for wave in sorted({s.wave for s in results[key]}):
            cells = sorted(f"{s.ready_s:.2f}" if s.ready_s is not None else "FAIL"
                           for s in results[key] if s.wave == wave)
            print(f"    {key:<12} wave {wave}: {' '.join(cells)}")
    if bench.discarded:
        print("\nNot counted (other users' jobs in the queue): "
              + ", ".join(f"{s.case} {s.ready_s:.2f}" if s.ready_s is not None else f"{s.case} FAIL"
                          for s in bench.discarded))
    errors = [s for samples in results.values() for s in samples if s.error]
    for s in errors[:10]:
        print(f"  error ({s.case}, {s.user}): {s.error}")
    disturbed = sum(s.disturbed for samples in results.values() for s in samples)
    print()
    if disturbed or not all(bench.idle.values()):
        print(f"NOTE: other users' Slurm jobs were in the queue during {disturbed} counted measurement(s); "
              f"phases that began without an idle cluster: {[k for k, v in bench.idle.items() if not v] or 'none'}")
    else:
        print("No other Slurm jobs were in the queue during any counted measurement.")
    if bench.cpu:
        print("Host CPU busy in the second before each round/wave (other work on this machine): "
              + ", ".join(f"{k} {v:.0%}" for k, v in bench.cpu.items()))
    load = os.getloadavg()
    print(f"Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({cores} CPUs). "
          f"Whole run: {elapsed:.0f} s.")


# ---- the run -------------------------------------------------------------------------------------
class Interrupted(Exception):
    """SIGTERM (or SIGHUP) arrived; clean up like on Ctrl-C."""


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Let cleanup finish: a second Ctrl-C must not leave jobs behind (cleanup is bounded by timeouts)."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@dataclass
class Bench:
    args: argparse.Namespace
    site: Site
    users: list[str]
    main: Hub
    main_tokens: dict[str, str] = field(default_factory=dict)
    stock: StockHub | None = None
    stock_hub: Hub | None = None
    stock_tokens: dict[str, str] = field(default_factory=dict)
    workdir: Path | None = None
    results: dict[str, list[Sample]] = field(default_factory=dict)
    discarded: list[Sample] = field(default_factory=list)
    idle: dict[str, bool] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    wave_cpu: dict[str, float] = field(default_factory=dict)  # host CPU seconds from a wave's POSTs to all ready

    def disturbed(self) -> bool:
        return bool(other_jobs(set(self.users)))

    def measure(self, hub: Hub, tokens: dict[str, str], options: dict[str, Any] | None, case: str,
                timeout: float, wave: int = 0) -> list[Sample]:
        """One wave (all of ``tokens`` at once), then stop those servers and wait until their jobs are gone."""
        # slurmctld starts pending jobs on a ~1 s tick: a random phase gives both spawners the same expected
        # wait (without it the fixed rhythm of this loop can land one of them on the same phase every time).
        time.sleep(random.uniform(0, 1))
        before, ticks = self.disturbed(), cpu_times()
        samples = spawn_wave(hub, tokens, options, case, timeout, wave)
        if wave:
            self.wave_cpu[f"{case} wave {wave}"] = busy_seconds(ticks, cpu_times())
        after = self.disturbed()
        for s in samples:
            s.disturbed = before or after
        if not hub.stop_servers(list(tokens)):
            say(f"WARNING: {hub.label}: servers of {list(tokens)} did not all stop in time; cancelling their jobs")
            cancel_jobs_of(list(tokens))
        time.sleep(self.args.settle)
        return samples

    def setup(self) -> None:
        say(f"main hub: preparing {len(self.users)} benchmark users ({self.users[0]}..{self.users[-1]})")
        self.main.stop_servers(self.users)  # leftovers of an interrupted run
        cancel_jobs_of(self.users)
        for name in self.users:
            self.main_tokens[name] = self.main.ensure_user(name)
            self.main.join(name, self.site.account)
            subprocess.run(["sacctmgr", "-i", "add", "user", name, f"account={self.site.account}"],
                           capture_output=True, check=False, timeout=60)
        self.workdir = Path(tempfile.mkdtemp(prefix="aifl-spawn-bench-"))
        self.workdir.chmod(0o755)  # job users read the venv in it; the hub's files are in a 0700 subfolder
        single = self.site.resources[self.site.default_profile]
        self.stock = StockHub(self.workdir, single, self.site)
        self.stock_hub = self.stock.start()
        say("stock hub: creating the same users")
        for name in self.users:
            self.stock_tokens[name] = self.stock_hub.ensure_user(name)

    def one(self, tokens: dict[str, str]) -> dict[str, str]:
        first = self.users[0]
        return {first: tokens[first]}

    def run_floor(self, case: str, index: int) -> Sample:
        assert self.workdir is not None
        user = self.users[0]
        before = self.disturbed()
        sample = floor_once(case, user, self.main_tokens[user], self.site.language,
                            self.workdir / f"{case}-{index}.log")
        sample.disturbed = before or self.disturbed()
        return sample

    def run(self) -> None:
        assert self.stock_hub is not None and self.stock is not None
        single = {"profile": self.site.default_profile}
        wide = self.site.resources[self.args.concurrent_profile]
        ours_main, stock = self.main, self.stock_hub
        users = set(self.users)
        self.results = {key: [] for key in CASES}
        hub_cases: dict[str, tuple[Hub, dict[str, str], dict[str, Any] | None]] = {
            "ours-1": (ours_main, self.main_tokens, single),
            "stock@ours-1": (stock, self.stock_tokens, self.stock.on_our_env()),
            "stock-1": (stock, self.stock_tokens, None)}

        def one_round(index: int, case_name: Callable[[str], str]) -> list[Sample]:
            samples = [self.run_floor(case, index) for case in ("bare", "floor")]
            for key, (hub, tokens, options) in hub_cases.items():
                samples.append(self.measure(hub, self.one(tokens), options, case_name(key), 180)[0])
            return samples

        say(f"waiting (up to {self.args.idle_wait:.0f} s) until no other Slurm jobs run")
        self.idle["1 user"] = wait_for_idle_cluster(users, self.args.idle_wait)
        say("warm-up (not counted): one start each of bare, floor, ours, stock@ours and stock")
        for sample in one_round(0, lambda key: "warm " + key):
            say(f"  warm-up {sample.case}: " + (f"{sample.ready_s:.2f} s" if sample.ready_s is not None
                                               else sample.error))

        # Rounds interleave all single-user cases, so that drift affects them alike. A round during which
        # someone else had jobs in the queue is repeated (at most `repeats` extra rounds).
        kept, attempts, max_attempts = 0, 0, 2 * self.args.repeats
        while kept < self.args.repeats and attempts < max_attempts:
            attempts += 1
            self.idle["1 user"] &= wait_for_idle_cluster(users, 60)
            self.cpu[f"round {attempts}"] = cpu_busy()
            round_samples = one_round(attempts, lambda key: key)
            text = ", ".join(f"{s.case} {s.ready_s:.2f} s" if s.ready_s is not None else f"{s.case} FAILED ({s.error})"
                             for s in round_samples)
            disturbed = any(s.disturbed for s in round_samples)
            if disturbed and max_attempts - attempts >= self.args.repeats - kept:
                say(f"round {attempts}: {text} — other jobs were in the queue: not counted, repeating")
                self.discarded += round_samples
                continue
            kept += 1
            for sample in round_samples:
                self.results[sample.case].append(sample)
            say(f"round {kept}/{self.args.repeats} (host CPU busy {self.cpu[f'round {attempts}']:.0%} before): {text}")

        # Waves in the order ours, stock@ours, stock, then the reverse, so no side always goes first.
        n = len(self.users)
        sides = [("ours-N", ours_main, self.main_tokens, {"profile": wide.slug}),
                 ("stock@ours-N", stock, self.stock_tokens, self.stock.on_our_env(wide.stock_options())),
                 ("stock-N", stock, self.stock_tokens, wide.stock_options())]
        for wave in range(1, self.args.waves + 1):
            for key, hub, tokens, options in (sides if wave % 2 else sides[::-1]):
                self.idle[f"{key} wave {wave}"] = wait_for_idle_cluster(users, self.args.idle_wait)
                busy = self.cpu[f"{key} wave {wave}"] = cpu_busy()
                say(f"{key} wave {wave}/{self.args.waves}: {n} users at once ({wide.slug}: {wide.cpus} CPUs, "
                    f"{wide.gpus} GPU, {wide.memory_gb} GB each); host CPU busy {busy:.0%} before")
                samples = self.measure(hub, tokens, options, key, self.args.concurrent_timeout, wave)
                self.results[key] += samples
                failed = [s for s in samples if s.error]
                span = makespan(samples)
                say(f"  {key} wave {wave}: median {median(samples) or float('nan'):.2f} s, all ready after "
                    + (f"{span:.2f} s" if span is not None else "n/a")
                    + (f"; {len(failed)} failed: {failed[0].error}" if failed else ""))
        self.add_stages()

    def add_stages(self) -> None:
        def ours_log(s: Sample) -> Path:
            return Path(pwd.getpwnam(s.user).pw_dir) / self.site.job_log_dir / f"session-{s.job_id}.log"

        def stock_log(s: Sample) -> Path:
            return Path(pwd.getpwnam(s.user).pw_dir) / f"jupyterhub_slurmspawner_{s.job_id}.log"

        ctld = tail_text(SLURM_LOGS / "slurmctld.log")
        add_stages(self.results.get("ours-1", []) + self.results.get("ours-N", []), ctld, ours_log)
        add_stages([s for key in ("stock@ours-1", "stock-1", "stock@ours-N", "stock-N")
                    for s in self.results.get(key, [])], ctld, stock_log)
        add_floor_stages(self.results.get("bare", []) + self.results.get("floor", []))

    def cleanup(self) -> None:
        say("cleaning up: servers, the stock hub and its proxy, jobs, users, the temporary directory")
        if self.stock_hub is not None:
            with contextlib.suppress(requests.RequestException):
                self.stock_hub.stop_servers(self.users, timeout=60)
        if self.stock is not None:
            self.stock.stop()
        with contextlib.suppress(requests.RequestException):
            self.main.stop_servers(self.users, timeout=60)
        cancel_jobs_of(self.users)
        with contextlib.suppress(requests.RequestException):
            self.main.delete_users(self.users)
        if self.stock is not None and any(s.error for k in CASES if k.startswith("stock")
                                          for s in self.results.get(k, [])):
            print(f"--- stock hub log (last lines) ---\n{self.stock.log_tail('hub.log', 60)}\n---", file=sys.stderr)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        left = jobs_of(self.users)
        say("clean: no benchmark jobs left" if not left else f"WARNING: benchmark jobs still queued: {left}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="sequential single-user spawns per case (5)")
    parser.add_argument("--concurrent", type=int, default=16, help="users started at once (16)")
    parser.add_argument("--concurrent-profile", default="gpu-1", help="profile of the concurrent wave (gpu-1)")
    parser.add_argument("--waves", type=int, default=2,
                        help="concurrent waves per side, in the order ours/stock@ours/stock, then the reverse (2)")
    parser.add_argument("--concurrent-timeout", type=float, default=300, help="seconds for a whole wave (300)")
    parser.add_argument("--idle-wait", type=float, default=240,
                        help="seconds to wait for other users' jobs to finish before measuring (240)")
    parser.add_argument("--settle", type=float, default=1.0, help="pause after each stop, seconds (1)")
    args = parser.parse_args(argv)
    if not 1 <= args.repeats <= 50 or not 1 <= args.concurrent <= 99 or not 1 <= args.waves <= 10:
        parser.error("--repeats must be 1..50, --concurrent 1..99 and --waves 1..10")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("spawn_latency: run as root (it starts a second hub that submits jobs as the users)", file=sys.stderr)
        return 2
    site = Site.load(SITE_FILE)
    if args.concurrent_profile not in site.resources:
        print(f"spawn_latency: no profile {args.concurrent_profile!r} in {SITE_FILE}", file=sys.stderr)
        return 2
    main_hub = Hub("main hub", MAIN_PUBLIC, MAIN_PROXY_API, (STATE / "lab-service-token").read_text().strip(),
                   (STATE / "proxy-token").read_text().strip())
    try:
        main_hub.api("GET", "/", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        print(f"spawn_latency: the lab's hub does not answer at {MAIN_PUBLIC} ({exc}); start it with ./lab up",
              file=sys.stderr)
        return 1
    users = [f"{USER_PREFIX}{i:02d}" for i in range(1, args.concurrent + 1)]
    with recorded("spawn-latency"):
        return measure_all(Bench(args, site, users, main_hub))


def measure_all(bench: Bench) -> int:
    """Set up, measure, clean up and report (also after Ctrl-C or an error); the exit code."""
    args = bench.args
    started = time.monotonic()
    say(f"spawn-latency benchmark: {args.repeats} x 1 user and {args.concurrent} at once; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGHUP)}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with &
    code = 0
    try:
        bench.setup()
        bench.run()
    except (KeyboardInterrupt, Interrupted) as exc:
        say(f"interrupted ({type(exc).__name__} {exc}); cleaning up")
        code = 130
    except (BenchError, requests.RequestException, subprocess.SubprocessError, OSError) as exc:
        say(f"ERROR: {exc}")
        if bench.stock is not None:
            print(f"--- stock hub log (tail) ---\n{bench.stock.log_tail('hub.log')}", file=sys.stderr)
        code = 1
    finally:
        with signals_ignored():
            if code != 0 and any(bench.results.values()):
                with contextlib.suppress(OSError, KeyError, ValueError):
                    bench.add_stages()  # before the floor's logs in the temporary directory are removed
            bench.cleanup()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code != 0 and any(bench.results.values()):
        say("the run did not finish; the results so far:")
    if any(bench.results.values()):
        for key in CASES:
            bench.results.setdefault(key, [])
        report(bench, time.monotonic() - started)
    return code


if __name__ == "__main__":
    sys.exit(main())
