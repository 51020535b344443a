"""The spawn page's cards as data: what each profile gives, options, and a refused form shown again."""

from pathlib import Path

from aifl_hub.energy import estimate_session
from aifl_hub.site import load_site
from aifl_hub.spawnform import FormState, build_cards, energy_line, last_used, what_you_get

SITE = load_site(Path(__file__).resolve().parents[1] / "hub_config" / "site.yaml")


def test_what_you_get_in_plain_words():
    assert what_you_get({"gpus": 1, "cpus": 16, "memory_gb": 120, "hours": 8}, "h200", "en") == \
        "1 GPU (H200), 16 CPU cores, 120 GB memory, up to 8 hours"
    assert what_you_get({"gpus": 4, "cpus": 64, "memory_gb": 480, "hours": 8}, "h200", "nl") == \
        "4 GPU's (H200), 64 CPU-kernen, 480 GB geheugen, tot 8 uur"
    assert what_you_get({"gpus": 0, "cpus": 1, "memory_gb": 8, "hours": 1}, "h200", "en") == \
        "No GPU, 1 CPU core, 8 GB memory, up to 1 hour"
    share = {"gpus": 0, "shards": 1, "cpus": 2, "memory_gb": 8, "hours": 4}
    assert what_you_get(share, "h200", "en", 8) == \
        "1/8 of a GPU (H200), shared with others, 2 CPU cores, 8 GB memory, up to 4 hours"
    assert what_you_get(share, "h200", "nl", 8).startswith("1/8 van een GPU (H200), gedeeld met anderen, ")


def test_energy_line_is_labelled_an_estimate_and_marks_its_numbers():
    line = energy_line(0.68, 4, "en")
    assert line == 'About <span data-kwh="">2.7</span> kWh for <span data-hours="">4</span> hours (estimate)'
    assert "(schatting)" in energy_line(1.7, 8, "nl")


def test_cards_follow_groups_defaults_and_the_energy_model():
    def per_hour(profile):
        o = profile["slurm_override"]
        return estimate_session(SITE["energy"], "h200", o["gpus"], o["cpus"], o["memory_gb"], 1).kwh

    cards = build_cards(SITE, "en", [], availability={"gpu-1": ("free", "Free now")}, kwh_per_hour=per_hour)
    assert [c.profile["slug"] for c in cards] == ["cpu-small", "gpu-1", "gpu-4"]
    assert [c.selected for c in cards] == [True, False, False]
    gpu = cards[1]
    assert (gpu.availability_state, gpu.availability) == ("free", "Free now")
    assert [o.key for o in gpu.options] == ["hours"] and gpu.options[0].value == "4"
    assert [o.key for o in gpu.advanced] == ["environment", "reservation"]
    assert not gpu.open_advanced
    # 1 × H200 at 60 % (75 W idle, 700 W full), 16 cores, 120 GB, PUE 1.15: 0.683 kWh per hour.
    assert abs(gpu.kwh_per_hour - 0.6831) < 0.001
    assert 'data-hours="">4</span>' in gpu.energy
    assert "workshop-seat" in [c.profile["slug"] for c in build_cards(SITE, "en", ["workshop"])]


def test_a_refused_form_comes_back_with_its_values_and_the_error_at_its_field():
    state = FormState(profile="gpu-1", field="profile-option-gpu-1--reservation--unlisted-choice",
                      message="A reservation name has lower-case letters, digits, '-' and '_' only.",
                      values={"profile-option-gpu-1--hours": "6",
                              "profile-option-gpu-1--reservation--unlisted-choice": "Bad Name"})
    cards = build_cards(SITE, "en", [], state=state)
    gpu = cards[1]
    assert [c.selected for c in cards] == [False, True, False]
    assert gpu.options[0].value == "6" and not gpu.options[0].error
    reservation = gpu.advanced[1]
    assert (reservation.typed, reservation.unlisted_error) == ("Bad Name", state.message)
    assert gpu.open_advanced  # the error is not hidden in a folded section
    assert cards[2].options[0].value == "4"  # other cards keep their defaults


def test_the_form_starts_like_last_time():
    last = last_used({"profile": "gpu-1", "hours": 3})
    assert last == FormState(profile="gpu-1", values={"profile-option-gpu-1--hours": "3"})
    cards = build_cards(SITE, "en", [], state=last)
    assert [c.profile["slug"] for c in cards if c.selected] == ["gpu-1"]
    assert {o.key: o.value for o in cards[1].options}["hours"] == "3"
    assert not any(o.error for c in cards for o in [*c.options, *c.advanced])
    # No earlier start, or one with a profile the user may no longer use: the site's default.
    assert last_used({}) is None and last_used(None) is None and last_used({"profile": ["gpu-1"]}) is None
    cards = build_cards(SITE, "en", [], state=last_used({"profile": "workshop-seat"}))
    assert [c.profile["slug"] for c in cards if c.selected] == ["cpu-small"]
