"""Validate what a user asks for when starting a session, against the site's profile allowlist.

User options arrive from three places: the spawn form, ``/hub/spawn?...`` links and the REST API
body. All of them pass through :func:`validate_options`, which accepts only known keys with
allowed values and returns a :class:`SessionRequest`; anything else raises :class:`OptionsError`
with a plain message in the user's language and nothing is submitted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .i18n import gettext_for
from .site import Site

ALLOWED_KEYS = ("profile", "hours")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_INT = re.compile(r"^[0-9]{1,4}$")


class OptionsError(ValueError):
    """A user option is unknown or has a value outside the allowlist."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(message)


@dataclass(frozen=True)
class SessionRequest:
    """A validated request for a session: everything the batch-script builder needs from the user."""

    profile: str
    partition: str
    gpus: int
    cpus: int
    memory_gb: int
    hours: int
    account: str
    qos: str


def _single(value: Any) -> Any:
    """Form and query data come as lists of strings; take the one value."""
    if isinstance(value, list):
        if len(value) != 1:
            raise TypeError
        return value[0]
    return value


def profiles_by_slug(site: Site) -> dict[str, dict[str, Any]]:
    """The site's profiles keyed by slug, in site-file order."""
    return {p["slug"]: p for p in site["spawner"]["profiles"]}


def validate_options(site: Site, options: Mapping[str, Any] | None, lang: str = "en") -> SessionRequest:
    """Turn raw user options into a :class:`SessionRequest`, or raise :class:`OptionsError`."""
    _ = gettext_for(lang)
    options = dict(options or {})
    unknown = sorted(k for k in options if k not in ALLOWED_KEYS)
    if unknown:
        raise OptionsError(unknown[0], _("Unknown option '{key}'. Allowed options: {allowed}.").format(
            key=str(unknown[0])[:40], allowed=", ".join(ALLOWED_KEYS)))
    profiles = profiles_by_slug(site)
    try:
        slug = _single(options.get("profile", site["spawner"]["default_profile"]))
    except TypeError:
        slug = None
    if not isinstance(slug, str) or not _SLUG.match(slug) or slug not in profiles:
        raise OptionsError("profile", _("Choose one of the offered profiles: {choices}.").format(
            choices=", ".join(profiles)))
    override = profiles[slug]["slurm_override"]
    max_hours = override["hours"]
    hours = max_hours
    if "hours" in options:
        try:
            raw = _single(options["hours"])
        except TypeError:
            raw = None
        if isinstance(raw, bool) or not (
            (isinstance(raw, int) and 0 <= raw <= 9999) or (isinstance(raw, str) and _INT.match(raw))
        ):
            raise OptionsError("hours", _("The number of hours must be a whole number."))
        hours = int(raw)
        if not 1 <= hours <= max_hours:
            raise OptionsError("hours", _("Choose between 1 and {max} hours for this profile.").format(
                max=max_hours))
    accounting = site["accounting"]
    return SessionRequest(
        profile=slug,
        partition=override["partition"],
        gpus=override["gpus"],
        cpus=override["cpus"],
        memory_gb=override["memory_gb"],
        hours=hours,
        account=override.get("account", accounting["default_account"]),
        qos=override.get("qos", accounting["default_qos"]),
    )
