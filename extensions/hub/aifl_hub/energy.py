"""Energy of a session in plain words, estimated from the site file's ``energy`` section.

The model (every figure from the site file; labelled "estimate" wherever it is shown):

* one GPU at utilisation ``u`` (0–1) draws ``idle + u × (full − idle)`` watts, with ``full`` from
  ``gpu_watts`` and ``idle`` from ``gpu_idle_watts`` for the GPU type (0 W when the site gives no idle
  figure); ``u`` is the caller's, else ``typical_gpu_utilisation``, else 1 (full load, an upper bound);
* each allocated CPU core draws ``cpu_core_watts`` and each allocated GB of memory ``memory_gb_watts``,
  whether used or not (they are held for the session);
* the facility draws ``pue`` times what the hardware draws (cooling, power conversion);
* energy in kWh = watts × hours / 1000; in everyday terms: how far an electric car drives on it
  (``everyday_km_per_kwh``, left out when the site gives no figure).

Figures are shown with two significant digits: the model is not more precise than that. A result
carries its ``source`` so measured figures (NVML on real GPU nodes) can later sit beside estimates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time as time_module
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal

from babel.numbers import format_decimal
from markupsafe import Markup

from .availability import parse_tres, tres_shards
from .facility import parse_time
from .i18n import DEFAULT_LANGUAGE, LANGUAGES, N_, gettext_for
from .organisations import shards_per_gpu
from .site import Site
from .slurm import run_argv

log = logging.getLogger(__name__)

SOURCE_LABELS = {"estimate": N_("estimate"), "measured": N_("measured")}
"""How each kind of figure is labelled where it is shown."""


@dataclass(frozen=True)
class Estimate:
    """Energy of a session: ``watts`` drawn on average (facility, PUE included) over ``hours``."""

    kwh: float
    watts: float
    hours: float
    gpu_utilisation: float
    km: float | None
    source: Literal["estimate", "measured"] = "estimate"


def estimate_session(energy: Mapping[str, Any], gpu_type: str | None, gpus: float, cpus: int, memory_gb: float,
                     hours: float, utilisation: float | None = None) -> Estimate:
    """Estimate a session's energy with the site's ``energy`` model (see the module docstring).

    Raises :class:`ValueError` for a GPU type the model has no watts for, or a utilisation outside 0–1.
    """
    if utilisation is None:
        utilisation = energy.get("typical_gpu_utilisation", 1.0)
    if not 0 <= utilisation <= 1:
        raise ValueError(f"GPU utilisation must be between 0 and 1, not {utilisation}")
    gpu_watts = 0.0
    if gpus:
        if gpu_type not in energy["gpu_watts"]:
            raise ValueError(f"the energy model has no watts for GPU type {gpu_type!r}")
        full = energy["gpu_watts"][gpu_type]
        idle = energy.get("gpu_idle_watts", {}).get(gpu_type, 0.0)
        gpu_watts = idle + utilisation * (full - idle)
    hardware = gpus * gpu_watts + cpus * energy["cpu_core_watts"] + memory_gb * energy["memory_gb_watts"]
    watts = hardware * energy["pue"]
    kwh = watts * hours / 1000
    km_per_kwh = energy.get("everyday_km_per_kwh")
    return Estimate(kwh=kwh, watts=watts, hours=hours, gpu_utilisation=utilisation,
                    km=kwh * km_per_kwh if km_per_kwh is not None else None)


def _locale(lang: str) -> str:
    return lang if lang in LANGUAGES else DEFAULT_LANGUAGE


def significant(value: float, digits: int = 2) -> float:
    """``value`` rounded to ``digits`` significant digits (5.4648 → 5.5, 21.86 → 22, 0.03496 → 0.035)."""
    if value == 0:
        return 0.0
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def format_number(value: float, lang: str) -> str:
    """``value`` with two significant digits, written the way ``lang`` writes numbers (5,5 in Dutch)."""
    return format_decimal(significant(value), format="#,##0.###", locale=_locale(lang))


def describe_estimate(estimate: Estimate, lang: str) -> str:
    """``estimate`` in plain words in ``lang``: energy, duration, its source and the everyday comparison."""
    _ = gettext_for(lang)
    hours = format_decimal(round(estimate.hours, 1), format="#,##0.#", locale=_locale(lang))
    duration = _("1 hour") if estimate.hours == 1 else _("{hours} hours").format(hours=hours)
    text = _("About {kwh} kWh for {duration} ({source})").format(
        kwh=format_number(estimate.kwh, lang), duration=duration, source=_(SOURCE_LABELS[estimate.source]))
    if estimate.km is None:
        return text
    return _("{energy}, as much as an electric car uses to drive {km} km").format(
        energy=text, km=format_number(estimate.km, lang))


# ---- energy per job from Slurm's accounting (the facility page and the hub home) -------------------------
ENERGY_SACCT_FIELDS = "JobIDRaw,User,Account,AllocTRES,Start,End,ConsumedEnergyRaw"


@dataclass(frozen=True)
class JobRecord:
    """One allocation as ``sacct`` keeps it: what it held, when it ran, and Slurm's energy reading (J) if any."""

    job_id: str
    user: str
    account: str
    gpus: float  # a share of a GPU (gres/shard) counts as its fraction of one
    cpus: int
    memory_gb: float
    start: datetime | None
    end: datetime | None
    consumed_joules: float | None


