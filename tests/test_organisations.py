"""Organisations → Slurm accounts and QOS: the plan, charging a session, budgets (no cluster needed)."""

import copy
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from aifl_hub.facility import gpu_hours_in, parse_sacct
from aifl_hub.organisations import (
    Current,
    NotAllowed,
    account_settings,
    charge,
    organisation,
    organisation_of,
    parse_accounts,
    parse_qos,
    plan,
    qos_settings,
)
from aifl_hub.site import SiteError, load_site, validate_site

SITE_FILE = Path(__file__).resolve().parents[1] / "hub_config" / "site.yaml"
SITE = load_site(SITE_FILE)
GPU_PROFILE = next(p for p in SITE["spawner"]["profile_list"] if p["slug"] == "gpu-1")


def as_slurm_shows(site) -> Current:
    """What sacctmgr would show once the plan ran: the wanted settings themselves."""
    return Current(qos=qos_settings(site), accounts=account_settings(site))


def test_the_plan_creates_categories_before_organisations_and_the_promise_in_qos():
    commands = plan(SITE, Current()).commands
    adds = [c[2] for c in commands if c[:2] == ["add", "account"]]
    assert adds.index("regional") < adds.index("umcg") and adds.index("national") < adds.index("tu-eindhoven")
    # 75% of 16 GPUs; shared GPUs are capped alike (8 shards per GPU).
    assert ["modify", "qos", "where", "name=interactive", "set", "priority=100",
            "grptres=gres/gpu=12,gres/shard=96"] in commands
    assert ["modify", "qos", "where", "name=regional", "set", "priority=1000", "preempt=flex"] in commands
    umcg = account_settings(SITE)["umcg"]
    assert (umcg["parent"], umcg["defaultqos"]) == ("regional", "regional")
    assert account_settings(SITE)["tu-eindhoven"]["qos"] == "flex,interactive,overbudget"


def test_running_the_plan_twice_changes_nothing_and_leavers_are_only_reported():
    assert plan(SITE, as_slurm_shows(SITE)) == plan(SITE, as_slurm_shows(SITE))
    assert plan(SITE, as_slurm_shows(SITE)).commands == []
    smaller = copy.deepcopy(SITE)
    smaller["organisations"]["list"] = [o for o in smaller["organisations"]["list"] if o["name"] != "eu-partner"]
    left = plan(smaller, as_slurm_shows(SITE))
    assert left.left_over == ["eu-partner"]
    assert not any("eu-partner" in " ".join(c) for c in left.commands)  # never deleted: its history stays


def test_a_changed_budget_policy_sets_or_clears_slurm_budgets():
    stop = copy.deepcopy(SITE)
    stop["organisations"]["over_budget"] = "stop"
    commands = plan(stop, as_slurm_shows(SITE)).commands
    assert ["modify", "account", "where", "name=umcg", "cluster=aifl", "set", "grptresmins=gres/gpu=120000"] in commands
    back = plan(SITE, as_slurm_shows(stop)).commands
    assert ["modify", "account", "where", "name=umcg", "cluster=aifl", "set", "grptresmins=gres/gpu=-1"] in back


def test_sacctmgr_output_is_read_back():
    qos = parse_qos("normal|0|||\nregional|1000|flex||\ninteractive|100||gres/shard=96,gres/gpu=12|\n")
    assert qos["regional"] == {"priority": "1000", "preempt": "flex", "grptres": ""}
    assert qos["interactive"]["grptres"] == "gres/gpu=12,gres/shard=96"  # in the order the plan writes
    accounts = parse_accounts("root||||normal|\nregional||root|overbudget,regional|regional|\n"
                              "umcg||regional|regional,overbudget|regional|gres/gpu=120000\n"
                              "umcg|alice|regional|overbudget,regional|regional|\n")
    assert set(accounts) == {"root", "regional", "umcg"}  # user rows are not accounts
    assert accounts["umcg"] == {"parent": "regional", "qos": "overbudget,regional", "defaultqos": "regional",
                                "grptresmins": "gres/gpu=120000"}


