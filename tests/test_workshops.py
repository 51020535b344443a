"""Unit tests of the workshop model, its store, the checks of a new workshop and the sizing of its reservation."""

from __future__ import annotations

import copy
import json
import stat
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from aifl_hub import workshop_reservation
from aifl_hub.options import validate_options
from aifl_hub.script import JobSpec, ScriptError, build_script
from aifl_hub.site import load_site
from aifl_hub.workshop_handlers import SITE_SETTING, trainer_roles, workshop_role
from aifl_hub.workshops import (
    CODE_ALPHABET,
    Node,
    Participant,
    ReservationPlan,
    Workshop,
    WorkshopError,
    WorkshopStore,
    check_site,
    folder_name,
    materials,
    new_code,
    normalise_code,
    parse_sinfo,
    plan_reservation,
    reservation_argv,
    reserved_size,
    seat_for,
    short_of,
    slurm_reason,
    store_for,
    validate_new,
)
from jupyterhub import handlers
from jupyterhub.apihandlers import default_handlers as api_routes
from test_hubconfig import configured
from traitlets.config import Config

REPO = Path(__file__).resolve().parents[1]
SITE = load_site(REPO / "hub_config" / "site.yaml")
NOW = datetime(2026, 11, 25, 9, 0, 0)
CPU = {"partition": "cpu", "gpus": 0, "cpus": 1, "memory_gb": 2, "hours": 4}
GPU = {"partition": "gpu", "gpus": 1, "cpus": 8, "memory_gb": 60, "hours": 4}
GPU_NODES = [Node(f"gpu0{i}", 64, 512 * 1024, 4) for i in range(1, 5)]
CPU_NODES = [Node("cpu01", 16, 64 * 1024, 0)]


def form(**changes: str) -> dict[str, str]:
    return {"title": "Intro to AI", "date": "2026-11-25", "start": "10:00", "end": "13:00", "seats": "12",
            "profile": "workshop-cpu", "material": "getting-started", **changes}


def workshop(**changes) -> Workshop:
    values = dict(id="abc123", title="Intro", starts_at=NOW, ends_at=NOW + timedelta(hours=3), seats=4,
                  profile="workshop-cpu", material="getting-started", folder="intro", trainer="tina",
                  code="ABCD2345", partition="cpu", created_at=NOW - timedelta(days=1))
    return Workshop(**{**values, **changes})


def test_a_good_form_is_accepted():
    new = validate_new(SITE, form(), NOW, "en", ["getting-started"])
    assert (new.title, new.seats, new.profile, new.material) == ("Intro to AI", 12, "workshop-cpu", "getting-started")
    assert (new.starts_at, new.ends_at) == (datetime(2026, 11, 25, 10), datetime(2026, 11, 25, 13))
    assert validate_new(SITE, form(material=""), NOW, "en", []).material == ""


def test_an_evening_window_past_midnight_ends_the_next_day():
    new = validate_new(SITE, form(start="22:30", end="00:30"), NOW, "en", ["getting-started"])
    assert (new.starts_at, new.ends_at) == (datetime(2026, 11, 25, 22, 30), datetime(2026, 11, 26, 0, 30))
    with pytest.raises(WorkshopError, match="end time must be after the start time"):  # 23 h: a slip, not a night
        validate_new(SITE, form(start="13:00", end="12:00"), NOW, "en", ["getting-started"])


def test_a_window_that_began_a_moment_ago_starts_now():
    new = validate_new(SITE, form(start="08:50"), NOW.replace(second=30), "en", ["getting-started"])
    assert new.starts_at == NOW.replace(second=30)


@pytest.mark.parametrize(("changes", "field"), [
    ({"title": ""}, "title"), ({"title": "x" * 121}, "title"), ({"title": "a\nb"}, "title"),
    ({"date": "25-11-2026"}, "date"), ({"date": "2026-02-30"}, "date"),
    ({"start": "9"}, "start"), ({"end": "24:00"}, "end"), ({"end": "09:59"}, "end"), ({"end": "10:00"}, "end"),
    ({"date": "2026-11-24"}, "start"), ({"start": "08:00", "end": "08:59"}, "start"),  # in the past
    ({"start": "08:30"}, "start"),  # begun longer ago than a moment
    ({"date": "2026-11-26", "start": "06:00", "end": "20:00"}, "end"),  # longer than max_hours
    ({"seats": "0"}, "seats"), ({"seats": "65"}, "seats"), ({"seats": "-1"}, "seats"), ({"seats": "2.5"}, "seats"),
    ({"seats": ""}, "seats"), ({"profile": "gpu-1"}, "profile"), ({"profile": "nope"}, "profile"),
    ({"material": "../etc"}, "material"), ({"material": "other"}, "material"),
])
def test_bad_forms_name_the_field(changes, field):
    with pytest.raises(WorkshopError) as caught:
        validate_new(SITE, form(**changes), NOW, "en", ["getting-started"])
    assert caught.value.field == field
    assert caught.value.message


