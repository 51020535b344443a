"""How long a submitted batch job waits for slurmctld to place it, and which loop placed it.

Run as root on the machine where the lab runs (``./lab up``)::

    /work/main/.venv/bin/python benchmarks/schedule_delay.py [--jobs 30]

It submits ``--jobs`` one-CPU jobs that end at once (account ``root``, the CPU partition), one after
another, each after a random pause of up to 1 s (a random phase of slurmctld's loops), and reads
slurmctld's log for each: submitted (``_slurm_rpc_submit_batch_job``) to placed, by the main loop
(``sched: Allocate``) or by the backfill loop (``sched/backfill: _start_job: Started``). It prints the
cluster's ``SchedulerParameters`` and the delays (median, quartiles, range, per loop), and writes
everything to ``benchmarks/results/schedule-delay-<date>-<commit>.txt``. Run it once per setting to
compare (for example with and without ``bf_interval=1``: edit ``/etc/slurm/slurm.conf``, then
``scontrol reconfigure``).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from record import recorded

LOG = Path("/var/log/slurm/slurmctld.log")
STAMP = r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)\] "
LOOPS = {"main": "sched: Allocate", "backfill": "sched/backfill: _start_job: Started"}


def stamp(log: str, pattern: str) -> float | None:
    match = re.search(STAMP + pattern, log, re.MULTILINE)
    return datetime.fromisoformat(match.group(1)).timestamp() if match else None


def submit() -> str:
    done = subprocess.run(["sbatch", "--parsable", "--account=root", "--partition=cpu", "--cpus-per-task=1",
                           "--mem=100M", "--time=5", "--output=/dev/null", "--job-name=schedule-delay",
                           "--wrap=true"], capture_output=True, text=True, check=True, timeout=30)
    return done.stdout.strip().split(";")[0]


def quartiles(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "–"
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return f"median {q2:.2f}, quartiles {q1:.2f} – {q3:.2f}, range {min(values):.2f} – {max(values):.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=30, help="jobs to submit (30)")
    args = parser.parse_args()
    if os.geteuid() != 0 or not 2 <= args.jobs <= 500:
        parser.error("run as root, with --jobs 2..500")
    with recorded("schedule-delay"):
        params = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
        print(next((line for line in params.splitlines() if line.startswith("SchedulerParameters")), "?"))
        jobs = []
        for _ in range(args.jobs):
            time.sleep(random.uniform(0, 1))
            jobs.append(submit())
        time.sleep(3)
        log = LOG.read_text(errors="replace")[-5_000_000:]
        delays: dict[str, list[float]] = {loop: [] for loop in LOOPS}
        for job in jobs:
            submitted = stamp(log, rf"_slurm_rpc_submit_batch_job: JobId={job} ")
            for loop, words in LOOPS.items():
                placed = stamp(log, rf"{re.escape(words)} JobId={job} ")
                if submitted is not None and placed is not None:
                    delays[loop].append(placed - submitted)
                    print(f"  job {job}: placed by the {loop} loop after {placed - submitted:.3f} s")
        every = [d for values in delays.values() for d in values]
        print(f"\n{len(every)} of {len(jobs)} jobs seen placed; seconds from submitted to placed:")
        print(f"  all:      {quartiles(every)}, mean {statistics.mean(every):.2f}" if every else "  none")
        for loop, values in delays.items():
            print(f"  {loop + ':':9} {len(values):3d} jobs, {quartiles(values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
