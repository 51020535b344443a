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
    assert site["spawner"]["default_profile"] in {p["slug"] for p in site["spawner"]["profiles"]}


@pytest.mark.parametrize(("mutate", "key", "words"), [
    (lambda s: s["hub"].update(port=80), "hub.port", "minimum"),
    (lambda s: s["spawner"]["profiles"][1]["slurm_override"].update(gpus=-1),
     "spawner.profiles[1].slurm_override.gpus", "minimum"),
    (lambda s: s["spawner"]["profiles"][0].update(cmd="rm -rf /"), "spawner.profiles[0]", "cmd"),
    (lambda s: s["spawner"]["profiles"][0]["slurm_override"].update(partition="gpu\n#SBATCH --uid=0"),
     "spawner.profiles[0].slurm_override.partition", "does not match"),
    (lambda s: s["spawner"]["profiles"][0]["slurm_override"].update(partition="bigmem"),
     "spawner.profiles[0].slurm_override.partition", "not one of cluster.partitions"),
    (lambda s: s["spawner"].update(default_profile="nope"), "spawner.default_profile", "slug"),
    (lambda s: s["spawner"]["profiles"][2].update(slug="gpu-1"), "spawner.profiles[2].slug", "more than one"),
    (lambda s: s["spawner"]["profiles"][2]["slurm_override"].update(gpus=8),
     "spawner.profiles[2].slurm_override.gpus", "more than a node has"),
    (lambda s: s["accounting"].update(default_account="other"), "accounting.default_account", "not one of"),
    (lambda s: s["auth"].update(type="oauth"), "auth", "oauth"),
    (lambda s: s["spawner"].update(job_log_dir="../../etc"), "spawner.job_log_dir", "does not match"),
    (lambda s: s["cluster"].pop("gpu_nodes"), "cluster.gpu_nodes", "embedded"),
    (lambda s: s["spawner"]["profiles"][0]["display_name"].pop("nl"), "spawner.profiles[0].display_name", "'nl'"),
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
