"""Secrets stay with their owner: no token in a command line, a job's public fields or a file another lab user
can read, and sudo hands the hub's environment only to a job submission."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from attacker import as_user
from test_spawn import environ, job_processes, spawn

HUB_USER = "aifl-hub"
# Where the lab writes things that are not in a home: none of it may hold a session's token readably.
SHARED_PLACES = ["/var/log/aifl", "/etc/aifl", "/run/aifl", "/var/lib/aifl", "/var/spool/slurmd", "/var/log/slurm"]
SCRATCH = ["/tmp", "/var/tmp", "/dev/shm"]  # world-writable: their top two levels (a CI clone may lie below)


def session_token(job: str) -> str:
    """The API token the hub gave the session's server (read from its environment, as root)."""
    tokens = {environ(pid).get("JUPYTERHUB_API_TOKEN") for pid in job_processes(job)} - {None}
    assert len(tokens) == 1, tokens
    return tokens.pop()


def command_lines() -> list[str]:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return lines


def test_a_sessions_token_is_nowhere_another_lab_user_can_read_it(hub, users):
    name, token = users()
    other, _ = users()
    spawn(hub, name, token, {"profile": "cpu-small"})
    job = hub.job_of(name)
    secret = session_token(job)
    for secret_value in (secret, token):
        assert not [line for line in command_lines() if secret_value in line]  # `ps` shows no token
    # the job's fields that every user may see (squeue, scontrol show job) hold no token
    assert secret not in as_user(other, ["squeue", "-h", "-j", job, "-o", "%k|%o|%Z|%j"], check=True).stdout
    assert secret not in as_user(other, ["scontrol", "show", "job", job], check=True).stdout
    # the server's environment is its owner's: the other user cannot read it
    pid = job_processes(job)[0]
    refused = as_user(other, ["cat", f"/proc/{pid}/environ"])
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    # no file the other user can read holds it (grep as that user, the token on stdin, not in its argv;
    # unreadable files are skipped)
    places = [*SHARED_PLACES, f"/home/{name}"]
    found = as_user(other, ["grep", "-rlsF", "-f", "-", "--", *places], input=secret + "\n", timeout=120)
    assert found.stdout.strip() == ""
    scratch = as_user(other, ["find", *SCRATCH, "-maxdepth", "2", "-type", "f", "-readable"], timeout=60)
    files = scratch.stdout.split()
    if files:
        found = as_user(other, ["grep", "-lsF", "-f", "-", "--", *files], input=secret + "\n", timeout=120)
        assert found.stdout.strip() == ""


def sudo_rules() -> str:
    return subprocess.run(["sudo", "-ll", "-U", HUB_USER], capture_output=True, text=True, check=True,
                          timeout=30).stdout


@pytest.mark.usefixtures("lab_system")
def test_sudo_keeps_the_hubs_environment_only_for_a_submission():
    """Sudo's own reading of the installed rules: env_keep only on ``sbatch --parsable``."""
    rules = sudo_rules()
    everywhere, rest = rules.split("Runas and Command-specific defaults", 1)
    assert "env_keep" not in everywhere  # not for every command of the hub account
    specific = rest.split("may run the following commands", 1)[0]
    keeping = [line.strip() for line in specific.splitlines() if "env_keep" in line]
    sbatch = shutil.which("sbatch")
    assert keeping == [f'Defaults!{sbatch} --parsable env_keep+="JUPYTERHUB_* JPY_* AIFL_*"'], rules


def test_a_compromised_session_reaches_only_its_own_user(hub, users):
    """The server's own token (what code in a session holds) cannot act on anyone else or on the hub."""
    name, token = users()
    other, _ = users()
    spawn(hub, name, token, {"profile": "cpu-small"})
    secret = session_token(hub.job_of(name))
    assert hub.api("GET", f"/users/{name}", token=secret).status_code == 200  # itself: yes
    for method, path, body in [("GET", "/users", None), ("GET", f"/users/{other}", None),
                               ("POST", f"/users/{other}/server", {}), ("DELETE", f"/users/{other}/server", None),
                               ("POST", f"/users/{other}/tokens", {"note": "x"}), ("POST", f"/users/{name}/tokens",
                                                                                  {"note": "x", "expires_in": 60}),
                               ("PATCH", f"/users/{name}", {"admin": True}), ("GET", "/groups", None),
                               ("POST", "/groups/org-umcg/users", {"users": [other]}), ("GET", "/services", None)]:
        r = hub.api(method, path, token=secret, json=body)
        assert r.status_code in (403, 404), (method, path, r.status_code, r.text[:200])
    assert not hub.api("GET", f"/users/{name}").json()["admin"]
    assert hub.server(other) is None
