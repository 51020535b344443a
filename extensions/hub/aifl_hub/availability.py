"""How soon a profile could start, in plain words, from a snapshot of the Slurm cluster.

One snapshot (``sinfo`` for the nodes, ``squeue`` for running and pending jobs; argv lists, run as the
hub) serves every profile card on every spawn page for a few seconds (:class:`ClusterWatch`). The
parsing (:func:`parse_nodes`, :func:`parse_jobs`) and the decision (:func:`estimate`) are pure
functions, tested on captured output with a fixed clock.

The decision, for a profile asking for GPUs, CPU cores and memory on one node of a partition:

* **unavailable**: the partition is not up, or no node of it that takes jobs (not drained, down,
  failing, in maintenance, reserved or not responding) is big enough for the profile at all;
* **free**: a node that takes jobs has enough idle GPUs (GRES), idle CPU cores and unallocated
  memory right now, after the pending jobs ahead (below) that fit right now have taken their room;
* **wait** (within :data:`WAIT_HORIZON`) or **full** (beyond it, or never by what is known): the
  earliest time a node has room. Running jobs free their share of each node at their end time
  (their time limit: an estimate, jobs often end sooner). Jobs already pending in the partition that
  wait for room (reason ``Resources``, ``Priority`` or ``None``) are ahead of a new session: by
  priority, then submit time, each takes room on the first node where it fits, for its time limit,
  as soon as it fits; one that does not fit yet does not hold back smaller ones (as Slurm's backfill
  lets them pass). Jobs held, waiting for limits, dependencies or a begin time take no room.

A pending job that fits right now is rare (Slurm starts it within its next scheduling pass), but
backfill runs only every 30 s, so counting it keeps "free" honest in between; "free" itself means
room exists now, and a new job may still wait for that pass. A share of a GPU (gres/shard) is counted
like a fourth resource; a GPU held whole leaves its shards unusable and a GPU with shards in use is not
free whole (spread evenly, an estimate). Limits: GPUs are counted whatever their type; jobs of
partitions outside the site's own are not read (room they hold on a shared node counts as never freed);
reserved nodes count as closed, also for a session that has a reservation.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal, Protocol

from babel.dates import format_date

from .i18n import DEFAULT_LANGUAGE, LANGUAGES, gettext_for
from .site import Site
from .slurm import run_argv

log = logging.getLogger(__name__)

WAIT_HORIZON = timedelta(hours=2)
"""Waits up to this long are shown as "about N minutes"; longer ones as "full until" a time."""

# sinfo -N -h -p <partitions> -O NODE_FORMAT
NODE_FORMAT = ("NodeList:|,Partition:|,Available:|,StateComplete:|,CPUsState:|,AllocMem:|,Memory:|,"
               "Gres:|,GresUsed:|")
# squeue -h -t PD,CF,R,CG -p <partitions> -O JOB_FORMAT
JOB_FORMAT = ("JobID:|,Partition:|,StateCompact:|,Reason:|,PriorityLong:|,SubmitTime:|,EndTime:|,"
              "TimeLimit:|,NumNodes:|,tres-alloc:|,NodeList:|")

SCHEDULABLE_STATES = frozenset({"idle", "mixed", "allocated", "completing", "planned"})
"""Node base states (before any ``+flag``) of a node that takes jobs now or when its jobs end."""
BLOCKING_FLAGS = frozenset({
    "drain", "drained", "draining", "down", "fail", "failing", "maint", "not_responding", "reserved",
    "power_down", "powered_down", "powering_down", "reboot_requested", "reboot_issued", "invalid_reg",
    "no_respond", "future", "unknown",
})
"""Node state flags under which a node takes no new jobs."""
WAITING_FOR_ROOM = frozenset({"Resources", "Priority", "None"})
"""Pending reasons of jobs that start as soon as there is room (and so are ahead of a new session)."""

_PARTITION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MEMORY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([KMGTP]?)$")
Amount = tuple[int, int, int, int]  # GPUs, CPUs, memory in MB, GPU shards
_MB_PER_UNIT = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2, "P": 1024**3}


class Ask(Protocol):
    """What a profile asks for on one node (a :class:`~.options.SessionRequest` is one)."""

    partition: str
    gpus: int
    cpus: int
    memory_gb: int
    shards: int


@dataclass(frozen=True)
class Availability:
    """How soon a profile could start.

    ``minutes``: the rounded wait (``wait`` only); ``until``: when a node is expected to have room
    (``wait`` and ``full``; ``None`` for ``full`` when no end time is known); ``reason`` for
    ``unavailable``: ``no_node`` (partition down or no node fits) or ``no_answer`` (Slurm did not answer).
    """

    state: Literal["free", "wait", "full", "unavailable"]
    minutes: int | None = None
    until: datetime | None = None
    reason: Literal["", "no_node", "no_answer"] = ""


@dataclass(frozen=True)
class Node:
    """One node as ``sinfo`` reports it (memory in MB, CPUs that are offline already left out)."""

    name: str
    partitions: frozenset[str]
    takes_jobs: bool
    cpus: int
    cpus_idle: int
    memory_mb: int
    memory_alloc_mb: int
    gpus: int
    gpus_used: int
    shards: int = 0
    shards_used: int = 0

    @property
    def free(self) -> list[int]:
        """Idle GPUs, CPUs, memory (MB) and shards; whole GPUs and shards of one GPU exclude each other."""
        per_gpu = self.shards // self.gpus if self.gpus else 0
        gpus_free = self.gpus - self.gpus_used - (math.ceil(self.shards_used / per_gpu) if per_gpu else 0)
        shards_free = self.shards - self.shards_used - self.gpus_used * per_gpu
        return [max(gpus_free, 0), self.cpus_idle, self.memory_mb - self.memory_alloc_mb, max(shards_free, 0)]


@dataclass(frozen=True)
class Job:
    """One running or pending job as ``squeue`` reports it (totals over all its nodes; memory in MB)."""

    job_id: str
    partitions: tuple[str, ...]
    state: str
    reason: str
    priority: int
    submitted: str
    ends_at: datetime | None
    time_limit: timedelta | None
    num_nodes: int
    cpus: int
    memory_mb: int
    gpus: int
    nodes: tuple[str, ...]
    shards: int = 0

    @property
    def per_node(self) -> Amount:
        """GPUs, CPUs, memory (MB) and GPU shards it holds on each of its nodes (spread evenly)."""
        n = max(self.num_nodes, len(self.nodes), 1)
        return self.gpus // n, self.cpus // n, self.memory_mb // n, self.shards // n


@dataclass(frozen=True)
class Snapshot:
    """The cluster at one moment: its nodes, the partitions that are up, running and pending jobs."""

    nodes: tuple[Node, ...]
    partitions_up: frozenset[str]
    jobs: tuple[Job, ...]
    taken_at: datetime

    @classmethod
    def parse(cls, sinfo: str, squeue: str, taken_at: datetime) -> Snapshot:
        """Build a snapshot from ``sinfo`` (:data:`NODE_FORMAT`) and ``squeue`` (:data:`JOB_FORMAT`) output."""
        nodes, up = parse_nodes(sinfo)
        return cls(nodes, up, parse_jobs(squeue), taken_at)


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside brackets or parentheses."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += (char in "[(" and 1) or (-1 if char in "])" else 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in (p.strip() for p in parts) if p]


def expand_hostlist(text: str) -> tuple[str, ...]:
    """Slurm's compressed host list (``gpu[01-03,05],cpu01``) as single names; zero padding is kept."""
    names: list[str] = []
    for item in _split_top(text.strip()):
        match = re.match(r"^([^\[]*)\[([^\]]*)\](.*)$", item)
        if match is None:
            names.append(item)
            continue
        head, ranges, tail = match.groups()
        for part in ranges.split(","):
            first, _, last = part.partition("-")
            if not first.isdigit() or not (last or first).isdigit():
                continue
            for i in range(int(first), int(last or first) + 1):
                names += [f"{head}{i:0{len(first)}d}{rest}" for rest in (expand_hostlist(tail) or ("",))]
    return tuple(names)


