"""Energy per job from Slurm's accounting (:mod:`aifl_hub.energy`): the arithmetic, the words and pictures,
and on the running system the facility page's energy section and the hub home's line.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import xml.etree.ElementTree as ET
from datetime import date, datetime, timedelta

import pytest
import requests
import yaml
from aifl_hub.energy import (
    EnergyReport,
    JobRecord,
    daily_kwh,
    energy_chart,
    estimate_session,
    grid_strip,
    job_kwh,
    kwh_between,
    month_line,
    moved_kwh,
    parse_energy_sacct,
)
from aifl_hub.facility_service import CATEGORY_LABELS, COLOURS
from conftest import BASE, REPO

SITE = yaml.safe_load((REPO / "hub_config" / "site.yaml").read_text())
MODEL = SITE["energy"]
NOW = datetime(2026, 11, 25, 12, 0)
SACCT = "\n".join([
    "101|alice|umcg|billing=16,cpu=16,gres/gpu=1,mem=120G,node=1|2026-11-25T08:00:00|2026-11-25T10:00:00|0",
    "102|bob|tu-eindhoven|cpu=2,mem=8G,node=1|2026-11-24T23:00:00|2026-11-25T01:00:00|",
    "103|carol|umcg|cpu=16,gres/gpu=1,mem=120G,node=1|2026-11-25T11:00:00|Unknown|0",
    "104|dave|umcg|cpu=16,gres/gpu=1,mem=120G,node=1|2026-11-25T06:00:00|2026-11-25T07:00:00|1800000",
    "105|erin|umcg|cpu=1,mem=1G|Unknown|Unknown|",
    "garbage", "106.batch|x|y|cpu=1|a|b|c",
])


def test_parse_sacct():
    jobs = {j.job_id: j for j in parse_energy_sacct(SACCT)}
    assert sorted(jobs) == ["101", "102", "103", "104", "105"]
    first = jobs["101"]
    assert (first.gpus, first.cpus, first.memory_gb, first.consumed_joules) == (1, 16, 120, None)
    assert jobs["103"].end is None and jobs["104"].consumed_joules == 1_800_000


def test_a_share_of_a_gpu_counts_as_its_part_of_one():
    line = "107|ws-a-01|expertise-centre|cpu=2,gres/shard=1,mem=8G,node=1|2026-11-25T08:00:00|2026-11-25T10:00:00|"
    (job,) = parse_energy_sacct(line, shards_per_gpu=8)
    assert job.gpus == 0.125
    kwh, source = job_kwh(MODEL, "h200", job, NOW)
    assert source == "estimate" and kwh == pytest.approx(estimate_session(MODEL, "h200", 0.125, 2, 8, 2).kwh)
    assert kwh < job_kwh(MODEL, "h200", parse_energy_sacct(line.replace("gres/shard=1", "gres/gpu=1"))[0], NOW)[0]


def test_a_jobs_energy_is_the_spawn_pages_model_unless_slurm_measured_it():
    jobs = {j.job_id: j for j in parse_energy_sacct(SACCT)}
    kwh, source = job_kwh(MODEL, "h200", jobs["101"], NOW)  # two hours of one H200 session
    assert source == "estimate" and kwh == pytest.approx(estimate_session(MODEL, "h200", 1, 16, 120, 2).kwh)
    assert job_kwh(MODEL, "h200", jobs["103"], NOW)[0] == pytest.approx(estimate_session(
        MODEL, "h200", 1, 16, 120, 1).kwh)  # still running: up to now
    assert job_kwh(MODEL, "h200", jobs["104"], NOW) == (pytest.approx(0.5 * 1.15), "measured")  # 1.8 MJ × PUE
    assert job_kwh(MODEL, "h200", jobs["105"], NOW) == (0.0, "estimate")  # never started
    unknown_gpu = JobRecord("9", "x", "y", 2, 4, 8, NOW - timedelta(hours=1), NOW, None)
    assert job_kwh(MODEL, "a100", unknown_gpu, NOW)[0] == pytest.approx(estimate_session(MODEL, None, 0, 4, 8, 1).kwh)


def test_energy_is_split_over_days_and_categories():
    jobs = parse_energy_sacct(SACCT)
    midnight = datetime(2026, 11, 25)
    bob = next(j for j in jobs if j.job_id == "102")
    assert kwh_between(MODEL, "h200", bob, midnight, NOW, NOW) == pytest.approx(job_kwh(MODEL, "h200", bob, NOW)[0] / 2)
    categories = {"umcg": "regional", "tu-eindhoven": "national"}
    days = daily_kwh(MODEL, "h200", jobs, lambda a: categories.get(a, "other"), list(CATEGORY_LABELS), 2, NOW)
    assert [d for d, _ in days] == [date(2026, 11, 24), date(2026, 11, 25)]
    yesterday, today = days[0][1], days[1][1]
    assert yesterday["national"] == pytest.approx(today["national"]) and yesterday["regional"] == 0
    expected = sum(job_kwh(MODEL, "h200", j, NOW)[0] for j in jobs if j.account == "umcg")
    assert today["regional"] == pytest.approx(expected)


def test_energy_moved_out_of_busy_hours_counts_quiet_releases_of_work_submitted_outside_quiet_hours():
    jobs = parse_energy_sacct(SACCT)
    releases = [{"job": "101", "reason": "quiet", "level_at_submit": "busy"},
                {"job": "102", "reason": "quiet", "level_at_submit": "quiet"},  # it was quiet already: not moved
                {"job": "103", "reason": "deadline", "level_at_submit": "busy"},  # ran in busy hours after all
                {"job": "404", "reason": "quiet", "level_at_submit": "busy"}]  # no longer in the accounting window
    assert moved_kwh(MODEL, "h200", releases, jobs, NOW) == pytest.approx(job_kwh(MODEL, "h200", jobs[0], NOW)[0])


def test_the_home_line_in_both_languages():
    assert month_line(5.4648, False, MODEL, "en") == ("Your sessions and batch runs used about 5.5 kWh this month "
                                                      "(estimate). That is as much as an electric car uses to "
                                                      "drive 33 km.")
    assert month_line(5.4648, True, MODEL, "nl").startswith(
        "Je sessies en batchruns gebruikten deze maand ongeveer 5,5 kWh (gemeten). Dat is zoveel als")
    assert month_line(0, False, {"pue": 1.1}, "en") == "Your sessions and batch runs used about 0 kWh this month " \
                                                        "(estimate)."


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_the_pictures_are_svg_without_outside_assets(lang):
    days = [(date(2026, 11, 24), {"regional": 2.0, "national": 1.0, "european": 0, "training": 0, "other": 0}),
            (date(2026, 11, 25), dict.fromkeys(CATEGORY_LABELS, 0.0))]
    ns = {"s": "http://www.w3.org/2000/svg"}
    chart = ET.fromstring(str(energy_chart(days, CATEGORY_LABELS, COLOURS, lang)))  # noqa: S314 - our own SVG
    columns = [r for r in chart.findall("s:rect", ns) if r.find("s:title", ns) is not None]
    assert len(columns) == 2  # only the parts with energy
    assert chart.find("s:title", ns).text.startswith("Energie per dag" if lang == "nl" else "Energy per day")
    forecast = [{"start": "2026-11-25T12:00:00", "end": "2026-11-25T23:00:00", "level": "busy"},
                {"start": "2026-11-25T23:00:00", "end": "2026-11-26T06:00:00", "level": "quiet"},
                {"start": "2026-11-26T06:00:00", "end": "2026-11-27T12:00:00", "level": None},
                {"start": "broken"}]
    strip = ET.fromstring(str(grid_strip(forecast, lang)))  # noqa: S314 - our own SVG
    blocks = [r.find("s:title", ns).text for r in strip.findall("s:rect", ns) if r.find("s:title", ns) is not None]
    assert blocks[1].endswith("rustig" if lang == "nl" else "quiet") and len(blocks) == 3
    assert str(grid_strip([], lang)) == ""
    for svg in (energy_chart(days, CATEGORY_LABELS, COLOURS, lang), grid_strip(forecast, lang)):
        assert re.findall(r"https?://[^\"]+", str(svg)) == ["http://www.w3.org/2000/svg"]


# ---------------------------------------------------------------- on the running system

@pytest.mark.cluster
def test_a_users_month_from_slurm(lab_system, users):
    name, _token = users("en")
    subprocess.run(["runuser", "-u", name, "--", "sbatch", "--parsable", "-p", "cpu", "-A", "lab", "-c", "2",
                    "--mem=8G", "-t", "1", "--wait", "--wrap", "sleep 2"], check=True, capture_output=True,
                   timeout=120, cwd="/tmp")
    report = EnergyReport(SITE, ttl=0)
    for _ in range(20):  # slurmdbd may record the job's end a moment later
        kwh, measured = asyncio.run(report.user_month(name))
        if kwh > 0:
            break
        time.sleep(1)
    # 2 cores and 8 GB for a few seconds: 15.2 W × PUE, labelled an estimate (no energy accounting here)
    assert 0 < kwh < estimate_session(MODEL, None, 0, 2, 8, 60 / 3600).kwh and not measured


@pytest.mark.cluster
def test_the_facility_page_and_the_hub_home_show_energy(hub, users):
    _name, _token, session = users.with_login("e")
    page = session.get(f"{BASE}/services/facility/", timeout=60, headers={"Accept-Language": "en"})
    assert page.status_code == 200
    assert 'id="aifl-energy"' in page.text and "kWh" in page.text
    assert re.search(r'id="aifl-grid-now">The power grid is (quiet|normal|busy) now\.', page.text)
    assert 'id="aifl-grid-forecast"><svg' in page.text
    assert "out of the grid&#39;s busy hours" in page.text or "out of the grid's busy hours" in page.text
    line = ""
    for _ in range(20):  # the line appears once Slurm has answered (read in the background)
        home = session.get(f"{BASE}/hub/home", timeout=60, headers={"Accept-Language": "nl"})
        match = re.search(r'id="aifl-energy">([^<]*)<', home.text)
        if match:
            line = match.group(1)
            break
        time.sleep(0.5)
    assert line.startswith("Je sessies en batchruns gebruikten deze maand ongeveer"), home.text[-2000:]
    assert requests.get(f"{BASE}/services/facility/", timeout=30, allow_redirects=False).status_code in (302, 303)