def test_messages_come_in_dutch():
    with pytest.raises(WorkshopError) as caught:
        validate_new(SITE, form(seats="0"), NOW, "nl", [])
    assert caught.value.message == "Geef een aantal plekken van 1 tot en met 64."


def test_a_site_without_workshops_refuses():
    site = {k: v for k, v in SITE.items() if k != "workshops"}
    with pytest.raises(WorkshopError):
        validate_new(site, form(), NOW, "en", [])


def test_the_site_file_is_consistent_and_problems_are_named():
    assert check_site(SITE) == []
    site = copy.deepcopy(SITE)
    site["workshops"]["organisation"] = "umcg"
    site["workshops"]["profiles"] = ["workshop-cpu", "gone"]
    problems = check_site(site)
    assert any("not of category 'training'" in p for p in problems)
    assert any("'gone'" in p for p in problems)


def test_sinfo_is_read_per_node():
    text = "gpu01|64|524288|gpu:h200:4\ngpu02|64|524288|gpu:h200:4(S:0)\ncpu01|16|65536|(null)\nbad line\n"
    assert parse_sinfo(text) == [Node("gpu01", 64, 524288, 4), Node("gpu02", 64, 524288, 4),
                                 Node("cpu01", 16, 65536, 0)]


def test_shared_gpu_seats_fit_by_shards_and_reserve_whole_nodes():
    text = "gpu01|64|524288|gpu:h200:4,shard:32\ngpu02|64|524288|gpu:h200:4(S:0),shard:32(S:0)\n"
    nodes = parse_sinfo(text)
    assert nodes == [Node("gpu01", 64, 524288, 4, 32), Node("gpu02", 64, 524288, 4, 32)]
    share = {"partition": "gpu", "gpus": 0, "shards": 1, "cpus": 2, "memory_gb": 8, "hours": 4}
    assert plan_reservation(share, 32, nodes, "en") == ReservationPlan("gpu", nodes=1)
    assert plan_reservation(share, 33, nodes, "en") == ReservationPlan("gpu", nodes=2)
    with pytest.raises(WorkshopError, match="at most 64 seats"):
        plan_reservation(share, 65, nodes, "en")
    # Four CPU cores a seat: the cores, not the shards, limit a node to 16.
    assert plan_reservation({**share, "cpus": 4}, 17, nodes, "en") == ReservationPlan("gpu", nodes=2)


def test_cpu_seats_reserve_cores_and_gpu_seats_whole_nodes():
    assert plan_reservation(CPU, 12, CPU_NODES, "en") == ReservationPlan("cpu", cores=12)
    assert plan_reservation(GPU, 1, GPU_NODES, "en") == ReservationPlan("gpu", nodes=1)
    assert plan_reservation(GPU, 4, GPU_NODES, "en") == ReservationPlan("gpu", nodes=1)
    assert plan_reservation(GPU, 5, GPU_NODES, "en") == ReservationPlan("gpu", nodes=2)
    assert plan_reservation(GPU, 16, GPU_NODES, "en") == ReservationPlan("gpu", nodes=4)
    # Memory can be what limits a node: 200 GB seats, two per 512 GB node.
    assert plan_reservation({**GPU, "memory_gb": 200}, 3, GPU_NODES, "en") == ReservationPlan("gpu", nodes=2)


@pytest.mark.parametrize(("override", "seats", "nodes", "room"), [
    (CPU, 17, CPU_NODES, 16), (GPU, 17, GPU_NODES, 16), ({**GPU, "gpus": 4}, 5, GPU_NODES, 4), (GPU, 1, [], 0),
])
def test_too_many_seats_are_refused_with_the_room_there_is(override, seats, nodes, room):
    with pytest.raises(WorkshopError) as caught:
        plan_reservation(override, seats, nodes, "en")
    assert caught.value.field == "seats"
    assert f"at most {room} seats" in caught.value.message


