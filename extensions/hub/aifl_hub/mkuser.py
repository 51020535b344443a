#!/usr/bin/python3 -I
"""aifl-mkuser NAME [ACCOUNT]: create the Unix account and Slurm association of an approved lab user.

Installed as /usr/local/sbin/aifl-mkuser (root, 0755) by `lab up`; the hub's service account may
run it through sudo and nothing else as root. It uses only the standard library and reads its
settings from /etc/aifl/mkuser.json (root-owned), so the caller passes nothing but a user name,
which must match a strict pattern, and optionally the Slurm account of the user's organisation, which
must be one the site file lists (it then becomes the user's default account). An existing account is
accepted only if it is already in the lab's group (so no system account can be taken over). A new
account gets a UID no account ever had (a root-owned high-water mark remembers deleted ones), so a new
person never inherits a former user's files or accounting history. Exit codes: 0 done, 2 refused, 1 failed.
"""

import fcntl
import grp
import json
import os
import pwd
import re
import subprocess
import sys

NAME = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
SETTINGS = "/etc/aifl/mkuser.json"
UID_HIGH_WATER = "/etc/aifl/uid-high-water"
LOCK = "/etc/aifl/mkuser.lock"
FIRST_UID, LAST_UID = 1000, 60000


def refuse(message: str) -> None:
    """Stop with exit 2 and a message for the hub's log."""
    print(f"aifl-mkuser: {message}", file=sys.stderr)
    sys.exit(2)


def run(argv: list[str]) -> subprocess.CompletedProcess:
    """Run argv (no shell), failing loudly."""
    return subprocess.run(argv, check=True, capture_output=True, text=True)


def add_account(name: str, home_base: str, group: str) -> None:
    """``useradd`` with a UID above every account's and every UID given before (runs hold :data:`LOCK`)."""
    try:
        with open(UID_HIGH_WATER) as mark:
            high = int(mark.read().strip() or 0)
    except (OSError, ValueError):
        high = 0
    used = [e.pw_uid for e in pwd.getpwall() if FIRST_UID <= e.pw_uid <= LAST_UID]
    uid = max([high, FIRST_UID - 1, *used]) + 1
    if uid > LAST_UID:
        raise SystemExit("aifl-mkuser: no UID left for a new account")
    run(["useradd", "--create-home", "--home-dir", f"{home_base}/{name}", "--shell", "/bin/bash",
         "--uid", str(uid), "--user-group", "--groups", group, name])
    os.chmod(f"{home_base}/{name}", 0o700)  # private: other lab users (say, a workshop's) cannot look in
    with open(UID_HIGH_WATER, "w") as mark:
        mark.write(f"{uid}\n")


def main() -> None:
    """Create (or confirm) the account named on the command line."""
    if len(sys.argv) not in (2, 3) or not NAME.fullmatch(sys.argv[1]):
        refuse("usage: aifl-mkuser NAME [ACCOUNT] (lower-case letters, digits, '-' and '_', starting with a letter)")
    name = sys.argv[1]
    with open(SETTINGS) as fh:
        settings = json.load(fh)
    group, account = settings["group"], settings["account"]
    if len(sys.argv) == 3:
        if sys.argv[2] not in settings.get("accounts", []):
            refuse(f"{sys.argv[2]!r} is not an organisation account of this site")
        account = sys.argv[2]
    home_base, sacctmgr = settings["home_base"], settings["sacctmgr"]
    log_dir = settings["job_log_dir"]
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        entry = None
    if entry is not None and name not in grp.getgrnam(group).gr_mem and entry.pw_gid != grp.getgrnam(group).gr_gid:
        refuse(f"the account {name!r} exists and is not a lab account; choose another name")
    if entry is None:
        add_account(name, home_base, group)
        entry = pwd.getpwnam(name)
    logs = os.path.join(entry.pw_dir, log_dir)
    os.makedirs(logs, mode=0o700, exist_ok=True)
    path = entry.pw_dir
    for part in log_dir.split("/"):
        path = os.path.join(path, part)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    assoc = run([sacctmgr, "-n", "-P", "show", "assoc", f"user={name}", f"account={account}", "format=user"])
    known = bool(run([sacctmgr, "-n", "-P", "show", "user", name, "format=user"]).stdout.strip())
    # A workshop seat's account never becomes the default of someone Slurm knew before (they keep
    # working for their own organisation); it is the default only of new, temporary participants.
    keep_default = known and account in settings.get("seat_accounts", [])
    if not assoc.stdout.strip():
        default_arg = [] if keep_default else [f"defaultaccount={account}"]
        run([sacctmgr, "-i", "add", "user", name, f"account={account}", *default_arg])
    # A user Slurm knew before may have another default account. (Right after adding a new user the
    # answer can lag behind, and "modify" then finds nothing to change and fails: new users are done.)
    if len(sys.argv) == 3 and known and not keep_default:
        default = run([sacctmgr, "-n", "-P", "show", "user", name, "format=defaultaccount"]).stdout.strip()
        if default != account:
            run([sacctmgr, "-i", "modify", "user", "where", f"name={name}", "set", f"defaultaccount={account}"])
    print(f"aifl-mkuser: {name} ready")


if __name__ == "__main__":
    # One at a time: Slurm 22.05's slurmdbd dies on a database deadlock when several "sacctmgr add user"
    # run at once (a workshop class joining together), so parallel runs wait for each other here.
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            main()
        except subprocess.CalledProcessError as exc:
            print(f"aifl-mkuser: {' '.join(exc.cmd)} failed: {exc.stderr.strip()}", file=sys.stderr)
            sys.exit(1)
