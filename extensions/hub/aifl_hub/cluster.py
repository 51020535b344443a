"""The embedded local Slurm cluster: munge, MariaDB, slurmdbd, slurmctld and one slurmd per virtual node.

`lab up` calls :func:`up`, `lab down` :func:`down` and `lab status` :func:`status`; up and down run inside a
step of the caller's Progress and report with ``progress.note`` only. There is no systemd: munged and mariadbd
run in the foreground as detached processes (procs.start_daemon, output in /var/log/aifl/); the Slurm daemons
fork into the background themselves and log to /var/log/slurm/. Every daemon is found again through the pid
file it writes. The configuration comes from the Jinja2 templates in ``$AIFL_HUB_CONFIG/local-cluster``
(default ``hub_config/local-cluster``) and the site file; :func:`render_configs` is pure.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2

from . import organisations
from .procs import LabError, Progress, log_tail, ok, pid_alive, run, start_daemon, wait_for, wait_ready, write_file
from .site import Site

SLURM_ETC = Path("/etc/slurm")
SLURM_CONF, GRES_CONF, DBD_CONF = (SLURM_ETC / n for n in ("slurm.conf", "gres.conf", "slurmdbd.conf"))
RUN_DIR = Path("/run/slurm")
LOG_DIR = Path("/var/log/slurm")
AIFL_LOG_DIR = Path("/var/log/aifl")
STATE_DIR = Path("/var/lib/slurm/slurmctld")
SPOOL_DIR = Path("/var/spool/slurmd")
DB_PASSWORD_FILE = Path("/etc/aifl/slurmdbd-db-password")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_PID, MUNGE_LOG = Path("/run/munge/munged.pid"), AIFL_LOG_DIR / "munged.log"
MARIADB_PID, MARIADB_LOG = Path("/run/mysqld/mysqld.pid"), AIFL_LOG_DIR / "mariadb.log"
DBD_PID, DBD_LOG = RUN_DIR / "slurmdbd.pid", LOG_DIR / "slurmdbd.log"
CTLD_PID, CTLD_LOG = RUN_DIR / "slurmctld.pid", LOG_DIR / "slurmctld.log"
FIRST_NODE_PORT = 17001
HOSTS_FILE, HOSTS_MARK = Path("/etc/hosts"), "# aifl embedded cluster nodes"
HEALTHY_NODE_STATES = {"idle", "mixed", "allocated", "completing", "reserved"}  # reserved: e.g. for a workshop
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")


def template_dir() -> Path:
    """$AIFL_HUB_CONFIG/local-cluster when that variable is set, else <repo>/hub_config/local-cluster."""
    hub_config = os.environ.get("AIFL_HUB_CONFIG") or Path(__file__).resolve().parents[3] / "hub_config"
    return Path(hub_config) / "local-cluster"


# --- Pure part: node list and configuration files --------------------------------------------------

def _nodes(site: Site) -> list[dict[str, Any]]:
    """The virtual nodes: name, partition, CPUs, memory (MB), Gres and slurmd port, GPU nodes first."""
    cluster, nodes = site["cluster"], []
    for group, kind in (("gpu_nodes", "gpu"), ("cpu_nodes", "cpu")):
        spec = cluster.get(group) or {"count": 0}
        for i in range(1, spec["count"] + 1):
            nodes.append({
                "name": f"{spec['prefix']}{i:02d}", "partition": cluster["partitions"][kind],
                "cpus": spec["cpus"], "memory_mb": spec["memory_gb"] * 1024,
                "gres": _node_gres(spec) if kind == "gpu" else "",
                "port": FIRST_NODE_PORT + len(nodes),
            })
    return nodes


def _node_gres(spec: dict[str, Any]) -> str:
    """The Gres of a GPU node: its GPUs, and their shards where the site shares GPUs."""
    gres = f"gpu:{spec['gpu_type']}:{spec['gpus_per_node']}"
    shards = spec.get("shards_per_gpu", 0)
    return f"{gres},shard:{shards * spec['gpus_per_node']}" if shards else gres


def node_names(site: Site) -> list[str]:
    """Names of the virtual nodes, e.g. ``["gpu01", ..., "gpu04", "cpu01"]``."""
    return [node["name"] for node in _nodes(site)]


def _gpus_per_node(site: Site) -> int:
    """GPUs per GPU node; 0 when the site has no GPU nodes."""
    gpu_nodes = site["cluster"].get("gpu_nodes") or {}
    return gpu_nodes.get("gpus_per_node", 0) if gpu_nodes.get("count") else 0


def render_configs(site: Site, *, hostname: str, dbd_password: str) -> dict[str, str]:
    """Render slurm.conf, gres.conf and slurmdbd.conf: absolute path -> file content. No side effects."""
    nodes = _nodes(site)
    partitions: dict[str, dict[str, Any]] = {}
    for node in nodes:
        part = partitions.setdefault(node["partition"], {"name": node["partition"], "nodes": [],
                                                         "mem_per_cpu_mb": node["memory_mb"] // node["cpus"]})
        part["nodes"].append(node["name"])
        part["mem_per_cpu_mb"] = min(part["mem_per_cpu_mb"], node["memory_mb"] // node["cpus"])
    default = site["cluster"]["partitions"]["cpu"]
    if default not in partitions:
        default = next(iter(partitions), "")
    for part in partitions.values():
        part["default"] = part["name"] == default
    gpus = _gpus_per_node(site)
    gpu_type = site["cluster"]["gpu_nodes"].get("gpu_type", "") if gpus else ""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(template_dir()), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, keep_trailing_newline=True,
                             autoescape=False)  # noqa: S701 -- Slurm config files, not HTML
    values = {
        "site_name": site["site"]["name"], "cluster_name": site["cluster"]["name"], "hostname": hostname,
        "nodes": nodes, "partitions": list(partitions.values()),
        "gpu_nodes": [n["name"] for n in nodes if n["gres"]], "gpu_type": gpu_type,
        "gpu_files": "/dev/nvidia0" if gpus == 1 else f"/dev/nvidia[0-{gpus - 1}]",
        "gpu_file_list": [f"/dev/nvidia{i}" for i in range(gpus)],
        "shards_per_gpu": organisations.shards_per_gpu(site) if gpus else 0,
        "dbd_password": dbd_password, "run_dir": RUN_DIR, "log_dir": LOG_DIR, "state_dir": STATE_DIR,
        "spool_dir": SPOOL_DIR,
    }
    return {str(path): env.get_template(f"{path.name}.j2").render(values)
            for path in (SLURM_CONF, GRES_CONF, DBD_CONF)}


# --- Small system helpers ----------------------------------------------------------------------------

def _short_hostname() -> str:
    """The machine's name as `hostname -s` prints it."""
    return socket.gethostname().split(".")[0]


