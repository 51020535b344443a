"""Workshops of the expertise centre: the model, the store, checking a new workshop, its Slurm reservation.

A trainer creates a workshop (title, window, seats, the profile participants get, course material).
:func:`validate_new` checks the form and :func:`plan_reservation` sizes the reservation for the seats
from what the partition's nodes have (``sinfo``); both refuse with a :class:`WorkshopError` naming the
field, in the trainer's language, before anything is created. Reservations are by cores for seats
without a GPU and by whole nodes for seats with a GPU or a share of one (gres/shard): Slurm 22.05
cannot reserve a number of GPUs.

Reservations are made and removed through the root helper ``aifl-reservation``
(:mod:`.workshop_reservation`), the only thing about reservations the hub may run as root.

Workshops live in ``<state_dir>/workshops.json`` (0600, written atomically), so a hub restart keeps them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from .availability import gres_count
from .i18n import N_, gettext_for
from .options import profiles_by_slug
from .site import Site
from .slurm import run_argv

RESERVATION_PREFIX = "aifl-ws-"
RESERVATION_HELPER = "/usr/local/sbin/aifl-reservation"
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I/L: easy to read out and type
CODE_LENGTH = 8
ID_PATTERN = re.compile(r"^[a-z0-9]{6}$")
PAST_START_ALLOWED = timedelta(minutes=15)  # a workshop that "starts now" may name the current minute
WARM_LEAD = timedelta(minutes=10)  # warm seats are started this long before the window opens
DEFAULT_TRAINER_GROUP = "trainers"
_TITLE_MAX = 120
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIME = re.compile(r"^\d{2}:\d{2}$")
_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SECONDS = "%Y-%m-%dT%H:%M:%S"

FIELD_LABELS = {"title": N_("Title"), "date": N_("Date"), "start": N_("Start time"), "end": N_("End time"),
                "seats": N_("Seats"), "warm": N_("Warm seats"), "profile": N_("What participants get"),
                "material": N_("Course material")}


class WorkshopError(ValueError):
    """A workshop cannot be made (or joined) as asked; ``field`` is the form field, ``message`` is for people."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(message)


# ---------------------------------------------------------------- settings

@dataclass(frozen=True)
class Settings:
    """The site's ``workshops`` section with its defaults."""

    organisation: str
    profiles: tuple[str, ...]
    trainer_group: str = DEFAULT_TRAINER_GROUP
    max_seats: int = 64
    max_hours: int = 10
    grace_days: int = 7
    material_dir: str = ""


def settings(site: Site) -> Settings | None:
    """The workshop settings of ``site`` (None when the site has no workshops)."""
    raw = site.get("workshops")
    if not raw:
        return None
    return Settings(organisation=raw["organisation"], profiles=tuple(raw["profiles"]),
                    trainer_group=raw.get("trainer_group", DEFAULT_TRAINER_GROUP),
                    max_seats=raw.get("max_seats", 64), max_hours=raw.get("max_hours", 10),
                    grace_days=raw.get("grace_days", 7), material_dir=raw.get("material_dir", ""))


def check_site(site: Site) -> list[str]:
    """Problems of the ``workshops`` section against the rest of the site file (empty when none)."""
    found = settings(site)
    if found is None:
        return []
    problems = []
    orgs = {o["name"]: o for o in site.get("organisations", {}).get("list", [])}
    if found.organisation not in orgs:
        problems.append(f"workshops.organisation: {found.organisation!r} is not in organisations.list")
    elif orgs[found.organisation]["category"] != "training":
        problems.append(f"workshops.organisation: {found.organisation!r} is not of category 'training'")
    known = profiles_by_slug(site)
    problems += [f"workshops.profiles: there is no profile {slug!r} in spawner.profile_list"
                 for slug in found.profiles if slug not in known]
    return problems


def own_material_folder(site: Site, workshop_id: str) -> Path:
    """Where a workshop's uploaded material is kept: ``<environments_dir>/.workshops/<id>/material``."""
    return Path(site["spawner"]["environments_dir"]) / ".workshops" / workshop_id / "material"


