"""Energy estimates from the site file's model: the arithmetic, its inputs and the plain words."""

from __future__ import annotations

import copy

import pytest
import yaml
from aifl_hub.energy import Estimate, describe_estimate, estimate_session, format_number, significant
from aifl_hub.site import SiteError, validate_site
from conftest import REPO

SITE = REPO / "hub_config" / "site.yaml"


@pytest.fixture
def site():
    return yaml.safe_load(SITE.read_text())


@pytest.fixture
def energy(site):
    return site["energy"]


def test_one_h200_for_eight_hours_by_hand(energy):
    # GPU: 75 + 0.6 × (700 − 75) = 450 W; 16 cores × 6 W = 96 W; 120 GB × 0.4 W = 48 W
    # (450 + 96 + 48) × PUE 1.15 = 683.1 W; × 8 h = 5.4648 kWh; × 6 km/kWh = 32.7888 km
    estimate = estimate_session(energy, "h200", gpus=1, cpus=16, memory_gb=120, hours=8)
    assert estimate.watts == pytest.approx(683.1)
    assert estimate.kwh == pytest.approx(5.4648)
    assert estimate.km == pytest.approx(32.7888)
    assert (estimate.hours, estimate.gpu_utilisation, estimate.source) == (8, 0.6, "estimate")


def test_four_gpus_cpu_only_and_a_given_utilisation(energy):
    # 4 × 450 + 64 × 6 + 480 × 0.4 = 2376 W; × 1.15 = 2732.4 W; × 8 h = 21.8592 kWh
    assert estimate_session(energy, "h200", 4, 64, 480, 8).kwh == pytest.approx(21.8592)
    # no GPU: 2 × 6 + 8 × 0.4 = 15.2 W; × 1.15 = 17.48 W; × 2 h = 0.03496 kWh
    assert estimate_session(energy, None, 0, 2, 8, 2).kwh == pytest.approx(0.03496)
    # idle GPU (u = 0): 75 + 96 + 48 = 219 W; × 1.15 = 251.85 W
    assert estimate_session(energy, "h200", 1, 16, 120, 1, utilisation=0).watts == pytest.approx(251.85)
    # full load (u = 1): 700 + 96 + 48 = 844 W; × 1.15 = 970.6 W
    assert estimate_session(energy, "h200", 1, 16, 120, 1, utilisation=1).watts == pytest.approx(970.6)


def test_optional_parts_of_the_model(energy):
    minimal = {k: energy[k] for k in ("gpu_watts", "cpu_core_watts", "memory_gb_watts", "pue")}
    # no idle figure and no typical utilisation: full load, 700 W per GPU
    estimate = estimate_session(minimal, "h200", 1, 0, 0, 1)
    assert (estimate.watts, estimate.gpu_utilisation, estimate.km) == (pytest.approx(805), 1.0, None)
    # no idle figure: power scales from 0 W
    assert estimate_session(minimal, "h200", 1, 0, 0, 1, utilisation=0.5).watts == pytest.approx(350 * 1.15)


def test_unknown_gpu_type_and_bad_utilisation_are_refused(energy):
    with pytest.raises(ValueError, match="a100"):
        estimate_session(energy, "a100", 1, 16, 120, 8)
    with pytest.raises(ValueError, match="between 0 and 1"):
        estimate_session(energy, "h200", 1, 16, 120, 8, utilisation=1.5)


def test_the_shipped_model_is_valid_and_covers_the_cluster_gpus(site):
    validate_site(site)
    assert site["cluster"]["gpu_nodes"]["gpu_type"] in site["energy"]["gpu_watts"]
    assert set(site["energy"]["gpu_idle_watts"]) <= set(site["energy"]["gpu_watts"])


@pytest.mark.parametrize(("key", "value"), [
    ("pue", 0.9), ("gpu_watts", {}), ("gpu_watts", {"H200": 700}), ("gpu_watts", {"h200": 0}),
    ("typical_gpu_utilisation", 1.2), ("everyday_km_per_kwh", 0), ("cpu_core_watts", -1), ("watts", 1),
])
def test_a_broken_model_is_refused_by_the_schema(site, key, value):
    broken = copy.deepcopy(site)
    broken["energy"][key] = value
    with pytest.raises(SiteError) as error:
        validate_site(broken)
    assert error.value.key.startswith("energy")


@pytest.mark.parametrize(("value", "rounded"), [
    (5.4648, 5.5), (21.8592, 22), (0.03496, 0.035), (131.1552, 130), (9.96, 10), (0, 0),
])
def test_two_significant_digits(value, rounded):
    assert significant(value) == pytest.approx(rounded)


def test_numbers_in_each_language():
    assert [format_number(v, "en") for v in (5.4648, 0.03496, 1234.5)] == ["5.5", "0.035", "1,200"]
    assert [format_number(v, "nl") for v in (5.4648, 0.03496, 1234.5)] == ["5,5", "0,035", "1.200"]


@pytest.mark.parametrize(("args", "english", "dutch"), [
    (("h200", 1, 16, 120, 8),
     "About 5.5 kWh for 8 hours (estimate), as much as an electric car uses to drive 33 km",
     "Ongeveer 5,5 kWh voor 8 uur (schatting), evenveel als een elektrische auto gebruikt om 33 km te rijden"),
    (("h200", 1, 16, 120, 1),
     "About 0.68 kWh for 1 hour (estimate), as much as an electric car uses to drive 4.1 km",
     "Ongeveer 0,68 kWh voor 1 uur (schatting), evenveel als een elektrische auto gebruikt om 4,1 km te rijden"),
    ((None, 0, 2, 8, 1.5),
     "About 0.026 kWh for 1.5 hours (estimate), as much as an electric car uses to drive 0.16 km",
     "Ongeveer 0,026 kWh voor 1,5 uur (schatting), evenveel als een elektrische auto gebruikt om 0,16 km te rijden"),
])
def test_plain_words_in_both_languages(energy, args, english, dutch):
    estimate = estimate_session(energy, *args)
    assert describe_estimate(estimate, "en") == english
    assert describe_estimate(estimate, "nl") == dutch


def test_without_an_everyday_figure_the_comparison_is_left_out():
    estimate = Estimate(kwh=21.8592, watts=2732.4, hours=8, gpu_utilisation=0.6, km=None)
    assert describe_estimate(estimate, "en") == "About 22 kWh for 8 hours (estimate)"
    assert describe_estimate(estimate, "nl") == "Ongeveer 22 kWh voor 8 uur (schatting)"