def _daemon_pid(pid_file: Path, comm: str) -> int | None:
    """The pid in ``pid_file`` when that process is alive and is ``comm``; else None."""
    try:
        pid = int(pid_file.read_text().split()[0])
        alive = pid_alive(pid) and Path(f"/proc/{pid}/comm").read_text().strip() == comm
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive else None


def _make_dir(path: Path, owner: str = "root", mode: int = 0o755) -> None:
    """Create ``path`` (with parents) and set its owner and mode."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, *_ids(owner))
    path.chmod(mode)


def _ids(user: str) -> tuple[int, int]:
    """(uid, gid) of ``user``."""
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _started_daemon(pid_file: Path, comm: str, grace: float = 3) -> Callable[[], bool]:
    """Liveness of a self-daemonising process: its pid file names it (allowing ``grace`` s to write it)."""
    started = time.monotonic()
    return lambda: time.monotonic() - started < grace or _daemon_pid(pid_file, comm) is not None


def _as_user(user: str, argv: list[str]) -> list[str]:
    """``argv`` run as ``user`` through setpriv, which execs: the pid stays the daemon's own."""
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *argv]


def _signal_all(pids: set[int], sig: signal.Signals, wait: float) -> set[int]:
    """Send ``sig`` to ``pids``, wait up to ``wait`` s for them to end; return those still alive."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + wait
    while (alive := {pid for pid in pids if pid_alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def _stop(pid: int, what: str, timeout: float = 30) -> None:
    """SIGTERM ``pid``, wait, then SIGKILL; raise when it still lives."""
    if _signal_all({pid}, signal.SIGTERM, timeout) and _signal_all({pid}, signal.SIGKILL, 5):
        raise LabError(f"{what} (pid {pid}) does not stop, not even on SIGKILL")


# --- munge -------------------------------------------------------------------------------------------

def _munge_works() -> bool:
    """``munge -n | unmunge`` as two argv processes: True when a credential round-trips."""
    try:
        cred = run(["munge", "-n"], check=False, timeout=10)
        return cred.returncode == 0 and run(["unmunge"], check=False, input=cred.stdout, timeout=10).returncode == 0
    except LabError:
        return False


def _up_munge(progress: Progress) -> None:
    """Create the munge key if missing and start munged (as munge) unless credentials already work."""
    if not MUNGE_KEY.exists():
        run(["mungekey", "--create", f"--keyfile={MUNGE_KEY}"])
        progress.note(f"created {MUNGE_KEY}")
    os.chown(MUNGE_KEY, *_ids("munge"))
    MUNGE_KEY.chmod(0o400)
    pid = _daemon_pid(MUNGE_PID, "munged")
    if pid and _munge_works():
        progress.note(f"munged already running (pid {pid})")
        return
    if pid:
        _stop(pid, "munged")
    for path, mode in ((MUNGE_PID.parent, 0o755), (Path("/var/lib/munge"), 0o711)):
        _make_dir(path, "munge", mode)
    start = time.monotonic()
    pid = start_daemon(_as_user("munge", ["munged", "--foreground"]), MUNGE_LOG)
    wait_ready(_munge_works, what="munged", alive=lambda: pid_alive(pid), log=MUNGE_LOG, timeout=15)
    progress.note(f"munged started (pid {pid}) in {time.monotonic() - start:.1f} s")


# --- MariaDB -----------------------------------------------------------------------------------------

def _mariadb_answers() -> bool:
    """True when MariaDB answers ``mariadb-admin ping``."""
    return ok(["mariadb-admin", "--connect-timeout=2", "ping"], timeout=10)


def _db_password() -> str:
    """The slurmdbd database password, generated once and kept in :data:`DB_PASSWORD_FILE`."""
    if DB_PASSWORD_FILE.exists():
        return DB_PASSWORD_FILE.read_text().strip()
    if not DB_PASSWORD_FILE.parent.exists():
        _make_dir(DB_PASSWORD_FILE.parent)
    password = secrets.token_urlsafe(24)
    write_file(DB_PASSWORD_FILE, password + "\n", mode=0o600)
    return password


def _up_mariadb(progress: Progress) -> str:
    """Start MariaDB when it does not answer; ensure the database and its user. Return the password."""
    pid = _daemon_pid(MARIADB_PID, "mariadbd")
    if _mariadb_answers():
        progress.note("MariaDB already running" + (f" (pid {pid})" if pid else ""))
    else:
        if pid:
            _stop(pid, "mariadbd")
        _make_dir(MARIADB_PID.parent, "mysql", 0o755)
        if not Path("/var/lib/mysql/mysql").is_dir():
            run(["mariadb-install-db", "--user=mysql", "--datadir=/var/lib/mysql", "--skip-test-db"])
            progress.note("initialised /var/lib/mysql")
        start = time.monotonic()
        # Paths given explicitly, so the daemon does not depend on Debian's config files being present.
        pid = start_daemon(["mariadbd", "--user=mysql", "--datadir=/var/lib/mysql", f"--pid-file={MARIADB_PID}",
                            f"--socket={MARIADB_PID.parent / 'mysqld.sock'}", "--innodb-buffer-pool-size=256M",
                            "--innodb-lock-wait-timeout=900"], MARIADB_LOG)
        wait_ready(_mariadb_answers, what="MariaDB (mariadbd)", alive=lambda: pid_alive(pid), log=MARIADB_LOG,
               timeout=60)
        progress.note(f"MariaDB started (pid {pid}) in {time.monotonic() - start:.1f} s")
    password = _db_password()
    user = "'slurm'@'localhost'"
    run(["mariadb", "--batch"], input=(
        "CREATE DATABASE IF NOT EXISTS slurm_acct_db;\n"
        f"CREATE USER IF NOT EXISTS {user} IDENTIFIED BY '{password}';\n"
        f"ALTER USER {user} IDENTIFIED BY '{password}';\n"
        f"GRANT ALL ON slurm_acct_db.* TO {user};\n"), timeout=30)
    return password


# --- Configuration, emulated GPUs, /etc/hosts ---------------------------------------------------------

def _write_configs(site: Site, password: str, progress: Progress) -> set[str]:
    """Write the rendered configs that changed; return their paths."""
    _make_dir(SLURM_ETC)
    owners = {str(SLURM_CONF): ("root", 0o644), str(GRES_CONF): ("root", 0o644), str(DBD_CONF): ("slurm", 0o600)}
    changed = set()
    for path, content in render_configs(site, hostname=_short_hostname(), dbd_password=password).items():
        if write_file(Path(path), content, owner=owners[path][0], mode=owners[path][1]):
            changed.add(path)
            progress.note(f"wrote {path}")
    if not changed:
        progress.note("configuration unchanged")
    return changed


def _ensure_gpu_devices(count: int, progress: Progress) -> None:
    """Create the emulated GPUs /dev/nvidia0..count-1 as copies of /dev/null (c 1 3).

    mknod works on this machine (a VM; /dev is a devtmpfs). /dev may not survive a reboot, so every
    `lab up` checks them.
    """
    for i in range(count):
        dev = Path(f"/dev/nvidia{i}")
        if not dev.exists():
            run(["mknod", "-m", "666", str(dev), "c", "1", "3"])
            progress.note(f"created emulated GPU {dev}")


def _ensure_hosts(names: list[str]) -> None:
    """One marked line in /etc/hosts naming the nodes as 127.0.0.1 (batchspawner resolves them)."""
    lines = [line for line in HOSTS_FILE.read_text().splitlines() if not line.endswith(HOSTS_MARK)]
    if names:
        lines.append(f"127.0.0.1 {' '.join(names)} {HOSTS_MARK}")
    text = "\n".join(lines) + "\n"
    if HOSTS_FILE.read_text() != text:
        HOSTS_FILE.write_text(text)  # in place: /etc/hosts may be a bind mount


def _prepare(site: Site, password: str, progress: Progress) -> set[str]:
    """Directories, configuration files, GPU devices and /etc/hosts; return the config paths that changed."""
    for path, owner in ((RUN_DIR, "slurm"), (LOG_DIR, "slurm"), (STATE_DIR, "slurm"), (SPOOL_DIR, "root"),
                        (AIFL_LOG_DIR, "root")):
        _make_dir(path, owner)
    for name in node_names(site):
        _make_dir(SPOOL_DIR / name)
    changed = _write_configs(site, password, progress)
    _ensure_gpu_devices(_gpus_per_node(site), progress)
    _ensure_hosts(node_names(site))
    return changed


# --- slurmdbd, accounting, slurmctld -----------------------------------------------------------------

def _dbd_answers() -> bool:
    """True when slurmdbd answers ``sacctmgr -n show cluster``."""
    return ok(["sacctmgr", "-n", "show", "cluster"], timeout=15)


def _ctld_answers() -> bool:
    """True when slurmctld answers ``scontrol ping``."""
    return ok(["scontrol", "ping"], timeout=15)


def _up_slurm_daemon(name: str, pid_file: Path, log: Path, check: Callable[[], bool], restart: bool,
                     progress: Progress) -> None:
    """Start slurmdbd or slurmctld as user slurm unless it runs and answers (and no restart is needed)."""
    pid = _daemon_pid(pid_file, name)
    if pid and restart:
        progress.note(f"restarting {name}: its configuration changed")
        _stop(pid, name)
    elif pid and check():
        progress.note(f"{name} already running (pid {pid})")
        return
    elif pid:
        _stop(pid, name)
    start = time.monotonic()
    run(_as_user("slurm", [name]), timeout=30)  # forks into the background once it has read its config
    wait_ready(check, what=name, alive=_started_daemon(pid_file, name), log=log, timeout=60)
    progress.note(f"{name} started (pid {_daemon_pid(pid_file, name)}) in {time.monotonic() - start:.1f} s")


def _gres_tres_known(names: tuple[str, ...]) -> bool:
    """True once slurmctld has registered these GRES TRES (gpu, shard) with slurmdbd (limits on them need it)."""
    rows = _sacctmgr_rows("tres", "format=type,name")
    return all(["gres", name] in (row[:2] for row in rows) for name in names)


def _sacctmgr_rows(*args: str) -> list[list[str]]:
    """``sacctmgr -n -P show ARGS`` split into rows of fields."""
    out = run(["sacctmgr", "-n", "-P", "show", *args], timeout=30).stdout
    return [line.split("|") for line in out.splitlines() if line]


def ensure_accounting(site: Site) -> None:
    """Create the cluster, the QOS and the accounts of the site (with descriptions); change nothing twice.

    Each account may use the QOS it lists (default: every site QOS), with ``accounting.default_qos`` as its
    default, and at most ``max_gpus`` GPUs at once when it says so.
    """
    acct, cluster = site["accounting"], site["cluster"]["name"]
    if [cluster] not in _sacctmgr_rows("cluster", "format=cluster"):
        run(["sacctmgr", "-i", "add", "cluster", cluster])
    qos_names = [q["name"] for q in acct["qos"]]
    for kind, key, wanted in (("qos", "name", acct["qos"]), ("account", "account", acct["accounts"])):
        have = dict(_sacctmgr_rows(kind, f"format={key},description"))
        for item in wanted:
            description = item.get("description", item["name"])
            if item["name"] not in have:
                extra = [f"cluster={cluster}"] if kind == "account" else []
                run(["sacctmgr", "-i", "add", kind, item["name"], f"description={description}", *extra])
            elif have[item["name"]].casefold() != description.casefold():  # sacctmgr stores lower case
                run(["sacctmgr", "-i", "modify", kind, "where", f"name={item['name']}", "set",
                     f"description={description}"])
    for account in acct["accounts"]:
        rows = _sacctmgr_rows("assoc", "where", f"cluster={cluster}", f"account={account['name']}",
                              "format=user,qos,defaultqos")
        row = next((r for r in rows if r[0] == ""), None)
        if row is None:
            run(["sacctmgr", "-i", "add", "account", account["name"], f"cluster={cluster}"])
        allowed = account.get("qos", qos_names)
        if row is None or set(row[1].split(",")) != set(allowed) or row[2] != acct["default_qos"]:
            run(["sacctmgr", "-i", "modify", "account", "where", f"name={account['name']}", f"cluster={cluster}",
                 "set", f"qos={','.join(allowed)}", f"defaultqos={acct['default_qos']}"])


def ensure_gpu_limits(site: Site, progress: Progress) -> None:
    """GPU limits of accounts and QOS, and the organisations (slurmdbd knows GPUs once slurmctld registered).

    ``accounting.accounts[].max_gpus`` caps an account; :func:`organisations.sync` does the rest.
    """
    cluster = site["cluster"]["name"]
    for account in site["accounting"]["accounts"]:
        rows = _sacctmgr_rows("assoc", "where", f"cluster={cluster}", f"account={account['name']}",
                              "format=user,grptres")
        have = next((r[1] for r in rows if r[0] == ""), "")
        gpus = organisations.gpu_tres(account["max_gpus"], site) if "max_gpus" in account else ""
        if ",".join(sorted(t for t in have.split(",") if t)) != gpus:
            run(["sacctmgr", "-i", "modify", "account", "where", f"name={account['name']}", f"cluster={cluster}",
                 "set", f"grptres={gpus or organisations.gpu_tres(-1, site)}"])
    synced = organisations.sync(site)
    if synced.commands:
        progress.note(f"organisations and QOS: {len(synced.commands)} change(s) in Slurm's accounts")
    for name in synced.left_over:
        progress.note(f"account {name} is in Slurm but no longer in the site file: kept, with its history")


# --- slurmd nodes ------------------------------------------------------------------------------------

def _slurmd_pids() -> dict[str, int]:
    """Running slurmd's found by pid file: node name -> pid."""
    pids = {}
    for pid_file in sorted(RUN_DIR.glob("slurmd-*.pid")):
        pid = _daemon_pid(pid_file, "slurmd")
        if pid:
            pids[pid_file.stem.removeprefix("slurmd-")] = pid
    return pids


