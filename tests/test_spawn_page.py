"""The spawn page on the running lab: profile cards, validation next to the field, groups, waiting, Cancel."""

from __future__ import annotations

import html
import os
import re
import signal
import time
from pathlib import Path

import pytest
from conftest import BASE, lab, slurm
from test_spawn import waiting_session

pytestmark = pytest.mark.cluster


def page(session, path: str, lang: str = "nl", **kw) -> str:
    r = session.get(f"{BASE}{path}", headers={"Accept-Language": lang}, timeout=30, **kw)
    return r.content.decode()


def card(text: str, slug: str) -> str:
    start = text.index(f'data-slug="{slug}"')
    end = text.find('data-slug="', start + 10)
    return text[start:end if end > 0 else len(text)]


def no_jobs(name: str) -> bool:
    return slurm("squeue", "-h", "-u", name, "-o", "%i").strip() == ""


def test_cards_say_what_you_get_how_soon_and_the_energy_in_dutch(hub, users):
    _name, _token, browser = users.with_login()
    text = page(browser, "/hub/spawn")
    slugs = re.findall(r'data-slug="([a-z0-9-]+)"', text)
    assert slugs == ["cpu-small", "gpu-1", "gpu-4"]  # the workshop seat is only for its group
    gpu = card(text, "gpu-1")
    assert "Eén GPU om een model te trainen" in gpu
    assert "1 GPU (H200), 16 CPU-kernen, 120 GB geheugen, tot 8 uur" in gpu
    availability = re.search(r'id="availability-gpu-1">([^<]+)</p>', gpu).group(1)
    assert availability.strip()
    energy = html.unescape(re.sub(r"<[^>]+>", "", re.search(r'id="energy-gpu-1">(.*?)</p>', gpu).group(1)))
    assert re.fullmatch(r"Ongeveer [0-9.,]+ kWh voor 4 uur \(schatting\)", energy)
    # The default profile is chosen; advanced options are folded away.
    assert re.search(r'id="profile-cpu-small" value="cpu-small"\s+aria-describedby="[^"]+" checked', text)
    assert "<summary>Meer opties</summary>" in gpu
    english = page(browser, "/hub/spawn", lang="en")
    assert "1 GPU (H200), 16 CPU cores, 120 GB memory, up to 8 hours" in english


def test_out_of_range_value_is_shown_next_to_its_field_and_nothing_is_submitted(hub, users):
    name, _token, browser = users.with_login()
    page(browser, "/hub/spawn")
    r = browser.post(f"{BASE}/hub/spawn", headers={"Accept-Language": "nl"}, timeout=30, data={
        "_xsrf": browser.cookies.get("_xsrf"), "profile": "gpu-1", "profile-option-gpu-1--hours": "99",
        "profile-option-gpu-4--hours": "4"})
    assert r.status_code == 400
    text = r.content.decode()
    gpu = card(text, "gpu-1")
    assert 'id="profile-option-gpu-1--hours-error">Uren: kies van 1 tot 8.</div>' in gpu
    assert re.search(r'class="form-control is-invalid aifl-hours".*?value="99"', gpu, re.S)
    assert re.search(r'id="profile-gpu-1" value="gpu-1"\s+aria-describedby="[^"]+" checked', text)
    assert hub.server(name) is None and no_jobs(name)
    # A hostile typed value is refused the same way, next to its own field.
    r = browser.post(f"{BASE}/hub/spawn", headers={"Accept-Language": "en"}, timeout=30, data={
        "_xsrf": browser.cookies.get("_xsrf"), "profile": "gpu-1",
        "profile-option-gpu-1--reservation--unlisted-choice": "x\n#SBATCH --uid=0"})
    assert r.status_code == 400
    assert ('id="profile-option-gpu-1--reservation--unlisted-choice-error">A reservation name has lower-case '
            "letters, digits, &#39;-&#39; and &#39;_&#39; only.</div>") in r.content.decode()
    assert hub.server(name) is None and no_jobs(name)


def test_links_and_the_api_get_the_same_checks(hub, users):
    name, token, browser = users.with_login()
    for query in ("profile=gpu-1&hours=99", "profile=gpu-1&bogus=1", "profile=workshop-seat"):
        r = browser.get(f"{BASE}/hub/spawn?{query}", headers={"Accept-Language": "en"}, timeout=30)
        assert r.status_code == 400, query
        assert hub.server(name) is None and no_jobs(name)
    for options, words in (({"profile": "gpu-1", "hours": 99}, "Hours: choose from 1 to 8."),
                           ({"profile": "gpu-1", "gpus": 8}, "Unknown option 'gpus'"),
                           ({"profile": "workshop-seat"}, "Choose one of the offered profiles")):
        r = hub.api("POST", f"/users/{name}/server", token=token, json={"user_options": options},
                    headers={"Accept-Language": "en"})
        assert r.status_code == 400 and words in r.json()["message"], r.text
    assert hub.server(name) is None and no_jobs(name)


