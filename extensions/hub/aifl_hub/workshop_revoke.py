#!/usr/bin/python3 -I
"""aifl-revoke: take away what a workshop gave, once its grace period is over (run by the hub through sudo).

    aifl-revoke member NAME ACCOUNT   an own account that joined: its jobs under the workshop's ACCOUNT
                                      are cancelled and its Slurm association with ACCOUNT is removed
    aifl-revoke temporary NAME        a temporary account (ws-…): all its jobs are cancelled, it is removed
                                      from Slurm and its Unix account is locked and expired (files kept)

Installed as /usr/local/sbin/aifl-revoke (root, 0755) by `lab up`; the hub's service account may run it as
root. Only the standard library. It reads the root-owned settings of the other helpers: the workshop
accounts and Slurm's bin folder from /etc/aifl/reservation.json, the lab's Unix group from
/etc/aifl/mkuser.json. NAME must match a strict pattern, ACCOUNT must be a workshop account of the site,
and an existing Unix account must be a lab account (in the lab's group, not a system account); only names
beginning ``ws-`` are locked. Running it again changes nothing. Exit codes: 0 done, 2 refused, 1 failed.
"""

import fcntl
import grp
import json
import pwd
import re
import subprocess
import sys
import time

NAME = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
TEMPORARY = re.compile(r"^ws-[a-z0-9_-]{1,27}$")
RESERVATION_SETTINGS = "/etc/aifl/reservation.json"
ACCOUNT_SETTINGS = "/etc/aifl/mkuser.json"
LOCK = "/etc/aifl/mkuser.lock"  # aifl-mkuser's: one sacctmgr change at a time (slurmdbd 22.05 deadlocks)
FIRST_UID = 1000
JOBS_GONE_WITHIN = 90.0  # seconds for cancelled jobs to leave Slurm (an association with jobs cannot go)


def refuse(message: str) -> None:
    """Stop with exit 2 and a message for the hub's log."""
    print(f"aifl-revoke: {message}", file=sys.stderr)
    sys.exit(2)


def run(argv: list[str]) -> str:
    """Run argv (no shell), failing loudly; its stdout."""
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout


def lab_account(name: str, group: str) -> pwd.struct_passwd | None:
    """The Unix account ``name`` (None when there is none); refuse one that is not a lab account."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    lab = grp.getgrnam(group)
    if entry.pw_uid < FIRST_UID or (name not in lab.gr_mem and entry.pw_gid != lab.gr_gid):
        refuse(f"{name!r} is not a lab account")
    return entry


def cancel_jobs(slurm_bin: str, name: str, account: str | None) -> None:
    """Cancel ``name``'s jobs (those under ``account`` only, when given) and wait until Slurm let them go."""
    only = ["--account", account] if account else []
    run([f"{slurm_bin}/scancel", "--user", name, *only])
    deadline = time.monotonic() + JOBS_GONE_WITHIN
    while run([f"{slurm_bin}/squeue", "-h", "-u", name, *(["-A", account] if account else []), "-o", "%i"]).strip():
        if time.monotonic() > deadline:
            raise SystemExit(f"aifl-revoke: the jobs of {name} did not end within {JOBS_GONE_WITHIN:.0f} s")
        time.sleep(1)


def associations(sacctmgr: str, name: str) -> list[str]:
    """The Slurm accounts ``name`` has an association with."""
    return run([sacctmgr, "-n", "-P", "show", "assoc", f"user={name}", "format=account"]).split()


def revoke_member(slurm_bin: str, name: str, account: str) -> None:
    """Cancel ``name``'s jobs under ``account`` and remove that association (another becomes the default)."""
    sacctmgr = f"{slurm_bin}/sacctmgr"
    cancel_jobs(slurm_bin, name, account)
    accounts = associations(sacctmgr, name)
    if account not in accounts:
        return
    others = sorted(a for a in set(accounts) if a != account)
    if not others:
        run([sacctmgr, "-i", "remove", "user", "where", f"name={name}"])
        return
    default = run([sacctmgr, "-n", "-P", "show", "user", name, "format=defaultaccount"]).strip()
    if default == account:
        run([sacctmgr, "-i", "modify", "user", "where", f"name={name}", "set", f"defaultaccount={others[0]}"])
    run([sacctmgr, "-i", "remove", "user", "where", f"name={name}", f"account={account}"])


def revoke_temporary(slurm_bin: str, name: str, entry: pwd.struct_passwd | None) -> None:
    """Cancel all of ``name``'s jobs, remove it from Slurm, lock and expire its Unix account."""
    sacctmgr = f"{slurm_bin}/sacctmgr"
    cancel_jobs(slurm_bin, name, None)
    if associations(sacctmgr, name):
        run([sacctmgr, "-i", "remove", "user", "where", f"name={name}"])
    if entry is not None:
        run(["/usr/sbin/usermod", "--lock", "--expiredate", "1", name])


def main() -> None:
    """Revoke what the command line names."""
    usage = "usage: aifl-revoke member NAME ACCOUNT | temporary ws-NAME"
    args = sys.argv[1:]
    if not args or (args[0], len(args)) not in (("member", 3), ("temporary", 2)):
        refuse(usage)
    command, name = args[0], args[1]
    if not NAME.fullmatch(name):
        refuse("NAME is lower-case letters, digits, '-' and '_', starting with a letter")
    with open(RESERVATION_SETTINGS) as fh:
        settings = json.load(fh)
    with open(ACCOUNT_SETTINGS) as fh:
        group = json.load(fh)["group"]
    slurm_bin = settings["slurm_bin"]
    entry = lab_account(name, group)
    if command == "member":
        if args[2] not in settings["accounts"]:
            refuse(f"{args[2]!r} is not a workshop account of this site")
        revoke_member(slurm_bin, name, args[2])
    else:
        if not TEMPORARY.fullmatch(name):
            refuse("only temporary workshop accounts (ws-…) are locked")
        revoke_temporary(slurm_bin, name, entry)
    print(f"aifl-revoke: {command} {name} done")


if __name__ == "__main__":
    try:
        with open(LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            main()
    except subprocess.CalledProcessError as exc:
        print(f"aifl-revoke: {' '.join(exc.cmd)} failed: {(exc.stderr or '').strip()}", file=sys.stderr)
        sys.exit(1)
    except subprocess.TimeoutExpired as exc:
        print(f"aifl-revoke: {' '.join(exc.cmd)} did not answer", file=sys.stderr)
        sys.exit(1)