def materials(folder: str) -> list[str]:
    """The course materials on offer: the sub-folders of ``folder`` (sorted; none when it does not exist)."""
    try:
        return sorted(p.name for p in Path(folder).iterdir() if p.is_dir() and _FOLDER.fullmatch(p.name)
                      and not p.name.startswith((".", "_")))
    except OSError:
        return []


# ---------------------------------------------------------------- the model

@dataclass
class Participant:
    """Someone who joined: a temporary account (made from a display name) or an existing one.

    A warm seat is a temporary account whose session was started before anyone joined: until someone
    takes it, its ``display_name`` and ``joined_at`` are empty.
    """

    name: str
    display_name: str
    temporary: bool
    joined_at: str

    @property
    def waiting(self) -> bool:
        """A warm seat nobody has taken yet."""
        return not self.joined_at


@dataclass
class NewWorkshop:
    """A checked request for a workshop (before its reservation exists)."""

    title: str
    starts_at: datetime
    ends_at: datetime
    seats: int
    profile: str
    material: str
    warm: int = 0  # seats whose sessions start before the window opens


@dataclass(kw_only=True)
class Workshop(NewWorkshop):
    """One workshop: what the trainer asked for and what it became (local times, as Slurm reads them)."""

    id: str
    folder: str  # where the material goes in each participant's home
    trainer: str
    code: str
    partition: str
    created_at: datetime
    ended_at: datetime | None = None
    expired: bool = False  # its temporary accounts are disabled
    participants: dict[str, Participant] = field(default_factory=dict)
    warm_started: bool = False
    own_notebooks: int = 0  # the trainer uploaded the material (this many notebooks); else ``material`` is a folder

    @property
    def reservation(self) -> str:
        """The Slurm reservation of the window."""
        return RESERVATION_PREFIX + self.id

    @property
    def group(self) -> str:
        """The hub group of its participants."""
        return f"workshop-{self.id}"

    @property
    def trainer_role(self) -> str:
        """The hub role that lets its trainer see its participants and their servers."""
        return f"workshop-{self.id}-trainer"

    def finished(self, now: datetime) -> bool:
        """Ended by the trainer, or past its window."""
        return self.ended_at is not None or now >= self.ends_at

    def warm_due(self, now: datetime) -> bool:
        """Its warm seats should be started now (and have not been)."""
        return self.warm > 0 and not self.warm_started and not self.finished(now) and \
            now >= self.starts_at - WARM_LEAD

    def free_warm_seat(self) -> str | None:
        """The account of a warm seat nobody has taken, if any."""
        return next((p.name for p in self.participants.values() if p.waiting), None)

    def temporary_name(self) -> str:
        """The next free temporary account name (``ws-<id>-NN``)."""
        n = 1
        while f"ws-{self.id}-{n:02d}" in self.participants:
            n += 1
        return f"ws-{self.id}-{n:02d}"

    def reaches(self, participant: Participant) -> bool:
        """Whether the trainer may read and write ``participant``'s workshop folder.

        Yes for a temporary account (its home was made for the workshop) and for any account when the folder
        carries the workshop's id. A workshop stored before folders carried it has a folder named after its
        title only, which may be a member's own folder: never reached in an own account.
        """
        return participant.temporary or self.folder.endswith(f"-{self.id}")

    def closes_at(self) -> datetime:
        """When the workshop stopped or stops: ended by the trainer, else the end of the window."""
        return self.ended_at or self.ends_at

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready mapping (:meth:`from_json` reads it back)."""
        data = asdict(self)
        for key in ("starts_at", "ends_at", "created_at", "ended_at"):
            data[key] = data[key].strftime(_SECONDS) if data[key] else None
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Workshop:
        """Read what :meth:`to_json` wrote."""
        values = dict(data)
        for key in ("starts_at", "ends_at", "created_at", "ended_at"):
            values[key] = datetime.strptime(values[key], _SECONDS) if values.get(key) else None
        values["participants"] = {n: Participant(**p) for n, p in values.get("participants", {}).items()}
        return cls(**values)


def new_code() -> str:
    """A join code people can read out: eight letters and digits without look-alikes."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def normalise_code(code: str) -> str:
    """A typed code as stored: upper case, without spaces and dashes."""
    return re.sub(r"[\s-]+", "", code or "").upper()[:32]


