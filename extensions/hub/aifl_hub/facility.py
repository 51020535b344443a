"""The facility's figures: who got the GPUs, read from Slurm's own accounting (never a second bookkeeping).

The promise (``organisations`` in the site file): at least :data:`REGIONAL_TARGET` of the GPU time
goes, with priority, to regional organisations. Every figure here comes from Slurm:

* **GPU-hours delivered** per category of organisation, for a period (:data:`PERIODS`: today since
  midnight, the last 7 and the last 30 days): ``sacct -X -a -D`` (every allocation, also the earlier
  runs of requeued jobs); only the part of each job inside the period counts (:func:`gpu_hours_in`);
* the **regional share** of those GPU-hours, against the 25 % line;
* the **median queue wait** (Start − Submit) of GPU jobs that started in the period, regional and other;
* **GPUs in use now** per category (``squeue`` running jobs) and the cluster's GPUs (``sinfo``);
* **per organisation, per month**: GPU-hours, jobs and the monthly budget (``gpu_hours_per_month``).

An account's category comes from Slurm's account tree (``sacctmgr show assoc``; a deleted account
where it last was, so its history keeps its category): the nearest ancestor (or the account itself)
named like a category; an account Slurm never had falls back to the site file's organisation list;
anything else is :data:`OTHER`. The parsing and arithmetic are
pure functions (tested on captured output); :class:`Facility` runs the Slurm commands (argv lists,
as the hub's own unprivileged account) and puts them together. Output: JSON (:func:`figures_json`),
CSV (:func:`report_csv`) and Prometheus text (:func:`prometheus_text`).
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import os
import re
import statistics
import time as time_module
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

from babel.numbers import format_decimal

from .availability import gres_count, parse_tres
from .i18n import DEFAULT_LANGUAGE, LANGUAGES, gettext_for
from .options import text
from .site import Site
from .slurm import run_argv

log = logging.getLogger(__name__)

CATEGORIES = ("regional", "national", "european", "training")
OTHER = "other"
ALL_CATEGORIES = (*CATEGORIES, OTHER)
REGIONAL = "regional"
REGIONAL_TARGET = 0.25
PERIODS = ("today", "7d", "30d")
PERIOD_DAYS = {"7d": 7, "30d": 30}

SACCT_FIELDS = "JobID,Account,AllocTRES,Submit,Start,End,State"
_MONTH = re.compile(r"^([0-9]{4})-(0[1-9]|1[0-2])$")
_UNKNOWN_TIMES = frozenset({"", "Unknown", "None", "N/A"})

Runner = Callable[[Sequence[str]], Awaitable[str]]


# ---------------------------------------------------------------- parsing (pure)

@dataclass(frozen=True)
class Job:
    """One allocation from ``sacct``: its account, GPUs and times (``None`` when Slurm has none yet)."""

    job_id: str
    account: str
    gpus: int
    submit: datetime | None
    start: datetime | None
    end: datetime | None
    state: str


def parse_time(value: str) -> datetime | None:
    """A Slurm timestamp (``2026-11-25T16:28:59``); ``None`` for ``Unknown``, ``None`` and the like."""
    value = value.strip()
    if value in _UNKNOWN_TIMES:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def parse_sacct(output: str) -> list[Job]:
    """Allocations from ``sacct -n -P -o`` :data:`SACCT_FIELDS` (lines that do not fit are skipped)."""
    jobs = []
    for line in output.splitlines():
        fields = line.split("|")
        if len(fields) != 7 or not fields[0].strip():
            continue
        job_id, account, tres, submit, start, end, state = (f.strip() for f in fields)
        jobs.append(Job(job_id, account, parse_tres(tres)[2], parse_time(submit), parse_time(start),
                        parse_time(end), state.split(" ")[0]))
    return jobs


def parse_parents(output: str) -> dict[str, str]:
    """Account → parent account from ``sacctmgr -nP show assoc format=Account,ParentName,User``.

    Only account rows (no user) name a parent; ``root`` has none.
    """
    parents: dict[str, str] = {}
    for line in output.splitlines():
        fields = line.strip().split("|")
        if len(fields) >= 3 and fields[0] and not fields[2]:
            parents[fields[0]] = fields[1]
    return parents


def parse_running(output: str) -> list[tuple[str, int]]:
    """(account, GPUs) of each running job from ``squeue -h -t RUNNING -O Account:|,tres-alloc:|``."""
    running = []
    for line in output.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) >= 2 and fields[0]:
            running.append((fields[0], parse_tres(fields[1])[2]))
    return running


def parse_gpu_total(output: str) -> int:
    """The cluster's GPUs from ``sinfo -h -N -o %N|%G`` (a node listed under several partitions counts once)."""
    per_node: dict[str, int] = {}
    for line in output.splitlines():
        node, _, gres = line.strip().partition("|")
        if node:
            per_node[node] = gres_count(gres)
    return sum(per_node.values())


