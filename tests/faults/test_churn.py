"""A bounded churn of session starts and stops leaves nothing behind.

On the real local cluster: several users start and stop sessions round after round, some stopped by the
hub, some ended from outside (``scancel``, as an administrator or a node would); afterwards no Slurm job,
no proxy route and no process of theirs is left. The hub's memory at the start and the end is printed
(the soak figure), not asserted: memory is not a behaviour.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import slurm

pytestmark = pytest.mark.cluster

USERS, ROUNDS = 4, 4
STATE = Path("/var/lib/aifl")


def proxy_routes() -> dict:
    """The proxy's routing table, from its own REST API."""
    request = urllib.request.Request("http://127.0.0.1:8001/api/routes", headers={
        "Authorization": f"token {(STATE / 'proxy-token').read_text().strip()}"})
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - the proxy on loopback
        return json.loads(answer.read())


def hub_rss_mb() -> float:
    """The hub process's resident memory in MB."""
    pid = (STATE / "jupyterhub.pid").read_text().strip()
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def left_behind(names: list[str]) -> dict[str, list[str]]:
    """What is still there for ``names``: Slurm jobs, proxy routes and processes."""
    jobs = slurm("squeue", "-h", "-u", ",".join(names), "-o", "%i|%u|%T").split()
    routes = [route for route in proxy_routes() if route.rstrip("/") in {f"/user/{n}" for n in names}]
    processes = subprocess.run(["ps", "-o", "pid=,user=,args=", "-u", ",".join(names)], capture_output=True,
                               text=True, timeout=30, check=False).stdout.split("\n")
    return {"jobs": jobs, "routes": routes, "processes": [p for p in processes if p.strip()]}


def test_a_churn_of_starts_and_stops_leaves_no_job_route_or_process_behind(hub, users):
    people = [users("soak") for _ in range(USERS)]
    names = [name for name, _token in people]
    rss_at_start = hub_rss_mb()
    for round_ in range(ROUNDS):
        for name, token in people:
            r = hub.api("POST", f"/users/{name}/server", token=token, json={"user_options": {"profile": "cpu-small"}})
            assert r.status_code in (201, 202), r.text
        for name, _token in people:
            hub.wait_ready(name)
        routed = {route.rstrip("/") for route in proxy_routes()}
        assert {f"/user/{name}" for name in names} <= routed, routed
        for i, (name, token) in enumerate(people):
            if round_ % 2 and i % 2:
                slurm("scancel", hub.job_of(name))  # ended outside the lab: the hub must notice and clean up
            else:
                assert hub.api("DELETE", f"/users/{name}/server", token=token).status_code in (202, 204)
        for name, _token in people:
            hub.wait_gone(name, timeout=60)
    # Slurm may hold a cancelled job as COMPLETING and its processes for a moment: wait for them to go.
    deadline = time.monotonic() + 60
    while any((left := left_behind(names)).values()) and time.monotonic() < deadline:
        time.sleep(1)
    assert left == {"jobs": [], "routes": [], "processes": []}, left
    print(f"\nhub memory (RSS) over {ROUNDS} rounds of {USERS} starts and stops: "
          f"{rss_at_start:.0f} MB at the start, {hub_rss_mb():.0f} MB at the end")