def _node_states() -> dict[str, tuple[str, str]]:
    """Node name -> (state as sinfo prints it, reason) from slurmctld; empty when it does not answer."""
    try:
        proc = run(["sinfo", "-h", "-N", "-o", "%N|%T|%E"], check=False, timeout=15)
    except LabError:
        return {}
    states = {}
    for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
        node, state, reason = line.split("|", 2)
        states[node] = (state, "" if reason == "none" else reason)
    return states


def _node_healthy(state: str) -> bool:
    """True for a node that takes jobs: idle, mixed, allocated or completing (and responding)."""
    return state in HEALTHY_NODE_STATES


def _up_nodes(site: Site, restart: bool, progress: Progress) -> None:
    """Start a slurmd per node, stop those of nodes no longer configured, wait until all nodes are usable."""
    names = node_names(site)
    stopped = []
    for node, pid in _slurmd_pids().items():
        if node not in names or restart:
            _stop(pid, f"slurmd {node}")
            stopped.append(node if node in names else f"{node} (no longer configured)")
    if stopped:
        progress.note(f"stopped slurmd for {', '.join(stopped)}")
    started, running = time.monotonic(), _slurmd_pids()
    missing = [node for node in names if node not in running]
    for node in missing:
        run(["slurmd", "-N", node], timeout=30)  # forks into the background once it has read its config
    if missing:
        progress.note(f"started slurmd for {', '.join(missing)}")
    resumed: set[str] = set()
    while True:
        states = _node_states()
        for node, (state, reason) in states.items():
            if node in names and node not in resumed and ("drain" in state or state == "down"):
                run(["scontrol", "update", f"nodename={node}", "state=resume"], check=False)
                resumed.add(node)
                progress.note(f"resumed node {node} (was {state}: {reason or 'no reason given'})")
        pids = _slurmd_pids()
        bad = [n for n in names if n not in pids or not _node_healthy(states.get(n, ("", ""))[0])]
        if not bad:
            break
        dead = [n for n in bad if n not in pids] if time.monotonic() - started > 3 else []
        if dead or time.monotonic() - started > 60:
            node = (dead or bad)[0]
            state, reason = states.get(node, ("unknown", ""))
            why = "slurmd stopped" if dead else f"state {state}{f' ({reason})' if reason else ''}"
            log = LOG_DIR / f"slurmd-{node}.log"
            raise LabError(f"node {node} is not usable: {why}\n  last lines of {log}:\n{log_tail(log)}")
        time.sleep(0.2)
    progress.note(f"{len(names)} nodes take jobs ({time.monotonic() - started:.1f} s): {', '.join(names)}")