def gres_count(text: str, name: str = "gpu") -> int:
    """How many of GRES ``name`` a GRES string holds (``gpu:h200:3(IDX:0-2),shard:0`` → 3)."""
    total = 0
    for item in _split_top(text):
        fields = item.split("(", 1)[0].split(":")
        if fields[0] != name:
            continue
        if len(fields) == 1:
            total += 1
        elif fields[-1].isdigit():
            total += int(fields[-1])
    return total


def memory_mb(text: str) -> int | None:
    """A Slurm memory size (``120G``, ``8192``, ``1.5T``; plain numbers are MB) in MB."""
    match = _MEMORY.match(text.strip())
    if match is None:
        return None
    return int(float(match.group(1)) * _MB_PER_UNIT[match.group(2)])


def parse_tres(text: str) -> tuple[int, int, int]:
    """CPUs, memory (MB) and GPUs of a TRES list (``cpu=4,mem=20G,node=1,billing=4,gres/gpu=4``)."""
    values: dict[str, str] = dict(item.split("=", 1) for item in text.split(",") if "=" in item)
    gpus = values.get("gres/gpu")
    if gpus is None:  # only typed counts (gres/gpu:h200=2) were reported
        typed = [v for k, v in values.items() if k.startswith("gres/gpu:")]
        gpus = str(sum(int(v) for v in typed if v.isdigit()))
    cpus = values.get("cpu", "0")
    return (int(cpus) if cpus.isdigit() else 0, memory_mb(values.get("mem", "0")) or 0,
            int(gpus) if gpus.isdigit() else 0)