def test_sessions_are_charged_to_the_organisation_with_its_category_qos():
    umcg, tue = organisation(SITE, "umcg"), organisation(SITE, "tu-eindhoven")
    assert organisation_of(SITE, ["workshop", "org-umcg"]) == umcg
    assert organisation_of(SITE, ["org-unknown"]) is None
    regional, national = charge(SITE, GPU_PROFILE, 1, umcg, 10), charge(SITE, GPU_PROFILE, 1, tue, 10)
    assert (regional.account, regional.qos, regional.over_budget) == ("umcg", "regional", False)
    assert (national.account, national.qos) == ("tu-eindhoven", "interactive")


def test_gpu_work_needs_an_organisation_and_budgets_apply_as_configured():
    cpu = next(p for p in SITE["spawner"]["profile_list"] if p["slug"] == "cpu-small")
    with pytest.raises(NotAllowed) as info:
        charge(SITE, GPU_PROFILE, 1, None, None)
    assert info.value.reason == "no_organisation"
    assert (charge(SITE, cpu, 0, None, None).account, charge(SITE, cpu, 0, None, None).qos) == ("lab", "interactive")
    umcg = organisation(SITE, "umcg")  # 2000 GPU hours a month
    over = charge(SITE, GPU_PROFILE, 1, umcg, 2000.5)
    assert (over.qos, over.over_budget) == ("overbudget", True)
    stop = copy.deepcopy(SITE)
    stop["organisations"]["over_budget"] = "stop"
    with pytest.raises(NotAllowed) as info:
        charge(stop, GPU_PROFILE, 1, umcg, 2000.5)
    assert info.value.reason == "over_budget"
    assert charge(stop, cpu, 0, umcg, 2000.5).qos == "regional"  # CPU work goes on


def test_gpu_hours_count_only_the_part_inside_the_period():
    since, until = datetime(2026, 11, 1), datetime(2026, 11, 25, 12)
    sacct = ("1|umcg|billing=4,cpu=4,gres/gpu=2,mem=8G,node=1|2026-10-31T22:00:00|2026-10-31T23:00:00|"
             "2026-11-01T02:00:00|COMPLETED\n"
             "2|umcg|billing=1,cpu=1,mem=1G,node=1|2026-11-02T00:00:00|2026-11-02T00:00:00|2026-11-02T05:00:00|"
             "COMPLETED\n"
             "3|umcg|cpu=1,gres/gpu:h200=1,gres/gpu=1|2026-11-25T10:00:00|2026-11-25T10:00:00|Unknown|RUNNING\n"
             "4|umcg|cpu=1,gres/gpu=4|2026-11-25T11:00:00|None|Unknown|PENDING\n")
    hours = sum(gpu_hours_in(job, since, until, until) for job in parse_sacct(sacct))
    assert hours == pytest.approx(2 * 2 + 1 * 2)  # clipped to the 1st; running: until now


@pytest.mark.parametrize(("mutate", "key", "words"), [
    (lambda s: s["organisations"]["list"][0].update(category="local"), "organisations.list[umcg].category",
     "is not one of"),
    (lambda s: s["organisations"]["list"].append(dict(s["organisations"]["list"][1])),
     "organisations.list[noorderveld].name", "more than once"),
    (lambda s: s["organisations"]["list"][0].update(gpu_hours_per_month=-5),
     "organisations.list[umcg].gpu_hours_per_month", "minimum"),
    (lambda s: s["organisations"]["list"][0].update(name="regional"), "organisations.list[regional].name",
     "another Slurm account"),
    (lambda s: s["organisations"]["categories"]["national"].update(batch_qos="fast"),
     "organisations.categories.national.batch_qos", "not one of accounting.qos"),
    (lambda s: s["accounting"]["qos"][0].update(preempts=["nobody"]), "accounting.qos[regional].preempts",
     "'nobody'"),
    (lambda s: [s["organisations"]["list"][i].update(claim_values=["umcg.nl"]) for i in (0, 1)],
     "organisations.list[noorderveld].claim_values", "'umcg.nl' already names umcg"),
])
def test_broken_organisations_name_the_entry(mutate, key, words):
    broken = yaml.safe_load(SITE_FILE.read_text())
    mutate(broken)
    with pytest.raises(SiteError) as info:
        validate_site(broken, "site.yaml")
    assert info.value.key == key
    assert words in info.value.problem
