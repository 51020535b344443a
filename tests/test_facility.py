"""The facility figures: parsing captured Slurm output, clipping jobs to periods, shares, waits, outputs.

The captures in ``tests/data/facility/`` are real output of this lab's cluster (``capture.md`` there
says which commands); the arithmetic is checked with a fixed clock and hand-made jobs.
"""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from aifl_hub import facility
from aifl_hub.facility import (
    OTHER,
    Facility,
    Job,
    category_of,
    figures_json,
    format_hours,
    gpu_hours_in,
    month_bounds,
    month_rows,
    parse_gpu_total,
    parse_parents,
    parse_running,
    parse_sacct,
    parse_time,
    parse_user_organisations,
    period_bounds,
    period_figures,
    prometheus_text,
    regional_share,
    report_csv,
    usage_line,
)

DATA = Path(__file__).parent / "data" / "facility"
NOW = datetime(2026, 11, 25, 12, 0, 0)
SITE = {
    "site": {"name": "AI Factory Lab", "languages": ["nl", "en"], "default_language": "nl"},
    "cluster": {"slurm_bin": "/usr/bin"},
    "organisations": {"list": [
        {"name": "umcg", "display_name": {"en": "University Medical Center Groningen",
                                          "nl": "Universitair Medisch Centrum Groningen"},
         "category": "regional", "gpu_hours_per_month": 2000},
        {"name": "tu-eindhoven", "display_name": "TU/e", "category": "national", "gpu_hours_per_month": 100},
        {"name": "gone-org", "display_name": "=Left us", "category": "european"},
    ]},
}


def capture(name: str) -> str:
    return (DATA / name).read_text()


def job(account: str, gpus: int, start: datetime | None, end: datetime | None,
        submit: datetime | None = None, state: str = "COMPLETED") -> Job:
    return Job("1", account, gpus, submit or start, start, end, state)


# ---------------------------------------------------------------- parsing

def test_sacct_capture_is_parsed():
    jobs = parse_sacct(capture("sacct.txt"))
    assert len(jobs) >= 5
    assert {j.account for j in jobs} >= {"ftreg", "ftnat", "lab"}
    by_id = {j.job_id: j for j in jobs}
    pending = [j for j in jobs if j.state == "PENDING"]
    assert pending and all(j.start is None and j.gpus == 0 for j in pending)
    finished = [j for j in jobs if j.state == "COMPLETED"]
    assert finished and all(j.start and j.end and j.submit and j.end >= j.start >= j.submit for j in finished)
    assert {j.gpus for j in by_id.values()} >= {1, 2, 4}


def test_sacct_cancelled_state_is_one_word():
    line = "7|ftreg|billing=1,cpu=1,gres/gpu=2,mem=1G,node=1|2026-11-25T10:00:00|2026-11-25T10:00:01|" \
           "2026-11-25T10:30:01|CANCELLED by 0"
    (parsed,) = parse_sacct(line)
    assert parsed.state == "CANCELLED" and parsed.gpus == 2


def test_sacct_lines_that_do_not_fit_are_skipped():
    assert parse_sacct("garbage\n|||\n1|a|b\n") == []


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-25T16:28:59", datetime(2026, 11, 25, 16, 28, 59)),
    ("Unknown", None), ("None", None), ("", None), ("not a date", None),
])
def test_times(text, expected):
    assert parse_time(text) == expected


def test_account_tree_capture():
    parents = parse_parents(capture("assoc.txt"))
    assert parents["ftreg"] == "regional" and parents["regional"] == "root"
    assert parents["ftnat"] == "national"
    assert parents["root"] == ""
    assert category_of("ftreg", parents, {}) == "regional"
    assert category_of("ftnat", parents, {}) == "national"
    assert category_of("lab", parents, {}) == OTHER
    assert category_of("root", parents, {}) == OTHER


def test_deleted_accounts_keep_their_category():
    current, with_deleted = parse_parents(capture("assoc.txt")), parse_parents(capture("assoc-withdeleted.txt"))
    deleted = [a for a in with_deleted if a not in current]
    assert [a for a in deleted if a.startswith("ftr")]
    parents = {**with_deleted, **current}
    assert {category_of(a, parents, {}) for a in deleted if a.startswith("ftr")} == {"regional"}
    assert {category_of(a, parents, {}) for a in deleted if a.startswith("ftn")} == {"national"}
    assert category_of(deleted[0], current, {}) == OTHER  # what the current tree alone would say


