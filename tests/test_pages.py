"""The running hub's pages in Dutch and English: Accept-Language, the remembered switch, no open redirect."""

from __future__ import annotations

import re
import secrets

import pytest
import requests
import yaml
from conftest import BASE, REPO, Hub
from playwright.sync_api import expect, sync_playwright
from test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, RequestLog

pytestmark = pytest.mark.cluster

SITE_DEFAULT = yaml.safe_load((REPO / "hub_config" / "site.yaml").read_text())["site"]["default_language"]
ONE_YEAR = 365 * 24 * 3600


def page(session: requests.Session, path: str, lang: str | None = None) -> requests.Response:
    """GET ``path`` of the hub with ``Accept-Language: lang`` (none when ``lang`` is None)."""
    headers = {"Accept-Language": lang} if lang else {}
    return session.get(f"{BASE}{path}", headers=headers, timeout=30)


def html_lang(response: requests.Response) -> str:
    match = re.search(r'<html lang="([a-z]+)">', response.text)
    assert match, response.text[:300]
    return match.group(1)


def switch(session: requests.Session, lang: str, next_path: str, xsrf: bool = True) -> requests.Response:
    """Post the language switch as its form does; do not follow the redirect."""
    data = {"lang": lang, "next": next_path}
    if xsrf:
        data["_xsrf"] = session.cookies.get("_xsrf", "")
    return session.post(f"{BASE}/hub/language", data=data, timeout=30, allow_redirects=False)


def lang_cookie_header(response: requests.Response) -> str:
    """The Set-Cookie header that sets ``aifl-lang``."""
    headers = [h for h in response.raw.headers.getlist("Set-Cookie") if h.startswith("aifl-lang=")]
    assert len(headers) == 1, response.raw.headers.getlist("Set-Cookie")
    return headers[0]


@pytest.fixture
def visitor(hub: Hub):
    """A browser-like session that has seen the login page (so it holds the XSRF cookie)."""
    with requests.Session() as session:
        assert page(session, "/hub/login").status_code == 200
        yield session


@pytest.mark.parametrize(("lang", "expected", "texts"), [
    ("nl-NL,nl;q=0.9,en;q=0.5", "nl", ["<h1>Inloggen</h1>", "Gebruikersnaam:", "Wachtwoord:", "Nog geen account?"]),
    ("en-GB,en;q=0.9", "en", ["<h1>Log in</h1>", "Username:", "Password:", "No account yet?"]),
    (None, SITE_DEFAULT, []),
])
def test_login_page_follows_the_browser_language(visitor, lang, expected, texts):
    r = page(visitor, "/hub/login", lang)
    assert r.status_code == 200
    assert html_lang(r) == expected
    for text in texts:
        assert text in r.text
    assert 'id="aifl-lang-nl"' in r.text and 'id="aifl-lang-en"' in r.text


def test_the_switch_is_remembered_and_wins_over_the_browser(visitor):
    back = "/hub/login?next=%2Fhub%2Ftoken"
    assert f'name="next" value="{back}"' in page(visitor, back, "nl").text  # the form returns to this page
    r = switch(visitor, "en", back)
    assert r.status_code == 303
    assert r.headers["Location"] == back
    cookie = lang_cookie_header(r).lower()
    assert "aifl-lang=en" in cookie and "path=/hub/" in cookie and "samesite=lax" in cookie
    assert f"max-age={ONE_YEAR}" in cookie and "httponly" in cookie
    english = page(visitor, back, "nl")
    assert html_lang(english) == "en" and "<h1>Log in</h1>" in english.text
    assert switch(visitor, "nl", back).status_code == 303
    dutch = page(visitor, back, "en")
    assert html_lang(dutch) == "nl" and "<h1>Inloggen</h1>" in dutch.text


def test_the_switch_needs_the_xsrf_token_and_a_known_language(visitor):
    r = switch(visitor, "en", "/hub/login", xsrf=False)
    assert r.status_code == 403
    assert not [h for h in r.raw.headers.getlist("Set-Cookie") if h.startswith("aifl-lang=")]
    assert switch(visitor, "de", "/hub/login").status_code == 400
    assert visitor.get(f"{BASE}/hub/language?lang=en", timeout=30, allow_redirects=False).status_code == 405


