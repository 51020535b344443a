#!/usr/bin/python3 -I
"""aifl-reservation: make or remove the Slurm reservation of a workshop (run by the hub through sudo).

    aifl-reservation create NAME START END PARTITION nodes=N|cores=N ACCOUNT
    aifl-reservation delete NAME

Installed as /usr/local/sbin/aifl-reservation (root, 0755) by `lab up`; the hub's service account may
run it as root and nothing else about reservations. Only the standard library; settings from
/etc/aifl/reservation.json (root-owned: the Slurm bin folder, the partitions and the accounts a
workshop may use). Every argument must match a strict pattern, names must start with ``aifl-ws-``
(so no other reservation can be touched), and scontrol runs as an argv list. Exit codes: 0 done,
2 refused, 1 Slurm said no (its message on stderr).
"""

import json
import re
import subprocess
import sys

SETTINGS = "/etc/aifl/reservation.json"
NAME = re.compile(r"^aifl-ws-[a-z0-9]{6}$")
TIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}$")
SIZE = re.compile(r"^(nodes|cores)=([1-9][0-9]{0,4})$")


def refuse(message: str) -> None:
    """Stop with exit 2 and a message for the hub's log."""
    print(f"aifl-reservation: {message}", file=sys.stderr)
    sys.exit(2)


def create_argv(args: list[str], settings: dict) -> list[str]:
    """The scontrol command line for ``create NAME START END PARTITION SIZE ACCOUNT`` (checked)."""
    if len(args) != 6:
        refuse("usage: aifl-reservation create NAME START END PARTITION nodes=N|cores=N ACCOUNT")
    name, start, end, partition, size, account = args
    if not NAME.fullmatch(name):
        refuse("the name must be aifl-ws- and six lower-case letters or digits")
    if not (start == "now" or TIME.fullmatch(start)) or not TIME.fullmatch(end):
        refuse("times are YYYY-MM-DDTHH:MM:SS (the start may be 'now')")
    if partition not in settings["partitions"]:
        refuse(f"{partition!r} is not a partition of this site")
    if account not in settings["accounts"]:
        refuse(f"{account!r} is not a workshop account of this site")
    match = SIZE.fullmatch(size)
    if not match:
        refuse("the size is nodes=N or cores=N")
    count = f"NodeCnt={match.group(2)}" if match.group(1) == "nodes" else f"CoreCnt={match.group(2)}"
    return [f"{settings['slurm_bin']}/scontrol", "create", "reservation", f"ReservationName={name}",
            f"StartTime={start}", f"EndTime={end}", f"PartitionName={partition}", count, f"Accounts={account}"]


def main() -> None:
    """Create or delete the reservation named on the command line."""
    with open(SETTINGS) as fh:
        settings = json.load(fh)
    if len(sys.argv) < 3 or sys.argv[1] not in ("create", "delete"):
        refuse("usage: aifl-reservation create|delete NAME ...")
    if sys.argv[1] == "create":
        argv = create_argv(sys.argv[2:], settings)
    else:
        if len(sys.argv) != 3 or not NAME.fullmatch(sys.argv[2]):
            refuse("usage: aifl-reservation delete aifl-ws-XXXXXX")
        argv = [f"{settings['slurm_bin']}/scontrol", "delete", f"ReservationName={sys.argv[2]}"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0:
        print(f"aifl-reservation: {(done.stderr or done.stdout).strip()}", file=sys.stderr)
        sys.exit(1)
    print(f"aifl-reservation: {sys.argv[1]} {sys.argv[2]} done")


if __name__ == "__main__":
    main()