def test_category_of_deeper_trees_loops_and_gone_accounts():
    parents = {"root": "", "regional": "root", "umcg": "regional", "umcg-radiology": "umcg",
               "a": "b", "b": "a"}
    assert category_of("umcg-radiology", parents, {}) == "regional"
    assert category_of("regional", parents, {}) == "regional"
    assert category_of("a", parents, {}) == OTHER  # a loop never hangs
    assert category_of("gone-org", parents, {"gone-org": "european"}) == "european"  # left Slurm's tree
    assert category_of("training", {}, {}) == "training"
    assert category_of("unknown", {}, {}) == OTHER


def test_running_capture():
    running = parse_running(capture("squeue-running.txt"))
    assert running and all(gpus >= 0 for _, gpus in running)
    assert sum(gpus for _, gpus in running) == 8


def test_gpu_total_counts_each_node_once():
    assert parse_gpu_total(capture("sinfo.txt")) == 16
    assert parse_gpu_total("gpu01|gpu:h200:4\ngpu01|gpu:h200:4\ncpu01|(null)\n") == 4


def test_user_organisations_capture():
    users = parse_user_organisations(capture("users.txt"), {"ftreg", "ftnat"})
    assert users["root"] in {"ftreg", "ftnat"}
    assert "admin" not in users  # only in `lab`, which is no organisation


def test_user_organisation_prefers_the_default_account():
    out = "ann|lab|lab\nann|lab|umcg\nann|lab|tu-eindhoven\nbob|tu-eindhoven|umcg\nbob|tu-eindhoven|tu-eindhoven\n"
    assert parse_user_organisations(out, {"umcg", "tu-eindhoven"}) == {"ann": "umcg", "bob": "tu-eindhoven"}


# ---------------------------------------------------------------- periods and clipping

def test_period_bounds():
    assert period_bounds("today", NOW) == (datetime(2026, 11, 25), NOW)
    assert period_bounds("7d", NOW) == (NOW - timedelta(days=7), NOW)
    assert period_bounds("30d", NOW) == (NOW - timedelta(days=30), NOW)
    with pytest.raises(ValueError, match="unknown period"):
        period_bounds("year", NOW)


def test_month_bounds():
    assert month_bounds("2026-11", NOW) == (datetime(2026, 11, 1), NOW)
    assert month_bounds("2026-10", NOW) == (datetime(2026, 10, 1), datetime(2026, 11, 1))
    assert month_bounds("2025-12", NOW) == (datetime(2025, 12, 1), datetime(2026, 1, 1))
    for bad in ("2026-13", "2026-1", "26-11", "2026-11; rm", "2026-12"):
        with pytest.raises(ValueError):
            month_bounds(bad, NOW)


@pytest.mark.parametrize(("start", "end", "expected"), [
    # inside the window: all of it
    (datetime(2026, 11, 25, 9), datetime(2026, 11, 25, 10), 2.0),
    # began yesterday: only from midnight
    (datetime(2026, 11, 24, 22), datetime(2026, 11, 25, 1), 2.0),
    # entirely before the window
    (datetime(2026, 11, 24, 10), datetime(2026, 11, 24, 11), 0.0),
    # still running: up to now
    (datetime(2026, 11, 25, 11), None, 2.0),
    # a start Slurm only expects (in the future) counts nothing
    (datetime(2026, 11, 25, 13), None, 0.0),
])
def test_gpu_hours_are_clipped_to_the_window(start, end, expected):
    window = period_bounds("today", NOW)
    assert gpu_hours_in(job("a", 2, start, end), *window, NOW) == pytest.approx(expected)


def test_jobs_without_gpus_or_start_count_nothing():
    window = period_bounds("30d", NOW)
    assert gpu_hours_in(job("a", 0, NOW - timedelta(hours=1), NOW), *window, NOW) == 0
    assert gpu_hours_in(job("a", 4, None, None, submit=NOW), *window, NOW) == 0


def test_period_figures_share_and_median_waits():
    t = datetime(2026, 11, 25, 8)
    jobs = [
        job("umcg", 1, t, t + timedelta(hours=3), submit=t - timedelta(minutes=2)),  # 3 GPU h, waited 120 s
        job("umcg", 2, t, t + timedelta(hours=1), submit=t - timedelta(minutes=4)),  # 2 GPU h, waited 240 s
        job("umcg", 1, t, t + timedelta(hours=1), submit=t - timedelta(minutes=10)),  # 1 GPU h, waited 600 s
        job("tu-eindhoven", 4, t, t + timedelta(hours=4), submit=t - timedelta(hours=1)),  # 16 GPU h, 3600 s
        job("lab", 2, t, t + timedelta(hours=1), submit=t - timedelta(minutes=30)),  # 2 GPU h, 1800 s
        # yesterday's job: its GPU hours inside today count, its wait (it started yesterday) does not
        job("tu-eindhoven", 1, t - timedelta(days=1), t + timedelta(hours=1), submit=t - timedelta(days=2)),
        job("lab", 4, None, None, submit=t, state="PENDING"),
    ]
    cats = {"umcg": "regional", "tu-eindhoven": "national"}
    p = period_figures("today", jobs, lambda a: cats.get(a, OTHER), NOW)
    assert p.gpu_hours == pytest.approx({"regional": 6, "national": 16 + 9, "european": 0, "training": 0,
                                         "other": 2})
    assert p.total_gpu_hours == pytest.approx(33)
    assert p.share == pytest.approx(6 / 33)
    assert p.median_wait == {"regional": 240, "other": 2700}  # the middle of 1800 and 3600
    assert p.jobs["national"] == 2 and p.jobs["other"] == 1
    assert regional_share(dict.fromkeys(("regional", "other"), 0.0)) is None