# --- Public entry points -----------------------------------------------------------------------------

def up(site: Site, progress: Progress) -> None:
    """Start the whole local cluster; quick and without changes when it already runs."""
    _up_munge(progress)
    password = _up_mariadb(progress)
    changed = _prepare(site, password, progress)
    _up_slurm_daemon("slurmdbd", DBD_PID, DBD_LOG, _dbd_answers, str(DBD_CONF) in changed, progress)
    ensure_accounting(site)  # before slurmctld first registers the cluster with slurmdbd
    slurm_changed = bool(changed & {str(SLURM_CONF), str(GRES_CONF)})
    _up_slurm_daemon("slurmctld", CTLD_PID, CTLD_LOG, _ctld_answers, slurm_changed, progress)
    tres = ("gpu", "shard") if organisations.shards_per_gpu(site) else ("gpu",)
    wait_for(lambda: _gres_tres_known(tres), what="slurmdbd's GPU accounting", timeout=60, log=CTLD_LOG)
    ensure_gpu_limits(site, progress)
    _up_nodes(site, slurm_changed, progress)


def _descendants(roots: set[int]) -> set[int]:
    """``roots`` and all their descendant processes."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def _stop_job_steps(progress: Progress) -> None:
    """Stop the slurmstepd's that slurmd leaves behind, and the job processes under them."""
    steps = set()
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "slurmstepd":
                steps.add(int(comm.parent.name))
        except OSError:
            continue
    if not steps:
        return
    jobs = _descendants(steps) - steps
    left = _signal_all(jobs, signal.SIGTERM, 5) | steps  # slurmstepd ignores SIGTERM
    if _signal_all(left, signal.SIGKILL, 5):
        raise LabError(f"job processes {sorted(left)} do not stop, not even on SIGKILL")
    progress.note(f"stopped {len(steps)} job step(s) and their processes")