def parse_user_organisations(output: str, names: Collection[str]) -> dict[str, str]:
    """User → the organisation (one of ``names``) they work for.

    From ``sacctmgr -nP show user withassoc format=User,DefaultAccount,Account``: the user's default
    account if it is an organisation, else the first of their accounts that is.
    """
    default: dict[str, str] = {}
    accounts: dict[str, list[str]] = {}
    for line in output.splitlines():
        fields = line.strip().split("|")
        if len(fields) >= 3 and fields[0]:
            default.setdefault(fields[0], fields[1])
            accounts.setdefault(fields[0], []).append(fields[2])
    found = {}
    for user, listed in accounts.items():
        match = next((a for a in (default[user], *listed) if a in names), None)
        if match is not None:
            found[user] = match
    return found


# ---------------------------------------------------------------- categories

def organisations(site: Site) -> list[dict[str, Any]]:
    """The site file's organisations (an empty list when it has none)."""
    return list(site.get("organisations", {}).get("list", []))


def category_of(account: str, parents: Mapping[str, str], site_categories: Mapping[str, str]) -> str:
    """The category of ``account``.

    Itself or its nearest ancestor named like a category, in Slurm's tree (``parents``); the site
    file's category for an account not in the tree; else :data:`OTHER`.
    """
    if account not in parents:
        return site_categories.get(account, account if account in CATEGORIES else OTHER)
    seen: set[str] = set()
    node = account
    while node and node not in seen:
        if node in CATEGORIES:
            return node
        seen.add(node)
        node = parents.get(node, "")
    return OTHER


# ---------------------------------------------------------------- arithmetic (pure)

def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """The window of ``period``: ``today`` from local midnight, ``7d``/``30d`` back from ``now``."""
    if period == "today":
        return datetime.combine(now.date(), time()), now
    if period in PERIOD_DAYS:
        return now - timedelta(days=PERIOD_DAYS[period]), now
    raise ValueError(f"unknown period: {period!r}")


class MonthError(ValueError):
    """A month that is malformed (``not_begun`` false) or has not begun yet (``not_begun`` true)."""

    def __init__(self, month: str, *, not_begun: bool) -> None:
        super().__init__(f"month {month} has not begun" if not_begun else f"not a month (YYYY-MM): {month!r}")
        self.month, self.not_begun = month, not_begun