def folder_name(title: str, workshop_id: str) -> str:
    """The workshop's home-folder name: its title made plain, and its id ("Intro to AI!" → "intro-to-ai-abc123").

    The id makes it a folder of this workshop only: never one of a member's own folders that happens to
    carry the title's name (which its trainer could otherwise read).
    """
    if not ID_PATTERN.fullmatch(workshop_id):
        raise ValueError(f"not a workshop id: {workshop_id!r}")
    plain = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", plain.lower()).strip("-")[:40].strip("-")
    return f"{slug or 'workshop'}-{workshop_id}"


# ---------------------------------------------------------------- the store

class WorkshopStore:
    """All workshops, kept in one JSON file (read at start, written through on every change)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._workshops: dict[str, Workshop] = {}
        if path.exists():
            data = json.loads(path.read_text())
            self._workshops = {w["id"]: Workshop.from_json(w) for w in data.get("workshops", [])}

    def save(self) -> None:
        """Write the file atomically (0600)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"workshops": [w.to_json() for w in self._workshops.values()]}, indent=1,
                          ensure_ascii=False)
        descriptor, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".workshops-")
        try:
            with os.fdopen(descriptor, "w") as out:
                out.write(body)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def all(self) -> list[Workshop]:
        """Every workshop, newest window first."""
        return sorted(self._workshops.values(), key=lambda w: w.starts_at, reverse=True)

    def get(self, workshop_id: str) -> Workshop | None:
        """The workshop with ``workshop_id``, if any."""
        return self._workshops.get(workshop_id)

    def by_code(self, code: str) -> Workshop | None:
        """The workshop whose join code is ``code`` (compared in constant time)."""
        wanted = normalise_code(code)
        found = None
        for workshop in self._workshops.values():
            if secrets.compare_digest(workshop.code.encode(), wanted.encode()):
                found = workshop
        return found

    def add(self, workshop: Workshop) -> None:
        """Keep a new workshop."""
        if workshop.id in self._workshops:
            raise ValueError(f"workshop {workshop.id} exists")
        self._workshops[workshop.id] = workshop
        self.save()

    def new_id(self) -> str:
        """An id no workshop has."""
        while True:
            candidate = "".join(secrets.choice("abcdefghijkmnpqrstuvwxyz23456789") for _ in range(6))
            if candidate not in self._workshops:
                return candidate

    def of_participant(self, name: str) -> list[Workshop]:
        """The workshops ``name`` joined."""
        return [w for w in self._workshops.values() if name in w.participants]

    def temporary_owner(self, name: str) -> Workshop | None:
        """The workshop a temporary account ``name`` was made for."""
        return next((w for w in self._workshops.values()
                     if name in w.participants and w.participants[name].temporary), None)


@cache
def store_for(state_dir: str) -> WorkshopStore:
    """The hub process's one store of ``state_dir``."""
    return WorkshopStore(Path(state_dir) / "workshops.json")


@dataclass(frozen=True)
class Seat:
    """How a participant's session in a running workshop is charged and placed."""

    workshop: str
    account: str
    qos: str
    reservation: str
    material: str  # absolute folder to copy from ("" for none)
    folder: str  # the folder in the home it is copied to


