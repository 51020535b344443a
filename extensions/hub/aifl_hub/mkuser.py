#!/usr/bin/python3 -I
"""aifl-mkuser NAME [ACCOUNT]: create the Unix account and Slurm association of an approved lab user.

Installed as /usr/local/sbin/aifl-mkuser (root, 0755) by `lab up`; the hub's service account may
run it through sudo and nothing else as root. It uses only the standard library and reads its
settings from /etc/aifl/mkuser.json (root-owned), so the caller passes nothing but a user name,
which must match a strict pattern, and optionally the Slurm account of the user's organisation, which
must be one the site file lists (it then becomes the user's default account). An existing account is
accepted only if it is already in the lab's group (so no system account can be taken over). A new
account gets a UID no account ever had (a root-owned high-water mark remembers deleted ones), so a new
person never inherits a former user's files or accounting history.

Everything under a user's home is the user's: a link, a FIFO or a folder swapped during the call. So no root
step here follows a name there: the home is opened without following a link and must be a folder the user
owns (its mode is set through that descriptor), and the job log folder is made by a child process that has
become the user, walking from the home one folder at a time without following links. Exit codes: 0 done,
2 refused, 1 failed.
"""

import fcntl
import grp
import json
import os
import pwd
import re
import stat
import subprocess
import sys

NAME = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
SETTINGS = "/etc/aifl/mkuser.json"
UID_HIGH_WATER = "/etc/aifl/uid-high-water"
LOCK = "/etc/aifl/mkuser.lock"
FIRST_UID, LAST_UID = 1000, 60000
# Opening a path of ours without following a link or waiting on a FIFO; the descriptor is checked with fstat.
SAFE_OPEN = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
FOLDER_OPEN = os.O_RDONLY | os.O_DIRECTORY | SAFE_OPEN


def refuse(message: str) -> None:
    """Stop with exit 2 and a message for the hub's log."""
    print(f"aifl-mkuser: {message}", file=sys.stderr)
    sys.exit(2)


def run(argv: list[str]) -> subprocess.CompletedProcess:
    """Run argv (no shell), failing loudly."""
    return subprocess.run(argv, check=True, capture_output=True, text=True)


def open_regular(path: str, flags: int, mode: int = 0o644) -> int:
    """Open one of our files in /etc/aifl, never through a link, and only if it is a regular file."""
    descriptor = os.open(path, flags | SAFE_OPEN, mode)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise SystemExit(f"aifl-mkuser: {path} is not a regular file")
    return descriptor


def add_account(name: str, home_base: str, group: str) -> None:
    """``useradd`` with a UID above every account's and every UID given before (runs hold :data:`LOCK`)."""
    try:
        with os.fdopen(open_regular(UID_HIGH_WATER, os.O_RDONLY)) as mark:
            high = int(mark.read().strip() or 0)
    except (OSError, ValueError):
        high = 0
    used = [e.pw_uid for e in pwd.getpwall() if FIRST_UID <= e.pw_uid <= LAST_UID]
    uid = max([high, FIRST_UID - 1, *used]) + 1
    if uid > LAST_UID:
        raise SystemExit("aifl-mkuser: no UID left for a new account")
    run(["useradd", "--create-home", "--home-dir", f"{home_base}/{name}", "--shell", "/bin/bash",
         "--uid", str(uid), "--user-group", "--groups", group, name])
    with os.fdopen(open_regular(UID_HIGH_WATER, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as mark:
        mark.write(f"{uid}\n")


def open_home(entry: pwd.struct_passwd) -> int:
    """The user's home, opened without following a link; refused unless it is a folder the user owns."""
    try:
        descriptor = os.open(entry.pw_dir, FOLDER_OPEN)
    except FileNotFoundError:
        refuse(f"the home folder {entry.pw_dir} of {entry.pw_name} does not exist; nothing was changed")
    except OSError:
        refuse(f"the home folder {entry.pw_dir} of {entry.pw_name} is a link or not a folder; nothing was changed")
    if os.fstat(descriptor).st_uid != entry.pw_uid:
        os.close(descriptor)
        refuse(f"the home folder {entry.pw_dir} does not belong to {entry.pw_name}; nothing was changed")
    return descriptor


def walk_log_dir(home: int, parts: list[str], uid: int) -> str | None:
    """Make ``~/<parts>`` folder by folder from the home's descriptor (run as the user); why not, or None."""
    here = home
    for depth, part in enumerate(parts, 1):
        shown = "~/" + "/".join(parts[:depth])
        try:
            os.mkdir(part, 0o700, dir_fd=here)
        except FileExistsError:
            pass
        except OSError as exc:
            return f"cannot make {shown}: {exc.strerror}"
        try:
            here = os.open(part, FOLDER_OPEN, dir_fd=here)
        except OSError:
            return f"{shown} is a link or not a folder"
        if os.fstat(here).st_uid != uid:
            return f"{shown} belongs to another account"
    return None


def make_log_dir(entry: pwd.struct_passwd, home: int, log_dir: str) -> None:
    """Make the job log folder ``~/<log_dir>`` as the user (a child with the user's uid and gid, no root left).

    The child keeps only the home's descriptor, so whatever the user has put in the home, it can reach no
    more than the user can; anything there that is not a folder of theirs is refused (exit 2).
    """
    parts = log_dir.split("/")
    if any(part in ("", ".", "..") for part in parts):
        refuse(f"job_log_dir {log_dir!r} in {SETTINGS} must be a relative path of folder names")
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.closerange(3, home)
            os.closerange(home + 1, os.sysconf("SC_OPEN_MAX"))
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            problem = walk_log_dir(home, parts, entry.pw_uid)
            code = 0
            if problem:
                print(f"aifl-mkuser: {problem}; the job log folder was left as it is", file=sys.stderr)
                code = 2
        except OSError as exc:
            print(f"aifl-mkuser: could not become {entry.pw_name} to make the job log folder: {exc}",
                  file=sys.stderr)
        finally:
            sys.stderr.flush()
            os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    if code:
        sys.exit(code if code > 0 else 1)


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
    new = entry is None
    if new:
        add_account(name, home_base, group)
        entry = pwd.getpwnam(name)
    home = open_home(entry)
    if new:
        os.fchmod(home, 0o700)  # private: other lab users (say, a workshop's) cannot look in
    make_log_dir(entry, home, log_dir)
    os.close(home)
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
    with os.fdopen(open_regular(LOCK, os.O_RDONLY | os.O_CREAT, 0o600)) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            main()
        except subprocess.CalledProcessError as exc:
            print(f"aifl-mkuser: {' '.join(exc.cmd)} failed: {exc.stderr.strip()}", file=sys.stderr)
            sys.exit(1)