@pytest.mark.parametrize("target", [
    "//evil.example/", "https://evil.example/", "/\\evil.example", "http:evil.example", "/user/admin/lab",
    "/hub/../user/admin/", "/hub/%2e%2e/user/admin/", "/services/idle-culler/", "",
])
def test_the_switch_never_leaves_the_hub(visitor, target):
    r = switch(visitor, "nl", target)
    assert r.status_code == 303
    assert r.headers["Location"] == "/hub/home"


def test_logged_in_pages_in_dutch_and_english(users):
    _name, _token, session = users.with_login("p")
    home = page(session, "/hub/home", "nl")
    assert html_lang(home) == "nl"
    assert "Start mijn server" in home.text and "Uitloggen" in home.text
    token = page(session, "/hub/token", "nl")
    assert "Nieuw API-token aanvragen" in token.text and "Nooit" in token.text
    assert 'value="/hub/token"' in token.text
    english = page(session, "/hub/token", "en")
    assert html_lang(english) == "en" and "Request new API token" in english.text
    assert switch(session, "en", "/hub/home").headers["Location"] == "/hub/home"
    home = page(session, "/hub/home", "nl")
    assert html_lang(home) == "en" and "Start My Server" in home.text and "Log out" in home.text


def test_errors_and_refusals_in_dutch(visitor):
    missing = page(visitor, "/hub/no-such-page", "nl")
    assert missing.status_code == 404
    assert html_lang(missing) == "nl" and "Niet gevonden" in missing.text
    r = visitor.post(f"{BASE}/hub/login", headers={"Accept-Language": "nl"}, timeout=30, data={
        "username": f"nobody{secrets.token_hex(3)}", "password": "wrong", "_xsrf": visitor.cookies.get("_xsrf", "")})
    assert "Onjuiste gebruikersnaam of wachtwoord." in r.text


@pytest.mark.browser
def test_switching_language_on_the_login_page_in_a_browser(hub: Hub):
    """A visitor with an English browser switches to Dutch with the keyboard; the choice stays."""
    ARTIFACTS.mkdir(exist_ok=True)
    log = RequestLog()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(locale="en-US", viewport={"width": 1000, "height": 700})
            log.watch(context)
            tab = context.new_page()
            tab.goto(f"{BASE}/hub/login?next=%2Fhub%2Ftoken")
            expect(tab.locator("html")).to_have_attribute("lang", "en")
            expect(tab.get_by_role("heading", level=1)).to_have_text("Log in")
            expect(tab.locator("#aifl-lang-en")).to_have_attribute("aria-pressed", "true")
            tab.screenshot(path=str(ARTIFACTS / "pages-login-en.png"))

            tab.locator("#aifl-lang-nl").focus()
            with tab.expect_navigation():
                tab.keyboard.press("Enter")
            assert tab.url == f"{BASE}/hub/login?next=%2Fhub%2Ftoken"
            expect(tab.locator("html")).to_have_attribute("lang", "nl")
            expect(tab.get_by_role("heading", level=1)).to_have_text("Inloggen")
            expect(tab.locator("#aifl-lang-nl")).to_have_attribute("aria-pressed", "true")
            tab.screenshot(path=str(ARTIFACTS / "pages-login-nl.png"))

            tab.goto(f"{BASE}/hub/signup")  # remembered on the next page, despite the English browser
            expect(tab.locator("html")).to_have_attribute("lang", "nl")
            expect(tab.locator("#signup_submit")).to_have_value("Account aanmaken")

            tab.set_viewport_size({"width": 400, "height": 700})  # the switch stays reachable on a phone
            expect(tab.locator("#aifl-lang-en")).to_be_visible()
            with tab.expect_navigation():
                tab.locator("#aifl-lang-en").click()
            expect(tab.locator("html")).to_have_attribute("lang", "en")
            tab.screenshot(path=str(ARTIFACTS / "pages-signup-en-narrow.png"))
            context.close()
        finally:
            browser.close()
    assert not log.foreign(), f"requests left this machine: {log.foreign()}"

