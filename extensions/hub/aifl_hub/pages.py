"""Every hub page in the visitor's language (Dutch or English), with a remembered language switch.

JupyterHub has no i18n, and its ``template_vars`` callables see the user but not the request. Every hub
page (JupyterHub's own, NativeAuthenticator's and the error pages alike) gets its variables from the one
property ``BaseHandler.template_namespace``; :func:`install_language_namespace` extends it with the
request's language (:func:`request_language`: the remembered choice in the ``aifl-lang`` cookie, then
the browser's Accept-Language, then the site's default) and that language's ``_``. The templates in
``templates/hub/`` write ``{{ _("...") }}``; the Dutch texts are in ``locale/nl/LC_MESSAGES/pages.po``.

``POST /hub/language`` (:class:`LanguageHandler`, XSRF-checked like every hub form) remembers a choice
for a year and returns to the page it came from, only when that is a path under the hub
(:func:`safe_return_path`; never an open redirect).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from http.client import responses as HTTP_REASONS
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from jupyterhub import handlers
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.utils import url_path_join
from nativeauthenticator import NativeAuthenticator
from tornado import web

from .i18n import DEFAULT_LANGUAGE, LANGUAGES, N_, gettext_for, pick_language
from .spawner import LANG_COOKIE

LANGUAGE_ROUTE = r"/language"
LANGUAGE_NAMES = {"nl": "Nederlands", "en": "English"}
COOKIE_MAX_AGE = 365 * 24 * 3600
# Keys in the tornado settings (set from the site file by configure_pages).
DEFAULT_SETTING = "aifl_default_language"
OFFERED_SETTING = "aifl_languages"


# Texts that reach the pages from code we do not own (HTTP reasons, NativeAuthenticator's messages).
# A ``{field}`` matches the part that code fills in, so "User ann has not been authorized..." is found too.
FOREIGN_MESSAGES = (
    N_("Bad Request"), N_("Unauthorized"), N_("Forbidden"), N_("Not Found"), N_("Method Not Allowed"),
    N_("Conflict"), N_("Too Many Requests"), N_("Internal Server Error"), N_("Bad Gateway"),
    N_("Service Unavailable"), N_("Gateway Timeout"),
    N_("Invalid username or password."),
    N_("User {name} has not been authorized by an administrator yet."),
    N_("Something went wrong!\nIt appears that this username is already in use. "
       "Please try again with a different username."),
    N_("Your password did not match the confirmation. Please try again."),
    N_("Something went wrong!\nBe sure your username does not contain spaces, commas or slashes, "
       "your password has at least {length} characters and is not too common."),
    N_("Something went wrong!\nBe sure your username does not contain spaces, commas or slashes "
       "and your password is not too common."),
    N_("The signup was successful! You can now go to the home page and log in to the system."),
    N_("Your information has been sent to the admin."),
    N_("Your current password was incorrect. Please try again."),
    N_("Your new password didn't match the confirmation. Please try again."),
    N_("Your password has been changed successfully!"),
    N_("Something went wrong!\nBe sure your new password has at least {length} characters "
       "and is not too common."),
    N_("Something went wrong!\nBe sure your new password is not too common."),
    N_("The new password didn't match the confirmation. Please try again."),
    N_("The password for {name} has been changed successfully"),
    N_("Something went wrong!\nBe sure the new password for {name} has at least {length} characters "
       "and is not too common."),
    N_("Something went wrong!\nBe sure the new password for {name} is not too common."),
)


def _pattern(message: str) -> re.Pattern[str]:
    """A regex matching ``message`` with any text in place of each ``{field}``."""
    parts = re.split(r"\{(\w+)\}", message)
    return re.compile("".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.+?)" for i, p in enumerate(parts)))


_FOREIGN_PATTERNS = [(message, _pattern(message)) for message in FOREIGN_MESSAGES]


def translate_message(message: str, gettext: Callable[[str], str]) -> str:
    """``message`` from JupyterHub or NativeAuthenticator in the page's language (as it is when unknown)."""
    for msgid, pattern in _FOREIGN_PATTERNS:
        match = pattern.fullmatch(message)
        if match:
            return gettext(msgid).format(**match.groupdict())
    return gettext(message)


