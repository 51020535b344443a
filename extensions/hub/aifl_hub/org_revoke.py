#!/usr/bin/python3 -I
"""aifl-org-revoke NAME ACCOUNT: a lab user left an organisation; take away their Slurm association with its account.

Installed as /usr/local/sbin/aifl-org-revoke (root, 0755) by `lab up`; the hub's service account may run it
as root (an administrator removed NAME from the organisation's hub group). Only the standard library; the
settings are aifl-mkuser's root-owned /etc/aifl/mkuser.json. NAME must match a strict pattern and, when
it has a Unix account, be a lab account; ACCOUNT must be an organisation account of the site, not the
lab's default account. NAME's jobs under ACCOUNT are cancelled (Slurm keeps an association that has
jobs), the default account becomes the lab's default where it was ACCOUNT, and the association is
removed. Running it again changes nothing. Exit codes: 0 done, 2 refused, 1 failed.
"""

import fcntl
import grp
import json
import os
import pwd
import re
import subprocess
import sys
import time

NAME = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
SETTINGS = "/etc/aifl/mkuser.json"
LOCK = "/etc/aifl/mkuser.lock"  # aifl-mkuser's: one sacctmgr change at a time (slurmdbd 22.05 deadlocks)
FIRST_UID = 1000
JOBS_GONE_WITHIN = 90.0  # seconds for cancelled jobs to leave Slurm


def refuse(message: str) -> None:
    """Stop with exit 2 and a message for the hub's log."""
    print(f"aifl-org-revoke: {message}", file=sys.stderr)
    sys.exit(2)


def run(argv: list[str]) -> str:
    """Run argv (no shell), failing loudly; its stdout."""
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout


def check_account(name: str, group: str) -> None:
    """Refuse a Unix account ``name`` that is not a lab account (none at all is fine: Slurm may still know it)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return
    lab = grp.getgrnam(group)
    if entry.pw_uid < FIRST_UID or (name not in lab.gr_mem and entry.pw_gid != lab.gr_gid):
        refuse(f"{name!r} is not a lab account")


def revoke(slurm_bin: str, name: str, account: str, default_account: str) -> None:
    """Cancel ``name``'s jobs under ``account``, move their default away from it and remove the association."""
    sacctmgr = f"{slurm_bin}/sacctmgr"
    run([f"{slurm_bin}/scancel", "--user", name, "--account", account])
    deadline = time.monotonic() + JOBS_GONE_WITHIN
    while run([f"{slurm_bin}/squeue", "-h", "-u", name, "-A", account, "-o", "%i"]).strip():
        if time.monotonic() > deadline:
            raise SystemExit(f"aifl-org-revoke: the jobs of {name} did not end within {JOBS_GONE_WITHIN:.0f} s")
        time.sleep(1)
    accounts = run([sacctmgr, "-n", "-P", "show", "assoc", f"user={name}", "format=account"]).split()
    if account not in accounts:
        return
    default = run([sacctmgr, "-n", "-P", "show", "user", name, "format=defaultaccount"]).strip()
    if default == account:
        if default_account not in accounts:
            run([sacctmgr, "-i", "add", "user", name, f"account={default_account}"])
        run([sacctmgr, "-i", "modify", "user", "where", f"name={name}", "set", f"defaultaccount={default_account}"])
    run([sacctmgr, "-i", "remove", "user", "where", f"name={name}", f"account={account}"])


def main() -> None:
    """Revoke the association the command line names."""
    if len(sys.argv) != 3 or not NAME.fullmatch(sys.argv[1]):
        refuse("usage: aifl-org-revoke NAME ACCOUNT (NAME: lower-case letters, digits, '-' and '_')")
    name, account = sys.argv[1], sys.argv[2]
    with open(SETTINGS) as fh:
        settings = json.load(fh)
    if account == settings["account"] or account not in settings.get("accounts", []):
        refuse(f"{account!r} is not an organisation account of this site")
    check_account(name, settings["group"])
    revoke(os.path.dirname(settings["sacctmgr"]), name, account, settings["account"])
    print(f"aifl-org-revoke: {name} left {account}")


if __name__ == "__main__":
    try:
        with open(LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            main()
    except subprocess.CalledProcessError as exc:
        print(f"aifl-org-revoke: {' '.join(exc.cmd)} failed: {(exc.stderr or '').strip()}", file=sys.stderr)
        sys.exit(1)
    except subprocess.TimeoutExpired as exc:
        print(f"aifl-org-revoke: {' '.join(exc.cmd)} did not answer", file=sys.stderr)
        sys.exit(1)