def down(progress: Progress) -> None:
    """Stop the slurmd's, slurmctld, slurmdbd, MariaDB and munged, in that order."""
    slurmds = _slurmd_pids()
    for node, pid in slurmds.items():
        _stop(pid, f"slurmd {node}")
    progress.note(f"stopped slurmd for {', '.join(slurmds)}" if slurmds else "no slurmd was running")
    _stop_job_steps(progress)
    for name, pid_file in (("slurmctld", CTLD_PID), ("slurmdbd", DBD_PID), ("mariadbd", MARIADB_PID),
                           ("munged", MUNGE_PID)):
        pid = _daemon_pid(pid_file, name)
        if pid:
            _stop(pid, name, timeout=60)
            progress.note(f"stopped {name}")
        else:
            progress.note(f"{name} was not running")


def stopped_daemons(site: Site) -> list[str]:
    """The local cluster's daemons whose process is gone (cheap: pid files and /proc only)."""
    daemons = [("munged", MUNGE_PID), ("mariadbd", MARIADB_PID), ("slurmdbd", DBD_PID), ("slurmctld", CTLD_PID)]
    stopped = [comm for comm, pid_file in daemons if _daemon_pid(pid_file, comm) is None]
    running = _slurmd_pids()
    return stopped + [f"slurmd {node}" for node in node_names(site) if node not in running]


