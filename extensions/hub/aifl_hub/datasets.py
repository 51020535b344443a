"""Data sets on the shelf: read-only folders from the site file's ``datasets``, enforced by file permissions.

Each data set has a name, a description and a licence (Dutch and English), a ``location`` and an
``access``: ``open`` (every lab user may read it) or ``controlled`` (only confirmed members of the listed
organisations). The interface never decides who reads what; the file system does:

* every location is root-owned and read-only (folders 0555, files 0444); an open set's folder is 0555,
  a controlled set's folder is ``root:aifl-ds-<name>`` 0550, so nobody else can even list it;
* the Unix group ``aifl-ds-<name>`` holds exactly the confirmed members of the listed organisations
  (one group per data set, so a set may name several organisations without ACLs). ``lab up`` sets the
  members from the hub's confirmed memberships (:func:`install`); the root helper
  ``aifl-datasets-access`` (:mod:`aifl_hub.datasets_access`) updates one person when an administrator
  confirms or removes them. Slurm jobs get a user's groups when they start: a session started after a
  change sees it.

``lab up`` also publishes the catalogue for sessions (``etc/aifl/datasets.json`` in the notebook
environment), from which each session makes ``~/datasets`` (:mod:`aifl_notebook.datasets`), and the hub
shows it on ``/hub/aifl/datasets`` (:mod:`aifl_hub.datasets_page`). ``sample`` (the embedded lab only)
makes ``lab up`` write a small generated data set: a vehicle register's shape (open) or a cohort study's
(controlled, entirely synthetic), the same bytes every time.
"""

from __future__ import annotations

import csv
import grp
import io
import json
import os
import pwd
import random
import re
import stat
from collections.abc import Iterable, Mapping
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from .i18n import N_
from .procs import LabError, read_own_file, run, write_file
from .site import Site

GROUP_PREFIX = "aifl-ds-"
SETTINGS_FILE = Path("/etc/aifl/datasets.json")  # the access helper's settings (root-owned)
SESSION_FILE = "datasets.json"  # in <environment>/etc/aifl, readable by all
USER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
ACCESS_LABELS = {"open": N_("Open to all users"), "controlled": N_("Controlled access")}


def group_name(dataset: Mapping[str, Any]) -> str:
    """The Unix group whose members may read a controlled data set."""
    return f"{GROUP_PREFIX}{dataset['name']}"


def controlled(site: Site) -> list[dict[str, Any]]:
    """The data sets with controlled access."""
    return [d for d in site.get("datasets", []) if d["access"] == "controlled"]


def text(value: str | Mapping[str, str], lang: str) -> str:
    """A site-file text (one string or ``{en, nl}``) in ``lang``."""
    return value if isinstance(value, str) else value.get(lang, value["en"])


def may_read(dataset: Mapping[str, Any], org: str | None) -> bool:
    """Whether a member of ``org`` (None: no confirmed organisation) may read ``dataset``."""
    return dataset["access"] == "open" or (org is not None and org in dataset.get("organisations", []))


def organisation_labels(site: Site, names: Iterable[str], lang: str) -> list[str]:
    """The display names of the organisations ``names`` in ``lang``."""
    by_name = {o["name"]: o for o in site.get("organisations", {}).get("list", [])}
    return [text(by_name[n]["display_name"], lang) if n in by_name else n for n in names]


def catalogue(site: Site, org: str | None, lang: str) -> list[dict[str, Any]]:
    """Every data set as the hub's catalogue shows it to a member of ``org``, in ``lang``."""
    return [{"name": d["name"], "description": text(d["description"], lang), "licence": text(d["licence"], lang),
             "access": d["access"], "organisations": organisation_labels(site, d.get("organisations", []), lang),
             "readable": may_read(d, org), "path": f"~/datasets/{d['name']}"}
            for d in site.get("datasets", [])]


def session_catalogue(site: Site) -> str:
    """The catalogue for sessions (JSON): what each data set is, where it lies and who may read it."""
    sets = [{"name": d["name"], "description": d["description"], "licence": d["licence"],
             "location": d["location"], "access": d["access"],
             "organisations": {n: {lang: organisation_labels(site, [n], lang)[0] for lang in ("en", "nl")}
                               for n in d.get("organisations", [])}}
            for d in site.get("datasets", [])]
    return json.dumps({"datasets": sets}, indent=1, ensure_ascii=False) + "\n"