def test_reservation_command_line():
    w = workshop(starts_at=NOW + timedelta(hours=1))
    argv = reservation_argv(["sudo", "-n", "/h"], w, ReservationPlan("cpu", cores=4), "expertise-centre", NOW)
    assert argv == ["sudo", "-n", "/h", "create", "aifl-ws-abc123", "2026-11-25T10:00:00", "2026-11-25T12:00:00",
                    "cpu", "cores=4", "expertise-centre"]
    started = reservation_argv(["/h"], w, ReservationPlan("gpu", nodes=2), "x", NOW + timedelta(hours=1))
    assert started[3] == "now" and started[6] == "nodes=2"


def test_a_silently_smaller_reservation_is_noticed():
    shown = ("ReservationName=aifl-ws-abc123 StartTime=2026-11-27T03:30:00\n   Nodes=gpu[02-04] NodeCnt=3 "
             "CoreCnt=192 Features=(null) PartitionName=gpu Flags=\n")
    assert reserved_size(shown) == (3, 192)
    assert short_of(ReservationPlan("gpu", nodes=4), 3, 192)
    assert not short_of(ReservationPlan("gpu", nodes=3), 3, 192)
    assert short_of(ReservationPlan("cpu", cores=20), 1, 16)
    assert reserved_size("") == (0, 0)
    assert slurm_reason("aifl-reservation: Error creating the reservation: Requested nodes are busy\n") == \
        "Requested nodes are busy"


@pytest.mark.parametrize("args", [
    ["aifl-ws-abc12", "now", "2026-11-25T10:00:00", "cpu", "cores=1", "expertise-centre"],  # name too short
    ["other-abc123", "now", "2026-11-25T10:00:00", "cpu", "cores=1", "expertise-centre"],  # not ours
    ["aifl-ws-abc123", "tomorrow", "2026-11-25T10:00:00", "cpu", "cores=1", "expertise-centre"],
    ["aifl-ws-abc123", "now", "2026-11-25 10:00:00", "cpu", "cores=1", "expertise-centre"],
    ["aifl-ws-abc123", "now", "2026-11-25T10:00:00", "debug", "cores=1", "expertise-centre"],
    ["aifl-ws-abc123", "now", "2026-11-25T10:00:00", "cpu", "cores=0", "expertise-centre"],
    ["aifl-ws-abc123", "now", "2026-11-25T10:00:00", "cpu", "gpus=1", "expertise-centre"],
    ["aifl-ws-abc123", "now", "2026-11-25T10:00:00", "cpu", "cores=1", "umcg"],
    ["aifl-ws-abc123", "now", "2026-11-25T10:00:00", "cpu", "cores=1 Flags=MAINT", "expertise-centre"],
    ["aifl-ws-abc123", "now", "2026-11-25T10:00:00", "cpu", "cores=1"],
])
def test_the_root_helper_refuses_anything_unexpected(args):
    settings = {"slurm_bin": "/usr/bin", "partitions": ["cpu", "gpu"], "accounts": ["expertise-centre"]}
    with pytest.raises(SystemExit) as caught:
        workshop_reservation.create_argv(args, settings)
    assert caught.value.code == 2


def test_the_root_helper_builds_one_scontrol_argv():
    settings = {"slurm_bin": "/usr/bin", "partitions": ["cpu", "gpu"], "accounts": ["expertise-centre"]}
    argv = workshop_reservation.create_argv(
        ["aifl-ws-abc123", "2026-11-25T10:00:00", "2026-11-25T12:00:00", "gpu", "nodes=2", "expertise-centre"],
        settings)
    assert argv == ["/usr/bin/scontrol", "create", "reservation", "ReservationName=aifl-ws-abc123",
                    "StartTime=2026-11-25T10:00:00", "EndTime=2026-11-25T12:00:00", "PartitionName=gpu",
                    "NodeCnt=2", "Accounts=expertise-centre"]


