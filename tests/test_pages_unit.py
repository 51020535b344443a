"""Hub pages in Dutch and English without a running hub: language choice, return targets, every template."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from aifl_hub import pages
from aifl_hub.hubconfig import TEMPLATES, configure
from aifl_hub.i18n import gettext_for
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PrefixLoader
from jupyterhub import handlers
from jupyterhub._data import DATA_FILES_PATH
from jupyterhub.handlers.base import BaseHandler
from nativeauthenticator.handlers import TEMPLATE_DIR as NATIVE_TEMPLATES
from traitlets.config import Config

SITE = Path(__file__).resolve().parents[1] / "hub_config" / "site.yaml"
JUPYTERHUB_TEMPLATES = str(Path(DATA_FILES_PATH) / "templates")
LEAD_OWNED = {"spawn_pending.html"}
PARTIALS = {name for name in (p.name for p in TEMPLATES.glob("*.html")) if name.startswith("aifl-")}
PAGES = sorted(p.name for p in TEMPLATES.glob("*.html") if p.name not in LEAD_OWNED | PARTIALS)


class FakeHandler:
    """Just what :func:`pages.language_namespace` reads from a request handler."""

    def __init__(self, accept: str | None = None, cookie: str | None = None, settings: dict | None = None) -> None:
        headers = {"Accept-Language": accept} if accept else {}
        self.request = SimpleNamespace(headers=headers, uri="/hub/login?next=%2Fhub%2Fhome")
        self.settings = settings or {pages.DEFAULT_SETTING: "nl", pages.OFFERED_SETTING: ("nl", "en")}
        self.hub = SimpleNamespace(base_url="/hub/")
        self.authenticator = None
        self._cookie = cookie

    def get_cookie(self, name: str) -> str | None:
        return self._cookie if name == "aifl-lang" else None


@pytest.mark.parametrize(("accept", "cookie", "expected"), [
    (None, None, "nl"),  # the site's default
    ("en-US,en;q=0.9", None, "en"),
    ("nl-NL", None, "nl"),
    ("de-DE", None, "nl"),
    ("nl", "en", "en"),  # the remembered choice wins over the browser
    ("en", "nl", "nl"),
    ("en", "xx", "en"),  # a forged cookie is ignored
])
def test_request_language(accept, cookie, expected):
    assert pages.request_language(FakeHandler(accept, cookie)) == expected


def test_a_language_the_site_does_not_offer_falls_back_to_the_default():
    handler = FakeHandler("en", settings={pages.DEFAULT_SETTING: "nl", pages.OFFERED_SETTING: ("nl",)})
    assert pages.request_language(handler) == "nl"
    assert pages.language_namespace(handler)["aifl_languages"] == []  # no switch with one language


def test_language_namespace():
    ns = pages.language_namespace(FakeHandler("en", "nl"))
    assert ns["aifl_lang"] == "nl"
    assert ns["_"]("Log in") == "Inloggen"
    assert ns["aifl_languages"] == [("nl", "Nederlands"), ("en", "English")]
    assert ns["aifl_language_url"] == "/hub/language"
    assert ns["aifl_return_to"] == "/hub/login?next=%2Fhub%2Fhome"


@pytest.mark.parametrize("target", [
    "//evil.example/", "https://evil.example/", "http:/evil.example", "javascript:alert(1)", "/\\evil.example",
    "/hub\\..\\user", "/user/alice/lab", "/", "/hubx", "/hub/../user/alice/", "/hub/%2e%2e/user/",
    "/hub/./home", "/hub/home\r\nSet-Cookie: x=1", "", None, "hub/home",
])
def test_return_targets_outside_the_hub_are_refused(target):
    assert pages.safe_return_path(target, "/hub/") == "/hub/home"


@pytest.mark.parametrize("target", ["/hub/home", "/hub/token", "/hub/login?next=%2Fhub%2Fhome", "/hub/",
                                    "/hub", "/hub/spawn-pending/ann"])
def test_return_targets_in_the_hub_are_kept(target):
    assert pages.safe_return_path(target, "/hub/") == target


def test_messages_of_other_code_are_translated_with_their_values():
    nl = gettext_for("nl")
    assert pages.translate_message("User ann has not been authorized by an administrator yet.", nl) == \
        "Gebruiker ann is nog niet goedgekeurd door een beheerder."
    assert "minstens 10 tekens" in pages.translate_message(
        "Something went wrong!\nBe sure your new password has at least 10 characters and is not too common.", nl)
    assert pages.translate_message("Not Found", nl) == "Niet gevonden"
    assert pages.translate_message("Something else", nl) == "Something else"
    assert pages.translate_message("Not Found", gettext_for("en")) == "Not Found"


def test_configure_pages_installs_the_namespace_and_the_route(tmp_path):
    site = yaml.safe_load(SITE.read_text())
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site))
    c = Config()
    configure(c, str(path))
    assert BaseHandler.template_namespace.fget is pages._template_namespace
    assert (pages.LANGUAGE_ROUTE, pages.LanguageHandler) in handlers.default_handlers
    assert c.JupyterHub.tornado_settings[pages.DEFAULT_SETTING] == site["site"]["default_language"]
    assert "cookie_options" in c.JupyterHub.tornado_settings  # settings made before are kept
    configure(c, str(path))  # twice changes nothing
    assert BaseHandler.template_namespace.fget is pages._template_namespace
    assert [h[0] for h in handlers.default_handlers].count(pages.LANGUAGE_ROUTE) == 1


def _environment() -> Environment:
    """Templates looked up as the hub does (JupyterHub's loader, then NativeAuthenticator's folder)."""
    loader = ChoiceLoader([
        PrefixLoader({"templates": FileSystemLoader([JUPYTERHUB_TEMPLATES])}, "/"),
        FileSystemLoader([str(TEMPLATES), JUPYTERHUB_TEMPLATES]),
        FileSystemLoader([NATIVE_TEMPLATES]),
    ])
    return Environment(loader=loader, autoescape=True)


def _render(name: str, lang: str, **extra: object) -> str:
    user = SimpleNamespace(name="ann", admin=True, json_escaped_name="ann", spawner=SimpleNamespace(options_form=""))
    handler = FakeHandler(lang, lang)
    ns = {
        **pages.language_namespace(handler), "aifl_account_pages": True, "aifl_site_name": "AI Factory Lab",
        "base_url": "/hub/", "prefix": "/", "user": user, "login_url": "/hub/login", "logout_url": "/hub/logout",
        "static_url": lambda path, include_version=True: f"/hub/static/{path}", "version_hash": "",
        "services": [], "parsed_scopes": {"admin-ui"}, "xsrf": "XSRF", "xsrf_token": "XSRF",
        # page-specific variables
        "default_server": SimpleNamespace(active=False), "url": "/hub/spawn", "aifl_end_message": lambda lang: "",
        "aifl_session": lambda lang: [], "api_tokens": [], "oauth_clients": [], "token_expires_in_options_html": "",
        "status_code": 404, "status_message": None, "message": "", "spawn_url": "/hub/spawn",
        "failed": False, "users": [SimpleNamespace(username="bob", email="", has_2fa=False, is_authorized=False)],
        "user_name": "bob", "result_message": "Your password has been changed successfully!", "alert": "alert-success",
        "login_error": "Invalid username or password.", "enable_signup": True, "next": "",
        "owner": SimpleNamespace(name="bob"), "spawner": SimpleNamespace(name=""), "spawner_url": "/user/bob/",
        "spawner_ready": True, "scope_descriptions": [], "next_url": "/user/bob/", "code": "c",
        "oauth_client": SimpleNamespace(description="JupyterLab", redirect_uri="/user/bob/oauth_callback"),
        "allowed_scopes": [], "spawner_options_form": "<p id='the-form'></p>", "error_message": "",
        "login_service": "", "authenticator_login_url": "/hub/login", "custom_html": "", "username": "",
        "authenticator": SimpleNamespace(request_otp=False), "message_html": "", "token_expires_in_max_seconds": 0,
    }
    return _environment().get_template(name).render(**{**ns, **extra})


@pytest.mark.parametrize("name", PAGES)
def test_every_page_renders_in_both_languages_with_its_switch(name):
    english, dutch = _render(name, "en"), _render(name, "nl")
    assert '<html lang="en">' in english and '<html lang="nl">' in dutch
    assert english != dutch
    for html in (english, dutch):
        assert 'action="/hub/language"' in html
        assert 'name="next" value="/hub/login?next=%2Fhub%2Fhome"' in html
        assert 'name="_xsrf" value="XSRF"' in html
        assert re.search(r'<button type="submit"\s+name="lang"\s+value="nl"\s+lang="nl"', html)


@pytest.mark.parametrize(("name", "dutch", "english"), [
    ("native-login.html", "Onjuiste gebruikersnaam of wachtwoord.", "Invalid username or password."),
    ("home.html", "Start mijn server", "Start My Server"),
    ("token.html", "Nieuw API-token aanvragen", "Request new API token"),
    ("404.html", "Niet gevonden", "Not Found"),
    ("authorization-area.html", "Goedkeuren", "Authorize"),
    ("change-password.html", "Je wachtwoord is gewijzigd.", "Your password has been changed successfully!"),
    ("page.html", "Uitloggen", "Log out"),
])
def test_pages_say_it_in_the_chosen_language(name, dutch, english):
    assert dutch in _render(name, "nl")
    assert english in _render(name, "en")


def test_the_spawn_frame_keeps_the_options_form_and_its_errors():
    html = _render("spawn.html", "nl")
    assert "<p id='the-form'></p>" in html and "Je server starten" in html


@pytest.mark.parametrize(("longest", "values", "last"), [
    (0, ["3600", "86400", "604800", "2592000", "31536000", ""], "Nooit"),
    (86400, ["3600", "86400"], "1 dag"),
    (100000, ["3600", "86400", ""], "Zo lang als toegestaan"),
])
def test_token_lifetimes_follow_the_hub_limit(longest, values, last):
    html = _render("token.html", "nl", token_expires_in_max_seconds=longest)
    options = re.findall(r'<option value="([^"]*)"\s*(selected="selected")?>([^<]*)</option>', html)
    assert [value for value, _, _ in options] == values
    assert options[-1][1] and options[-1][2] == last and not any(selected for _, selected, _ in options[:-1])