def helper_settings(site: Site) -> str:
    """``/etc/aifl/datasets.json``: the lab's group, the organisations and which ones each data set group admits."""
    return json.dumps({"group": site["users"]["group"],
                       "organisations": [o["name"] for o in site.get("organisations", {}).get("list", [])],
                       "sets": {group_name(d): d["organisations"] for d in controlled(site)}}, indent=1) + "\n"


# --- generated samples (the embedded lab) ---------------------------------------------------------------

def _csv(header: list[str], rows: Iterable[Iterable[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def _vehicles(rng: random.Random, count: int = 500) -> dict[str, str]:
    kinds = {"Personenauto": (["Volkswagen", "Kia", "Toyota", "Peugeot", "Renault", "Tesla", "Skoda"], 900, 2100),
             "Bedrijfsauto": (["Ford", "Mercedes-Benz", "Renault", "Iveco"], 1500, 3500),
             "Motorfiets": (["Yamaha", "Honda", "BMW", "Kawasaki"], 120, 300),
             "Landbouwtrekker": (["John Deere", "Fendt", "New Holland", "Claas"], 3000, 9000)}
    fuels = ["Benzine", "Diesel", "Elektriciteit", "Hybride"]
    rows = []
    for number in range(count):
        kind = rng.choices(list(kinds), weights=[70, 15, 10, 5])[0]
        makes, low, high = kinds[kind]
        fuel = "Diesel" if kind == "Landbouwtrekker" else rng.choices(fuels, weights=[50, 20, 20, 10])[0]
        first = date(2000, 1, 1) + timedelta(days=rng.randrange(9400))
        plate = f"{chr(65 + number // 260 % 26)}{chr(65 + number // 10 % 26)}-{number % 10}{rng.randrange(100):02d}-X"
        rows.append([plate, rng.choice(makes), kind, fuel, first.isoformat(), rng.randrange(low, high, 5)])
    return {"vehicles.csv": _csv(["kenteken", "merk", "voertuigsoort", "brandstof", "datum_eerste_toelating",
                                  "massa_ledig_voertuig_kg"], rows)}


def _cohort(rng: random.Random, count: int = 300) -> dict[str, str]:
    people, visits = [], []
    for number in range(1, count + 1):
        pid = f"SYN{number:05d}"
        sex, born = rng.choice(["F", "M"]), rng.randrange(1940, 2005)
        start = date(2007, 1, 1) + timedelta(days=rng.randrange(2500))
        people.append([pid, sex, born, start.isoformat(), rng.choice(["Groningen", "Drenthe", "Friesland"])])
        bmi, systolic, smoker = rng.gauss(26, 4), rng.gauss(125, 15), rng.random() < 0.2
        for visit in range(1, rng.randrange(2, 5)):
            when = start + timedelta(days=(visit - 1) * 365 * 5 + rng.randrange(-60, 60))
            bmi, systolic = bmi + rng.gauss(0.3, 0.8), systolic + rng.gauss(1.5, 5)
            visits.append([pid, visit, when.isoformat(), round(systolic), round(systolic * 0.62 + rng.gauss(0, 5)),
                           f"{bmi:.1f}", "yes" if smoker else "no", rng.randrange(1, 6)])
    return {"participants.csv": _csv(["participant_id", "sex", "birth_year", "baseline_date", "province"], people),
            "visits.csv": _csv(["participant_id", "visit", "date", "systolic_bp", "diastolic_bp", "bmi", "smoker",
                                "self_rated_health_1_5"], visits)}


SAMPLES = {"vehicle-register": _vehicles, "cohort": _cohort}
SYNTHETIC_NOTE = ("**Synthetic data / synthetische gegevens.** Generated by AI Factory Lab for trying things out; "
                  "no row describes a real person or vehicle. / Gegenereerd door AI Factory Lab om mee te oefenen; "
                  "geen rij beschrijft een echt persoon of voertuig.")


def sample_files(dataset: Mapping[str, Any]) -> dict[str, str]:
    """The files of a generated sample: its CSV files and a README.md (the same bytes on every call)."""
    files = SAMPLES[dataset["sample"]](random.Random(f"aifl-{dataset['sample']}"))  # noqa: S311 - not secret
    readme = [f"# {dataset['name']}", "", SYNTHETIC_NOTE, "",
              text(dataset["description"], "nl"), "", text(dataset["description"], "en"), "",
              f"Licentie / licence: {text(dataset['licence'], 'nl')} / {text(dataset['licence'], 'en')}", "",
              "Files / bestanden: " + ", ".join(sorted(files)), ""]
    return {**files, "README.md": "\n".join(readme)}


# --- lab up (root) --------------------------------------------------------------------------------------

def _check_parents(location: Path) -> None:
    """Every existing folder above ``location`` is root's and writable by root only; missing ones are made so."""
    here = Path("/")
    for part in location.parent.parts[1:]:
        here = here / part
        try:
            info = here.lstat()
        except FileNotFoundError:
            here.mkdir(mode=0o755)
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
            raise LabError(f"{here} (above a data set's location) must be a folder of root that only root may "
                           "write; nothing of the data sets was changed there")


def _seal(location: Path, gid: int, top_mode: int) -> None:
    """Make ``location`` root-owned and read-only (links are never followed), its top folder ``top_mode``."""
    for folder, dirs, files in os.walk(location):
        for name in dirs + files:
            path = os.path.join(folder, name)
            entry = os.lstat(path)
            os.chown(path, 0, 0, follow_symlinks=False)
            if stat.S_ISDIR(entry.st_mode):
                os.chmod(path, 0o555)  # noqa: S103 - read-only; the top folder decides who gets in
            elif stat.S_ISREG(entry.st_mode):
                os.chmod(path, 0o444)
    os.chown(location, 0, gid)
    os.chmod(location, top_mode)


def _ensure_group(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        run(["groupadd", "--system", name])
        return grp.getgrnam(name).gr_gid


def group_members(dataset: Mapping[str, Any], current: Iterable[str], members: Mapping[str, str],
                  lab_accounts: set[str]) -> list[str]:
    """Who a controlled data set's group should hold after ``lab up``.

    The confirmed members (``members``: user -> organisation) of its organisations join; of those in the
    group now (``current``, put there by the access helper) a confirmed member of another organisation
    leaves, and so does anything that is not a lab account; the rest stay.
    """
    admitted = set(dataset["organisations"])
    keep = {user for user in current if user in lab_accounts and (user not in members or members[user] in admitted)}
    join = {user for user, org in members.items() if org in admitted and user in lab_accounts}
    return sorted(user for user in keep | join if USER_NAME.fullmatch(user))


def _lab_accounts(group: str) -> set[str]:
    lab = grp.getgrnam(group)
    return {e.pw_name for e in pwd.getpwall() if e.pw_uid >= 1000 and (e.pw_name in lab.gr_mem
                                                                        or e.pw_gid == lab.gr_gid)}


def install(site: Site, helper_settings_path: Path = SETTINGS_FILE) -> list[str]:
    """Set up every data set (run by ``lab up`` as root); return what was done, one line each.

    Groups for controlled sets, their members from the hub's confirmed memberships, generated samples,
    root ownership and read-only permissions, and the access helper's settings.
    """
    write_file(helper_settings_path, helper_settings(site), mode=0o644)
    raw = read_own_file(Path(site["hub"]["state_dir"]) / "organisation-members.json") or "{}"
    try:
        members = {str(k): str(v) for k, v in json.loads(raw).items()}
    except (ValueError, AttributeError):
        members = {}
    lab_accounts = _lab_accounts(site["users"]["group"])
    done = []
    for dataset in site.get("datasets", []):
        location = Path(dataset["location"])
        _check_parents(location)
        location.mkdir(mode=0o755, exist_ok=True)
        if not stat.S_ISDIR(location.lstat().st_mode):  # a link is never followed
            raise LabError(f"the data set location {location} is a link or not a folder")
        if "sample" in dataset and site["cluster"]["mode"] == "embedded":
            for name, content in sample_files(dataset).items():
                write_file(location / name, content, mode=0o444)
        if dataset["access"] == "controlled":
            group = group_name(dataset)
            gid = _ensure_group(group)
            wanted = group_members(dataset, grp.getgrgid(gid).gr_mem, members, lab_accounts)
            run(["gpasswd", "-M", ",".join(wanted), group])
            _seal(location, gid, 0o550)
            done.append(f"{dataset['name']}: controlled, {location} for group {group} ({len(wanted)} members)")
        else:
            _seal(location, 0, 0o555)
            done.append(f"{dataset['name']}: open to all users, {location}")
    return done