def test_codes_and_folders():
    codes = {new_code() for _ in range(50)}
    assert len(codes) == 50 and all(len(c) == 8 and set(c) <= set(CODE_ALPHABET) for c in codes)
    assert normalise_code(" abcd-2345 ") == "ABCD2345"
    assert folder_name("Intro to AI!", "abc123") == "intro-to-ai-abc123"
    assert folder_name("Één cursus: café", "abc123") == "een-cursus-cafe-abc123"
    assert folder_name("???", "abc123") == "workshop-abc123"
    assert len(folder_name("x" * 100, "abc123")) <= 40 + len("-abc123")


def test_materials_are_the_subfolders(tmp_path):
    for name in ("getting-started", "smes", ".hidden", "_drafts"):
        (tmp_path / name).mkdir()
    (tmp_path / "loose.ipynb").write_text("{}")
    assert materials(str(tmp_path)) == ["getting-started", "smes"]
    assert materials(str(tmp_path / "missing")) == []


def test_the_store_survives_a_restart_and_is_private(tmp_path):
    path = tmp_path / "workshops.json"
    store = WorkshopStore(path)
    w = workshop()
    w.participants["ws-abc123-01"] = Participant("ws-abc123-01", "Ada", True, "2026-11-25T09:01:00")
    store.add(w)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = WorkshopStore(path)
    assert again.get("abc123") == w
    assert again.by_code("abcd-2345") == w and again.by_code("WRONG") is None
    assert again.of_participant("ws-abc123-01") == [w] and again.temporary_owner("ws-abc123-01") == w
    assert again.new_id() != "abc123"
    with pytest.raises(ValueError):
        again.add(w)
    assert json.loads(path.read_text())["workshops"][0]["starts_at"] == "2026-11-25T09:00:00"
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


def test_a_seat_is_charged_to_the_workshop_and_placed_in_its_reservation(tmp_path):
    site = {**SITE, "hub": {**SITE["hub"], "state_dir": str(tmp_path)}}
    store = store_for(str(tmp_path))
    w = workshop()
    w.participants["ann"] = Participant("ann", "ann", False, "2026-11-25T09:01:00")
    store.add(w)
    seat = seat_for(site, "ann", "workshop-cpu", NOW + timedelta(minutes=5))
    assert seat is not None
    assert (seat.account, seat.qos, seat.reservation) == ("expertise-centre", "interactive", "aifl-ws-abc123")
    assert seat.material == "/opt/aifl/envs/default/share/aifl/notebooks/getting-started" and seat.folder == "intro"
    assert seat_for(site, "ann", "gpu-1", NOW) is None  # another profile: no seat
    assert seat_for(site, "bob", "workshop-cpu", NOW) is None  # not a participant
    assert seat_for(site, "ann", "workshop-cpu", NOW + timedelta(hours=4)) is None  # window over
    w.ended_at = NOW + timedelta(minutes=10)
    assert seat_for(site, "ann", "workshop-cpu", NOW + timedelta(minutes=20)) is None  # ended by the trainer
    # The seat's profile itself is an ordinary profile, for members of the workshop group.
    assert validate_options(site, {"profile": "workshop-cpu"}, groups=["workshop"]).cpus == 1


def test_the_session_script_copies_the_material_once():
    request = validate_options(SITE, {"profile": "workshop-cpu"}, groups=["workshop"])
    request = replace(request, account="expertise-centre", reservation="aifl-ws-abc123")
    job = JobSpec(username="ann", home="/home/ann", log_path="/home/ann/s.log", command=["/bin/true"],
                  export_names=[], path_dirs=["/usr/bin"],
                  material=("/opt/aifl/envs/default/share/aifl/notebooks/getting-started", "/home/ann/intro"))
    script = build_script(request, job)
    assert "#SBATCH --reservation=aifl-ws-abc123" in script
    copy_line = ("if [ -d /opt/aifl/envs/default/share/aifl/notebooks/getting-started ] && [ ! -e /home/ann/intro ]; "
                 "then cp -R /opt/aifl/envs/default/share/aifl/notebooks/getting-started /home/ann/intro; fi")
    assert copy_line in script.splitlines()
    assert script.index(copy_line) < script.index("exec ")
    for bad in (("/x y", "/home/ann/a"), ("/x", "/home/ann/a;rm"), ("relative", "/home/ann/a")):
        with pytest.raises(ScriptError):
            build_script(request, replace(job, material=bad))