def tres_shards(text: str) -> int:
    """GPU shards of a TRES list (``cpu=2,mem=8G,gres/shard=1``; typed counts only where no total is given)."""
    values: dict[str, str] = dict(item.split("=", 1) for item in text.split(",") if "=" in item)
    counts = [values["gres/shard"]] if "gres/shard" in values else [
        v for k, v in values.items() if k.startswith("gres/shard:")]
    return sum(int(v) for v in counts if v.isdigit())


def parse_time_limit(text: str) -> timedelta | None:
    """A Slurm time limit (``30:00``, ``8:00:00``, ``2-00:00:00``) as a timedelta; ``None`` if unlimited or unknown."""
    days, _, clock = text.strip().rpartition("-")
    fields = clock.split(":")
    if (not days.isdigit() and days != "") or not all(f.isdigit() for f in fields) or not 1 <= len(fields) <= 3:
        return None
    numbers = [0] * (3 - len(fields)) + [int(f) for f in fields]
    if len(fields) == 1:  # plain minutes
        numbers = [0, numbers[2], 0]
    return timedelta(days=int(days or 0), hours=numbers[0], minutes=numbers[1], seconds=numbers[2])


def _timestamp(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        return None


def _node_takes_jobs(state: str) -> bool:
    base, *flags = state.strip().lower().rstrip("*~#!%$@^-").split("+")
    return base in SCHEDULABLE_STATES and not BLOCKING_FLAGS.intersection(flags)


def parse_nodes(text: str) -> tuple[tuple[Node, ...], frozenset[str]]:
    """Nodes from ``sinfo -N -h -O NODE_FORMAT`` (one line per node and partition) and the partitions that are up."""
    nodes: dict[str, Node] = {}
    up: set[str] = set()
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < 9:
            continue
        name, partition, available, state, cpus_state, alloc_mem, memory, gres, gres_used = (
            f.strip() for f in fields[:9])
        cpu_counts = cpus_state.split("/")
        if not name or len(cpu_counts) != 4 or not all(c.isdigit() for c in cpu_counts):
            continue
        partition = partition.rstrip("*")
        if available == "up":
            up.add(partition)
        _, idle, other, total = (int(c) for c in cpu_counts)
        known = nodes.get(name)
        nodes[name] = Node(
            name=name,
            partitions=frozenset({partition} | (known.partitions if known else set())),
            takes_jobs=_node_takes_jobs(state),
            cpus=total - other,
            cpus_idle=idle,
            memory_mb=int(memory) if memory.isdigit() else 0,
            memory_alloc_mb=int(alloc_mem) if alloc_mem.isdigit() else 0,
            gpus=gres_count(gres),
            gpus_used=gres_count(gres_used),
            shards=gres_count(gres, "shard"),
            shards_used=gres_count(gres_used, "shard"),
        )
    return tuple(nodes.values()), frozenset(up)


def parse_jobs(text: str) -> tuple[Job, ...]:
    """Running and pending jobs from ``squeue -h -O JOB_FORMAT``."""
    jobs: list[Job] = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 11 or not fields[0].isdigit():
            continue
        job_id, partitions, state, reason, priority, submitted, end, limit, num_nodes, tres, nodelist = fields[:11]
        cpus, memory, gpus = parse_tres(tres)
        jobs.append(Job(
            job_id=job_id,
            partitions=tuple(p for p in partitions.split(",") if p),
            state=state,
            reason=reason,
            priority=int(priority) if priority.isdigit() else 0,
            submitted=submitted,
            ends_at=_timestamp(end),
            time_limit=parse_time_limit(limit),
            num_nodes=int(num_nodes) if num_nodes.isdigit() else 1,
            cpus=cpus,
            memory_mb=memory,
            gpus=gpus,
            nodes=expand_hostlist(nodelist),
            shards=tres_shards(tres),
        ))
    return tuple(jobs)


def round_wait(wait: timedelta) -> int:
    """A wait in whole minutes, rounded up to a multiple of 5 (at least 5): an estimate, not a promise."""
    return max(5, 5 * math.ceil(wait.total_seconds() / 300))


def estimate(snapshot: Snapshot, ask: Ask, now: datetime | None = None,
             horizon: timedelta = WAIT_HORIZON) -> Availability:
    """How soon ``ask`` could start on ``snapshot``'s cluster (see the module docstring for the rules)."""
    now = now or datetime.now()
    need = (ask.gpus, ask.cpus, ask.memory_gb * 1024, ask.shards)
    nodes = [n for n in snapshot.nodes if ask.partition in n.partitions and n.takes_jobs]
    if ask.partition not in snapshot.partitions_up or not any(
            n.gpus >= need[0] and n.cpus >= need[1] and n.memory_mb >= need[2] and n.shards >= need[3]
            for n in nodes):
        return Availability("unavailable", reason="no_node")
    start = _Replay(snapshot, nodes, now).first_room(ask.partition, need)
    if start is None:
        return Availability("full")
    if start <= now:
        return Availability("free")
    if start - now <= horizon:
        return Availability("wait", minutes=round_wait(start - now), until=start)
    return Availability("full", until=start)




class _Replay:
    """Free room per node, replayed forward in time: job ends give room back, pending jobs ahead take it."""

    def __init__(self, snapshot: Snapshot, nodes: list[Node], now: datetime) -> None:
        self.snapshot, self.now = snapshot, now
        self.free = {n.name: n.free for n in nodes}
        self.ends: list[tuple[datetime, int, str, Amount]] = []  # (when, tie-breaker, node, what it gives back)
        self.order = itertools.count()
        for job in snapshot.jobs:
            if job.state == "CG" or (job.state in ("R", "CF") and job.ends_at is not None):
                end = now if job.state == "CG" else max(job.ends_at or now, now)
                for name in job.nodes:
                    if name in self.free:
                        heapq.heappush(self.ends, (end, next(self.order), name, job.per_node))

    def fits(self, name: str, need: Amount) -> bool:
        return all(have >= want for have, want in zip(self.free[name], need, strict=True))

    def change(self, name: str, amount: Amount, sign: int) -> None:
        self.free[name] = [have + sign * part for have, part in zip(self.free[name], amount, strict=True)]

    def place(self, job: Job, t: datetime) -> bool:
        """Give a pending job room on the first nodes where it fits, until its time limit; ``False`` if none."""
        count = max(job.num_nodes, 1)
        chosen = [name for name in self.free if self.fits(name, job.per_node)][:count]
        if len(chosen) < count:
            return False
        for name in chosen:
            self.change(name, job.per_node, -1)
            if job.time_limit is not None:
                heapq.heappush(self.ends, (t + job.time_limit, next(self.order), name, job.per_node))
        return True

    def first_room(self, partition: str, need: Amount) -> datetime | None:
        """The first moment ``need`` fits on a node; ``None`` if it never does by what is known."""
        ahead = sorted((j for j in self.snapshot.jobs if j.state == "PD" and partition in j.partitions
                        and j.reason in WAITING_FOR_ROOM),
                       key=lambda j: (-j.priority, j.submitted, int(j.job_id)))
        t = self.now
        while True:
            while self.ends and self.ends[0][0] <= t:
                _, _, name, amount = heapq.heappop(self.ends)
                self.change(name, amount, +1)
            ahead = [job for job in ahead if not self.place(job, t)]
            if any(self.fits(name, need) for name in self.free):
                return t
            if not self.ends:
                return None
            t = self.ends[0][0]


def describe(availability: Availability, lang: str, now: datetime | None = None) -> str:
    """``availability`` in plain words in ``lang`` (``nl`` or ``en``)."""
    _ = gettext_for(lang)
    if availability.state == "free":
        return _("Free now")
    if availability.state == "wait":
        return _("About {minutes} minutes wait").format(minutes=availability.minutes)
    if availability.state == "full":
        until = availability.until
        if until is None:
            return _("Full for now; no end time is known")
        until = until.replace(second=0, microsecond=0) + (timedelta(minutes=1) if until.second else timedelta())
        time = until.strftime("%H:%M")
        if until.date() == (now or datetime.now()).date():
            return _("Full until {time}").format(time=time)
        day = format_date(until, "EEEE d MMMM", locale=lang if lang in LANGUAGES else DEFAULT_LANGUAGE)
        return _("Full until {day} {time}").format(day=day, time=time)
    if availability.reason == "no_answer":
        return _("Availability unknown: the cluster does not answer right now")
    return _("No node can run this right now")


Runner = Callable[[Sequence[str]], Awaitable[str]]


class ClusterWatch:
    """Cached cluster snapshots for the spawn page: one ``sinfo`` and one ``squeue`` per ``ttl`` seconds.

    Fails soft: when Slurm does not answer (or answers nonsense), every profile is ``unavailable`` with
    reason ``no_answer`` until the next try, and nothing is raised to the page.
    """

    def __init__(self, bin_dir: str, partitions: Iterable[str], *, ttl: float = 5, timeout: float = 5,
                 clock: Callable[[], datetime] = datetime.now, runner: Runner | None = None) -> None:
        self.partitions = tuple(dict.fromkeys(partitions))
        if not self.partitions or not all(_PARTITION.fullmatch(p) for p in self.partitions):
            raise ValueError(f"not a list of partition names: {self.partitions!r}")
        self.bin_dir, self.ttl, self.clock = bin_dir, ttl, clock
        self._run: Runner = runner or (lambda argv: run_argv(argv, timeout=timeout))
        self._lock = asyncio.Lock()
        self._cached: tuple[datetime, Snapshot | None] | None = None

    @classmethod
    def from_site(cls, site: Site, **kwargs: float) -> ClusterWatch:
        """A watch over the site's partitions with its Slurm client tools."""
        cluster = site["cluster"]
        return cls(cluster["slurm_bin"], cluster["partitions"].values(), **kwargs)

    def _argv(self, tool: str, *args: str) -> list[str]:
        return [str(Path(self.bin_dir) / tool), *args]

    async def snapshot(self) -> Snapshot | None:
        """The cluster now (cached for ``ttl`` seconds); ``None`` when Slurm did not answer."""
        async with self._lock:
            now = self.clock()
            if self._cached is not None and (now - self._cached[0]).total_seconds() < self.ttl:
                return self._cached[1]
            partitions = ",".join(self.partitions)
            try:
                sinfo = await self._run(self._argv("sinfo", "-N", "-h", "-p", partitions, "-O", NODE_FORMAT))
                squeue = await self._run(self._argv("squeue", "-h", "-t", "PD,CF,R,CG", "-p", partitions,
                                                    "-O", JOB_FORMAT))
                snapshot: Snapshot | None = Snapshot.parse(sinfo, squeue, now)
                if not snapshot.nodes:
                    raise ValueError(f"sinfo listed no nodes: {sinfo[:200]!r}")
            except Exception as exc:
                log.warning("cluster availability unknown: %s", exc)
                snapshot = None
            self._cached = (now, snapshot)
            return snapshot

    async def availability(self, ask: Ask) -> Availability:
        """How soon ``ask`` could start; ``unavailable``/``no_answer`` when Slurm did not answer."""
        snapshot = await self.snapshot()
        if snapshot is None:
            return Availability("unavailable", reason="no_answer")
        try:
            return estimate(snapshot, ask, self.clock())
        except Exception:
            log.exception("availability estimate failed")
            return Availability("unavailable", reason="no_answer")
