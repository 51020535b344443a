"""Data sets on the shelf: the site file's ``datasets``, the generated samples, who may read what.

The pure tests check validation, the samples, the catalogue and ``~/datasets`` in a temporary home; the
catalogue page is tested on the running hub. Who reads what, as real Unix users, is in
``tests/security/test_datasets_access.py``.
"""

from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path

import pytest
import requests
import yaml
from aifl_hub import datasets
from aifl_hub.procs import LabError
from aifl_hub.site import SiteError, validate_site
from aifl_notebook import datasets as session_datasets
from conftest import BASE, Hub

SITE = Path(__file__).resolve().parents[1] / "hub_config" / "site.yaml"

NO_ACCESS = "Je hebt geen toegang: deze dataset is alleen voor leden van Universitair Medisch Centrum Groningen"


@pytest.fixture
def site() -> dict:
    return yaml.safe_load(SITE.read_text())


def _set(site: dict, name: str) -> dict:
    return next(d for d in site["datasets"] if d["name"] == name)


def test_the_shipped_site_has_an_open_and_a_controlled_sample():
    site = validate_site(yaml.safe_load(SITE.read_text()))
    assert {d["name"]: (d["access"], d.get("organisations")) for d in site["datasets"]} == {
        "vehicles": ("open", None), "cohort": ("controlled", ["umcg"])}


@pytest.mark.parametrize(("mutate", "key", "words"), [
    (lambda s: _set(s, "cohort").update(organisations=["lifelines"]), "datasets[cohort].organisations",
     "'lifelines' is not one of organisations.list"),
    (lambda s: _set(s, "cohort").update(name="Cohort Study"), "datasets[Cohort Study].name", "does not match"),
    (lambda s: _set(s, "cohort").update(name="a" * 25), f"datasets[{'a' * 25}].name", "does not match"),
    (lambda s: _set(s, "cohort").update(location="srv/cohort"), "datasets[cohort].location", "does not match"),
    (lambda s: _set(s, "cohort").update(location="/srv/aifl/../../etc/x"), "datasets[cohort].location", "'..'"),
    (lambda s: _set(s, "cohort").update(location="/srv"), "datasets[cohort].location", "two levels below"),
    (lambda s: _set(s, "cohort").update(location="/home/shared/cohort"), "datasets[cohort].location",
     "must not lie under /home"),
    (lambda s: _set(s, "cohort").update(location="/tmp/cohort"), "datasets[cohort].location", "under /tmp"),
    (lambda s: _set(s, "cohort").update(location="/var/lib/aifl/cohort"), "datasets[cohort].location",
     "under /var/lib/aifl"),
    (lambda s: _set(s, "cohort").update(location="/srv/aifl/datasets/vehicles/inner"), "datasets[cohort].location",
     "overlaps the location of data set 'vehicles'"),
    (lambda s: _set(s, "cohort").update(name="vehicles"), "datasets[vehicles].name", "listed more than once"),
    (lambda s: _set(s, "cohort").pop("organisations"), "datasets[cohort].organisations",
     "needs the organisations"),
    (lambda s: _set(s, "vehicles").update(organisations=["umcg"]), "datasets[vehicles].organisations",
     "leave organisations out"),
    (lambda s: _set(s, "cohort").update(access="members"), "datasets[cohort].access", "is not one of"),
    (lambda s: _set(s, "cohort").update(sample="census"), "datasets[cohort].sample", "is not one of"),
    (lambda s: _set(s, "cohort").pop("licence"), "datasets[cohort]", "'licence' is a required property"),
    (lambda s: _set(s, "cohort")["description"].pop("nl"), "datasets[cohort].description", "'nl' is a required"),
])
def test_a_bad_data_set_names_the_entry_and_the_problem(site, mutate, key, words):
    mutate(site)
    with pytest.raises(SiteError) as caught:
        validate_site(site)
    assert caught.value.key == key, caught.value
    assert words in caught.value.problem


def test_the_samples_are_the_same_bytes_every_time_and_say_they_are_synthetic(site):
    for dataset in site["datasets"]:
        first, again = datasets.sample_files(dataset), datasets.sample_files(copy.deepcopy(dataset))
        assert first == again
        assert "Synthetic data" in first["README.md"] and "synthetische gegevens" in first["README.md"]
    cohort = datasets.sample_files(_set(site, "cohort"))
    people = cohort["participants.csv"].splitlines()
    assert people[0] == "participant_id,sex,birth_year,baseline_date,province" and len(people) == 301
    assert all(line.startswith("SYN") for line in people[1:])
    visits = [line.split(",") for line in cohort["visits.csv"].splitlines()[1:]]
    assert {row[0] for row in visits} <= {line.split(",")[0] for line in people[1:]}
    vehicles = datasets.sample_files(_set(site, "vehicles"))["vehicles.csv"].splitlines()
    assert vehicles[0].startswith("kenteken,merk,voertuigsoort") and len(vehicles) == 501
    assert len({line.split(",")[0] for line in vehicles[1:]}) == 500  # every plate once


def test_the_catalogue_tells_each_visitor_what_they_may_read(site):
    site = validate_site(site)
    readable = {org: {d["name"]: d["readable"] for d in datasets.catalogue(site, org, "nl")}
                for org in ("umcg", "noorderveld", None)}
    assert readable == {"umcg": {"vehicles": True, "cohort": True},
                        "noorderveld": {"vehicles": True, "cohort": False},
                        None: {"vehicles": True, "cohort": False}}
    cohort = datasets.catalogue(site, None, "nl")[1]
    assert cohort["organisations"] == ["Universitair Medisch Centrum Groningen"]
    assert cohort["licence"].startswith("Gecontroleerde toegang")


