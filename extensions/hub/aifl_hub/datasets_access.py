#!/usr/bin/python3 -I
"""aifl-datasets-access NAME [ORGANISATION]: give a lab user exactly the controlled data sets of their organisation.

Installed as /usr/local/sbin/aifl-datasets-access (root, 0755) by `lab up`; the hub's service account may
run it as root when an administrator confirms someone as a member of an organisation, or removes them
(ORGANISATION left out: no organisation). Only the standard library; the settings are the root-owned
/etc/aifl/datasets.json that `lab up` writes from the site file: the lab's group, the organisations and,
for each controlled data set's Unix group (aifl-ds-<name>), the organisations whose members it holds.
NAME must match a strict pattern and be a lab account; ORGANISATION must be one of the site's. NAME
becomes a member of the data set groups that admit ORGANISATION and leaves every other one of them
(no other group is ever touched). Running it again changes nothing. A session started afterwards has
the new groups. Exit codes: 0 done, 2 refused, 1 failed.
"""

import fcntl
import grp
import json
import pwd
import re
import subprocess
import sys

NAME = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
SETTINGS = "/etc/aifl/datasets.json"
LOCK = "/etc/aifl/datasets.lock"
FIRST_UID = 1000


def refuse(message: str) -> None:
    """Stop with exit 2 and a message for the hub's log."""
    print(f"aifl-datasets-access: {message}", file=sys.stderr)
    sys.exit(2)


def lab_account(name: str, group: str) -> bool:
    """Whether ``name`` is a lab account (False: no Unix account at all); refuse any other account."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return False
    lab = grp.getgrnam(group)
    if entry.pw_uid < FIRST_UID or (name not in lab.gr_mem and entry.pw_gid != lab.gr_gid):
        refuse(f"{name!r} is not a lab account")
    return True


def main() -> None:
    """Set the data set groups of the user the command line names."""
    if len(sys.argv) not in (2, 3) or not NAME.fullmatch(sys.argv[1]):
        refuse("usage: aifl-datasets-access NAME [ORGANISATION] (NAME: lower-case letters, digits, '-' and '_')")
    name, org = sys.argv[1], (sys.argv[2] if len(sys.argv) == 3 else None)
    with open(SETTINGS) as fh:
        settings = json.load(fh)
    if org is not None and org not in settings["organisations"]:
        refuse(f"{org!r} is not an organisation of this site")
    if not lab_account(name, settings["group"]):
        print(f"aifl-datasets-access: {name} has no Unix account here; nothing to do")
        return
    for group, organisations in sorted(settings["sets"].items()):
        if not group.startswith("aifl-ds-"):
            continue
        try:
            members = grp.getgrnam(group).gr_mem
        except KeyError:
            continue  # `lab up` makes the groups; a set it has not made yet gives nobody access
        admit = org in organisations
        if admit and name not in members:
            subprocess.run(["gpasswd", "-a", name, group], check=True, capture_output=True, text=True, timeout=60)
        elif not admit and name in members:
            subprocess.run(["gpasswd", "-d", name, group], check=True, capture_output=True, text=True, timeout=60)
    print(f"aifl-datasets-access: {name} has the data sets of {org or 'no organisation'}")


if __name__ == "__main__":
    try:
        with open(LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            main()
    except subprocess.CalledProcessError as exc:
        print(f"aifl-datasets-access: {' '.join(exc.cmd)} failed: {(exc.stderr or '').strip()}", file=sys.stderr)
        sys.exit(1)
