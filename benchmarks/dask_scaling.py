"""Dask on the local cluster: the lab's SLURMCluster against a LocalCluster with the same total cores.

Run as root on the machine where the lab runs (``./lab up``)::

    /work/main/.venv/bin/python benchmarks/dask_scaling.py [--workers 4] [--tasks 240] [--rounds 5]

It makes (or reuses) the benchmark user ``benchdask`` through the hub (so it has a Unix account and a
Slurm association like every lab user) and submits, as that user, one Slurm job on the CPU partition
that stands in for a session: inside it, this file runs again (``--inner``) in the notebook
environment and measures, side by side and alternating (local, slurm, local, slurm, …):

* start-up: from creating the cluster until ``--workers`` workers are connected (for the SLURMCluster:
  ``aifl_notebook.dask.start_cluster``, so sbatch, Slurm's scheduling tick and the worker start; for
  the LocalCluster: ``--workers`` worker processes with one thread each, as the SLURM workers have);
* throughput: ``--tasks`` independent CPU-bound tasks (pure Python, about 13 ms of work each on an idle
  core of this machine) once all workers are up, in tasks per second and per worker core.

It prints the medians and the ratios SLURM / Local with their spread (the ratio of each round's pair,
median and range over at least three rounds), and per round the load average and the host CPUs each
worker may use; everything printed also goes to ``benchmarks/results/dask-scaling-<date>-<commit>.txt``.
On a machine shared with other work, Linux's autogroup scheduling gives each
Slurm job (its own session) its own share of the CPUs, while the LocalCluster's workers share one:
read the ratios together with the load. Everything it starts is cancelled on exit (the
session stand-in and, through it, the workers); the hub user is removed, its Unix account kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STATE = Path("/var/lib/aifl")
PUBLIC = "http://127.0.0.1:8000"
NOTEBOOK_ENV = Path("/opt/aifl/envs/default")
USER = "benchdask"
WORK = 250_000  # loop iterations per task: about 13 ms of pure Python on an idle core here


# ---- inside the Slurm job (the notebook environment) ---------------------------------------------------
def burn(n: int) -> int:
    """A task: pure-Python arithmetic that holds the GIL (so threads do not help, cores do)."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def measure(client: Any, workers: int, tasks: int, started: float) -> dict[str, float]:
    """Wait for ``workers`` workers (start-up time), then time ``tasks`` tasks (throughput)."""
    client.wait_for_workers(workers, timeout=600)
    up = time.perf_counter() - started
    client.gather(client.map(burn, [WORK] * workers, pure=False))  # warm every worker once
    begin = time.perf_counter()
    results = client.gather(client.map(burn, [WORK] * tasks, pure=False))
    seconds = time.perf_counter() - begin
    assert len(results) == tasks and len(set(results)) == 1
    cpus = sorted(",".join(map(str, sorted(c))) for c in client.run(os.sched_getaffinity, 0).values())
    return {"startup_s": up, "tasks_per_s": tasks / seconds, "tasks_per_s_per_core": tasks / seconds / workers,
            "load": os.getloadavg()[0], "worker_cpus": cpus}


def run_local(workers: int, tasks: int) -> dict[str, float]:
    from distributed import LocalCluster

    started = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address="127.0.0.1:0") as cluster, cluster.get_client() as client:
        return measure(client, workers, tasks, started)


def run_slurm(workers: int, tasks: int) -> dict[str, float]:
    from aifl_notebook.dask import start_cluster

    started = time.perf_counter()
    cluster = start_cluster(minimum=workers, maximum=workers)
    try:
        with cluster.get_client() as client:
            return measure(client, workers, tasks, started)
    finally:
        cluster.close()


def inner(args: argparse.Namespace) -> None:
    rounds: list[dict[str, Any]] = []
    for index in range(args.rounds):
        for kind, run in (("local", run_local), ("slurm", run_slurm)):
            result = run(args.workers, args.tasks)
            rounds.append({"round": index, "kind": kind, **result})
            print(json.dumps(rounds[-1]), flush=True)
    Path(args.result).write_text(json.dumps(rounds))


# ---- the runner (root, outside) --------------------------------------------------------------------------
def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def hub_api(method: str, path: str, **kw: Any) -> Any:
    import requests

    token = (STATE / "lab-service-token").read_text().strip()
    return requests.request(method, f"{PUBLIC}/hub/api{path}", headers={"Authorization": f"token {token}"},
                            timeout=120, **kw)


