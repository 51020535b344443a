"""Site-file validation: the shipped file is valid; broken files name the key and the problem."""

import copy
from pathlib import Path

import pytest
import yaml
from aifl_hub.site import SiteError, load_site, validate_site

SITE = Path(__file__).resolve().parents[1] / "hub_config" / "site.yaml"


@pytest.fixture
def site():
    return yaml.safe_load(SITE.read_text())


def test_shipped_site_file_is_valid():
    site = load_site(SITE)
    assert site["cluster"]["mode"] == "embedded"
    assert [p["slug"] for p in site["spawner"]["profile_list"] if p.get("default")] == ["cpu-small"]


def _profile(site, slug):
    return next(p for p in site["spawner"]["profile_list"] if p["slug"] == slug)


def _hours(site, slug):
    return _profile(site, slug)["profile_options"]["hours"]


@pytest.mark.parametrize(("mutate", "key", "words"), [
    (lambda s: s["hub"].update(port=80), "hub.port", "minimum"),
    (lambda s: _profile(s, "gpu-1")["slurm_override"].update(gpus=-1),
     "spawner.profile_list[gpu-1].slurm_override.gpus", "minimum"),
    (lambda s: _profile(s, "cpu-small").update(cmd="rm -rf /"), "spawner.profile_list[cpu-small]", "cmd"),
    (lambda s: _profile(s, "cpu-small")["slurm_override"].update(partition="gpu\n#SBATCH --uid=0"),
     "spawner.profile_list[cpu-small].slurm_override.partition", "does not match"),
    (lambda s: _profile(s, "cpu-small")["slurm_override"].update(partition="bigmem"),
     "spawner.profile_list[cpu-small].slurm_override.partition", "not one of cluster.partitions"),
    (lambda s: _profile(s, "gpu-4").update(default=True), "spawner.profile_list", "more than one profile"),
    (lambda s: _profile(s, "gpu-4").update(slug="gpu-1"), "spawner.profile_list[gpu-1].slug", "more than one"),
    (lambda s: _profile(s, "gpu-4")["slurm_override"].update(gpus=8),
     "spawner.profile_list[gpu-4].slurm_override.gpus", "more than a node has"),
    (lambda s: _profile(s, "workshop-gpu-share")["slurm_override"].update(gpus=1),
     "spawner.profile_list[workshop-gpu-share].slurm_override.shards", "whole GPUs or a share"),
    (lambda s: _profile(s, "workshop-gpu-share")["slurm_override"].update(shards=9),
     "spawner.profile_list[workshop-gpu-share].slurm_override.shards", "more than one GPU has (8)"),
    (lambda s: s["cluster"]["gpu_nodes"].pop("shards_per_gpu"),
     "spawner.profile_list[workshop-gpu-share].slurm_override.shards", "shards_per_gpu"),
    (lambda s: _hours(s, "cpu-small")["range"].update(max=3),
     "spawner.profile_list[cpu-small].profile_options.hours.range.max", "more than the profile's"),
    (lambda s: _hours(s, "cpu-small")["range"].update(default=9),
     "spawner.profile_list[cpu-small].profile_options.hours.range", "min <= default <= max"),
    (lambda s: _hours(s, "cpu-small")["range"].update(slurm_override={"qos": "{value}"}),
     "spawner.profile_list[cpu-small].profile_options.hours.range.slurm_override", "exactly one of"),
    (lambda s: _hours(s, "cpu-small").update(choices={}),
     "spawner.profile_list[cpu-small].profile_options.hours", "is not valid under any"),
    (lambda s: _profile(s, "gpu-1")["profile_options"]["reservation"]["unlisted_choice"].update(
        validation_regex="[a-z]+"),
     "spawner.profile_list[gpu-1].profile_options.reservation.unlisted_choice.validation_regex", "does not match"),
    (lambda s: _profile(s, "gpu-1")["profile_options"]["reservation"]["unlisted_choice"].update(
        validation_regex="^([a-z]$"),
     "spawner.profile_list[gpu-1].profile_options.reservation.unlisted_choice.validation_regex", "not a valid regex"),
    (lambda s: _profile(s, "gpu-1")["profile_options"]["reservation"]["unlisted_choice"].update(
        slurm_override={"hours": "{value}"}),
     "spawner.profile_list[gpu-1].profile_options.reservation.unlisted_choice.slurm_override.hours", "typed value"),
    (lambda s: _profile(s, "gpu-1")["profile_options"]["environment"]["choices"]["default"].update(
        slurm_override={"environment": "cuda"}),
     "spawner.profile_list[gpu-1].profile_options.environment.choices.default.slurm_override.environment",
     "spawner.environments"),
    (lambda s: _profile(s, "workshop-seat").update(allowed_groups=[]),
     "spawner.profile_list[workshop-seat].allowed_groups", "non-empty"),
    (lambda s: s["accounting"].update(default_account="other"), "accounting.default_account", "not one of"),
    (lambda s: s["auth"].update(type="oauth"), "auth", "oauth"),
    (lambda s: s["spawner"].update(job_log_dir="../../etc"), "spawner.job_log_dir", "does not match"),
    (lambda s: s["cluster"].pop("gpu_nodes"), "cluster.gpu_nodes", "embedded"),
    (lambda s: s["energy"].update(pue=0.5), "energy.pue", "minimum"),
    (lambda s: _profile(s, "gpu-1")["slurm_override"].update(partition="gpu\n"),
     "spawner.profile_list[gpu-1].slurm_override.partition", "line break"),
])
def test_broken_site_names_key_and_problem(site, mutate, key, words):
    broken = copy.deepcopy(site)
    mutate(broken)
    with pytest.raises(SiteError) as info:
        validate_site(broken, "hub_config/site.yaml")
    assert info.value.key == key
    assert words in info.value.problem
    assert str(info.value).startswith(f"hub_config/site.yaml: {key}: ")


def test_unreadable_and_non_yaml_files(tmp_path):
    with pytest.raises(SiteError, match="cannot be read"):
        load_site(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("hub: [unclosed\n")
    with pytest.raises(SiteError, match="not valid YAML"):
        load_site(bad)


def test_external_site_needs_no_node_groups(site):
    site["cluster"]["mode"] = "external"
    del site["cluster"]["gpu_nodes"], site["cluster"]["cpu_nodes"]
    assert validate_site(site)["cluster"]["mode"] == "external"
