"""The power grid's load signal: "quiet", "normal" or "busy" now and for the next 48 hours.

The site file's ``grid`` section names where the signal comes from; every source stays on the facility:

* ``builtin`` (the default): a weekly profile of quiet and busy hours (``quiet_hours``, ``busy_hours``,
  each a list of ``"HH:MM-HH:MM"`` for ``weekdays`` and ``weekend``; all other hours are normal);
* ``file``: a local JSON file that the facility fills from its grid operator's data;
* ``url``: the same JSON from a local address (``http://127.0.0.1…`` or ``localhost``; nothing else).

The JSON is ``{"slots": [{"start": "2026-11-25T23:00:00+01:00", "end": "…", "level": "quiet"}, …]}``;
times without an offset are the facility's local time. Hours no slot covers are a gap: their level is
unknown (``None``), which the release policy treats as "not quiet". A file or address that cannot be
read or is not in this shape falls back to the built-in profile, with a warning for administrators.

An administrator may override the signal with ``override_file`` (``{"level": "busy", "until": "…"}``),
for example when the grid operator calls for less load; it applies from now until ``until`` (or
until the file is removed).

All times are naive datetimes in the facility's local time, like the rest of the lab.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

Level = Literal["quiet", "normal", "busy"]
LEVELS: tuple[Level, ...] = ("quiet", "normal", "busy")
FORECAST_HOURS = 48
MAX_SLOTS = 10_000
MAX_BYTES = 2_000_000

# Nights are quiet everywhere; on weekends the sun fills the grid around midday. Mornings and the
# early evening (cooking, charging, heat pumps) are busy on weekdays.
DEFAULT_QUIET = {"weekdays": ["00:00-06:00", "23:00-24:00"],
                 "weekend": ["00:00-08:00", "11:00-16:00", "23:00-24:00"]}
DEFAULT_BUSY = {"weekdays": ["07:00-09:00", "16:00-21:00"], "weekend": ["17:00-20:00"]}
DEFAULT_CHECK_INTERVAL = 60

_SPAN = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-(([01][0-9]|2[0-3]):([0-5][0-9])|24:00)\Z")
_LOCAL_URL = re.compile(r"^http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]{1,5})?(/[A-Za-z0-9_./-]*)?\Z")


class GridError(ValueError):
    """A grid source or override could not be read or is not in the expected shape."""


@dataclass(frozen=True)
class Slot:
    """The grid's level from ``start`` until ``end``; ``level`` is None where the source says nothing."""

    start: datetime
    end: datetime
    level: Level | None


def parse_span(text: str) -> tuple[time, time | None]:
    """``"23:00-24:00"`` as ``(23:00, None)`` (None: midnight at the end of the day); GridError otherwise."""
    match = _SPAN.match(text) if isinstance(text, str) else None
    if not match:
        raise GridError(f"{text!r} is not a span of hours like 23:00-06:00 written as HH:MM-HH:MM")
    start = time(int(match[1]), int(match[2]))
    end = None if match[3] == "24:00" else time(int(match[4]), int(match[5]))
    if end is not None and end <= start:
        raise GridError(f"{text!r} ends before it starts; split a span over midnight in two (…-24:00, 00:00-…)")
    return start, end


@dataclass(frozen=True)
class WeeklyProfile:
    """Quiet and busy hours of a week (weekdays Monday–Friday, weekend Saturday–Sunday)."""

    quiet: Mapping[str, Sequence[str]]
    busy: Mapping[str, Sequence[str]]

    def __post_init__(self) -> None:
        for table in (self.quiet, self.busy):
            for spans in table.values():
                for span in spans:
                    parse_span(span)

    def _spans(self, day: datetime) -> list[tuple[datetime, datetime, Level]]:
        kind = "weekend" if day.weekday() >= 5 else "weekdays"
        midnight = datetime.combine(day.date(), time())
        spans = []
        for level, table in (("busy", self.busy), ("quiet", self.quiet)):
            for text in table.get(kind, ()):
                start, end = parse_span(text)
                spans.append((datetime.combine(midnight.date(), start),
                              midnight + timedelta(days=1) if end is None else datetime.combine(midnight.date(), end),
                              level))
        return spans

    def level_at(self, moment: datetime) -> Level:
        """The level at ``moment``: quiet over busy where the two overlap, normal outside both."""
        found: Level = "normal"
        for start, end, level in self._spans(moment):
            if start <= moment < end:
                if level == "quiet":
                    return "quiet"
                found = level
        return found

    def slots(self, start: datetime, end: datetime) -> list[Slot]:
        """The levels from ``start`` to ``end`` as contiguous slots (neighbours of one level merged)."""
        cuts = {start, end}
        day = datetime.combine(start.date(), time())
        while day < end:
            for span_start, span_end, _ in self._spans(day):
                cuts.update(c for c in (span_start, span_end) if start < c < end)
            day += timedelta(days=1)
        ordered = sorted(cuts)
        return merge([Slot(a, b, self.level_at(a)) for a, b in pairwise(ordered)])