def test_a_group_restricted_profile_is_offered_only_to_its_group(hub, users):
    name, token, browser = users.with_login()
    assert hub.api("POST", "/groups/workshop", json={}).status_code in (201, 409)
    assert hub.api("POST", "/groups/workshop/users", json={"users": [name]}).status_code == 200
    try:
        assert "workshop-seat" in re.findall(r'data-slug="([a-z0-9-]+)"', page(browser, "/hub/spawn", lang="en"))
        r = hub.api("POST", f"/users/{name}/server", token=token, json={"user_options": {"profile": "workshop-seat"}})
        assert r.status_code in (201, 202), r.text
        hub.wait_ready(name)
        partition, gres, limit = slurm("squeue", "-h", "-u", name, "-o", "%P|%b|%l").strip().split("|")
        assert (partition, limit) == ("gpu", "4:00:00") and gres.endswith("gpu:h200:1")
    finally:
        hub.api("DELETE", "/groups/workshop/users", json={"users": [name]})


def test_the_pending_page_shows_the_phase_and_cancel_removes_the_job(hub, users):
    name, token, browser = users.with_login()
    page(browser, "/hub/spawn")
    with waiting_session(hub, name, token) as job:
        text = page(browser, f"/hub/spawn-pending/{name}")
        assert 'data-phase="queued">Je sessie wacht op een vrije plek</h1>' in text
        assert "Deze start annuleren" in text
        r = browser.post(f"{BASE}/hub/aifl/cancel", data={"_xsrf": browser.cookies.get("_xsrf")}, timeout=60,
                         headers={"Accept-Language": "nl"})
        assert r.status_code == 200 and r.url.endswith("/hub/home")
        hub.wait_gone(name)
        assert job not in slurm("squeue", "-h", "-o", "%i").split()
        assert "Je hebt de start geannuleerd." in page(browser, "/hub/home")


def test_a_wait_goes_on_after_a_hub_restart_and_keeps_its_place(hub, users):
    name, token, browser = users.with_login()
    with waiting_session(hub, name, token) as job:
        hub_pid = int(Path("/run/aifl/hub.pid").read_text())
        os.kill(hub_pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{hub_pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        up = lab("up")
        assert up.returncode == 0, up.stderr[-2000:]
        # The same job still waits, and the pending page and the progress stream explain it as before.
        # The restarted hub asks for the start again once it answers: give it a moment on a slow machine.
        deadline = time.monotonic() + 30
        while hub.server(name) is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert job in slurm("squeue", "-h", "-t", "PENDING", "-o", "%i").split()
        assert hub.server(name) is not None and not hub.server(name)["ready"]
        text = page(browser, f"/hub/spawn-pending/{name}", lang="en")
        assert "Your session waits for a free place" in text
        # In the language the user started in (English here), as before the restart.
        deadline, line = time.monotonic() + 30, ""
        with hub.api("GET", f"/users/{name}/server/progress", token=token, stream=True) as stream:
            for line in stream.iter_lines(decode_unicode=True):
                if "Reason:" in line or time.monotonic() > deadline:
                    break
        assert "Waiting in the queue: place 1 of 1. Reason: " in line
        fillers = [j for j in slurm("squeue", "-h", "-u", name, "-o", "%i").split() if j != job]
        slurm("scancel", *fillers)
        server = hub.wait_ready(name, timeout=120)
        assert server["ready"] and hub.job_of(name) == job


def test_the_spawn_page_starts_like_last_time(hub, users):
    name, token, browser = users.with_login()
    assert re.search(r'id="profile-cpu-small" value="cpu-small"\s+aria-describedby="[^"]+" checked',
                     page(browser, "/hub/spawn"))  # the first time: the site's default
    r = hub.api("POST", f"/users/{name}/server", token=token, json={"user_options": {"profile": "gpu-1", "hours": 2}})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(name)
    hub.api("DELETE", f"/users/{name}/server", token=token)
    hub.wait_gone(name)
    text = page(browser, "/hub/spawn")
    assert re.search(r'id="profile-gpu-1" value="gpu-1"\s+aria-describedby="[^"]+" checked', text)
    assert not re.search(r'id="profile-cpu-small" value="cpu-small"\s+aria-describedby="[^"]+" checked', text)
    hours = 'id="profile-option-gpu-1--hours" name="profile-option-gpu-1--hours" value="2"'
    assert hours in card(text, "gpu-1")