def parse_energy_sacct(text: str, shards_per_gpu: int = 0) -> list[JobRecord]:
    """Allocations from ``sacct -X -n -P -o`` :data:`ENERGY_SACCT_FIELDS` (odd lines skipped).

    ``shards_per_gpu``: how many shares a GPU has (gres/shard); a job's shares count as that part of a GPU.
    """
    records = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) != 7 or not fields[0].isdigit():
            continue
        job_id, user, account, tres, start, end, consumed = fields
        cpus, memory_mb, gpus = parse_tres(tres)
        shards = tres_shards(tres) / shards_per_gpu if shards_per_gpu else 0.0
        joules = float(consumed) if consumed.replace(".", "", 1).isdigit() and float(consumed) > 0 else None
        records.append(JobRecord(job_id, user, account, gpus + shards, cpus, memory_mb / 1024, parse_time(start),
                                 parse_time(end), joules))
    return records


def job_kwh(energy: Mapping[str, Any], gpu_type: str | None, job: JobRecord, now: datetime) -> tuple[float, str]:
    """The energy of ``job`` so far (PUE included) and its source: Slurm's reading where it has one, else the model."""
    if job.start is None:
        return 0.0, "estimate"
    hours = max(0.0, (min(job.end or now, now) - job.start).total_seconds() / 3600)
    if job.consumed_joules is not None and job.end is not None:
        return job.consumed_joules / 3.6e6 * energy["pue"], "measured"
    try:
        return estimate_session(energy, gpu_type, job.gpus, job.cpus, job.memory_gb, hours).kwh, "estimate"
    except ValueError:  # a GPU type the model does not know: its GPUs are left out, the rest counts
        return estimate_session(energy, gpu_type, 0, job.cpus, job.memory_gb, hours).kwh, "estimate"


def kwh_between(energy: Mapping[str, Any], gpu_type: str | None, job: JobRecord, start: datetime, end: datetime,
                now: datetime) -> float:
    """The part of ``job``'s energy inside ``[start, end)`` (spread evenly over its run)."""
    if job.start is None:
        return 0.0
    job_end = min(job.end or now, now)
    run = (job_end - job.start).total_seconds()
    inside = (min(job_end, end) - max(job.start, start)).total_seconds()
    if run <= 0 or inside <= 0:
        return 0.0
    return job_kwh(energy, gpu_type, job, now)[0] * inside / run


def daily_kwh(energy: Mapping[str, Any], gpu_type: str | None, jobs: Iterable[JobRecord],
              category: Callable[[str], str], categories: Sequence[str], days: int,
              now: datetime) -> list[tuple[date, dict[str, float]]]:
    """Energy in kWh per day (the last ``days`` days, today last) and per category."""
    jobs = list(jobs)
    out = []
    for back in range(days - 1, -1, -1):
        day = now.date() - timedelta(days=back)
        start = datetime.combine(day, time())
        totals = dict.fromkeys(categories, 0.0)
        for job in jobs:
            totals[category(job.account)] += kwh_between(energy, gpu_type, job, start, start + timedelta(days=1), now)
        out.append((day, totals))
    return out


def moved_kwh(energy: Mapping[str, Any], gpu_type: str | None, releases: Iterable[Mapping[str, Any]],
              jobs: Iterable[JobRecord], now: datetime) -> float:
    """Energy of flexible jobs that were submitted outside quiet hours and waited for them (the grid ledger)."""
    by_id = {job.job_id: job for job in jobs}
    moved = 0.0
    for entry in releases:
        job = by_id.get(str(entry.get("job")))
        if job and entry.get("reason") == "quiet" and entry.get("level_at_submit") in ("busy", "normal"):
            moved += job_kwh(energy, gpu_type, job, now)[0]
    return moved