def safe_return_path(target: str | None, base_url: str) -> str:
    """``target`` when it is a local path under the hub's ``base_url`` (e.g. ``/hub/``), else the hub's home.

    Refuses other hosts (``//host``, ``https://host``, backslashes), paths outside the hub (also by
    ``..`` segments, plain or percent-encoded) and control characters.
    """
    home = url_path_join(base_url, "home")
    if not target or not target.startswith("/") or any(ch in target for ch in "\\\x00\r\n\t"):
        return home
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or target.startswith("//"):
        return home
    path = unquote(parts.path)
    segments = path.split("/")
    if "." in segments or ".." in segments or "\\" in path:
        return home
    if not (path + "/").startswith(base_url.rstrip("/") + "/"):
        return home
    return urlunsplit(("", "", parts.path, parts.query, ""))


def request_language(handler: web.RequestHandler) -> str:
    """The page's language: the remembered choice, then Accept-Language, then the site's default."""
    default = handler.settings.get(DEFAULT_SETTING, DEFAULT_LANGUAGE)
    offered = handler.settings.get(OFFERED_SETTING, LANGUAGES)
    lang = pick_language(handler.request.headers.get("Accept-Language"), handler.get_cookie(LANG_COOKIE), default)
    return lang if lang in offered else default


def language_namespace(handler: BaseHandler) -> dict[str, Any]:
    """Template variables of the request's language: ``_``, ``aifl_lang`` and the language switch."""
    lang = request_language(handler)
    gettext = gettext_for(lang)
    offered = handler.settings.get(OFFERED_SETTING, LANGUAGES)
    return {
        "_": gettext,
        "aifl_lang": lang,
        "aifl_message": lambda message: translate_message(message, gettext) if message else message,
        "aifl_http_reasons": HTTP_REASONS,  # for errors raised without a reason
        "aifl_languages": [(code, LANGUAGE_NAMES[code]) for code in offered] if len(offered) > 1 else [],
        "aifl_language_url": url_path_join(handler.hub.base_url, "language"),
        "aifl_return_to": handler.request.uri,
        "aifl_account_pages": isinstance(handler.authenticator, NativeAuthenticator),
    }


_jupyterhub_namespace: property = BaseHandler.template_namespace  # as JupyterHub defines it


def _template_namespace(handler: BaseHandler) -> dict[str, Any]:
    namespace = _jupyterhub_namespace.fget(handler)
    namespace.update(language_namespace(handler))
    return namespace


def install_language_namespace() -> None:
    """Give every hub page the request's language (idempotent: it always wraps JupyterHub's own property)."""
    BaseHandler.template_namespace = property(_template_namespace, doc="JupyterHub's template variables "
                                              "plus the request's language (aifl_hub.pages).")


class LanguageHandler(BaseHandler):
    """``POST /hub/language``: remember ``lang`` for a year, then return to the page the switch was on."""

    def post(self) -> None:
        """Set the ``aifl-lang`` cookie (hub path, SameSite=Lax) and redirect to a checked local path."""
        lang = self.get_body_argument("lang", "")
        if lang not in self.settings.get(OFFERED_SETTING, LANGUAGES):
            raise web.HTTPError(400, "Unknown language")
        self.set_cookie(LANG_COOKIE, lang, path=self.hub.base_url, max_age=COOKIE_MAX_AGE, httponly=True,
                        samesite="Lax", secure=self.request.protocol == "https")
        self.redirect(safe_return_path(self.get_body_argument("next", ""), self.hub.base_url), status=303)


def configure_pages(c: Any, site: dict[str, Any]) -> None:
    """Hub pages in Dutch and English: the language namespace, the site's languages and the switch's route."""
    install_language_namespace()
    offered = tuple(lang for lang in site["site"].get("languages", LANGUAGES) if lang in LANGUAGES) or LANGUAGES
    default = site["site"].get("default_language", DEFAULT_LANGUAGE)
    settings = dict(c.JupyterHub.tornado_settings) if "tornado_settings" in c.JupyterHub else {}
    c.JupyterHub.tornado_settings = {**settings, DEFAULT_SETTING: default, OFFERED_SETTING: offered}
    # Into JupyterHub's own page routes (extra_handlers is deprecated); replacing keeps it idempotent.
    routes = handlers.default_handlers
    routes[:] = [route for route in routes if route[0] != LANGUAGE_ROUTE]
    routes.append((LANGUAGE_ROUTE, LanguageHandler))
