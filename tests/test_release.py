"""The release policy for flexible work (:mod:`aifl_hub.release`), with a controllable clock and signal."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from aifl_hub.grid import Slot, WeeklyProfile
from aifl_hub.release import (
    FlexJob,
    decide,
    latest_start,
    parse_comment,
    parse_gpus,
    parse_squeue,
    tag,
)

NOW = datetime(2026, 11, 23, 18, 0)  # Monday, busy by the built-in profile
MINUTE = timedelta(minutes=1)
MARGIN = timedelta(seconds=60)


def job(job_id: str = "10", *, gpus: int = 1, hours: float = 2, deadline: datetime | None = None,
        state: str = "PENDING", held: bool = True) -> FlexJob:
    return FlexJob(job_id, "alice", state, held, gpus, timedelta(hours=hours),
                   deadline if deadline is not None else NOW + timedelta(hours=12))


def signal(*levels: tuple[float, str | None]) -> list[Slot]:
    """Slots from NOW: (hours, level) one after the other."""
    slots, start = [], NOW
    for hours, level in levels:
        slots.append(Slot(start, start + timedelta(hours=hours), level))
        start += timedelta(hours=hours)
    return slots


def test_busy_now_waits_for_the_first_quiet_hour():
    (decision,) = decide([job()], signal((5, "busy"), (6, "quiet")), NOW, cap=None, margin=MARGIN)
    assert (decision.release, decision.reason, decision.expected_start) == (False, "waiting", NOW + timedelta(hours=5))


def test_quiet_now_releases_everything_held_and_leaves_running_jobs_alone():
    jobs = [job("1"), job("2", gpus=8), job("3", state="RUNNING", held=False), job("4", held=False)]
    decisions = decide(jobs, signal((1, "quiet")), NOW, cap=0, margin=MARGIN)
    assert [(d.job.job_id, d.release, d.reason) for d in decisions] == [("1", True, "quiet"), ("2", True, "quiet")]


def test_normal_is_not_quiet():
    (decision,) = decide([job()], signal((3, "normal"), (1, "quiet")), NOW, cap=None, margin=MARGIN)
    assert not decision.release and decision.expected_start == NOW + timedelta(hours=3)


def test_the_deadline_math():
    deadline = NOW + timedelta(hours=3)
    assert latest_start(job(hours=2, deadline=deadline), MARGIN) == NOW + timedelta(hours=1) - MARGIN
    assert latest_start(FlexJob("1", "a", "PENDING", True, 0, None, None), MARGIN) is None
    busy = signal((48, "busy"))
    # Before the latest start it waits, expected to start at the latest start (no quiet hour comes first).
    (early,) = decide([job(hours=2, deadline=deadline)], busy, NOW, cap=None, margin=MARGIN)
    assert (early.release, early.expected_start) == (False, NOW + timedelta(hours=1) - MARGIN)
    # From one check interval before it, the deadline releases it even though the grid is busy.
    later = NOW + timedelta(hours=1) - MARGIN
    (due,) = decide([job(hours=2, deadline=deadline)], signal((48, "busy")), later, cap=None, margin=MARGIN)
    assert (due.release, due.reason) == (True, "deadline")
    # A quiet hour before the latest start is the expected start.
    (quiet_first,) = decide([job(hours=2, deadline=deadline)], signal((0.5, "busy"), (1, "quiet")), NOW, cap=None,
                            margin=MARGIN)
    assert quiet_first.expected_start == NOW + timedelta(minutes=30)


def test_a_passed_deadline_releases_at_once():
    (decision,) = decide([job(deadline=NOW - MINUTE)], signal((1, "busy")), NOW, cap=None, margin=MARGIN)
    assert decision.release and decision.reason == "deadline"


@pytest.mark.parametrize(("transitions", "released_at"), [
    (["busy", "busy", "quiet", "busy"], 2),
    (["normal", None, "quiet"], 2),
    (["quiet"], 0),
])
def test_transitions_release_at_the_first_quiet_check(transitions, released_at):
    for step, level in enumerate(transitions):
        now = NOW + step * MARGIN
        (decision,) = decide([job()], [Slot(now, now + timedelta(hours=1), level)], now, cap=None, margin=MARGIN)
        assert decision.release == (step == released_at)
        if decision.release:
            break


def test_forecast_gaps_count_as_not_quiet():
    # Now is in a gap: no release; the expected start skips the gap.
    (decision,) = decide([job()], signal((2, None), (1, "quiet")), NOW, cap=None, margin=MARGIN)
    assert (decision.release, decision.expected_start) == (False, NOW + timedelta(hours=2))
    # No quiet hour in the forecast at all, no deadline soon: waiting, expected at the latest start.
    (decision,) = decide([job(deadline=NOW + timedelta(hours=30))], signal((48, None)), NOW, cap=None, margin=MARGIN)
    assert decision.expected_start == NOW + timedelta(hours=28) - MARGIN
    # An empty forecast (the source says nothing) and no deadline: no expected start.
    no_deadline = FlexJob("1", "a", "PENDING", True, 0, timedelta(hours=1), None)
    (decision,) = decide([no_deadline], [], NOW, cap=None, margin=MARGIN)
    assert (decision.release, decision.expected_start) == (False, None)


def test_the_busy_hours_cap_counts_running_flexible_gpus_and_orders_by_latest_start():
    due = NOW + timedelta(hours=2)  # latest starts a minute ago (the margin) or earlier: all are due
    jobs = [job("1", gpus=2, state="RUNNING", held=False),
            job("2", gpus=2, deadline=due),
            job("3", gpus=1, deadline=due - MINUTE),
            job("4", gpus=4, deadline=due - 2 * MINUTE)]
    decisions = {d.job.job_id: d for d in decide(jobs, signal((3, "busy"), (1, "quiet")), NOW, cap=5, margin=MARGIN)}
    # 2 GPUs run; job 4 (first latest start) does not fit (2+4 > 5); job 3 does (3); then job 2 (5).
    assert (decisions["4"].release, decisions["4"].reason) == (False, "cap")
    assert decisions["4"].expected_start == NOW + timedelta(hours=3)
    assert decisions["3"].release and decisions["2"].release
    # In normal hours the cap does not apply.
    assert all(d.release for d in decide(jobs, signal((3, "normal")), NOW, cap=5, margin=MARGIN))


def test_tag_and_comment():
    deadline = datetime(2026, 11, 24, 8, 0, 0, 123)
    assert tag(deadline) == "aifl-grid:deadline=2026-11-24T08:00:00"
    assert parse_comment(tag(deadline)) == (True, deadline.replace(microsecond=0))
    assert parse_comment("aifl-grid") == (True, None)
    for other in ("", "aifl-grid:deadline=tomorrow", "my own comment", "aifl-grid:deadline=2026-11-24T08:00:00 x"):
        assert parse_comment(other) == (False, None)


@pytest.mark.parametrize(("tres", "nodes", "gpus"), [
    ("gres:gpu:h200:2", "1", 2), ("gres:gpu:4", "2", 8), ("gres/gpu=3", "1", 3), ("N/A", "1", 0), ("", "", 0),
])
def test_gpus(tres, nodes, gpus):
    assert parse_gpus(tres, nodes) == gpus


def test_parse_squeue_keeps_only_tagged_jobs():
    text = "\n".join([
        "11|alice|PENDING|JobHeldUser|2:00:00|gres:gpu:h200:1|1|2026-11-23T17:00:00|aifl-grid:deadline=2026-11-24T08:00:00",
        "12|bob|RUNNING|None|1:00:00|N/A|1|2026-11-23T17:00:00|aifl-grid:deadline=2026-11-24T08:00:00",
        "13|carol|PENDING|JobHeldUser|1:00:00|N/A|1|2026-11-23T17:00:00|",
        "14|dave|PENDING|Priority|1:00:00|N/A|1|2026-11-23T17:00:00|aifl-grid:deadline=2026-11-24T08:00:00",
        "15|eve|PENDING|JobHeldUser|1:00:00|N/A|1|2026-11-23T17:00:00|x|aifl-grid",
        "16|Bad User|PENDING|JobHeldUser|1:00:00|N/A|1|2026-11-23T17:00:00|aifl-grid", "garbage",
    ])
    jobs = {j.job_id: j for j in parse_squeue(text)}
    assert sorted(jobs) == ["11", "12", "14"]
    assert jobs["11"].held and jobs["11"].gpus == 1 and jobs["11"].time_limit == timedelta(hours=2)
    assert jobs["11"].deadline == datetime(2026, 11, 24, 8) and jobs["11"].submitted == datetime(2026, 11, 23, 17)
    assert jobs["12"].running and not jobs["12"].held
    assert not jobs["14"].held  # released already (waits for resources), not the releaser's any more


def test_with_the_builtin_week():
    profile = WeeklyProfile({"weekdays": ["00:00-06:00", "23:00-24:00"]}, {"weekdays": ["16:00-21:00"]})
    (decision,) = decide([job()], profile.slots(NOW, NOW + timedelta(hours=48)), NOW, cap=None, margin=MARGIN)
    assert decision.expected_start == NOW.replace(hour=23)
    later = NOW.replace(hour=23, minute=1)
    (decision,) = decide([job()], profile.slots(later, later + timedelta(hours=48)), later, cap=None, margin=MARGIN)
    assert decision.release