def seat_for(site: Site, user: str, profile: str, now: datetime | None = None) -> Seat | None:
    """``user``'s seat for a session of ``profile``: in a workshop they joined that has not finished."""
    found = settings(site)
    if found is None:
        return None
    now = now or datetime.now()
    store = store_for(site["hub"]["state_dir"])
    for workshop in store.of_participant(user):
        if workshop.profile == profile and not workshop.finished(now):
            org = next(o for o in site["organisations"]["list"] if o["name"] == found.organisation)
            qos = site["organisations"]["categories"][org["category"]]["session_qos"]
            if workshop.own_notebooks:
                material = str(own_material_folder(site, workshop.id))
            else:
                material = str(Path(found.material_dir) / workshop.material) if workshop.material else ""
            return Seat(workshop.id, found.organisation, qos, workshop.reservation, material, workshop.folder)
    return None


# ---------------------------------------------------------------- checking a new workshop

def validate_new(site: Site, form: Mapping[str, Any], now: datetime, lang: str,
                 offered_materials: Sequence[str]) -> NewWorkshop:
    """Check the trainer's form (``title date start end seats profile material``); raise :class:`WorkshopError`."""
    _ = gettext_for(lang)
    found = settings(site)
    if found is None:
        raise WorkshopError("", _("This site has no workshops."))

    def value(key: str) -> str:
        raw = form.get(key, "")
        if isinstance(raw, list):
            raw = raw[0] if len(raw) == 1 else ""
        return raw.strip() if isinstance(raw, str) else str(raw) if isinstance(raw, int) else ""

    title = value("title")
    if not title or len(title) > _TITLE_MAX or any(unicodedata.category(ch).startswith("C") for ch in title):
        raise WorkshopError("title", _("Give a title of 1 to {n} characters.").format(n=_TITLE_MAX))
    day, start, end = value("date"), value("start"), value("end")
    try:
        if not _DATE.fullmatch(day):
            raise ValueError
        datetime.strptime(day, "%Y-%m-%d")
    except ValueError:
        raise WorkshopError("date", _("Give the date as YYYY-MM-DD.")) from None
    moments = {}
    for key, text_value in (("start", start), ("end", end)):
        try:
            if not _TIME.fullmatch(text_value):
                raise ValueError
            moments[key] = datetime.strptime(f"{day} {text_value}", "%Y-%m-%d %H:%M")
        except ValueError:
            raise WorkshopError(key, _("Give the time as HH:MM, for example 09:30.")) from None
    starts_at, ends_at = moments["start"], moments["end"]
    if ends_at <= starts_at:  # an evening window past midnight ends the next day (a short one only)
        ends_at += timedelta(days=1)
        if ends_at - starts_at > timedelta(hours=found.max_hours):
            raise WorkshopError("end", _("The end time must be after the start time."))
    if ends_at <= now or starts_at < now - PAST_START_ALLOWED:
        raise WorkshopError("start", _("This window lies in the past. Choose a window that has not begun yet "
                                       "(or begins now)."))
    if ends_at - starts_at > timedelta(hours=found.max_hours):
        raise WorkshopError("end", _("A workshop lasts at most {hours} hours.").format(hours=found.max_hours))
    seats_text = value("seats")
    seats = int(seats_text) if re.fullmatch(r"[0-9]{1,4}", seats_text) else -1
    if not 1 <= seats <= found.max_seats:
        raise WorkshopError("seats", _("Give a number of seats from 1 to {n}.").format(n=found.max_seats))
    warm_text = value("warm") or "0"
    warm = int(warm_text) if re.fullmatch(r"[0-9]{1,4}", warm_text) else -1
    if not 0 <= warm <= seats:
        raise WorkshopError("warm", _("Give a number of warm seats from 0 to the number of seats."))
    profile = value("profile")
    if profile not in found.profiles or profile not in profiles_by_slug(site):
        raise WorkshopError("profile", _("Choose one of the offered profiles."))
    material = value("material")
    if material and material not in offered_materials:
        raise WorkshopError("material", _("Choose one of the offered course materials, or none."))
    # A window that began a moment ago starts now.
    return NewWorkshop(title, max(starts_at, now.replace(microsecond=0)), ends_at, seats, profile, material, warm)


# ---------------------------------------------------------------- sizing the reservation