def test_month_rows_list_every_organisation_and_other_accounts():
    t = datetime(2026, 11, 2)
    jobs = [job("umcg", 4, t, t + timedelta(hours=5)), job("lab", 1, t, t + timedelta(hours=2)),
            job("umcg", 1, datetime(2026, 10, 31, 23), datetime(2026, 11, 1, 1))]  # half in November
    rows = month_rows("2026-11", jobs, lambda a: {"umcg": "regional"}.get(a, OTHER), SITE, NOW)
    by = {r.account: r for r in rows}
    assert [r.account for r in rows] == ["umcg", "tu-eindhoven", "gone-org", "lab"]
    assert by["umcg"].gpu_hours == pytest.approx(21) and by["umcg"].jobs == 2
    assert by["umcg"].budget_used == pytest.approx(21 / 2000)
    assert by["tu-eindhoven"].gpu_hours == 0 and by["gone-org"].budget is None
    assert by["lab"].gpu_hours == pytest.approx(2) and by["lab"].category == OTHER


# ---------------------------------------------------------------- outputs

def _figures() -> facility.Figures:
    t = datetime(2026, 11, 25, 8)
    jobs = [job("umcg", 2, t, t + timedelta(hours=1), submit=t - timedelta(seconds=30)),
            job("tu-eindhoven", 2, t, t + timedelta(hours=3), submit=t - timedelta(seconds=90))]
    cats = {"umcg": "regional", "tu-eindhoven": "national", "gone-org": "european"}
    category = lambda a: cats.get(a, OTHER)  # noqa: E731
    return facility.Figures(NOW, [period_figures(p, jobs, category, NOW) for p in facility.PERIODS],
                            {"regional": 2, "national": 0, "european": 0, "training": 0, "other": 1}, 16,
                            month_rows("2026-11", jobs, category, SITE, NOW))


def test_json():
    data = figures_json(_figures())
    today = data["periods"][0]
    assert today["period"] == "today" and today["start"] == "2026-11-25T00:00:00"
    assert today["gpu_hours"]["regional"] == 2 and today["total_gpu_hours"] == 8
    assert today["regional_share"] == 0.25 and today["meets_target"] is True
    assert today["median_wait_seconds"] == {"regional": 30.0, "other": 90.0}
    assert data["gpus_in_use"]["regional"] == 2 and data["gpus_total"] == 16
    assert data["organisations"][0] == {
        "month": "2026-11", "organisation": "umcg", "display_name": SITE["organisations"]["list"][0]["display_name"],
        "category": "regional", "gpu_hours": 2.0, "jobs": 1, "budget_gpu_hours": 2000, "budget_used": 0.001}


def test_csv_report():
    rows = list(csv.DictReader(io.StringIO(report_csv(_figures().organisations))))
    assert [r["organisation"] for r in rows] == ["umcg", "tu-eindhoven", "gone-org"]
    assert rows[0]["display_name_nl"] == "Universitair Medisch Centrum Groningen"
    assert rows[1]["gpu_hours"] == "6.0000" and rows[1]["budget_used_percent"] == "6.0"
    assert rows[2]["display_name_en"] == "'=Left us"  # never a spreadsheet formula
    assert rows[2]["budget_gpu_hours"] == "" and rows[2]["budget_used_percent"] == ""


def test_prometheus_text():
    text = prometheus_text(_figures())
    lines = text.splitlines()
    assert 'aifl_gpu_hours_total{category="regional",period="today"} 2' in lines
    assert 'aifl_regional_share{period="30d"} 0.25' in lines
    assert "aifl_regional_share_target 0.25" in lines
    assert 'aifl_gpus_in_use{category="other"} 1' in lines
    assert 'aifl_queue_wait_median_seconds{group="other",period="today"} 90' in lines
    assert 'aifl_organisation_gpu_hours_budget{organisation="umcg"} 2000' in lines
    assert "aifl_gpus_total 16" in lines
    for line in lines:  # every sample is `name{labels} number`, after its HELP and TYPE
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])
    assert text.count("# TYPE") == text.count("# HELP") == 8