@dataclass(frozen=True)
class SlotTable:
    """A signal from a list of slots (a grid operator's data); hours outside every slot are gaps."""

    table: Sequence[Slot]

    def level_at(self, moment: datetime) -> Level | None:
        """The level of the slot that holds ``moment`` (the last such slot wins), or None in a gap."""
        found: Level | None = None
        for slot in self.table:
            if slot.start <= moment < slot.end:
                found = slot.level
        return found

    def slots(self, start: datetime, end: datetime) -> list[Slot]:
        """The levels from ``start`` to ``end`` as contiguous slots, gaps included (level None)."""
        cuts = {start, end}
        for slot in self.table:
            cuts.update(c for c in (slot.start, slot.end) if start < c < end)
        ordered = sorted(cuts)
        return merge([Slot(a, b, self.level_at(a)) for a, b in pairwise(ordered)])


@dataclass(frozen=True)
class Override:
    """An administrator's level for now, until ``until`` (None: until the override file is removed)."""

    level: Level
    until: datetime | None


@dataclass(frozen=True)
class Signal:
    """The signal the lab acts on: a source, an optional override, and where it came from."""

    source: WeeklyProfile | SlotTable
    name: str
    override: Override | None = None
    warning: str = ""

    def level_at(self, moment: datetime, now: datetime) -> Level | None:
        """The level at ``moment`` as seen at ``now`` (an override covers now until its end)."""
        if self.override and moment >= now and (self.override.until is None or moment < self.override.until):
            return self.override.level
        return self.source.level_at(moment)

    def forecast(self, now: datetime, hours: float = FORECAST_HOURS) -> list[Slot]:
        """The levels from ``now`` for ``hours`` hours, as contiguous slots."""
        end = now + timedelta(hours=hours)
        slots = self.source.slots(now, end)
        if self.override is None:
            return slots
        stop = min(end, self.override.until) if self.override.until else end
        if stop <= now:
            return slots
        rest = [Slot(max(s.start, stop), s.end, s.level) for s in slots if s.end > stop]
        return merge([Slot(now, stop, self.override.level), *rest])


def merge(slots: Sequence[Slot]) -> list[Slot]:
    """``slots`` with touching neighbours of the same level joined into one."""
    merged: list[Slot] = []
    for slot in slots:
        if slot.end <= slot.start:
            continue
        if merged and merged[-1].level == slot.level and merged[-1].end == slot.start:
            merged[-1] = Slot(merged[-1].start, slot.end, slot.level)
        else:
            merged.append(slot)
    return merged


def next_quiet(slots: Sequence[Slot], after: datetime) -> datetime | None:
    """When the first quiet slot at or after ``after`` begins (``after`` itself if quiet then); None if none."""
    for slot in slots:
        if slot.level == "quiet" and slot.end > after:
            return max(slot.start, after)
    return None


