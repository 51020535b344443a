"""The hub service that releases flexible work when the grid is quiet (or a deadline comes near).

The hub runs it as a managed service (``python -m aifl_hub.grid_service --site-file …``), as its own
unprivileged account. Every ``grid.check_interval`` seconds it

1. reads the grid signal again (:func:`aifl_hub.grid.load_signal`: a changed file counts at once);
2. asks ``squeue`` for the jobs tagged as flexible work (:mod:`aifl_hub.release`);
3. releases those :func:`~aifl_hub.release.decide` says may start, each as its own user
   (``sudo -n -u <user> -- scontrol release <job>``: the hub's sudoers rule allows exactly that, for
   members of the lab's group, and Slurm lets a user release only their own job);
4. writes the signal, the 48-hour forecast and each waiting job's expected start to the status file
   (``grid.status_file``, readable by everyone: sessions read it to say when their run will start,
   the facility page to show the grid), and appends each release to ``grid-releases.jsonl`` in the
   hub's state folder (the history behind "energy moved out of busy hours").

The service keeps no state of its own: held jobs and their deadlines live in Slurm, so a restart
loses nothing. A grid source that cannot be read is logged as a warning (and shown to administrators
on the facility page) and the built-in weekly profile is used instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from .energy import ledger_path, status_path
from .grid import Signal, check_interval, load_signal, slots_json
from .release import SQUEUE_FORMAT, Decision, decide, parse_squeue
from .site import Site, load_site
from .slurm import SlurmError, run_argv

log = logging.getLogger(__name__)

Runner = Callable[[Sequence[str]], Awaitable[str]]


def status_json(signal: Signal, now: datetime, decisions: Sequence[Decision], interval: int) -> dict[str, Any]:
    """What the status file holds: the level now, the forecast and each waiting job's expected start."""
    forecast = signal.forecast(now)
    return {
        "updated": now.isoformat(timespec="seconds"),
        "level": signal.level_at(now, now),
        "source": "override" if signal.override else signal.name,
        "warning": signal.warning,
        "check_interval": interval,
        "forecast": slots_json(forecast),
        "jobs": {d.job.job_id: {"reason": d.reason, "expected_start":
                                d.expected_start.isoformat(timespec="seconds") if d.expected_start else None}
                 for d in decisions if not d.release},
    }


def write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` in one step (readers never see half a file)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@dataclass
class Releaser:
    """One check at a time (:meth:`check`); the clock and the Slurm runner can be replaced in tests."""

    site: Site
    runner: Runner = run_argv
    clock: Callable[[], datetime] = datetime.now
    sudo: str = "/usr/bin/sudo"
    _warned: str = ""

    def _bin(self, name: str) -> str:
        return str(Path(self.site["cluster"]["slurm_bin"]) / name)

    @property
    def grid(self) -> dict[str, Any]:
        """The site's ``grid`` section (empty: all defaults)."""
        return self.site.get("grid", {})

    async def check(self) -> list[Decision]:
        """Read the signal and the queue, release what may start, publish the status; return the decisions."""
        now = self.clock()
        signal = load_signal(self.grid)
        if signal.warning and signal.warning != self._warned:  # once per problem, not at every check
            log.warning("%s", signal.warning)
        self._warned = signal.warning
        interval = check_interval(self.grid)
        out = await self.runner([self._bin("squeue"), "-h", "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING",
                                 "-o", SQUEUE_FORMAT])
        decisions = decide(parse_squeue(out), signal.forecast(now), now, cap=self.grid.get("busy_max_flexible_gpus"),
                           margin=timedelta(seconds=interval))
        for decision in decisions:
            if decision.release:
                await self._release(decision, signal, now)
        path = status_path(self.site)
        write_atomically(path, json.dumps(status_json(signal, now, decisions, interval), indent=1) + "\n")
        return decisions

    async def _release(self, decision: Decision, signal: Signal, now: datetime) -> None:
        job = decision.job
        try:
            await self.runner([self.sudo, "-n", "-u", job.user, "--", self._bin("scontrol"), "release", job.job_id])
        except SlurmError as exc:
            log.warning("could not release job %s of %s: %s", job.job_id, job.user, exc)
            return
        log.info("released job %s of %s (%s)", job.job_id, job.user, decision.reason)
        entry = {"job": job.job_id, "user": job.user, "reason": decision.reason, "gpus": job.gpus,
                 "released": now.isoformat(timespec="seconds"),
                 "submitted": job.submitted.isoformat(timespec="seconds") if job.submitted else None,
                 "level_at_submit": signal.source.level_at(job.submitted) if job.submitted else None}
        with ledger_path(self.site).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")


async def run_forever(releaser: Releaser) -> None:
    """Check every ``grid.check_interval`` seconds; a failed check is logged and tried again at the next."""
    while True:
        try:
            await releaser.check()
        except (SlurmError, OSError) as exc:
            log.warning("grid check failed: %s", exc)
        await asyncio.sleep(check_interval(releaser.grid))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the service."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site-file", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s grid] %(message)s")
    with contextlib.suppress(KeyboardInterrupt):  # the hub stops its services with SIGINT
        asyncio.run(run_forever(Releaser(load_site(args.site_file))))


if __name__ == "__main__":
    main()