def test_lab_up_keeps_the_helpers_members_and_adds_the_confirmed_ones(site):
    cohort = _set(site, "cohort")
    members = {"ann": "umcg", "bob": "noorderveld", "eve": "umcg"}
    current = ["bob", "carl", "gone"]  # bob moved to another organisation; carl was added through the hub
    lab = {"ann", "bob", "carl"}  # eve and gone have no lab account (any more)
    assert datasets.group_members(cohort, current, members, lab) == ["ann", "carl"]
    settings = json.loads(datasets.helper_settings(validate_site(site)))
    assert settings["sets"] == {"aifl-ds-cohort": ["umcg"]} and "noorderveld" in settings["organisations"]


def test_lab_up_refuses_a_location_below_a_folder_others_may_write(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    location = shared / "data" / "cohort"
    with pytest.raises(LabError, match="only root may write") as refused:
        datasets._check_parents(location)
    named = Path(str(refused.value).split(" (above", 1)[0])
    assert named in location.parents and named.stat().st_mode & 0o022  # the first folder others may write
    assert not (shared / "data").exists()


def test_sealing_makes_a_data_set_root_owned_and_read_only_without_following_links(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not part of the data set")
    outside.chmod(0o600)
    location = tmp_path / "set"
    (location / "part").mkdir(parents=True)
    (location / "part" / "rows.csv").write_text("a,b\n")
    (location / "part" / "rows.csv").chmod(0o666)
    (location / "elsewhere").symlink_to(outside)
    datasets._seal(location, 0, 0o550)
    assert stat.S_IMODE(location.stat().st_mode) == 0o550
    assert stat.S_IMODE((location / "part").stat().st_mode) == 0o555
    assert stat.S_IMODE((location / "part" / "rows.csv").stat().st_mode) == 0o444
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600


def _catalogue_file(tmp_path: Path, site: dict) -> tuple[Path, dict[str, str]]:
    places = {}
    for dataset in site["datasets"]:
        place = tmp_path / "shelf" / dataset["name"]
        place.mkdir(parents=True)
        dataset["location"] = places[dataset["name"]] = str(place)
    path = tmp_path / "datasets.json"
    path.write_text(datasets.session_catalogue(site))  # temporary locations: not a valid site file
    return path, places


def test_a_session_links_what_the_user_may_read_and_explains_the_rest(site, tmp_path, monkeypatch):
    catalogue, places = _catalogue_file(tmp_path, site)
    home = tmp_path / "home"
    (home / "datasets").mkdir(parents=True)
    (home / "datasets" / "cohort").symlink_to(places["cohort"])  # made by an earlier session, access since lost
    (home / "datasets" / "mine").mkdir()  # the user's own folder stays
    monkeypatch.setattr(session_datasets, "readable", lambda location: location == places["vehicles"])
    access = session_datasets.install_datasets(home, catalogue, "nl")
    assert access == {"vehicles": True, "cohort": False}
    assert os.readlink(home / "datasets" / "vehicles") == places["vehicles"]
    assert not (home / "datasets" / "cohort").is_symlink() and not (home / "datasets" / "cohort").exists()
    assert (home / "datasets" / "mine").is_dir()
    readme = (home / "datasets" / "README.md").read_text()
    assert "Je hebt toegang: ~/datasets/vehicles (alleen-lezen)." in readme
    assert NO_ACCESS in readme
    assert "Licentie: Gecontroleerde toegang" in readme
    english = session_datasets.install_datasets(home, catalogue, "en")
    assert english == access
    assert "You do not have access" in (home / "datasets" / "README.md").read_text()


def test_a_session_never_touches_a_datasets_link_or_a_users_own_entry(site, tmp_path, monkeypatch):
    catalogue, places = _catalogue_file(tmp_path, site)
    monkeypatch.setattr(session_datasets, "readable", lambda location: True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "datasets").symlink_to(elsewhere)
    assert session_datasets.install_datasets(linked, catalogue, "en") == {}
    assert list(elsewhere.iterdir()) == []
    own = tmp_path / "own"
    (own / "datasets" / "vehicles").mkdir(parents=True)
    session_datasets.install_datasets(own, catalogue, "en")
    assert (own / "datasets" / "vehicles").is_dir() and not (own / "datasets" / "vehicles").is_symlink()
    assert os.readlink(own / "datasets" / "cohort") == places["cohort"]


# --- on the running lab (access as real Unix users: tests/security/test_datasets_access.py) ---------------

@pytest.mark.cluster
def test_the_catalogue_page_tells_a_user_what_they_may_read(hub: Hub, users):
    _, _, session = users.with_login("dc", org="noorderveld")
    page = session.get(f"{BASE}/hub/aifl/datasets", headers={"Accept-Language": "en"}, timeout=30)
    assert page.status_code == 200
    assert 'id="dataset-cohort"' in page.text and "Controlled access" in page.text
    cohort = page.text.split('id="dataset-cohort"', 1)[1]
    assert 'data-readable="no"' in cohort and "You do not have access" in cohort
    vehicles = page.text.split('id="dataset-vehicles"', 1)[1].split('id="dataset-cohort"', 1)[0]
    assert 'data-readable="yes"' in vehicles and "~/datasets/vehicles" in vehicles
    assert requests.get(f"{BASE}/hub/aifl/datasets", timeout=30, allow_redirects=False).status_code in (302, 303)