def test_usage_line_in_both_languages():
    umcg, tue, gone = _figures().organisations
    assert usage_line(umcg, "en") == ("Your organisation, University Medical Center Groningen, used 2 of its 2,000 "
                                      "GPU hours this month.")
    assert usage_line(tue, "nl") == "Je organisatie, TU/e, gebruikte deze maand 6 van haar 100 GPU-uren."
    assert usage_line(gone, "nl") == "Je organisatie, =Left us, gebruikte deze maand 0 GPU-uren."


# ---------------------------------------------------------------- the Slurm side, with captured answers

class Replay:
    """Answers each Slurm command with a capture; records the argv lists."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, argv):
        self.calls.append(list(argv))
        tool = Path(argv[0]).name
        if tool == "sacct":
            return capture("sacct.txt")
        if tool == "squeue":
            return capture("squeue-running.txt")
        if tool == "sinfo":
            return capture("sinfo.txt")
        if "withdeleted" in argv:
            return capture("assoc-withdeleted.txt")
        return capture("assoc.txt" if argv[3] == "assoc" else "users.txt")


def test_facility_reads_slurm_with_argv_lists_only():
    site = {**SITE, "organisations": {"list": [
        {"name": "ftreg", "display_name": "Regional test org", "category": "regional", "gpu_hours_per_month": 10},
        {"name": "ftnat", "display_name": "National test org", "category": "national"}]}}
    jobs = parse_sacct(capture("sacct.txt"))
    now = max(j.end for j in jobs if j.end) + timedelta(minutes=1)
    replay = Replay()
    reader = Facility(site, runner=replay, clock=lambda: now)
    figures = asyncio.run(reader.figures())
    users = asyncio.run(reader.user_organisations())
    assert all(isinstance(a, str) for call in replay.calls for a in call)
    assert sum(c[0].endswith("sacctmgr") and c[3] == "assoc" for c in replay.calls) == 2  # also withdeleted
    sacct = next(c for c in replay.calls if c[0].endswith("sacct"))
    assert sacct[:6] == ["/usr/bin/sacct", "-X", "-a", "-D", "-n", "-P"]
    assert figures.gpus_total == 16 and sum(figures.gpus_in_use.values()) == 8
    month = {r.account: r for r in figures.organisations}
    assert month["ftreg"].gpu_hours > 0 and month["ftnat"].gpu_hours > 0
    assert users["root"] in {"ftreg", "ftnat"}


def test_cache_gives_hub_pages_the_lines_without_waiting_for_slurm():
    site = {**SITE, "organisations": {"list": [
        {"name": "ftnat", "display_name": "National test org", "category": "national", "gpu_hours_per_month": 5}]}}
    jobs = parse_sacct(capture("sacct.txt"))  # all submitted by root
    now = max(j.end for j in jobs if j.end) + timedelta(minutes=1)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    root_hours = sum(gpu_hours_in(job, month_start, now, now) for job in jobs)
    replay = Replay()
    cache = facility.FacilityCache(Facility(site, runner=replay, clock=lambda: now), ttl=60)
    assert cache.home_usage("root", "en") is None  # no event loop here: nothing read, nothing raised
    assert replay.calls == []

    async def in_the_hub() -> tuple[facility.HomeUsage | None, facility.HomeUsage | None, int]:
        first = cache.home_usage("root", "en")  # starts both refreshes in the background
        await cache._refreshing
        await asyncio.gather(*cache._own_refreshing.values())
        calls = len(replay.calls)
        second = cache.home_usage("root", "en")
        await cache.current()  # fresh: read from the cache
        assert len(replay.calls) == calls
        return first, second, calls

    first, second, calls = asyncio.run(in_the_hub())
    assert first is None and calls == 7
    own_sacct = [c for c in replay.calls if c[0].endswith("sacct") and "-u" in c]
    assert len(own_sacct) == 1 and own_sacct[0][own_sacct[0].index("-u") + 1] == "root" and "-a" not in own_sacct[0]
    assert second is not None
    assert second.own == f"You used {format_hours(root_hours, 'en')} GPU hours this month." and root_hours > 0
    assert second.organisation.startswith("Your organisation, National test org, used ")
    assert second.organisation.endswith("of its 5 GPU hours this month.")
    ftnat = sum(gpu_hours_in(j, month_start, now, now) for j in jobs if j.account == "ftnat")
    assert second.budget_percent == min(100, round(ftnat / 5 * 100))
    admin = cache.home_usage("admin", "en")  # in no organisation, own hours not read yet
    assert admin is not None and admin.organisation == "" and admin.budget_percent is None