def month_bounds(month: str, now: datetime) -> tuple[datetime, datetime]:
    """The window of ``month`` (``YYYY-MM``): its first second up to the next month's, or ``now`` if sooner.

    Raises :class:`MonthError` for a malformed month or one that begins after ``now``.
    """
    match = _MONTH.match(month)
    if match is None:
        raise MonthError(month, not_begun=False)
    year, number = int(match.group(1)), int(match.group(2))
    start = datetime(year, number, 1)
    end = datetime(year + number // 12, number % 12 + 1, 1)
    if start > now:
        raise MonthError(month, not_begun=True)
    return start, min(end, now)


def this_month(now: datetime) -> str:
    """``now``'s month as ``YYYY-MM``."""
    return f"{now.year:04d}-{now.month:02d}"


def gpu_hours_in(job: Job, start: datetime, end: datetime, now: datetime) -> float:
    """GPU-hours of ``job`` inside ``[start, end)``; a running job counts up to ``now``."""
    if job.gpus <= 0 or job.start is None:
        return 0.0
    job_end = min(job.end or now, now)
    seconds = (min(job_end, end) - max(job.start, start)).total_seconds()
    return job.gpus * seconds / 3600 if seconds > 0 else 0.0


def wait_seconds(job: Job) -> float | None:
    """Start − Submit of a GPU job that started; ``None`` for others."""
    if job.gpus <= 0 or job.start is None or job.submit is None:
        return None
    return max(0.0, (job.start - job.submit).total_seconds())


def regional_share(hours: Mapping[str, float]) -> float | None:
    """The regional part of all GPU-hours (``None`` when nothing was delivered)."""
    total = sum(hours.values())
    return hours.get(REGIONAL, 0.0) / total if total > 0 else None


@dataclass(frozen=True)
class PeriodFigures:
    """One period: GPU-hours by category, the regional share, median waits and job counts."""

    period: str
    start: datetime
    end: datetime
    gpu_hours: dict[str, float]
    median_wait: dict[str, float | None]  # "regional" / "other": seconds
    jobs: dict[str, int]  # GPU jobs with GPU-hours in the period, by category

    @property
    def total_gpu_hours(self) -> float:
        """All GPU-hours delivered in the period."""
        return sum(self.gpu_hours.values())

    @property
    def share(self) -> float | None:
        """The regional part of the period's GPU-hours (``None`` when nothing was delivered)."""
        return regional_share(self.gpu_hours)


def period_figures(period: str, jobs: Iterable[Job], category: Callable[[str], str],
                   now: datetime) -> PeriodFigures:
    """The figures of ``period`` from ``jobs`` (each job counted only inside the period)."""
    start, end = period_bounds(period, now)
    hours = dict.fromkeys(ALL_CATEGORIES, 0.0)
    counts = dict.fromkeys(ALL_CATEGORIES, 0)
    waits: dict[str, list[float]] = {REGIONAL: [], OTHER: []}
    for job in jobs:
        cat = category(job.account)
        used = gpu_hours_in(job, start, end, now)
        if used > 0:
            hours[cat] += used
            counts[cat] += 1
        wait = wait_seconds(job)
        if wait is not None and job.start is not None and start <= job.start < end:
            waits[REGIONAL if cat == REGIONAL else OTHER].append(wait)
    medians = {group: statistics.median(values) if values else None for group, values in waits.items()}
    return PeriodFigures(period, start, end, hours, medians, counts)


@dataclass(frozen=True)
class OrganisationMonth:
    """One organisation's (or other account's) GPU use in a month, with its budget if it has one."""

    month: str
    account: str
    display_name: str | Mapping[str, str]
    category: str
    gpu_hours: float
    jobs: int
    budget: int | None

    @property
    def budget_used(self) -> float | None:
        """The part of the budget used (``None`` without a budget or with a budget of 0)."""
        return self.gpu_hours / self.budget if self.budget else None


def month_rows(month: str, jobs: Iterable[Job], category: Callable[[str], str], site: Site,
               now: datetime) -> list[OrganisationMonth]:
    """One row per organisation of the site file (also those without use), then per other account used."""
    start, end = month_bounds(month, now)
    hours: dict[str, float] = {}
    counts: dict[str, int] = {}
    for job in jobs:
        used = gpu_hours_in(job, start, end, now)
        if used > 0:
            hours[job.account] = hours.get(job.account, 0.0) + used
            counts[job.account] = counts.get(job.account, 0) + 1
    rows = [OrganisationMonth(month, org["name"], org["display_name"], category(org["name"]),
                              hours.pop(org["name"], 0.0), counts.get(org["name"], 0),
                              org.get("gpu_hours_per_month"))
            for org in organisations(site)]
    rows += [OrganisationMonth(month, account, account, category(account), used, counts[account], None)
             for account, used in sorted(hours.items())]
    return rows


# ---------------------------------------------------------------- output (pure)

@dataclass(frozen=True)
class Figures:
    """Everything the facility page shows, at one moment."""

    generated_at: datetime
    periods: list[PeriodFigures]
    gpus_in_use: dict[str, int]
    gpus_total: int
    organisations: list[OrganisationMonth] = field(default_factory=list)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def organisation_json(row: OrganisationMonth) -> dict[str, Any]:
    """One organisation's month as JSON."""
    return {"month": row.month, "organisation": row.account, "display_name": row.display_name,
            "category": row.category, "gpu_hours": _round(row.gpu_hours), "jobs": row.jobs,
            "budget_gpu_hours": row.budget, "budget_used": _round(row.budget_used)}


def figures_json(figures: Figures) -> dict[str, Any]:
    """The figures as a JSON-ready dict (GPU-hours to 4 decimals, shares as fractions, waits in seconds)."""
    return {
        "generated_at": figures.generated_at.isoformat(timespec="seconds"),
        "regional_target": REGIONAL_TARGET,
        "periods": [{
            "period": p.period, "start": p.start.isoformat(timespec="seconds"),
            "end": p.end.isoformat(timespec="seconds"),
            "gpu_hours": {cat: _round(h) for cat, h in p.gpu_hours.items()},
            "total_gpu_hours": _round(p.total_gpu_hours),
            "regional_share": _round(p.share),
            "meets_target": None if p.share is None else p.share >= REGIONAL_TARGET,
            "median_wait_seconds": {group: _round(w, 1) for group, w in p.median_wait.items()},
            "jobs": p.jobs,
        } for p in figures.periods],
        "gpus_in_use": figures.gpus_in_use,
        "gpus_total": figures.gpus_total,
        "organisations": [organisation_json(row) for row in figures.organisations],
    }


REPORT_COLUMNS = ("month", "organisation", "display_name_en", "display_name_nl", "category", "jobs",
                  "gpu_hours", "budget_gpu_hours", "budget_used_percent")


def _cell(value: str) -> str:
    """A text cell that a spreadsheet will not take for a formula."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def report_csv(rows: Iterable[OrganisationMonth]) -> str:
    """The monthly report, one row per organisation (:data:`REPORT_COLUMNS`)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(REPORT_COLUMNS)
    for row in rows:
        used = row.budget_used
        writer.writerow([row.month, row.account, _cell(text(row.display_name, "en")),
                         _cell(text(row.display_name, "nl")), row.category, row.jobs,
                         f"{row.gpu_hours:.4f}", "" if row.budget is None else row.budget,
                         "" if used is None else f"{100 * used:.1f}"])
    return out.getvalue()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _metric(lines: list[str], name: str, help_text: str, samples: Iterable[tuple[Mapping[str, str], float]]) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    for labels, value in samples:
        inner = ",".join(f'{key}="{_label(val)}"' for key, val in labels.items())
        lines.append(f"{name}{{{inner}}} {value:.6g}" if inner else f"{name} {value:.6g}")


def prometheus_text(figures: Figures) -> str:
    """The figures in Prometheus' text format (all gauges; shares as fractions)."""
    lines: list[str] = []
    periods = figures.periods
    _metric(lines, "aifl_gpu_hours_total", "GPU-hours delivered in the period, by category (Slurm accounting).",
            [({"category": cat, "period": p.period}, h) for p in periods for cat, h in p.gpu_hours.items()])
    _metric(lines, "aifl_regional_share", "Regional part of the GPU-hours delivered in the period (0-1).",
            [({"period": p.period}, p.share) for p in periods if p.share is not None])
    _metric(lines, "aifl_regional_share_target", "The promised regional part of the GPU-hours (0-1).",
            [({}, REGIONAL_TARGET)])
    _metric(lines, "aifl_queue_wait_median_seconds",
            "Median Start-Submit of GPU jobs that started in the period, regional and other.",
            [({"group": g, "period": p.period}, w) for p in periods for g, w in p.median_wait.items()
             if w is not None])
    _metric(lines, "aifl_gpus_in_use", "GPUs held by running jobs now, by category.",
            [({"category": cat}, n) for cat, n in figures.gpus_in_use.items()])
    _metric(lines, "aifl_gpus_total", "GPUs of the cluster.", [({}, figures.gpus_total)])
    _metric(lines, "aifl_organisation_gpu_hours_month", "GPU-hours of each organisation this month.",
            [({"organisation": r.account, "category": r.category}, r.gpu_hours) for r in figures.organisations])
    _metric(lines, "aifl_organisation_gpu_hours_budget", "Monthly GPU-hour budget of each organisation.",
            [({"organisation": r.account}, r.budget) for r in figures.organisations if r.budget is not None])
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- Slurm (I/O)

def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


class Facility:
    """The figures read from the site's Slurm (client tools in ``cluster.slurm_bin``)."""

    def __init__(self, site: Site, *, runner: Runner | None = None,
                 clock: Callable[[], datetime] = datetime.now, timeout: float = 60) -> None:
        self.site, self.clock = site, clock
        self.bin_dir = Path(site["cluster"]["slurm_bin"])
        env = {**os.environ, "SLURM_TIME_FORMAT": "standard"}
        self._run: Runner = runner or (lambda argv: run_argv(argv, env=env, timeout=timeout))
        self.site_categories = {org["name"]: org["category"] for org in organisations(site)}

    def _argv(self, tool: str, *args: str) -> list[str]:
        return [str(self.bin_dir / tool), *args]

    async def jobs(self, start: datetime, end: datetime) -> list[Job]:
        """Every allocation of every user that was in Slurm during ``[start, end]`` (earlier runs too)."""
        return parse_sacct(await self._run(self._argv(
            "sacct", "-X", "-a", "-D", "-n", "-P", "-S", _stamp(start), "-E", _stamp(end), "-o", SACCT_FIELDS)))

    async def categories(self) -> Callable[[str], str]:
        """Account → category, from Slurm's account tree now (deleted accounts where they last were)."""
        current, with_deleted = await asyncio.gather(*(self._run(self._argv(
            "sacctmgr", "-nP", "show", "assoc", *extra, "format=Account,ParentName,User"))
            for extra in ((), ("withdeleted",))))
        parents = {**parse_parents(with_deleted), **parse_parents(current)}
        return lambda account: category_of(account, parents, self.site_categories)

    async def gpus_in_use(self, category: Callable[[str], str]) -> dict[str, int]:
        """GPUs of running jobs now, by category."""
        running = parse_running(await self._run(self._argv(
            "squeue", "-h", "-t", "RUNNING", "-O", "Account:|,tres-alloc:|")))
        in_use = dict.fromkeys(ALL_CATEGORIES, 0)
        for account, gpus in running:
            in_use[category(account)] += gpus
        return in_use

    async def gpus_total(self) -> int:
        """The cluster's GPUs, as ``sinfo`` counts them."""
        return parse_gpu_total(await self._run(self._argv("sinfo", "-h", "-N", "-o", "%N|%G")))

    async def figures(self) -> Figures:
        """Every period, GPUs in use now and this month per organisation."""
        now = self.clock()
        month_start, _ = month_bounds(this_month(now), now)
        earliest = min(period_bounds("30d", now)[0], month_start)
        category, jobs = await asyncio.gather(self.categories(), self.jobs(earliest, now))
        in_use, total = await asyncio.gather(self.gpus_in_use(category), self.gpus_total())
        return Figures(now, [period_figures(p, jobs, category, now) for p in PERIODS], in_use, total,
                       month_rows(this_month(now), jobs, category, self.site, now))

    async def month_report(self, month: str) -> list[OrganisationMonth]:
        """``month``'s rows (``YYYY-MM``), per organisation."""
        now = self.clock()
        start, end = month_bounds(month, now)
        category, jobs = await asyncio.gather(self.categories(), self.jobs(start, end))
        return month_rows(month, jobs, category, self.site, now)

    async def user_month_hours(self, user: str) -> float:
        """GPU-hours ``user``'s jobs used this calendar month."""
        now = self.clock()
        start, _ = month_bounds(this_month(now), now)
        jobs = parse_sacct(await self._run(self._argv(
            "sacct", "-X", "-D", "-n", "-P", "-u", user, "-S", _stamp(start), "-E", _stamp(now), "-o", SACCT_FIELDS)))
        return sum(gpu_hours_in(job, start, now, now) for job in jobs)

    async def user_organisations(self) -> dict[str, str]:
        """User → the organisation account they work for, for every user Slurm knows."""
        return parse_user_organisations(await self._run(self._argv(
            "sacctmgr", "-nP", "show", "user", "withassoc", "format=User,DefaultAccount,Account")),
            set(self.site_categories))


def organisation_month(figures: Figures, account: str) -> OrganisationMonth | None:
    """``account``'s row of this month in ``figures``."""
    return next((row for row in figures.organisations if row.account == account), None)


# ---------------------------------------------------------------- words

def format_hours(value: float, lang: str) -> str:
    """GPU-hours as ``lang`` writes them, to two decimals (``1.234,56`` in Dutch)."""
    return format_decimal(round(value, 2), format="#,##0.##", locale=lang if lang in LANGUAGES else DEFAULT_LANGUAGE)


def usage_line(row: OrganisationMonth, lang: str) -> str:
    """"Your organisation used X of Y GPU hours this month", in ``lang``."""
    _ = gettext_for(lang)
    name, used = text(row.display_name, lang), format_hours(row.gpu_hours, lang)
    if row.budget is None:
        return _("Your organisation, {name}, used {used} GPU hours this month.").format(name=name, used=used)
    return _("Your organisation, {name}, used {used} of its {budget} GPU hours this month.").format(
        name=name, used=used, budget=format_hours(row.budget, lang))


@dataclass(frozen=True)
class HomeUsage:
    """What the hub home says about this month's GPU use: the user's own, their organisation's and its budget."""

    own: str
    organisation: str
    budget_percent: int | None  # the part of the organisation's budget used, for a bar (at most 100)


def own_usage_line(hours: float, lang: str) -> str:
    """"You used X GPU hours this month", in ``lang``."""
    _ = gettext_for(lang)
    return _("You used {used} GPU hours this month.").format(used=format_hours(hours, lang))


class FacilityCache:
    """The latest figures, user → organisation and each user's own GPU hours, read from Slurm at most once per ``ttl``.

    For the facility service (:meth:`current`) and for hub pages, whose template variables cannot
    wait for Slurm (:meth:`home_usage`: the last figures at once, a refresh in the background).
    """

    def __init__(self, facility: Facility, ttl: float = 30) -> None:
        self.facility, self.ttl = facility, ttl
        self._cached: tuple[float, Figures, dict[str, str]] | None = None
        self._lock = asyncio.Lock()
        self._refreshing: asyncio.Task[Any] | None = None
        self._own: dict[str, tuple[float, float]] = {}  # user -> (when read, GPU hours this month)
        self._own_refreshing: dict[str, asyncio.Task[Any]] = {}

    def _stale(self) -> bool:
        return self._cached is None or time_module.monotonic() - self._cached[0] > self.ttl

    async def current(self) -> tuple[Figures, dict[str, str]]:
        """The figures and user → organisation account (read again when older than ``ttl``)."""
        async with self._lock:
            if self._stale():
                figures, users = await asyncio.gather(self.facility.figures(), self.facility.user_organisations())
                self._cached = (time_module.monotonic(), figures, users)
            return self._cached[1], self._cached[2]

    async def _refresh(self) -> None:
        try:
            await self.current()
        except Exception:
            log.exception("facility figures could not be read")

    async def _refresh_own(self, user: str) -> None:
        try:
            self._own[user] = (time_module.monotonic(), await self.facility.user_month_hours(user))
        except Exception:
            log.exception("the GPU hours of %s could not be read", user)
        finally:
            self._own_refreshing.pop(user, None)

    def _in_background(self, make: Callable[[], Awaitable[Any]]) -> asyncio.Task[Any] | None:
        """Run ``make()`` as a task of the running event loop (None where no loop runs)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return loop.create_task(make())

    def home_usage(self, user: str, lang: str, organisation: str | None = None) -> HomeUsage | None:
        """Lines of this month for ``user`` and ``organisation`` (default: ``user``'s in Slurm), from the last figures.

        ``None`` until Slurm has answered once. Stale figures are read again in the background.
        """
        if self._stale() and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = self._in_background(self._refresh)
        own = self._own.get(user)
        if (own is None or time_module.monotonic() - own[0] > self.ttl) and user not in self._own_refreshing:
            task = self._in_background(lambda: self._refresh_own(user))
            if task is not None:
                self._own_refreshing[user] = task
        if self._cached is None and own is None:
            return None
        org_line, percent = "", None
        if self._cached is not None:
            _, figures, users = self._cached
            organisation = organisation or users.get(user)
            row = organisation_month(figures, organisation) if organisation else None
            if row is not None:
                org_line = usage_line(row, lang)
                if row.budget_used is not None:
                    percent = min(100, round(row.budget_used * 100))
        return HomeUsage(own_usage_line(own[1], lang) if own else "", org_line, percent)