def _moment(value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise GridError(f"{what} must be a date and time such as 2026-11-25T23:00:00, not {value!r}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise GridError(f"{what} {value!r} is not a date and time such as 2026-11-25T23:00:00") from None
    return moment.astimezone().replace(tzinfo=None) if moment.tzinfo else moment


def _level(value: Any, what: str) -> Level:
    if value not in LEVELS:
        raise GridError(f"{what} must be one of quiet, normal, busy, not {value!r}")
    return value  # type: ignore[no-any-return]


def parse_slots(data: Any) -> SlotTable:
    """The grid operator's JSON (``{"slots": [{"start", "end", "level"}, …]}``) as a :class:`SlotTable`."""
    slots = data.get("slots") if isinstance(data, dict) else None
    if not isinstance(slots, list):
        raise GridError('the grid data must be a JSON object with a list "slots"')
    if len(slots) > MAX_SLOTS:
        raise GridError(f"the grid data has more than {MAX_SLOTS} slots")
    table = []
    for number, item in enumerate(slots, 1):
        if not isinstance(item, dict):
            raise GridError(f"slot {number} must be an object with start, end and level")
        start = _moment(item.get("start"), f"slot {number}'s start")
        end = _moment(item.get("end"), f"slot {number}'s end")
        if end <= start:
            raise GridError(f"slot {number} ends before it starts")
        table.append(Slot(start, end, _level(item.get("level"), f"slot {number}'s level")))
    return SlotTable(table)


def parse_override(data: Any) -> Override:
    """An override file's JSON (``{"level": "busy", "until": "…"}``, ``until`` optional)."""
    if not isinstance(data, dict):
        raise GridError('the override must be a JSON object such as {"level": "busy"}')
    until = data.get("until")
    return Override(_level(data.get("level"), "the override's level"),
                    None if until is None else _moment(until, "the override's until"))


def read_json_file(path: str) -> Any:
    """The JSON in the file at ``path`` (at most 2 MB), or :class:`GridError` saying why not."""
    try:
        with Path(path).open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise GridError(f"{path} cannot be read: {exc.strerror or exc}") from None
    return _json(raw, path)


def read_json_url(url: str, timeout: float = 10) -> Any:
    """The JSON at the local address ``url`` (loopback only), or :class:`GridError` saying why not."""
    if not isinstance(url, str) or not _LOCAL_URL.match(url):
        raise GridError(f"{url!r} is not a local address (http://127.0.0.1, http://localhost or http://[::1])")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback http checked above
            raw = response.read(MAX_BYTES + 1)
    except OSError as exc:
        raise GridError(f"{url} cannot be read: {exc}") from None
    return _json(raw, url)


def _json(raw: bytes, where: str) -> Any:
    """``raw`` (read from ``where``, at most one byte over the limit) as JSON, or :class:`GridError`."""
    if len(raw) > MAX_BYTES:
        raise GridError(f"{where} gives more than {MAX_BYTES} bytes")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise GridError(f"{where} is not valid JSON: {exc}") from None


def builtin_profile(grid: Mapping[str, Any]) -> WeeklyProfile:
    """The weekly profile of the site's ``grid`` section (its quiet and busy hours, else the defaults)."""
    return WeeklyProfile(grid.get("quiet_hours", DEFAULT_QUIET), grid.get("busy_hours", DEFAULT_BUSY))


def load_signal(grid: Mapping[str, Any], *, read_file: Callable[[str], Any] = read_json_file,
                read_url: Callable[[str], Any] = read_json_url) -> Signal:
    """The signal the site's ``grid`` section describes, read now.

    A source that cannot be read falls back to the built-in profile; an override that cannot be read
    is ignored; either way ``warning`` says what went wrong, for administrators.
    """
    profile = builtin_profile(grid)
    kind = grid.get("source", "builtin")
    source: WeeklyProfile | SlotTable = profile
    name, warnings = "builtin", []
    if kind in ("file", "url"):
        where = grid.get(kind, "")
        try:
            source = parse_slots(read_file(where) if kind == "file" else read_url(where))
            name = kind
        except GridError as exc:
            warnings.append(f"The grid signal from {where or '(no ' + kind + ' given)'} cannot be used ({exc}); "
                            "the built-in weekly profile is used instead.")
    override = None
    if grid.get("override_file") and Path(grid["override_file"]).exists():
        try:
            override = parse_override(read_file(grid["override_file"]))
        except GridError as exc:
            warnings.append(f"The grid override is ignored: {exc}")
    return Signal(source, name, override, " ".join(warnings))


def check_interval(grid: Mapping[str, Any]) -> int:
    """Seconds between two checks of the releasing service."""
    return int(grid.get("check_interval", DEFAULT_CHECK_INTERVAL))


def slots_json(slots: Sequence[Slot]) -> list[dict[str, Any]]:
    """``slots`` as JSON-ready dictionaries (ISO times, level or null)."""
    return [{"start": s.start.isoformat(timespec="seconds"), "end": s.end.isoformat(timespec="seconds"),
             "level": s.level} for s in slots]
