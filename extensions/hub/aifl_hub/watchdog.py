"""aifl-watchdog: restart the local Slurm cluster's daemons when one has stopped.

``lab up`` (re)starts it, with the site file it has just checked (as root, in the background, log in
/var/log/aifl/watchdog.log) for the embedded cluster and ``lab down`` stops it first. Every ``--every`` seconds
it looks for munged, MariaDB, slurmdbd, slurmctld and every node's slurmd by pid file; when one is gone it takes
the lab's lock (so it never works at the same time as ``lab up`` or ``lab down``) and brings the cluster up
again the way ``lab up`` does. Jobs keep running while a daemon is away: Slurm's daemons find their state again
when they start.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import cluster
from .cli import one_at_a_time
from .procs import LabError, Progress
from .site import Site, load_site


def check_once(site: Site) -> list[str]:
    """Restart the cluster if a daemon has stopped; return the daemons that had stopped (empty: all ran)."""
    if not cluster.stopped_daemons(site):
        return []
    with one_at_a_time():
        stopped = cluster.stopped_daemons(site)  # lab up may have started them while we waited for the lock
        if stopped:
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} stopped: {', '.join(stopped)}; starting again",
                  flush=True)
            progress = Progress(1)
            with progress.step("Starting the local Slurm cluster again"):
                cluster.up(site, progress)
        return stopped


def main(argv: list[str] | None = None) -> int:
    """Check every few seconds until stopped."""
    parser = argparse.ArgumentParser(prog="aifl-watchdog", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--site", type=Path, required=True, help="the site file (/etc/aifl/site.yaml)")
    parser.add_argument("--every", type=float, default=10, help="seconds between checks (10)")
    args = parser.parse_args(argv)
    site = load_site(args.site)  # read once: `lab up` restarts the watchdog whenever it may have changed
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} watching the local Slurm cluster every {args.every:g} s",
          flush=True)
    while True:
        time.sleep(args.every)
        try:
            check_once(site)
        except (LabError, OSError) as exc:  # tried again at the next check
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} could not start it again: {exc}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
