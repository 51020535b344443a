"""The grid signal (:mod:`aifl_hub.grid`): the weekly profile, operators' slots, overrides and fallbacks."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from aifl_hub.grid import (
    DEFAULT_BUSY,
    DEFAULT_QUIET,
    GridError,
    Slot,
    WeeklyProfile,
    load_signal,
    next_quiet,
    parse_override,
    parse_slots,
    parse_span,
    read_json_url,
)
from aifl_hub.site import SiteError, load_site, validate_site

MONDAY = datetime(2026, 11, 23)  # a Monday
SATURDAY = datetime(2026, 11, 28)
PROFILE = WeeklyProfile(DEFAULT_QUIET, DEFAULT_BUSY)


@pytest.mark.parametrize(("moment", "level"), [
    (MONDAY.replace(hour=3), "quiet"), (MONDAY.replace(hour=23, minute=30), "quiet"),
    (MONDAY.replace(hour=8), "busy"), (MONDAY.replace(hour=17), "busy"), (MONDAY.replace(hour=12), "normal"),
    (MONDAY.replace(hour=6), "normal"), (MONDAY.replace(hour=9), "normal"),  # spans end exclusive
    (SATURDAY.replace(hour=12), "quiet"), (SATURDAY.replace(hour=18), "busy"), (SATURDAY.replace(hour=9), "normal"),
])
def test_the_builtin_week(moment, level):
    assert PROFILE.level_at(moment) == level


def test_quiet_wins_where_quiet_and_busy_overlap():
    profile = WeeklyProfile({"weekdays": ["08:00-09:00"]}, {"weekdays": ["07:00-10:00"]})
    assert [profile.level_at(MONDAY.replace(hour=h)) for h in (7, 8, 9, 10)] == ["busy", "quiet", "busy", "normal"]


def test_profile_slots_are_contiguous_merged_and_cross_midnight():
    start = MONDAY.replace(hour=20, minute=30)
    slots = PROFILE.slots(start, start + timedelta(hours=48))
    assert slots[0] == Slot(start, MONDAY.replace(hour=21), "busy")
    assert slots[1] == Slot(MONDAY.replace(hour=21), MONDAY.replace(hour=23), "normal")
    # Monday 23:00 to Tuesday 06:00 is one quiet slot across midnight.
    assert slots[2] == Slot(MONDAY.replace(hour=23), MONDAY + timedelta(days=1, hours=6), "quiet")
    assert all(a.end == b.start and a.level != b.level for a, b in pairwise(slots))
    assert slots[-1].end == start + timedelta(hours=48)


def test_next_quiet():
    slots = PROFILE.slots(MONDAY.replace(hour=12), MONDAY + timedelta(days=2))
    assert next_quiet(slots, MONDAY.replace(hour=12)) == MONDAY.replace(hour=23)
    assert next_quiet(slots, MONDAY.replace(hour=23, minute=30)) == MONDAY.replace(hour=23, minute=30)
    assert next_quiet([Slot(MONDAY, MONDAY + timedelta(hours=1), "busy")], MONDAY) is None


@pytest.mark.parametrize("span", ["23:00-06:00", "10:00-10:00", "7-9", "24:00-01:00", "07:00-09:60", 7])
def test_bad_spans_are_refused(span):
    with pytest.raises(GridError):
        parse_span(span)


def _slots(*items):
    return {"slots": [{"start": s, "end": e, "level": level} for s, e, level in items]}


def test_operator_slots_with_gaps_and_offsets():
    table = parse_slots(_slots(("2026-11-23T10:00:00", "2026-11-23T12:00:00", "busy"),
                               ("2026-11-23T14:00:00", "2026-11-23T15:00:00", "quiet")))
    slots = table.slots(MONDAY.replace(hour=9), MONDAY.replace(hour=16))
    assert [(s.start.hour, s.end.hour, s.level) for s in slots] == [
        (9, 10, None), (10, 12, "busy"), (12, 14, None), (14, 15, "quiet"), (15, 16, None)]
    with_offset = parse_slots(_slots(("2026-11-23T10:00:00+00:00", "2026-11-23T11:00:00+00:00", "quiet")))
    assert with_offset.table[0].start == datetime(2026, 11, 23, 10, 0, tzinfo=UTC).astimezone().replace(tzinfo=None)


@pytest.mark.parametrize(("data", "words"), [
    ([], '"slots"'), ({"slots": {}}, '"slots"'), ({"slots": [1]}, "slot 1"),
    (_slots(("2026-11-23T10:00", "2026-11-23T09:00", "busy")), "ends before"),
    (_slots(("2026-11-23T10:00", "2026-11-23T11:00", "loud")), "quiet, normal, busy"),
    (_slots(("tomorrow", "2026-11-23T11:00", "busy")), "date and time"),
])
def test_bad_operator_data_is_refused_with_the_reason(data, words):
    with pytest.raises(GridError, match=words):
        parse_slots(data)


def test_an_unreadable_source_falls_back_to_the_profile_with_a_warning(tmp_path):
    broken = tmp_path / "grid.json"
    broken.write_text("{not json")
    for grid in ({"source": "file", "file": str(broken)}, {"source": "file", "file": str(tmp_path / "missing.json")},
                 {"source": "url", "url": "http://127.0.0.1:9/grid.json"}):
        signal = load_signal(grid)
        assert signal.name == "builtin" and isinstance(signal.source, WeeklyProfile)
        assert "built-in weekly profile is used instead" in signal.warning
        assert signal.level_at(MONDAY.replace(hour=3), MONDAY) == "quiet"
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_slots(("2026-11-23T00:00:00", "2026-11-24T00:00:00", "busy"))))
    signal = load_signal({"source": "file", "file": str(good)})
    assert (signal.name, signal.warning, signal.level_at(MONDAY.replace(hour=3), MONDAY)) == ("file", "", "busy")


def test_only_local_addresses_are_read():
    for url in ("http://example.org/grid.json", "https://127.0.0.1/x", "http://127.0.0.1.example.org/x",
                "file:///etc/passwd", "http://localhost@example.org/"):
        with pytest.raises(GridError, match="not a local address"):
            read_json_url(url)


def test_an_override_covers_now_until_its_end(tmp_path):
    override = tmp_path / "override.json"
    now = MONDAY.replace(hour=2)  # quiet by the profile
    override.write_text(json.dumps({"level": "busy", "until": "2026-11-23T04:00:00"}))
    signal = load_signal({"override_file": str(override)})
    assert signal.level_at(now, now) == "busy"
    assert signal.level_at(now.replace(hour=5), now) == "quiet"
    forecast = signal.forecast(now, hours=6)
    assert [(s.start.hour, s.end.hour, s.level) for s in forecast] == [
        (2, 4, "busy"), (4, 6, "quiet"), (6, 7, "normal"), (7, 8, "busy")]
    override.write_text(json.dumps({"level": "quiet"}))  # until removed
    assert {s.level for s in load_signal({"override_file": str(override)}).forecast(now.replace(hour=8))} == {"quiet"}
    override.write_text(json.dumps({"level": "off"}))
    signal = load_signal({"override_file": str(override)})
    assert signal.override is None and "override is ignored" in signal.warning
    assert parse_override({"level": "normal"}).until is None


def test_the_site_file_grid_section(tmp_path):
    site = load_site("hub_config/site.yaml")
    assert site["grid"]["source"] == "builtin"
    for bad, key in (({"source": "internet"}, "grid.source"), ({"url": "http://example.org/grid"}, "grid.url"),
                     ({"quiet_hours": {"weekdays": ["7-9"]}}, "grid.quiet_hours.weekdays[0]"),
                     ({"check_interval": 1}, "grid.check_interval"), ({"busy_max_flexible_gpus": -1},
                                                                       "grid.busy_max_flexible_gpus")):
        with pytest.raises(SiteError) as error:
            validate_site({**site, "grid": {**site["grid"], **bad}})
        assert error.value.key == key


def test_the_hub_runs_the_grid_service_and_refuses_a_span_over_midnight(tmp_path):
    from test_hubconfig import configured

    c = configured(tmp_path)
    (grid,) = [s for s in c.JupyterHub.services if s["name"] == "grid"]
    assert grid["command"][1:3] == ["-m", "aifl_hub.grid_service"] and "url" not in grid
    assert not any("grid" in role.get("services", []) for role in c.JupyterHub.load_roles)  # no hub API scopes
    with pytest.raises(GridError, match="23:00-06:00"):
        configured(tmp_path, lambda site: site["grid"]["quiet_hours"].update(weekdays=["23:00-06:00"]))