@dataclass(frozen=True)
class Node:
    """What one node of a partition has (from ``sinfo``)."""

    name: str
    cpus: int
    memory_mb: int
    gpus: int
    shards: int = 0


def parse_sinfo(text: str) -> list[Node]:
    """Nodes from ``sinfo -h -N -o %N|%c|%m|%G`` (one line per node and partition)."""
    nodes: dict[str, Node] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4 or not parts[1].isdigit():
            continue
        gpus, shards = gres_count(parts[3]), gres_count(parts[3], "shard")
        memory = int(re.sub(r"\D", "", parts[2]) or 0)
        nodes[parts[0]] = Node(parts[0], int(parts[1]), memory, gpus, shards)
    return list(nodes.values())


@dataclass(frozen=True)
class ReservationPlan:
    """How many whole nodes (GPU seats) or cores (other seats) of ``partition`` the reservation holds."""

    partition: str
    nodes: int = 0
    cores: int = 0


def plan_reservation(override: Mapping[str, Any], seats: int, nodes: Sequence[Node], lang: str) -> ReservationPlan:
    """Size the reservation for ``seats`` sessions of a profile's ``slurm_override``; refuse when they cannot fit."""
    _ = gettext_for(lang)
    cpus, memory_mb, gpus = override["cpus"], override["memory_gb"] * 1024, override.get("gpus", 0)
    shards, partition = override.get("shards", 0), override["partition"]
    per_node = sorted(
        (min(n.cpus // cpus, n.memory_mb // memory_mb if memory_mb else n.cpus, n.gpus // gpus if gpus else n.cpus,
             n.shards // shards if shards else n.cpus)
         for n in nodes), reverse=True)
    room = sum(per_node)
    if seats > room:
        raise WorkshopError("seats", _("The cluster has room for at most {n} seats with this profile.").format(n=room))
    if not gpus and not shards:
        return ReservationPlan(partition, cores=seats * cpus)
    needed, total = 0, 0
    for fits in per_node:
        needed, total = needed + 1, total + fits
        if total >= seats:
            break
    return ReservationPlan(partition, nodes=needed)


async def partition_nodes(slurm_bin: str, partition: str) -> list[Node]:
    """The nodes of ``partition`` as Slurm sees them."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", partition):
        raise ValueError(f"not a partition name: {partition!r}")
    return parse_sinfo(await run_argv([f"{slurm_bin}/sinfo", "-h", "-N", "-p", partition, "-o", "%N|%c|%m|%G"]))


def reservation_argv(helper: Sequence[str], workshop: Workshop, plan: ReservationPlan, account: str,
                     now: datetime) -> list[str]:
    """The helper's command line that reserves ``plan`` for ``workshop``'s window."""
    start = "now" if workshop.starts_at <= now else workshop.starts_at.strftime(_SECONDS)
    size = f"nodes={plan.nodes}" if plan.nodes else f"cores={plan.cores}"
    return [*helper, "create", workshop.reservation, start, workshop.ends_at.strftime(_SECONDS), plan.partition,
            size, account]


def reserved_size(text: str) -> tuple[int, int]:
    """(nodes, cores) of a reservation from ``scontrol show reservation NAME``; (0, 0) when not shown."""
    nodes = re.search(r"\bNodeCnt=([0-9]+)", text)
    cores = re.search(r"\bCoreCnt=([0-9]+)", text)
    return (int(nodes.group(1)) if nodes else 0, int(cores.group(1)) if cores else 0)


def short_of(plan: ReservationPlan, nodes: int, cores: int) -> bool:
    """Slurm made the reservation smaller than planned (it does so silently when nodes are busy)."""
    return nodes < plan.nodes if plan.nodes else cores < plan.cores


def slurm_reason(stderr: str) -> str:
    """Slurm's complaint in a few words ("Requested nodes are busy")."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    for noise in ("aifl-reservation: ", "Error creating the reservation: ", "scontrol: error: "):
        last = last.replace(noise, "")
    return last.strip()[:200]
