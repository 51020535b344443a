"""In Chromium, in Dutch: a UMCG member opens the data sets' catalogue from the hub's menu, then in their session's
JupyterLab the list in ``~/datasets`` and the controlled cohort set (linked there by the session's start, which
could read it with the groups Slurm gave the job). Nothing leaves this machine."""

from __future__ import annotations

import pytest
from conftest import BASE
from playwright.sync_api import expect, sync_playwright
from test_browser import (  # noqa: F401 - browser_user is a fixture used by name
    CHROMIUM,
    LAB_TIMEOUT_MS,
    RequestLog,
    browser_user,  # a fixture
    shot,
    signed_up_page,
)

pytestmark = [pytest.mark.cluster, pytest.mark.browser]


def test_a_member_opens_the_catalogue_and_the_cohort_set_in_dutch(hub, browser_user):  # noqa: F811 - the fixture
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    name, password = browser_user
    log = RequestLog()
    with sync_playwright() as p, signed_up_page(
            p, log, name, password, locale="nl-NL", notice="Je aanvraag is naar de beheerder gestuurd",
            failure_shot="datasets-nl-failure.png") as page:
        hub.join(name, "umcg")
        page.goto(f"{BASE}/hub/home")
        page.click("#aifl-datasets-link")
        expect(page.locator("h1")).to_have_text("Datasets")
        cohort = page.locator("#dataset-cohort")
        expect(cohort.locator(".aifl-dataset-kind")).to_have_text("Gecontroleerde toegang")
        expect(cohort.locator(".aifl-dataset-description")).to_contain_text("Synthetische cohortstudie")
        expect(cohort.locator(".aifl-dataset-licence")).to_contain_text("niet buiten het lab kopiëren")
        expect(cohort.locator(".aifl-dataset-access")).to_contain_text("Je mag hem lezen: in een sessie staat hij "
                                                                       "in ~/datasets/cohort.")
        expect(page.locator("#dataset-vehicles .aifl-dataset-kind")).to_have_text("Open voor alle gebruikers")
        shot(page, "datasets-catalogue-nl")

        token = hub.api("POST", f"/users/{name}/tokens", json={"expires_in": 3600}).json()["token"]
        r = hub.api("POST", f"/users/{name}/server", token=token,
                    json={"user_options": {"profile": "cpu-small"}}, headers={"Accept-Language": "nl"})
        assert r.status_code in (201, 202), r.text
        hub.wait_ready(name)
        page.goto(f"{BASE}/user/{name}/lab/tree/datasets/README.md")
        listing = page.locator(".jp-FileEditor:visible")
        expect(listing).to_contain_text("Je hebt toegang: ~/datasets/cohort (alleen-lezen).", timeout=LAB_TIMEOUT_MS)
        page.goto(f"{BASE}/user/{name}/lab/tree/datasets/cohort/README.md")
        expect(page.locator(".jp-FileEditor:visible")).to_contain_text("synthetische gegevens",
                                                                     timeout=LAB_TIMEOUT_MS)
        expect(page.locator(".jp-DirListing-item", has_text="participants.csv")).to_be_visible(
            timeout=LAB_TIMEOUT_MS)
        shot(page, "datasets-cohort-nl")
    assert log.foreign() == [], log.foreign()
