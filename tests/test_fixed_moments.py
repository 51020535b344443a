"""The moments at which ``./lab test`` runs the pure tests under faketime really are the hard ones."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from aifl_hub.cli import CLOCK_MOMENTS, CLOCK_ZONE, PURE_TESTS
from conftest import REPO

ZONE = ZoneInfo(CLOCK_ZONE)
MOMENTS = dict((what, datetime.strptime(moment, "%Y-%m-%d %H:%M:%S %z")) for what, moment in CLOCK_MOMENTS)


def local(moment: datetime) -> datetime:
    return moment.astimezone(ZONE)


def test_the_month_and_the_year_turn_during_the_runs():
    month = local(MOMENTS["the last minute of a month"])
    assert (month + timedelta(minutes=1)).month != month.month
    year = local(MOMENTS["31 December 23:59"])
    assert (year.month, year.day, year.hour, year.minute) == (12, 31, 23, 59)
    assert (year + timedelta(minutes=1)).year == year.year + 1


@pytest.mark.parametrize(("what", "before", "after"), [
    ("summer time begins (02:00 becomes 03:00)", timedelta(hours=1), timedelta(hours=2)),
    ("summer time ends (03:00 becomes 02:00 again)", timedelta(hours=2), timedelta(hours=1)),
])
def test_both_summer_time_switches_fall_within_a_minute_of_the_start(what, before, after):
    start = local(MOMENTS[what])
    assert start.utcoffset() == before
    assert local(MOMENTS[what] + timedelta(minutes=1)).utcoffset() == after


def test_an_evening_moment_for_windows_past_midnight():
    evening = local(MOMENTS["22:30 (windows past midnight)"])
    assert (evening.hour, evening.minute) == (22, 30)


def real_clock() -> dict[str, str]:
    """This environment without faketime's own variables (these tests also run under faketime)."""
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("FAKETIME")}


def test_faketime_gives_each_moment_in_the_facilitys_zone():
    """Debian's faketime reads the moments as written (the offset keeps the autumn one unambiguous)."""
    for what, moment in CLOCK_MOMENTS:
        shown = subprocess.run(["faketime", moment, "date", "+%Y-%m-%d %H:%M %z"], capture_output=True, text=True,
                               env={**real_clock(), "TZ": CLOCK_ZONE}, check=True, timeout=30).stdout.strip()
        assert shown == local(MOMENTS[what]).strftime("%Y-%m-%d %H:%M %z"), what


def test_the_pure_selection_leaves_out_every_test_that_needs_the_running_lab():
    """Tests that take the lab (``hub``, ``users``: ``lab_system`` underneath) are marked ``cluster`` by conftest."""
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                "-m", PURE_TESTS, "tests/test_workshop_hub.py", "tests/test_fixed_moments.py"],
                               cwd=REPO, capture_output=True, text=True, timeout=120, check=False).stdout
    ids = [line for line in collected.splitlines() if "::" in line]
    assert ids and all(i.startswith("tests/test_fixed_moments.py::") for i in ids), collected
