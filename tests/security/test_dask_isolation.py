"""A user's Dask cluster is that user's alone: another lab user can neither use it nor read its dashboard.

User A starts a one-worker cluster from a real session's kernel; user B, a real Unix user (setpriv),
runs the notebook environment's python and attacks it for real: a client without, with a certificate
of B's own and over plain TCP; the worker's ``run`` handler; every TCP port of A's kernel as a web
page; A's private folder (certificates, dashboard socket); the dashboard's address with B's token.
"""

from __future__ import annotations

import json
import pwd
import secrets
from pathlib import Path

import requests
from attacker import as_user
from conftest import BASE
from test_notebook_dask import Kernel, start_session, wait_no_workers

NOTEBOOK_PYTHON = "/opt/aifl/envs/default/bin/python"

START_ONE = """
import json, os
from aifl_notebook.dask import private_folder, start_cluster
from pathlib import Path
cluster = start_cluster(minimum=1)
client = cluster.get_client()
client.wait_for_workers(1, timeout=180)
inodes = set()
for fd in os.listdir("/proc/self/fd"):
    try:
        inodes.add(os.readlink(f"/proc/self/fd/{fd}"))
    except FileNotFoundError:  # closed meanwhile (the listing's own)
        pass
ports = set()
for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
    for line in open(table).read().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and f"socket:[{fields[9]}]" in inodes:  # listening, of this process
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
folder = private_folder(Path.home())
print("CLUSTER", json.dumps({
    "scheduler": cluster.scheduler_address,
    "workers": sorted(client.scheduler_info()["workers"]),
    "dashboard": cluster.dashboard_link,
    "socket": cluster.scheduler.dashboard_socket,
    "folder": str(folder),
    "files": sorted(str(path) for path in folder.iterdir()),
    "ports": sorted(ports),
}))
"""

CHECK = """
def seen(dask_scheduler):
    return {"prefixes": sorted(dask_scheduler.task_prefixes), "clients": len(dask_scheduler.clients)}
print("SEEN", json.dumps({**client.run_on_scheduler(seen), "sum": client.submit(sum, range(1000)).result()}))
"""

# B's attacks, each in its own try: whatever connects, submits ``intruder_task``, which would write
# the marker file as A. Prints one JSON object: attack -> the error that stopped it (or "WORKED").
ATTACK = r"""
import asyncio, json, os, ssl, sys, urllib.request
from distributed import Client
from distributed.core import rpc
from distributed.protocol.pickle import dumps
from distributed.security import Security

scheduler, worker, marker, host, ports = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]

def intruder_task():
    with open(marker, "w") as fh:
        fh.write(str(os.getuid()))
    return "ran"

result = {}

def attempt(name, action):
    try:
        action()
        result[name] = "WORKED"
    except BaseException as error:  # anything but success stops the attack
        result[name] = type(error).__name__

def submit(address, **kwargs):
    with Client(address, timeout="8s", **kwargs) as client:
        client.submit(intruder_task, pure=False).result(timeout=20)

attempt("client without certificate", lambda: submit(scheduler))
attempt("client with its own certificate", lambda: submit(scheduler, security=Security.temporary()))
attempt("client over plain tcp", lambda: submit(scheduler.replace("tls://", "tcp://")))

async def run_on_worker(address, security):
    args = security.get_connection_args("client") if security else {}
    async with rpc(address, connection_args=args, timeout=8) as remote:
        return await remote.run(function=dumps(intruder_task))

attempt("worker run with its own certificate",
        lambda: asyncio.run(run_on_worker(worker, Security.temporary())))
attempt("worker run over plain tcp", lambda: asyncio.run(run_on_worker(worker.replace("tls://", "tcp://"), None)))

insecure = ssl.create_default_context()
insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
for port in ports:
    for address in ("127.0.0.1", host):
        for scheme in ("http", "https"):
            def fetch(url=f"{scheme}://{address}:{port}/status"):
                body = urllib.request.urlopen(url, timeout=5, context=insecure if scheme == "https" else None).read()
                if b"Dask" not in body and b"bokeh" not in body:
                    raise LookupError("not a dashboard")
            attempt(f"dashboard at {scheme}://{address}:{port}", fetch)
print(json.dumps(result))
"""

SOCKET = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(b"GET /status HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n")
print(s.recv(200))
"""


def test_another_user_can_neither_use_nor_read_a_users_dask_cluster(hub, users) -> None:
    name, token, url = start_session(hub, users)
    other, other_token = users("dskb")
    kernel = Kernel(url, token)
    cluster = kernel.run(START_ONE)["CLUSTER"]
    try:
        assert cluster["scheduler"].startswith("tls://") and len(cluster["workers"]) == 1
        # Only code running as A can write in A's home (B cannot): the marker B's task would leave.
        marker = Path(pwd.getpwnam(name).pw_dir) / f"intruder-{secrets.token_hex(6)}"
        before = kernel.run(CHECK)["SEEN"]
        host = cluster["scheduler"].removeprefix("tls://").rsplit(":", 1)[0]
        attack = as_user(other, [NOTEBOOK_PYTHON, "-c", ATTACK, cluster["scheduler"], cluster["workers"][0],
                                 str(marker), host, *map(str, cluster["ports"])], timeout=240)
        assert attack.returncode == 0, attack.stderr[-3000:]
        results = json.loads(attack.stdout.splitlines()[-1])
        assert len(results) == 5 + 4 * len(cluster["ports"]), results
        assert "WORKED" not in results.values(), results
        assert not marker.exists()  # none of B's code ran as A

        # A's private folder (the cluster's key and certificates, the dashboard's socket) is closed to B.
        assert cluster["socket"] in cluster["files"] and any(".worker.key." in f for f in cluster["files"])
        assert as_user(other, ["ls", cluster["folder"]]).returncode != 0
        for path in cluster["files"]:
            assert as_user(other, ["cat", path]).returncode != 0
        refused = as_user(other, [NOTEBOOK_PYTHON, "-c", SOCKET, cluster["socket"]])
        assert refused.returncode != 0 and "PermissionError" in refused.stderr, refused.stdout

        # The dashboard is A's, through A's session behind the hub's login; B's token gets nothing.
        page = requests.get(BASE + cluster["dashboard"], headers={"Authorization": f"token {token}"}, timeout=60)
        assert page.status_code == 200 and "<title>Dask Diagnostic UI</title>" in page.text, page.text[:300]
        stolen = requests.get(BASE + cluster["dashboard"], headers={"Authorization": f"token {other_token}"},
                              timeout=60, allow_redirects=False)
        assert stolen.status_code in (302, 403) and "Dask" not in stolen.text

        # A's scheduler saw no client and no task of B's; A's own client still works.
        seen = kernel.run(CHECK)["SEEN"]
        assert seen["sum"] == 499500 and "sum" in seen["prefixes"]
        assert "intruder_task" not in seen["prefixes"] and seen["clients"] == before["clients"], seen
    finally:
        kernel.run('cluster.close(); print("CLOSED", json.dumps(True))')
    assert wait_no_workers(name, timeout=30) < 30
    gone = requests.get(BASE + cluster["dashboard"], headers={"Authorization": f"token {token}"}, timeout=60)
    assert gone.status_code == 404 and "its cluster is closed" in gone.text
