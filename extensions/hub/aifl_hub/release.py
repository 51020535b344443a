"""When flexible work that waits for a quiet grid may start: the release policy (pure, no I/O).

A flexible job is submitted held (``sbatch --hold``, Slurm's reason ``JobHeldUser``) with the tag
``aifl-grid:deadline=<local time>`` in its comment, so everything the policy needs lives in Slurm
itself and a restart of the releasing service loses nothing. At every check the service asks
``squeue`` for the tagged jobs (:data:`SQUEUE_FORMAT`, :func:`parse_squeue`) and :func:`decide` says,
for each held one:

* the grid is **quiet** now → release it;
* otherwise, once its **latest start** has come (deadline − time limit − one check interval, so the
  next check would be too late) → release it, also when the grid is busy;
* in **busy** hours the facility's cap (``busy_max_flexible_gpus``) holds for those deadline releases
  too: flexible jobs' GPUs running plus the job's own may not exceed it (jobs whose latest start comes
  first go first); a job over the cap waits for the next quiet hour or for room under the cap;
* otherwise it waits; it is expected to start at the first quiet hour of the forecast, or at its
  latest start if that comes earlier. Hours the forecast does not cover (gaps) count as not quiet.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from .availability import parse_time_limit
from .grid import Slot, next_quiet

TAG = "aifl-grid"
HELD_REASON = "JobHeldUser"
SQUEUE_FORMAT = "%i|%u|%T|%r|%l|%b|%D|%V|%k"
"""Job id, user, state, reason, time limit, GPUs per node (tres-per-node), nodes, submit time, comment."""

_COMMENT = re.compile(r"^aifl-grid(?::deadline=([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}))?\Z")
_GPUS = re.compile(r"gpu(?::[A-Za-z0-9_.-]+)?[:=]([0-9]+)")
_JOB_ID = re.compile(r"^[0-9]{1,12}\Z")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")

Reason = Literal["quiet", "deadline", "cap", "waiting"]


@dataclass(frozen=True)
class FlexJob:
    """A tagged job as ``squeue`` shows it. ``held``: still waiting for the releaser."""

    job_id: str
    user: str
    state: str
    held: bool
    gpus: int
    time_limit: timedelta | None
    deadline: datetime | None
    submitted: datetime | None = None

    @property
    def running(self) -> bool:
        """Whether the job runs (or is finishing) on a node."""
        return self.state in ("RUNNING", "COMPLETING", "CONFIGURING")


@dataclass(frozen=True)
class Decision:
    """What to do with one held job now: release it (and why) or let it wait (and until about when)."""

    job: FlexJob
    release: bool
    reason: Reason
    expected_start: datetime | None = None


def tag(deadline: datetime) -> str:
    """The comment that marks a job as flexible work with ``deadline`` (local time, whole seconds)."""
    return f"{TAG}:deadline={deadline.replace(microsecond=0).isoformat()}"


def parse_comment(comment: str) -> tuple[bool, datetime | None]:
    """``(tagged, deadline)`` from a job's comment (a tag without a deadline has None)."""
    match = _COMMENT.match(comment.strip())
    if not match:
        return False, None
    return True, datetime.fromisoformat(match[1]) if match[1] else None


def parse_gpus(tres_per_node: str, nodes: str) -> int:
    """GPUs of a job from ``squeue``'s %b (``gres:gpu:h200:2``, ``gres/gpu=2``, ``N/A``) times its nodes."""
    per_node = sum(int(m) for m in _GPUS.findall(tres_per_node))
    return per_node * (int(nodes) if nodes.isdigit() else 1)


def parse_squeue(text: str) -> list[FlexJob]:
    """The tagged jobs in ``squeue -h -o`` :data:`SQUEUE_FORMAT` output (others and odd lines left out)."""
    jobs = []
    for line in text.splitlines():
        parts = line.strip().split("|", 8)
        if len(parts) != 9 or not _JOB_ID.match(parts[0]) or not _USER.match(parts[1]):
            continue
        tagged, deadline = parse_comment(parts[8])
        if not tagged:
            continue
        try:
            submitted: datetime | None = datetime.fromisoformat(parts[7])
        except ValueError:
            submitted = None
        jobs.append(FlexJob(job_id=parts[0], user=parts[1], state=parts[2],
                            held=parts[2] == "PENDING" and parts[3] == HELD_REASON,
                            gpus=parse_gpus(parts[5], parts[6]), time_limit=parse_time_limit(parts[4]),
                            deadline=deadline, submitted=submitted))
    return jobs


def latest_start(job: FlexJob, margin: timedelta) -> datetime | None:
    """The last moment a release still lets ``job`` finish by its deadline, less ``margin``; None without one."""
    if job.deadline is None:
        return None
    return job.deadline - (job.time_limit or timedelta()) - margin


def level_now(slots: Sequence[Slot], now: datetime) -> str | None:
    """The level of the slot that holds ``now`` (None in a gap)."""
    return next((s.level for s in slots if s.start <= now < s.end), None)


def decide(jobs: Iterable[FlexJob], slots: Sequence[Slot], now: datetime, *, cap: int | None,
           margin: timedelta) -> list[Decision]:
    """Decide for every held job in ``jobs`` (see the module docstring); running ones count for the cap.

    ``slots`` is the forecast from ``now``; ``cap`` the most GPUs of flexible work in busy hours (None:
    no cap); ``margin`` the check interval.
    """
    jobs = list(jobs)
    level = level_now(slots, now)
    quiet_at = next_quiet(slots, now)
    running = sum(j.gpus for j in jobs if j.running)
    held = sorted((j for j in jobs if j.held),
                  key=lambda j: (latest_start(j, margin) or datetime.max, int(j.job_id)))
    decisions = []
    for job in held:
        latest = latest_start(job, margin)
        if level == "quiet":
            decisions.append(Decision(job, True, "quiet", now))
        elif latest is not None and now >= latest:
            if level == "busy" and cap is not None and running + job.gpus > cap:
                decisions.append(Decision(job, False, "cap", quiet_at))
                continue
            running += job.gpus if level == "busy" else 0
            decisions.append(Decision(job, True, "deadline", now))
        else:
            candidates = [t for t in (quiet_at, latest) if t is not None]
            decisions.append(Decision(job, False, "waiting", min(candidates) if candidates else None))
    return decisions
