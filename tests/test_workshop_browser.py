"""In a real browser: a trainer creates a workshop on its page; a participant follows the join link in a second
browser context, types a name and lands in JupyterLab with the course material; the trainer sees them and ends
the workshop. Nothing leaves 127.0.0.1."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from conftest import BASE, Hub, browser_session, remove_account, slurm
from playwright.sync_api import expect
from test_browser import (  # noqa: F401 - playwright is a fixture used by name
    CHROMIUM,
    CHROMIUM_ARGS,
    LAB_TIMEOUT_MS,
    RequestLog,
    log_in,
    playwright,
    shot,
)

pytestmark = [pytest.mark.cluster, pytest.mark.browser]


@pytest.fixture
def trainer(hub: Hub) -> Iterator[tuple[str, str]]:
    """A trainer who signed up with a password (approved), in the trainers group; removed afterwards."""
    name, password = f"tb{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    browser_session(name, password, signup=True).close()
    assert hub.api("POST", "/groups/trainers", json={}).status_code in (201, 409)
    assert hub.api("POST", "/groups/trainers/users", json={"users": [name]}).status_code == 200
    yield name, password
    hub.api("DELETE", f"/users/{name}")
    remove_account(name)


def test_trainer_creates_a_workshop_and_a_participant_joins_by_the_link(
        hub: Hub, trainer, playwright) -> None:  # noqa: F811 - the fixture
    name, password = trainer
    start = datetime.now()
    log = RequestLog()
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    workshop_id, participant = "", ""
    try:
        teacher = browser.new_context(locale="en-US")
        log.watch(teacher)
        page = teacher.new_page()
        log_in(page, name, password, next_path="/hub/workshops")
        page.goto(f"{BASE}/hub/workshops")
        expect(page.locator("h1")).to_have_text("Workshops")
        page.fill("#ws-title", "Browser class")
        page.fill("#ws-date", start.strftime("%Y-%m-%d"))
        page.fill("#ws-start", start.strftime("%H:%M"))
        page.fill("#ws-end", (start + timedelta(hours=2)).strftime("%H:%M"))
        page.fill("#ws-seats", "2")
        page.select_option("#ws-profile", "workshop-cpu")
        page.select_option("#ws-material", "getting-started")
        with page.expect_navigation():
            page.click("#ws-create")
        assert re.search(r"/hub/workshops/[a-z0-9]{6}$", page.url), shot(page, "workshop-create")
        workshop_id = page.url.rsplit("/", 1)[1]
        link = page.locator("#ws-join-link").get_attribute("href")
        code = page.locator("#ws-code").inner_text().strip()
        assert link.endswith(f"/hub/join?code={code}")
        expect(page.locator("#ws-seats")).to_contain_text("Nobody has joined yet.")

        guest = browser.new_context(locale="nl-NL")
        log.watch(guest)
        joining = guest.new_page()
        joining.goto(link)
        expect(joining.locator("h1")).to_have_text("Meedoen aan een workshop")
        expect(joining.locator("#ws-join-code")).to_have_value(code)
        joining.fill("#ws-join-name", "Ada Lovelace")
        joining.click("#ws-join")
        # Joining fills in the spawn form with the workshop's profile; the participant starts it.
        joining.wait_for_url(re.compile(r"/hub/spawn/ws-[a-z0-9]{6}-\d\d\?profile="), timeout=LAB_TIMEOUT_MS)
        joining.click("#spawn_form [type=submit]")
        joining.wait_for_url(re.compile(r"/user/ws-[a-z0-9]{6}-\d\d/lab"), timeout=LAB_TIMEOUT_MS)
        participant = re.search(r"/user/(ws-[a-z0-9]{6}-\d\d)/", joining.url).group(1)
        expect(joining.locator("#jp-main-dock-panel")).to_be_visible(timeout=LAB_TIMEOUT_MS)
        folder = joining.get_by_text(f"browser-class-{workshop_id}", exact=True).first
        expect(folder).to_be_visible(timeout=LAB_TIMEOUT_MS)
        shot(joining, "workshop-participant")

        page.reload()
        row = page.locator("#ws-seats tbody tr", has_text="Ada Lovelace")
        expect(row).to_contain_text(participant)
        expect(row).to_contain_text("Running")
        shot(page, "workshop-trainer")
        page.click("#ws-end")
        expect(page.locator("#ws-ended")).to_be_visible()
        assert f"aifl-ws-{workshop_id}" not in slurm("scontrol", "show", "reservation")
        assert log.foreign() == []
    finally:
        browser.close()
        if workshop_id:
            token = hub.api("POST", f"/users/{name}/tokens", json={"expires_in": 600}).json()["token"]
            hub.api("POST", f"/workshops/{workshop_id}/end", token=token)
        if participant:
            hub.api("DELETE", f"/users/{participant}")
            remove_account(participant)