def test_trainer_roles_reach_only_their_participants(tmp_path):
    site = {**SITE, "hub": {**SITE["hub"], "state_dir": str(tmp_path)}}
    w = workshop()
    w.participants["ws-abc123-01"] = Participant("ws-abc123-01", "Ada", True, "2026-11-25T09:01:00")
    store_for(str(tmp_path)).add(w)
    store_for(str(tmp_path)).add(workshop(id="old111", code="OLD11111", expired=True))
    loaded = {r["name"]: r for r in trainer_roles(site)}
    assert loaded["trainer"] == {"name": "trainer", "description": "Create and run workshops",
                                 "groups": ["trainers"], "scopes": ["custom:workshops:run"]}
    role = loaded["workshop-abc123-trainer"]
    assert role["users"] == ["tina"] and "workshop-old111-trainer" not in loaded
    assert set(role["scopes"]) == {"list:users!group=workshop-abc123", "read:users!group=workshop-abc123",
                                   "read:users:activity!group=workshop-abc123", "read:servers!group=workshop-abc123"}
    assert not any(scope.startswith("access:") for scope in role["scopes"])  # no way into a participant's server
    assert all("!" in scope for scope in workshop_role(w)["scopes"])  # never unfiltered


def test_warm_seats_start_shortly_before_the_window_and_are_taken_in_turn():
    w = workshop(starts_at=NOW + timedelta(minutes=30), warm=2)
    assert not w.warm_due(NOW) and w.warm_due(NOW + timedelta(minutes=21))
    assert workshop(warm=0).warm_due(NOW) is False
    assert w.temporary_name() == "ws-abc123-01"
    w.participants["ws-abc123-01"] = Participant("ws-abc123-01", "", True, "")
    w.participants["ws-abc123-02"] = Participant("ws-abc123-02", "Ada", True, "2026-11-25T09:01:00")
    assert w.temporary_name() == "ws-abc123-03"
    assert w.free_warm_seat() == "ws-abc123-01"
    w.participants["ws-abc123-01"] = Participant("ws-abc123-01", "Grace", True, "2026-11-25T09:02:00")
    assert w.free_warm_seat() is None
    w.warm_started = True
    assert not w.warm_due(NOW + timedelta(minutes=25))
    assert validate_new(SITE, form(warm="3"), NOW, "en", ["getting-started"]).warm == 3
    for bad in ("13", "-1", "x"):
        with pytest.raises(WorkshopError) as caught:
            validate_new(SITE, form(warm=bad), NOW, "en", ["getting-started"])
        assert caught.value.field == "warm"


def _configured(tmp_path, mutate=None) -> Config:
    """The hub's configuration with its state (the workshops) in ``tmp_path``."""
    def change(site: dict) -> None:
        site["hub"]["state_dir"] = str(tmp_path)
        if mutate:
            mutate(site)

    return configured(tmp_path, change)


def test_the_hub_gets_the_workshop_pages_roles_and_tender(tmp_path):
    w = workshop(id="xyz789", code="XYZ78923")
    store_for(str(tmp_path)).add(w)
    c = _configured(tmp_path)
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["trainer"]["groups"] == ["trainers"] and roles["trainer"]["scopes"] == ["custom:workshops:run"]
    assert roles["workshop-xyz789-trainer"]["users"] == ["tina"]
    assert roles["workshop-tender"] == {"name": "workshop-tender", "services": ["workshop-tender"],
                                        "scopes": ["custom:workshops:tend"]}
    assert set(c.JupyterHub.custom_scopes) == {"custom:workshops:run", "custom:workshops:tend"}
    tender = next(s for s in c.JupyterHub.services if s["name"] == "workshop-tender")
    assert tender["command"][1:] == ["-m", "aifl_hub.workshop_tender"] and "api_token" not in tender
    assert c.JupyterHub.tornado_settings[SITE_SETTING]["workshops"]["organisation"] == "expertise-centre"
    assert str(REPO / "extensions" / "hub" / "aifl_hub" / "templates") in c.JupyterHub.template_paths
    assert {r[0] for r in handlers.default_handlers} >= {"/workshops", "/join"}
    assert {r[0] for r in api_routes} >= {"/api/workshops", "/api/workshops/tend"}


def test_a_site_with_a_wrong_workshop_section_stops_the_hub(tmp_path):
    def wrong(site: dict) -> None:
        site["workshops"]["profiles"] = ["no-such-profile"]

    with pytest.raises(ValueError, match="no-such-profile"):
        _configured(tmp_path, wrong)