def job_state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def outer(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        sys.exit("run as root on the machine where the lab runs")
    from record import recorded  # here, not at the top: the job runs a copy of this file alone

    with recorded("dask-scaling"):
        return run_job(args)


def run_job(args: argparse.Namespace) -> int:
    """Submit the session stand-in, wait for it and report what it measured."""
    r = hub_api("POST", f"/users/{USER}")
    if r.status_code not in (201, 409):
        sys.exit(f"creating the benchmark user failed: HTTP {r.status_code} {r.text[:300]}")
    folder = Path(tempfile.mkdtemp(prefix="aifl-dask-bench-"))
    shutil.copy(__file__, folder / "dask_scaling.py")
    shutil.chown(folder, USER)
    folder.chmod(0o755)
    result = folder / "result.json"
    cores = args.workers + 2  # what the stand-in session holds: the LocalCluster's workers, client, scheduler
    script = folder / "job.sh"
    script.write_text("#!/bin/bash\nexec " + " ".join([
        str(NOTEBOOK_ENV / "bin" / "python"), str(folder / "dask_scaling.py"), "--inner",
        "--workers", str(args.workers), "--tasks", str(args.tasks), "--rounds", str(args.rounds),
        "--result", str(result)]) + "\n")
    script.chmod(0o755)
    submit = subprocess.run(["sudo", "-u", USER, "sbatch", "--parsable", "--partition=cpu", f"--cpus-per-task={cores}",
                             f"--mem={4 * cores}G", "--time=60", "--job-name=dask-bench", f"--chdir={folder}",
                             f"--output={folder / 'job.out'}", str(script)],
                            capture_output=True, text=True, check=False)
    if submit.returncode:
        sys.exit(f"sbatch failed: {submit.stderr}")
    job = submit.stdout.strip().split(";")[0]
    say(f"job {job} of {USER}: {args.rounds} rounds of LocalCluster and SLURMCluster with {args.workers} workers, "
        f"{args.tasks} tasks each")

    def stop(signum: int, _frame: Any) -> None:
        subprocess.run(["scancel", job], check=False)
        sys.exit(128 + signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while job_state(job):
            time.sleep(1)
        log = (folder / "job.out").read_text() if (folder / "job.out").exists() else ""
        if not result.exists():
            sys.exit(f"the benchmark job failed:\n{log[-3000:]}")
        report(json.loads(result.read_text()), args)
        leftover = subprocess.run(["squeue", "-h", "-u", USER, "-o", "%i %j"], capture_output=True,
                                  text=True, check=False).stdout.split("\n")
        say(f"jobs of {USER} left in the queue: {[line for line in leftover if line] or 'none'}")
    finally:
        subprocess.run(["scancel", "-u", USER], check=False)
        hub_api("DELETE", f"/users/{USER}")
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def spread(values: list[float]) -> str:
    """Median [min – max] of ``values``."""
    return f"{statistics.median(values):.2f} [{min(values):.2f} – {max(values):.2f}]"


def report(rounds: list[dict[str, Any]], args: argparse.Namespace) -> None:
    def values(kind: str, key: str) -> list[float]:
        return [r[key] for r in rounds if r["kind"] == kind]

    def ratios(key: str) -> list[float]:
        """SLURM / Local of each round (the two ran one after the other)."""
        by_round = {(r["round"], r["kind"]): r[key] for r in rounds}
        return [by_round[i, "slurm"] / by_round[i, "local"] for i in range(args.rounds)
                if (i, "slurm") in by_round and (i, "local") in by_round]

    print(f"\n{args.workers} workers x 1 core, {args.tasks} tasks of ~13 ms, {args.rounds} rounds; "
          f"host: {os.cpu_count()} real cores. Median [min – max] over the rounds; the ratio is that of each "
          "round's pair")
    print(f"{'':32}{'LocalCluster':>24}{'SLURMCluster':>24}{'ratio S/L':>24}")
    for key, label in (("startup_s", "time until all workers up (s)"), ("tasks_per_s", "throughput (tasks/s)"),
                       ("tasks_per_s_per_core", "per core (tasks/s/core)")):
        print(f"{label:32}{spread(values('local', key)):>24}{spread(values('slurm', key)):>24}"
              f"{spread(ratios(key)):>24}")
    for r in rounds:
        print(f"  round {r['round']} {r['kind']:5}: up in {r['startup_s']:.2f} s, {r['tasks_per_s']:.1f} tasks/s, "
              f"load {r['load']:.1f}, workers on host CPUs {' | '.join(r['worker_cpus'])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=240)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each cluster, at least 3 (5)")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be at least 3 (the spread needs them)")
    if args.inner:
        inner(args)
        return 0
    return outer(args)


if __name__ == "__main__":
    sys.exit(main())