def _daemon_status(part: str, pid: int | None, check: Callable[[], bool], works: str) -> tuple[str, bool, str]:
    """One status row: not running, running and answering, or running but not answering."""
    if not pid:
        return part, False, "not running"
    if check():
        return part, True, f"running (pid {pid}), {works}"
    return part, False, f"running (pid {pid}) but does not answer"


def status(site: Site) -> list[tuple[str, bool, str]]:
    """(part, healthy, detail) for munge, MariaDB, slurmdbd, slurmctld and every node."""
    ctld_pid = _daemon_pid(CTLD_PID, "slurmctld")
    result = [
        _daemon_status("munge", _daemon_pid(MUNGE_PID, "munged"), _munge_works, "credentials work"),
        _daemon_status("mariadb", _daemon_pid(MARIADB_PID, "mariadbd"), _mariadb_answers, "answers"),
        _daemon_status("slurmdbd", _daemon_pid(DBD_PID, "slurmdbd"), _dbd_answers, "answers"),
        _daemon_status("slurmctld", ctld_pid, _ctld_answers, "answers"),
    ]
    states = _node_states() if ctld_pid else {}
    pids = _slurmd_pids()
    for node in node_names(site):
        state, reason = states.get(node, ("unknown to slurmctld", ""))
        if node not in pids:
            result.append((f"node {node}", False, f"slurmd not running; {state}"))
            continue
        detail = f"{state} (slurmd pid {pids[node]})" + (f": {reason}" if reason else "")
        result.append((f"node {node}", _node_healthy(state), detail))
    return result