def month_line(kwh: float, measured: bool, energy: Mapping[str, Any], lang: str) -> str:
    """The hub home's line: the user's energy this month, its source and the everyday comparison."""
    _ = gettext_for(lang)
    label = SOURCE_LABELS["measured"] if measured else SOURCE_LABELS["estimate"]
    text = _("Your sessions and batch runs used about {kwh} kWh this month ({source}).").format(
        kwh=format_number(kwh, lang), source=_(label))
    factor = energy.get("everyday_km_per_kwh")
    if not factor or kwh <= 0:
        return text
    return " ".join([text, _("That is as much as an electric car uses to drive {km} km.").format(
        km=format_number(kwh * factor, lang))])


@dataclass(frozen=True)
class FacilityEnergy:
    """The facility page's energy section: kWh per day and category, moved out of busy hours, the grid."""

    days: list[tuple[date, dict[str, float]]]
    measured: bool  # some of it is Slurm's own reading
    moved_kwh: float  # in the last 30 days
    grid: dict[str, Any]  # the grid service's published status ({} when there is none)


class EnergyReport:
    """Energy figures read from Slurm's accounting (as the hub's own account), at most once per ``ttl`` seconds.

    For the facility service (:meth:`facility`) and the hub home (:meth:`home_line`, which never waits
    for Slurm: the last figure at once, a refresh in the background).
    """

    def __init__(self, site: Site, *, runner: Callable[[Sequence[str]], Awaitable[str]] = run_argv,
                 clock: Callable[[], datetime] = datetime.now, ttl: float = 60) -> None:
        self.site, self.runner, self.clock, self.ttl = site, runner, clock, ttl
        self.energy: Mapping[str, Any] = site.get("energy", {})
        self.gpu_type = site["cluster"].get("gpu_nodes", {}).get("gpu_type")
        self._own: dict[str, tuple[float, float, bool]] = {}  # user -> (when read, kWh this month, measured)
        self._refreshing: dict[str, asyncio.Task[Any]] = {}
        self._facility: tuple[float, FacilityEnergy] | None = None

    async def jobs(self, start: datetime, end: datetime, user: str | None = None) -> list[JobRecord]:
        """Every allocation (of ``user``, else of everyone) in Slurm during ``[start, end]``."""
        who = ["-u", user] if user else ["-a"]
        return parse_energy_sacct(await self.runner([
            str(Path(self.site["cluster"]["slurm_bin"]) / "sacct"), "-X", "-D", "-n", "-P", *who,
            "-S", start.strftime("%Y-%m-%dT%H:%M:%S"), "-E", end.strftime("%Y-%m-%dT%H:%M:%S"),
            "-o", ENERGY_SACCT_FIELDS]), shards_per_gpu(self.site))

    async def user_month(self, user: str) -> tuple[float, bool]:
        """``user``'s kWh this calendar month and whether any of it is measured."""
        now = self.clock()
        start = datetime(now.year, now.month, 1)
        jobs = await self.jobs(start, now, user)
        parts = [(kwh_between(self.energy, self.gpu_type, job, start, now, now),
                  job_kwh(self.energy, self.gpu_type, job, now)[1]) for job in jobs]
        return sum(kwh for kwh, _ in parts), any(source == "measured" for _, source in parts)

    async def facility(self, category: Callable[[str], str], categories: Sequence[str],
                       days: int = 7) -> FacilityEnergy:
        """The facility page's section (jobs of the last 30 days; the grid ledger and status as published).

        Reused for ``ttl`` seconds; the grid's status is always read fresh.
        """
        if self._facility is None or time_module.monotonic() - self._facility[0] > self.ttl:
            self._facility = (time_module.monotonic(), await self._read_facility(category, categories, days))
        found = self._facility[1]
        return FacilityEnergy(found.days, found.measured, found.moved_kwh, read_status(status_path(self.site)))

    async def _read_facility(self, category: Callable[[str], str], categories: Sequence[str],
                             days: int) -> FacilityEnergy:
        now = self.clock()
        jobs = await self.jobs(now - timedelta(days=30), now)
        cutoff = (now - timedelta(days=30)).isoformat(timespec="seconds")
        releases = [e for e in read_ledger(ledger_path(self.site)) if str(e.get("released", "")) >= cutoff]
        return FacilityEnergy(
            daily_kwh(self.energy, self.gpu_type, jobs, category, categories, days, now),
            any(job_kwh(self.energy, self.gpu_type, job, now)[1] == "measured" for job in jobs),
            moved_kwh(self.energy, self.gpu_type, releases, jobs, now), {})

    async def _refresh(self, user: str) -> None:
        try:
            kwh, measured = await self.user_month(user)
            self._own[user] = (time_module.monotonic(), kwh, measured)
        except Exception:
            log.exception("the energy of %s could not be read", user)
        finally:
            self._refreshing.pop(user, None)

    def home_line(self, user: str, lang: str) -> str:
        """``user``'s energy this month in words (``""`` until Slurm answered once); refreshed in the background."""
        own = self._own.get(user)
        if (own is None or time_module.monotonic() - own[0] > self.ttl) and user not in self._refreshing:
            try:
                self._refreshing[user] = asyncio.get_running_loop().create_task(self._refresh(user))
            except RuntimeError:  # no event loop (outside the hub)
                pass
        if own is None or "pue" not in self.energy:
            return ""
        return month_line(own[1], own[2], self.energy, lang)


