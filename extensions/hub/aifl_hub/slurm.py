"""Async Slurm client: sbatch, squeue and scancel as argv lists, never through a shell.

Commands that must act as the user (submitting and cancelling their own job) run through
``sudo -n -u <user> --``; the hub's sudoers rule allows exactly these commands. Queries run as the
hub itself.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .queue import QUEUE_FORMAT

_JOB_ID = re.compile(r"^[0-9]+$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

PENDING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED"})
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"})


class SlurmError(RuntimeError):
    """A Slurm command failed; ``stderr`` holds what it said."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv, self.returncode, self.stderr = list(argv), returncode, stderr.strip()
        super().__init__(f"{Path(argv[0]).name if argv else '?'} failed (exit {returncode}): {self.stderr}")


class SlurmUnavailable(SlurmError):
    """The Slurm controller could not be reached; the job's state is unknown, not gone."""


@dataclass(frozen=True)
class Allocation:
    """Where a running job runs: its node, the GPU indices it got (``""`` for none) and when it must end."""

    node: str
    gpus: str
    ends_at: datetime | None


def _expand(indices: str) -> str:
    """Slurm's index list ``0-1,3`` as ``0, 1, 3``."""
    out: list[str] = []
    for part in indices.split(","):
        first, _, last = part.partition("-")
        out += [str(i) for i in range(int(first), int(last or first) + 1)]
    return ", ".join(out)


def parse_allocation(text: str) -> Allocation | None:
    """Read an :class:`Allocation` from ``scontrol show job -d`` output (``None`` if it has no node yet)."""
    node = re.search(r"\bNodeList=([A-Za-z0-9_.-]+)", text)
    if node is None:
        return None
    gpus = re.search(r"\bGRES=\S*\(IDX:([0-9,-]+)\)", text)
    end = re.search(r"\bEndTime=(\S+)", text)
    try:
        ends_at = datetime.fromisoformat(end.group(1)) if end else None
    except ValueError:
        ends_at = None
    return Allocation(node.group(1), _expand(gpus.group(1)) if gpus else "", ends_at)


@dataclass(frozen=True)
class JobInfo:
    """What squeue says about one job."""

    job_id: str
    state: str
    node: str
    reason: str

    @property
    def pending(self) -> bool:
        """Queued (or held) and not yet running."""
        return self.state in PENDING_STATES

    @property
    def running(self) -> bool:
        """Running on a node (or finishing there)."""
        return self.state in RUNNING_STATES


async def run_argv(argv: Sequence[str], *, input: str | None = None,
                   env: Mapping[str, str] | None = None, timeout: float = 30) -> str:
    """Run ``argv``; return stdout, or raise :class:`SlurmError` with stderr on a non-zero exit."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else None, cwd="/")
    try:
        out, err = await asyncio.wait_for(proc.communicate(input.encode() if input is not None else None), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SlurmUnavailable(argv, -9, f"no answer within {timeout:.0f} s") from None
    if proc.returncode != 0:
        stderr = err.decode(errors="replace")
        unreachable = "Unable to contact slurm controller" in stderr or "timed out" in stderr
        raise (SlurmUnavailable if unreachable else SlurmError)(argv, proc.returncode or 1, stderr)
    return out.decode(errors="replace")


@dataclass(frozen=True)
class SlurmClient:
    """The Slurm client commands in ``bin_dir``, run as users through ``sudo``."""

    bin_dir: str = "/usr/bin"
    sudo: str = "/usr/bin/sudo"

    def _bin(self, name: str) -> str:
        return str(Path(self.bin_dir) / name)

    def _as_user(self, user: str, argv: list[str]) -> list[str]:
        if not _USER.fullmatch(user):
            raise ValueError(f"not a valid user name: {user!r}")
        return [self.sudo, "-n", "-u", user, "--", *argv]

    async def submit(self, user: str, script: str, env: Mapping[str, str]) -> str:
        """Submit ``script`` as ``user`` with ``env`` (sudoers keeps only the JUPYTERHUB_/AIFL_ names)."""
        argv = self._as_user(user, [self._bin("sbatch"), "--parsable"])
        out = await run_argv(argv, input=script, env=env)
        job_id = out.strip().splitlines()[-1].split(";")[0] if out.strip() else ""
        if not _JOB_ID.fullmatch(job_id):
            raise SlurmError(argv, 0, f"sbatch gave no job id: {out.strip()[:200]}")
        return job_id

    async def job(self, job_id: str) -> JobInfo | None:
        """The job's state, node and reason; ``None`` when Slurm no longer knows the job."""
        if not _JOB_ID.fullmatch(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        argv = [self._bin("squeue"), "-h", "-t", "all", "-j", job_id, "-o", "%i|%T|%B|%r"]
        try:
            out = await run_argv(argv)
        except SlurmUnavailable:
            raise
        except SlurmError as exc:
            if "Invalid job id" in exc.stderr:
                return None
            raise
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 4 and parts[0] == job_id:
                node = parts[2] if parts[2] not in ("", "n/a", "(null)") else ""
                return JobInfo(job_id, parts[1], node, parts[3])
        return None

    async def pending_in_partition(self, partition: str) -> str:
        """Raw ``squeue`` lines (:data:`.queue.QUEUE_FORMAT`) of the pending jobs in ``partition``."""
        if not _NAME.fullmatch(partition):
            raise ValueError(f"not a partition name: {partition!r}")
        return await run_argv([self._bin("squeue"), "-h", "-t", "PENDING", "-p", partition, "-o", QUEUE_FORMAT])

    async def expected_start(self, job_id: str) -> datetime | None:
        """Slurm's estimate of when a pending job starts (``squeue --start``), if it has one."""
        if not _JOB_ID.fullmatch(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        out = (await run_argv([self._bin("squeue"), "--start", "-h", "-j", job_id, "-o", "%S"])).strip()
        try:
            return datetime.fromisoformat(out)
        except ValueError:
            return None

    async def allocation(self, job_id: str) -> Allocation | None:
        """Node, GPU indices and end time of a running job (``scontrol show job -d``)."""
        if not _JOB_ID.fullmatch(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return parse_allocation(await run_argv([self._bin("scontrol"), "show", "job", "-d", job_id]))

    async def cancel(self, user: str, job_id: str) -> None:
        """Cancel ``job_id`` as ``user`` (a job that already ended is not an error)."""
        if not _JOB_ID.fullmatch(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        try:
            await run_argv(self._as_user(user, [self._bin("scancel"), job_id]))
        except SlurmError as exc:
            if "Invalid job id" not in exc.stderr and "already completing or completed" not in exc.stderr:
                raise
