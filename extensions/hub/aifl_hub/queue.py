"""What a waiting session is waiting for, in plain words: Slurm's pending reason and the queue position.

Pure functions over ``squeue`` output (the format strings are defined here, next to their parsers), so
they are tested without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

from .i18n import N_, gettext_for

# squeue -h -t PENDING -p <partition> -o QUEUE_FORMAT
QUEUE_FORMAT = "%i|%Q|%V|%r"


REASONS = {
    "Resources": N_("all places that fit this profile are in use; it starts as soon as one is free"),
    "Priority": N_("other sessions that asked earlier or have priority go first"),
    "Dependency": N_("it waits for another job to finish"),
    "BeginTime": N_("it is set to start at a later time"),
    "QOSMaxGRESPerUser": N_("you already use as many GPUs as you may at once"),
    "QOSMaxJobsPerUserLimit": N_("you already run as many sessions as you may at once"),
    "QOSMaxCpuPerUserLimit": N_("you already use as many CPU cores as you may at once"),
    "QOSGrpGRES": N_("your group's share of GPUs is in use right now"),
    "QOSGrpCpuLimit": N_("your group's share of CPU cores is in use right now"),
    "AssocGrpGRES": N_("your organisation's share of GPUs is in use right now"),
    "AssocGrpGRESMinutes": N_("your organisation has used its GPU hours for now"),
    "ReqNodeNotAvail": N_("the nodes it needs are not available (maintenance or a fault)"),
    "Reservation": N_("it waits for its reservation to begin"),
    "PartitionDown": N_("this part of the cluster is closed for now"),
    "PartitionTimeLimit": N_("the hours you asked for are more than this part of the cluster allows"),
    "JobHeldUser": N_("it is on hold (you or a trainer put it there)"),
    "JobHeldAdmin": N_("an administrator put it on hold"),
    "None": N_("the scheduler has not looked at it yet"),
}


def explain_reason(reason: str, lang: str) -> str:
    """Slurm's pending ``reason`` in plain words (unknown reasons are shown as Slurm says them)."""
    _ = gettext_for(lang)
    if reason in REASONS:
        return _(REASONS[reason])
    for prefix in ("QOSMax", "QOSGrp", "AssocGrp", "AssocMax"):
        if reason.startswith(prefix):
            return _("a usage limit is reached ({reason})").format(reason=reason)
    return _("Slurm says: {reason}").format(reason=reason)


@dataclass(frozen=True)
class QueuePlace:
    """A job's place among the pending jobs of its partition (1 = next)."""

    position: int
    waiting: int


def queue_place(job_id: str, squeue_output: str) -> QueuePlace | None:
    """The place of ``job_id`` among pending jobs (``QUEUE_FORMAT`` output): by priority, then submit time."""
    jobs: list[tuple[int, str, str]] = []
    for line in squeue_output.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4 or not parts[0].isdigit():
            continue
        try:
            priority = int(parts[1])
        except ValueError:
            continue
        jobs.append((-priority, parts[2], parts[0]))
    ordered = [job for *_, job in sorted(jobs)]
    if job_id not in ordered:
        return None
    return QueuePlace(position=ordered.index(job_id) + 1, waiting=len(ordered))
