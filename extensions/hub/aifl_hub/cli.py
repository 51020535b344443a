"""`lab`: start, stop and check the whole AI Factory Lab on this machine, and run its tests.

    ./lab up       install what is missing, start the local Slurm cluster and the hub
    ./lab down     stop the hub, the proxy and the local cluster (session jobs end)
    ./lab status   the health of every part, in plain words
    ./lab test     install what the tests need and run them

The bash script ``lab`` in the repository root makes the hub's Python environment and runs this.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import grp
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from . import cluster, datasets
from .energy import status_path
from .hubconfig import HUB_API_PORT, PROXY_API_PORT
from .procs import (
    LabError,
    Progress,
    pid_alive,
    protect_log,
    read_own_file,
    require_root,
    run,
    start_daemon,
    wait_ready,
    write_file,
)
from .site import Site, SiteError, load_site

ETC = Path("/etc/aifl")
OPT = Path("/opt/aifl")
RUN = Path("/run/aifl")
LAB_LOCK = RUN / "lab.lock"  # root-owned folder: /run/lock is world-writable
LOGS = Path("/var/log/aifl")
HUB_ENV = OPT / "hub"
PROXY_DIR = OPT / "proxy"
NOTEBOOK_BUILD = OPT / "build" / "aifl-notebook"
PROXY_VERSION = "5.3.0"
MKUSER = Path("/usr/local/sbin/aifl-mkuser")
RESERVATION_HELPER = Path("/usr/local/sbin/aifl-reservation")
WORK_HELPER = Path("/usr/local/sbin/aifl-work")
ORG_REVOKE_HELPER = Path("/usr/local/sbin/aifl-org-revoke")
REVOKE_HELPER = Path("/usr/local/sbin/aifl-revoke")
DATASETS_HELPER = Path("/usr/local/sbin/aifl-datasets-access")
SUDOERS = Path("/etc/sudoers.d/aifl-hub")
CREDENTIALS = ETC / "admin-credentials"
SYSTEM_PACKAGES = ["slurm-wlm", "slurmdbd", "slurm-client", "munge", "mariadb-server", "sudo", "util-linux"]
TEST_PACKAGES = ["chromium", "faketime"]
# The pure tests (those that need no running lab) run again under Debian's faketime at moments where
# code that reads the wall clock breaks: each starts half a minute before the turn, so the run crosses it.
# The offsets pin the moment in the facility's time zone (the autumn one is ambiguous without it).
CLOCK_ZONE = "Europe/Amsterdam"
CLOCK_MOMENTS = (
    ("the last minute of a month", "2026-11-30 23:59:30 +0100"),
    ("31 December 23:59", "2026-12-31 23:59:30 +0100"),
    ("summer time begins (02:00 becomes 03:00)", "2027-03-28 01:59:30 +0100"),
    ("summer time ends (03:00 becomes 02:00 again)", "2027-10-31 02:59:30 +0200"),
    ("22:30 (windows past midnight)", "2027-06-15 22:30:00 +0200"),
)
PURE_TESTS = "not cluster and not browser and not timed_thread_waits"


def _missing_packages(names: list[str]) -> list[str]:
    return [n for n in names
            if "install ok installed" not in run(["dpkg-query", "-W", "-f=${Status}", n], check=False).stdout]


def install_packages(names: list[str], progress: Progress) -> None:
    """apt-get install the packages of ``names`` that are missing (Node.js only if no node exists)."""
    missing = _missing_packages(names)
    if not shutil.which("node"):
        missing += _missing_packages(["nodejs", "npm"])
    if not missing:
        progress.note("all system packages are installed")
        return
    progress.note("installing " + ", ".join(missing))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=env, timeout=900)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env, timeout=1800)


def _source_file(path: Path, root: Path) -> bool:
    """A file of the source tree under ``root``, not something a build or an import left there."""
    return path.is_file() and not any(part in ("__pycache__", "build", "node_modules") or part.endswith(".egg-info")
                                      for part in path.relative_to(root).parts)


def _tree_hash(*paths: Path) -> str:
    digest = hashlib.sha256()
    for root in paths:
        files = sorted(p for p in root.rglob("*") if _source_file(p, root)) if root.is_dir() else [root]
        for f in files:
            digest.update(str(f.relative_to(root.parent)).encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def build_environment(repo: Path, site: Site, progress: Progress) -> None:
    """Build the notebook environment from images/<name> under a fixed, world-readable prefix."""
    name = site["spawner"]["environment"]
    spec = repo / "images" / name
    if not spec.is_dir():
        raise LabError(f"images/{name} does not exist (site file key spawner.environment)")
    prefix = Path(site["spawner"]["environments_dir"]) / name
    stamp = _tree_hash(spec, repo / "extensions" / "notebook", repo / "notebooks")
    stamp_file = prefix / ".aifl-stamp"
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        progress.note(f"{prefix} is up to date")
        return
    if not (prefix / "bin" / "python").exists():
        run(["/usr/bin/python3", "-m", "venv", str(prefix)])
    pip = [str(prefix / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
    progress.note("installing the pinned packages of images/" + name)
    run([*pip, "--no-deps", "-r", str(spec / "requirements.txt")], timeout=1800)
    package = build_notebook_package(repo / "extensions" / "notebook", prefix, progress)
    run([*pip, "--no-deps", "--force-reinstall", str(package)], timeout=600)
    _remove_unlisted(prefix, spec / "requirements.txt", progress)
    for sub in ("etc", "share"):
        if (spec / sub).is_dir():
            shutil.copytree(spec / sub, prefix / sub, dirs_exist_ok=True)
    install_notebooks(repo / "notebooks", prefix / "share" / "aifl" / "notebooks")
    run(["chmod", "-R", "a+rX", str(prefix)])
    stamp_file.write_text(stamp)


def install_notebooks(source: Path, target: Path) -> None:
    """Put the example notebooks (``*.ipynb`` of ``notebooks/``, not their sources) where sessions copy them from.

    The folder is replaced as a whole, so a notebook removed from the repository is no longer offered.
    """
    if target.exists():
        shutil.rmtree(target)
    keep = {p for p in source.rglob("*.ipynb") if not any(part.startswith(("_", ".")) for part in
                                                           p.relative_to(source).parts)}
    for notebook in sorted(keep):
        dest = target / notebook.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(notebook, dest)


def write_session_profiles(site: Site) -> None:
    """Give the notebook environment the site's profiles (``etc/aifl/profiles.json``, readable by all).

    Code inside a session (batch runs, Dask workers) offers the same profiles as the spawn page, with
    the same names and limits. Only the profiles are written, and (``energy.json``) the energy model and
    the grid status file's path, and (``datasets.json``) the data sets' catalogue, nothing else of the
    site file.
    """
    prefix = Path(site["spawner"]["environments_dir"]) / site["spawner"]["environment"]
    folder = prefix / "etc" / "aifl"
    folder.mkdir(parents=True, exist_ok=True)
    profiles = {"gpu_type": site["cluster"].get("gpu_nodes", {}).get("gpu_type", ""),
                "profile_list": site["spawner"]["profile_list"]}
    write_file(folder / "profiles.json", json.dumps(profiles, indent=1, ensure_ascii=False) + "\n", mode=0o644)
    # Energy in the session and flexible runs: the energy model and where the grid's status is published.
    energy = {"energy": site.get("energy", {}), "grid_status_file": str(status_path(site))}
    write_file(folder / "energy.json", json.dumps(energy, indent=1) + "\n", mode=0o644)
    # The data sets on the shelf: each session shows them under ~/datasets.
    write_file(folder / datasets.SESSION_FILE, datasets.session_catalogue(site), mode=0o644)


def build_notebook_package(source: Path, prefix: Path, progress: Progress) -> Path:
    """Copy the notebook package to a build folder and build its JupyterLab extension there.

    The frontend's build tools come from npm exactly as ``package-lock.json`` lists them (``npm ci``,
    only when the lock changed); ``tsc`` compiles ``src/`` and ``jupyter labextension build`` bundles
    it against the environment's own JupyterLab (no download of JupyterLab's metadata). Returns the
    folder to pip-install: the wheel puts the extension under ``share/jupyter/labextensions``.
    """
    build = NOTEBOOK_BUILD
    build.mkdir(parents=True, exist_ok=True)
    for old in build.iterdir():  # the previous copy, but keep the installed build tools
        if old.name == "node_modules":
            continue
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    outputs = shutil.ignore_patterns("__pycache__", "build", "*.egg-info", "node_modules", "lib", "labextension")
    shutil.copytree(source, build, dirs_exist_ok=True, ignore=outputs)
    lock, installed_lock = build / "package-lock.json", build / "node_modules" / ".aifl-package-lock.json"
    if not installed_lock.exists() or installed_lock.read_bytes() != lock.read_bytes():
        progress.note("installing the JupyterLab extension's build tools (npm ci)")
        run(["npm", "ci", "--prefix", str(build), "--no-audit", "--no-fund", "--ignore-scripts"], timeout=900)
        shutil.copyfile(lock, installed_lock)
    progress.note("building the JupyterLab extension")
    run([str(build / "node_modules" / ".bin" / "tsc"), "-p", str(build)], timeout=600)
    jupyterlab = Path(run([str(prefix / "bin" / "python"), "-c", "import jupyterlab; print(jupyterlab.__file__)"])
                      .stdout.strip()).parent
    env = {**os.environ, "PATH": f"{prefix / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    run([str(prefix / "bin" / "jupyter"), "labextension", "build",
         "--core-package-file", str(jupyterlab / "staging" / "package.json"), str(build)], env=env, timeout=600)
    return build


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _remove_unlisted(prefix: Path, lock: Path, progress: Progress) -> None:
    """Uninstall what the lock file does not list, so the environment is exactly the lock (plus our package)."""
    listed = {_canonical(line.split("==")[0]) for line in lock.read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    listed |= {"aifl-notebook", "pip", "setuptools"}
    installed = run([str(prefix / "bin" / "pip"), "list", "--format=freeze", "--disable-pip-version-check"]).stdout
    extra = sorted(n for n in (_canonical(line.split("==")[0]) for line in installed.splitlines()) if n not in listed)
    if extra:
        progress.note("removing packages the image no longer lists: " + ", ".join(extra))
        run([str(prefix / "bin" / "pip"), "uninstall", "-y", "-q", *extra])


def install_proxy(progress: Progress) -> Path:
    """Install configurable-http-proxy from npm into /opt/aifl/proxy (once)."""
    main = PROXY_DIR / "node_modules" / "configurable-http-proxy" / "bin" / "configurable-http-proxy"
    if not main.exists():
        progress.note(f"npm install configurable-http-proxy@{PROXY_VERSION}")
        PROXY_DIR.mkdir(parents=True, exist_ok=True)
        run(["npm", "install", "--no-audit", "--no-fund", "--omit=dev", "--prefix", str(PROXY_DIR),
             f"configurable-http-proxy@{PROXY_VERSION}"], timeout=900)
        run(["chmod", "-R", "a+rX", str(PROXY_DIR)])
    return main


def _ensure_group(name: str) -> None:
    try:
        grp.getgrnam(name)
    except KeyError:
        run(["groupadd", "--system", name])


def _secret(path: Path, owner: str) -> str:
    """The secret in ``path`` (a folder ``owner`` may write: never read through a link), made when missing."""
    current = read_own_file(path)
    if current is None:
        current = secrets.token_hex(32)
        write_file(path, current, mode=0o600, owner=owner)
    return current.strip()


def setup_accounts(repo: Path, site: Site, progress: Progress) -> None:
    """The hub's service account, the users' group, the account helper and the sudoers rule."""
    hub_user, group = site["hub"]["service_user"], site["users"]["group"]
    _ensure_group(group)
    try:
        pwd.getpwnam(hub_user)
    except KeyError:
        run(["useradd", "--system", "--user-group", "--home-dir", site["hub"]["state_dir"], "--no-create-home",
             "--shell", "/usr/sbin/nologin", hub_user])
    for directory, mode, owner in ((ETC, 0o750, hub_user), (Path(site["hub"]["state_dir"]), 0o700, hub_user),
                                   (LOGS, 0o755, "root"), (RUN, 0o755, "root")):
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, mode)
        shutil.chown(directory, "root" if directory == ETC else owner, owner)
    slurm_bin = site["cluster"]["slurm_bin"]
    settings = {
        "group": group, "account": site["accounting"]["default_account"], "home_base": site["users"]["home_base"],
        "sacctmgr": f"{slurm_bin}/sacctmgr", "job_log_dir": site["spawner"].get("job_log_dir", ".aifl/logs"),
        "accounts": [site["accounting"]["default_account"],
                     *(org["name"] for org in site.get("organisations", {}).get("list", []))],
        # accounts that are never made the default of a user Slurm already knows: workshop seats
        "seat_accounts": [site["workshops"]["organisation"]] if site.get("workshops") else [],
    }
    write_file(ETC / "mkuser.json", json.dumps(settings, indent=2) + "\n", mode=0o644)
    write_file(MKUSER, (Path(__file__).parent / "mkuser.py").read_text(), mode=0o755)
    # Workshops: the hub may make and remove their reservations (and nothing else) through a root helper.
    workshops = site.get("workshops")
    reservation = {"slurm_bin": slurm_bin, "partitions": sorted(set(site["cluster"]["partitions"].values())),
                   "accounts": [workshops["organisation"]] if workshops else []}
    write_file(ETC / "reservation.json", json.dumps(reservation, indent=2) + "\n", mode=0o644)
    write_file(RESERVATION_HELPER, (Path(__file__).parent / "workshop_reservation.py").read_text(), mode=0o755)
    # ... and read a participant's workshop folder as that participant (a notebook for the trainer, the zip).
    write_file(WORK_HELPER, (Path(__file__).parent / "workshop_work.py").read_text(), mode=0o755)
    # Someone who leaves an organisation loses their Slurm association with its account.
    write_file(ORG_REVOKE_HELPER, (Path(__file__).parent / "org_revoke.py").read_text(), mode=0o755)
    # ... and take a closed workshop's rights away (jobs, Slurm associations, temporary Unix accounts locked).
    write_file(REVOKE_HELPER, (Path(__file__).parent / "workshop_revoke.py").read_text(), mode=0o755)
    # Confirmed members of an organisation read its controlled data sets (their Unix groups).
    write_file(DATASETS_HELPER, (Path(__file__).parent / "datasets_access.py").read_text(), mode=0o755)
    rules = (
        "# AI Factory Lab: the hub may submit and cancel jobs as lab users, and create lab accounts.\n"
        f"Defaults:{hub_user} !requiretty\n"
        # Only a submission carries the hub's environment (the job's API token and settings) to the job.
        f"Cmnd_Alias AIFL_SUBMIT = {slurm_bin}/sbatch --parsable\n"
        'Defaults!AIFL_SUBMIT env_keep += "JUPYTERHUB_* JPY_* AIFL_*"\n'
        f"{hub_user} ALL=(%{group}) NOPASSWD: AIFL_SUBMIT, {slurm_bin}/scancel\n"
        # The grid service releases held flexible work (a user may release only their own jobs).
        f"{hub_user} ALL=(%{group}) NOPASSWD: {slurm_bin}/scontrol ^release [0-9]{{1,12}}$\n"
        f"{hub_user} ALL=(root) NOPASSWD: {MKUSER}, {RESERVATION_HELPER}, {REVOKE_HELPER}\n"
        f"{hub_user} ALL=(%{group}) NOPASSWD: {WORK_HELPER}\n"
        f"{hub_user} ALL=(root) NOPASSWD: {ORG_REVOKE_HELPER}\n"
        f"{hub_user} ALL=(root) NOPASSWD: {DATASETS_HELPER}\n"
    )
    candidate = SUDOERS.with_name("aifl-hub.check")
    candidate.write_text(rules)
    try:
        run(["visudo", "-c", "-q", "-f", str(candidate)])
    finally:
        candidate.unlink(missing_ok=True)
    write_file(SUDOERS, rules, mode=0o440)
    # Where the grid service publishes the signal for sessions: written by the hub, read by everyone.
    grid_status = status_path(site).parent
    grid_status.mkdir(parents=True, exist_ok=True)
    os.chmod(grid_status, 0o755)  # noqa: S103 - sessions read the published status
    shutil.chown(grid_status, hub_user, hub_user)
    # Trainers' own course material (<id>/material): written by the hub, copied by the participants' sessions.
    uploads = Path(site["spawner"]["environments_dir"]) / ".workshops"
    uploads.mkdir(parents=True, exist_ok=True)
    os.chmod(uploads, 0o755)  # noqa: S103 - the participants' session jobs read the material
    shutil.chown(uploads, hub_user, hub_user)


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - our own http:// URL
            return response.status == 200
    except OSError:
        return False


PROGRAMS = {"hub": "jupyterhub", "proxy": "configurable-http-proxy", "watchdog": "aifl_hub.watchdog"}


def _pid(name: str) -> int | None:
    """The pid in /run/aifl/<name>.pid if that process is alive and is still our program."""
    try:
        pid = int((RUN / f"{name}.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) and PROGRAMS[name] in cmdline else None


def _start(name: str, argv: list[str], user: str, env: dict[str, str], ports: list[int],
           ready, cwd: Path | None = None) -> None:  # noqa: ANN001 - ready is a () -> bool
    protect_log(LOGS / f"{name}.log", user)  # also the log of a daemon that keeps running
    if _pid(name):
        return
    for port in ports:
        if _port_open(port):
            raise LabError(f"port {port} is in use by another program; {name} needs it "
                           f"(find it with: ss -ltnp 'sport = :{port}')")
    log = LOGS / f"{name}.log"
    pid = start_daemon(argv, log, user=user, env=env, cwd=cwd)
    (RUN / f"{name}.pid").write_text(str(pid))
    wait_ready(ready, what=name, alive=lambda: pid_alive(pid), log=log, timeout=90)


def start_hub(repo: Path, site: Site, site_path: Path, proxy_main: Path, progress: Progress) -> None:
    """Write the hub's config and start the proxy and the hub (each its own process)."""
    hub = site["hub"]
    hub_user, state, api_ip = hub["service_user"], Path(hub["state_dir"]), hub.get("api_ip", "127.0.0.1")
    changed = write_file(ETC / "site.yaml", site_path.read_text(), mode=0o640, group=hub_user)
    changed |= write_file(ETC / "jupyterhub_config.py", (repo / "hub_config" / "jupyterhub_config.py").read_text(),
                         mode=0o644)
    proxy_token = _secret(state / "proxy-token", hub_user)
    _secret(state / "lab-service-token", hub_user)
    base_env = {"PATH": f"{HUB_ENV}/bin:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(state)}
    _start("proxy", ["/usr/bin/env", "node", str(proxy_main), "--ip", hub["ip"], "--port", str(hub["port"]),
                     "--api-ip", "127.0.0.1", "--api-port", str(PROXY_API_PORT),
                     "--default-target", f"http://{api_ip}:{HUB_API_PORT}",
                     "--error-target", f"http://{api_ip}:{HUB_API_PORT}/hub/error"],
           hub_user, {**base_env, "CONFIGPROXY_AUTH_TOKEN": proxy_token}, [hub["port"], PROXY_API_PORT],
           lambda: _port_open(PROXY_API_PORT))
    hub_pid = _pid("hub")
    if hub_pid and (changed or _installed_hub_changed()):
        progress.note("the hub's code or configuration changed: restarting the hub (sessions keep running)")
        stop_process("hub")
    if not _pid("hub"):
        _stop_leftover_services(pwd.getpwnam(hub_user).pw_uid)
    _start("hub", [str(HUB_ENV / "bin" / "aifl-jupyterhub"), "-f", str(ETC / "jupyterhub_config.py")],
           hub_user, {**base_env, "CONFIGPROXY_AUTH_TOKEN": proxy_token, "AIFL_SITE_FILE": str(ETC / "site.yaml")},
           [HUB_API_PORT], lambda: _http_ok(f"http://{hub['ip']}:{hub['port']}/hub/api/"), cwd=state)
    (RUN / "hub.stamp").write_text(_hub_stamp())


def _hub_stamp() -> str:
    return (HUB_ENV / ".aifl-stamp").read_text().strip() if (HUB_ENV / ".aifl-stamp").exists() else ""


def _installed_hub_changed() -> bool:
    stamp = RUN / "hub.stamp"
    return stamp.exists() and stamp.read_text() != _hub_stamp()


def ensure_admin(site: Site, progress: Progress) -> None:
    """Create the first admin with a generated password, printed once and stored 0600."""
    if CREDENTIALS.exists():
        progress.note(f"admin credentials are in {CREDENTIALS}")
        return
    import requests

    name = site["hub"]["admin_users"][0]
    password = secrets.token_urlsafe(15)
    base = f"http://{site['hub']['ip']}:{site['hub']['port']}/hub"
    write_file(CREDENTIALS, f"user: {name}\npassword: {password}\n", mode=0o600)
    # Only the lab's own service token (or an admin) may sign up an admin's name.
    token = _secret(Path(site["hub"]["state_dir"]) / "lab-service-token", site["hub"]["service_user"])
    service = {"Authorization": f"token {token}"}
    with requests.Session() as http:
        http.get(f"{base}/signup", timeout=10)
        xsrf = http.cookies.get("_xsrf", "")
        reply = http.post(f"{base}/signup", data={"username": name, "signup_password": password,
                                                  "signup_password_confirmation": password, "_xsrf": xsrf},
                          headers=service, timeout=30)
        login = http.post(f"{base}/login", data={"username": name, "password": password, "_xsrf": xsrf},
                          timeout=30, allow_redirects=False)
    if reply.status_code >= 400 or login.status_code not in (302, 303):
        CREDENTIALS.unlink()
        raise LabError(f"could not create the admin account {name!r} (signup: HTTP {reply.status_code}, "
                       f"login: HTTP {login.status_code}); if it exists already, reset its password in the hub")
    print(f"\n  First admin account (shown once; also stored in {CREDENTIALS}, readable by root only):\n"
          f"    user:     {name}\n    password: {password}\n")


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM ``pid``, then SIGKILL it if it is still there after ``timeout`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _stop_leftover_services(uid: int) -> None:
    """Stop processes of the hub's account run from the hub's environment: services a gone hub left behind."""
    keep = {p for p in (_pid("proxy"), _pid("hub")) if p}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in keep:
            continue
        try:
            owner = entry.stat().st_uid
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if owner == uid and argv and argv[0].decode(errors="replace").startswith(f"{HUB_ENV}/"):
            _terminate(int(entry.name), 5)


def stop_process(name: str, timeout: float = 20) -> None:
    """SIGTERM the process in /run/aifl/<name>.pid and wait until it is gone.

    The hub stops its services itself, but a hub that had to be killed leaves them behind, holding
    their ports: those are stopped too.
    """
    pid = _pid(name)
    if pid:
        uid = Path(f"/proc/{pid}").stat().st_uid
        _terminate(pid, timeout)
        if name == "hub":
            _stop_leftover_services(uid)
    (RUN / f"{name}.pid").unlink(missing_ok=True)


def cmd_up(repo: Path, site_path: Path) -> None:
    """Start everything (idempotent)."""
    site = load_site(site_path)
    embedded = site["cluster"]["mode"] == "embedded"
    progress = Progress(7 if embedded else 6)
    with progress.step("Checking system packages"):
        install_packages(SYSTEM_PACKAGES, progress)
    with progress.step("Preparing accounts, folders and permissions"):
        setup_accounts(repo, site, progress)
        for line in datasets.install(site):
            progress.note(line)
    with progress.step(f"Building the notebook environment '{site['spawner']['environment']}'"):
        build_environment(repo, site, progress)
        write_session_profiles(site)
    with progress.step("Installing the web proxy"):
        proxy_main = install_proxy(progress)
    os.environ["AIFL_HUB_CONFIG"] = str(repo / "hub_config")
    if embedded:
        with progress.step("Starting the local Slurm cluster"):
            cluster.up(site, progress)
    else:
        with progress.step("Checking the site's Slurm"):
            run([f"{site['cluster']['slurm_bin']}/sinfo", "-h", "-o", "%P"])
    with progress.step("Starting the proxy and JupyterHub"):
        start_hub(repo, site, site_path, proxy_main, progress)
    with progress.step("Checking the first admin account"):
        if site["auth"]["type"] == "native":
            ensure_admin(site, progress)
    if embedded:
        start_watchdog(repo)
    print(f"\nAI Factory Lab is running at http://{site['hub']['ip']}:{site['hub']['port']}")
    if site["auth"]["type"] == "native":
        print(f"Log in as {site['hub']['admin_users'][0]!r} (password in {CREDENTIALS}); new users sign up "
              "on the login page and the admin approves them under 'Authorize Users'.")


def start_watchdog(repo: Path) -> None:
    """(Re)start the watchdog that brings stopped Slurm daemons back (:mod:`.watchdog`), with this code."""
    stop_process("watchdog")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "AIFL_HUB_CONFIG": str(repo / "hub_config")}
    pid = start_daemon([str(HUB_ENV / "bin" / "python"), "-m", "aifl_hub.watchdog", "--site", str(ETC / "site.yaml")],
                       LOGS / "watchdog.log", env=env, cwd=Path("/"))
    (RUN / "watchdog.pid").write_text(str(pid))


def cmd_down(site_path: Path) -> None:
    """Stop the hub, the proxy and the local cluster (the watchdog first, so that it restarts nothing)."""
    site = load_site(site_path)
    progress = Progress(2 if site["cluster"]["mode"] == "embedded" else 1)
    stop_process("watchdog")
    with progress.step("Stopping JupyterHub and the proxy"):
        stop_process("hub")
        stop_process("proxy")
    if site["cluster"]["mode"] == "embedded":
        with progress.step("Stopping the local Slurm cluster"):
            cluster.down(progress)


def cmd_status(site_path: Path) -> int:
    """Print each part's health; exit 1 if any part is unhealthy."""
    site = load_site(site_path)
    hub = site["hub"]
    parts: list[tuple[str, bool, str]] = []
    if site["cluster"]["mode"] == "embedded":
        parts += cluster.status(site)
        parts.append(("watchdog", bool(_pid("watchdog")),
                      "restarts a stopped Slurm daemon" if _pid("watchdog") else "not running"))
    parts.append(("proxy", bool(_pid("proxy")) and _port_open(hub["port"], hub["ip"]),
                  f"answers on {hub['ip']}:{hub['port']}" if _pid("proxy") else "not running"))
    hub_ok = _http_ok(f"http://{hub['ip']}:{hub['port']}/hub/api/")
    parts.append(("hub", hub_ok, "answers its API" if hub_ok else "not answering"))
    width = max(len(p[0]) for p in parts)
    for name, healthy, detail in parts:
        print(f"  {'ok ' if healthy else 'BAD'}  {name:<{width}}  {detail}")
    return 0 if all(p[1] for p in parts) else 1


def run_at_fixed_moments(venv: Path, repo: Path, progress: Progress) -> int:
    """Run the pure tests under ``faketime`` at each of :data:`CLOCK_MOMENTS`; the number of failed runs."""
    failed = 0
    for what, moment in CLOCK_MOMENTS:
        progress.note(f"faketime {moment!r} ({what}, {CLOCK_ZONE}):")
        result = subprocess.run(["faketime", "-m", moment, str(venv / "bin" / "python"), "-m", "pytest", "-q",
                                 "-p", "no:cacheprovider", "-m", PURE_TESTS, "tests"],
                                cwd=repo, env={**os.environ, "TZ": CLOCK_ZONE}, capture_output=True, text=True,
                                check=False)
        lines = result.stdout.strip().splitlines()
        summary = lines[-1] if lines else result.stderr.strip()[-500:]
        progress.note(f"  at {moment}: {summary.strip('= ')}")
        if result.returncode:
            failed += 1
            print(result.stdout[-20000:], result.stderr[-3000:], sep="\n", flush=True)
    return failed


def cmd_test(repo: Path, extra: list[str]) -> int:
    """Install what the tests need (Chromium, faketime, a test venv) and run ruff and pytest.

    Without ``extra`` (the whole suite, as CI runs it) the pure tests first run at fixed moments under
    ``faketime`` (:func:`run_at_fixed_moments`).
    """
    progress = Progress(3 if extra else 4)
    with progress.step("Checking system packages for the tests"):
        install_packages(SYSTEM_PACKAGES + TEST_PACKAGES, progress)
    venv = repo / ".venv"
    with progress.step("Preparing the test environment (.venv)"):
        if not (venv / "bin" / "python").exists():
            run(["/usr/bin/python3", "-m", "venv", str(venv)])
        run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
             "-e", f"{repo / 'extensions' / 'hub'}[test]", "-e", str(repo / "extensions" / "notebook")], timeout=1800)
    with progress.step("Running ruff"):
        lint = run([str(venv / "bin" / "ruff"), "check", str(repo)], check=False)
        print(lint.stdout.strip() or "        ruff: all checks passed")
        if lint.returncode:
            return lint.returncode
    clock_failures = 0
    if not extra:
        with progress.step(f"The tests that need no running lab, at {len(CLOCK_MOMENTS)} fixed moments (faketime)"):
            clock_failures = run_at_fixed_moments(venv, repo, progress)
    code = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", *(extra or ["tests"])],
                          cwd=repo, check=False).returncode
    if clock_failures:
        print(f"lab: the tests failed at {clock_failures} of the fixed moments (see above)", file=sys.stderr)
    return code or (1 if clock_failures else 0)


@contextlib.contextmanager
def one_at_a_time(lock: Path = LAB_LOCK) -> Iterator[None]:
    """Hold the lab's lock: a second ``lab up`` or ``lab down`` waits for the first instead of colliding."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("lab: another 'lab up' or 'lab down' is running; waiting until it is done …", file=sys.stderr,
                  flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def main(argv: list[str] | None = None) -> int:
    """Entry point for ./lab."""
    parser = argparse.ArgumentParser(prog="lab", description="Start, stop and check AI Factory Lab.")
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[3])
    parser.add_argument("--site", type=Path, default=None, help="site file (default: hub_config/site.yaml)")
    parser.add_argument("command", choices=["up", "down", "status", "test"])
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="for test: arguments passed to pytest")
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    site_path = (args.site or repo / "hub_config" / "site.yaml").resolve()
    try:
        require_root()
        if args.command == "up":
            with one_at_a_time():
                cmd_up(repo, site_path)
        elif args.command == "down":
            with one_at_a_time():
                cmd_down(site_path)
        elif args.command == "status":
            return cmd_status(site_path)
        else:
            return cmd_test(repo, args.rest)
    except SiteError as exc:
        print(f"lab: the site file is not valid: {exc}\nNothing was started or changed.", file=sys.stderr)
        return 2
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