def ledger_path(site: Site) -> Path:
    """The grid service's history of releases (in the hub's state folder)."""
    return Path(site["hub"]["state_dir"]) / "grid-releases.jsonl"


def status_path(site: Site) -> Path:
    """Where the grid service publishes the grid's status (``grid.status_file``, else next to the environments)."""
    configured = site.get("grid", {}).get("status_file")
    return Path(configured) if configured else Path(site["spawner"]["environments_dir"]) / ".grid" / "status.json"


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """The releases in the ledger (unreadable lines skipped; none when there is no ledger yet)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def read_status(path: Path) -> dict[str, Any]:
    """The grid service's last published status (``{}`` when there is none)."""
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


# ---- the facility page's pictures (pure) -----------------------------------------------------------------
LEVEL_COLOURS = {"quiet": "#146c43", "normal": "#6c757d", "busy": "#b02a37", None: "#dee2e6"}
LEVEL_LABELS = {"quiet": N_("quiet"), "normal": N_("normal"), "busy": N_("busy"), None: N_("unknown")}


def energy_chart(days: Sequence[tuple[date, Mapping[str, float]]], labels: Mapping[str, str],
                 colours: Mapping[str, str], lang: str) -> Markup:
    """Energy per day as stacked columns, one colour per category, as inline SVG (no outside assets)."""
    _ = gettext_for(lang)
    left, top, column_w, gap, plot_h, legend_h = 80, 16, 56, 18, 180, 24 * ((len(labels) + 2) // 3)
    width = left + len(days) * (column_w + gap) + 10
    height = top + plot_h + 40 + legend_h
    peak = max((sum(totals.values()) for _, totals in days), default=0.0) or 1.0
    title = _("Energy per day by kind of organisation (kWh)")
    parts = [Markup('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {} {}" width="100%" role="img" '
                    'aria-labelledby="energy-title" class="aifl-chart" font-family="system-ui, sans-serif" '
                    'font-size="13"><title id="energy-title">{}</title>').format(width, height, title)]
    parts.append(Markup('<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="currentColor"/>'
                        '<text x="{}" y="{}" text-anchor="end" fill="currentColor">{}</text>').format(
                            left, top + plot_h, width - 10, top + plot_h, left - 6, top + 10,
                            f"{format_number(peak, lang)} kWh"))
    for i, (day, totals) in enumerate(days):
        x, y = left + gap / 2 + i * (column_w + gap), top + plot_h
        for category, kwh in totals.items():
            h = plot_h * kwh / peak
            if h > 0:
                y -= h
                parts.append(Markup('<rect x="{:.1f}" y="{:.1f}" width="{}" height="{:.1f}" fill="{}">'
                                    '<title>{}: {} kWh</title></rect>').format(
                                        x, y, column_w, h, colours.get(category, "#5c636a"), _(labels[category]),
                                        format_number(kwh, lang)))
        parts.append(Markup('<text x="{:.1f}" y="{}" text-anchor="middle" fill="currentColor">{}</text>'
                            '<text x="{:.1f}" y="{:.1f}" text-anchor="middle" fill="currentColor">{}</text>').format(
                                x + column_w / 2, top + plot_h + 18, day.strftime("%d-%m"),
                                x + column_w / 2, max(12.0, y - 4), format_number(sum(totals.values()), lang)))
    for i, category in enumerate(labels):
        x, y = left + (i % 3) * 170, top + plot_h + 40 + (i // 3) * 24
        parts.append(Markup('<rect x="{}" y="{}" width="14" height="14" fill="{}"/>'
                            '<text x="{}" y="{}" fill="currentColor">{}</text>').format(
                                x, y, colours.get(category, "#5c636a"), x + 20, y + 12, _(labels[category])))
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def grid_strip(forecast: Sequence[Mapping[str, Any]], lang: str) -> Markup:
    """The grid's next 48 hours as a coloured strip (quiet, normal, busy), as inline SVG with hour marks."""
    _ = gettext_for(lang)
    slots = []
    for slot in forecast:
        try:
            slots.append((datetime.fromisoformat(slot["start"]), datetime.fromisoformat(slot["end"]),
                          slot.get("level") if slot.get("level") in LEVEL_COLOURS else None))
        except (KeyError, TypeError, ValueError):
            continue
    if not slots:
        return Markup("")
    begin, end = slots[0][0], slots[-1][1]
    span = (end - begin).total_seconds() or 1.0
    width, bar_h = 720, 28
    title = _("The power grid in the next 48 hours")
    parts = [Markup('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {} 70" width="100%" role="img" '
                    'aria-labelledby="grid-title" class="aifl-chart" font-family="system-ui, sans-serif" '
                    'font-size="12"><title id="grid-title">{}</title>').format(width, title)]
    for start, stop, level in slots:
        x = width * (start - begin).total_seconds() / span
        w = width * (stop - start).total_seconds() / span
        parts.append(Markup('<rect x="{:.1f}" y="0" width="{:.1f}" height="{}" fill="{}"><title>{} – {}: {}</title>'
                            '</rect>').format(x, w, bar_h, LEVEL_COLOURS[level], start.strftime("%d-%m %H:%M"),
                                              stop.strftime("%d-%m %H:%M"), _(LEVEL_LABELS[level])))
    mark = datetime.combine(begin.date(), time(begin.hour)) + timedelta(hours=1)
    while mark < end:
        x = width * (mark - begin).total_seconds() / span
        if mark.hour % 6 == 0 and 20 <= x <= width - 20:  # a label at the very edge would be cut off
            parts.append(Markup('<line x1="{:.1f}" y1="{}" x2="{:.1f}" y2="{}" stroke="currentColor"/>'
                                '<text x="{:.1f}" y="{}" text-anchor="middle" fill="currentColor">{}</text>').format(
                                    x, bar_h, x, bar_h + 6, x, bar_h + 20, mark.strftime("%H:%M")))
        mark += timedelta(hours=1)
    for i, level in enumerate(("quiet", "normal", "busy")):
        parts.append(Markup('<rect x="{}" y="54" width="12" height="12" fill="{}"/>'
                            '<text x="{}" y="65" fill="currentColor">{}</text>').format(
                                i * 110, LEVEL_COLOURS[level], i * 110 + 16, _(LEVEL_LABELS[level])))
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


async def energy_section(report: EnergyReport | None, facility: Any, lang: str, labels: Mapping[str, str],
                         colours: Mapping[str, str]) -> dict[str, Any] | None:
    """The facility page's energy values in ``lang`` (None without a model, or when Slurm does not answer).

    ``facility`` gives the account → category function (:meth:`aifl_hub.facility.Facility.categories`).
    """
    if report is None or "pue" not in report.energy:
        return None
    try:
        found = await report.facility(await facility.categories(), list(labels))
    except Exception:
        log.exception("energy figures unavailable")
        return None
    _ = gettext_for(lang)
    week = sum(sum(totals.values()) for _day, totals in found.days)
    label = SOURCE_LABELS["measured"] if found.measured else SOURCE_LABELS["estimate"]
    source = _(label)
    summary = _("Today about {today} kWh; the last 7 days about {week} kWh ({source}).").format(
        today=format_number(sum(found.days[-1][1].values()), lang), week=format_number(week, lang), source=source)
    factor = report.energy.get("everyday_km_per_kwh")
    if factor and week > 0:
        summary += " " + _("That is as much as an electric car uses to drive {km} km.").format(
            km=format_number(week * factor, lang))
    status, level = found.grid, found.grid.get("level")
    return {
        "chart": energy_chart(found.days, labels, colours, lang),
        "summary": summary,
        "moved": _("In the last 30 days flexible work moved about {kwh} kWh out of the grid's busy hours.").format(
            kwh=format_number(found.moved_kwh, lang)),
        "grid_now": _("The power grid is {level} now.").format(
            level=_(LEVEL_LABELS[level if level in LEVEL_LABELS else None])) if status else "",
        "grid_strip": grid_strip(status.get("forecast") or [], lang),
        "grid_warning": str(status.get("warning") or ""),
    }
