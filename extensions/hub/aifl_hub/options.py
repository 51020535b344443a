"""Validate what a user asks for when starting a session, against the site's profile allowlist.

Profiles have the shape of KubeSpawner's ``profile_list`` (see the site file). User options arrive
from three places and are checked the same way by :func:`validate_options`:

* the REST API body: ``{"profile": "gpu-1", "hours": 4, "reservation": "unlisted_choice",
  "reservation--unlisted-choice": "course-12"}``;
* ``/hub/spawn?profile=gpu-1&hours=4`` links (the same keys, values as strings);
* the spawn form, whose fields are named like KubeSpawner's (``profile-option-<slug>--<key>``) and are
  turned into the keys above by :func:`options_from_form`.

Only the chosen profile's options are known; anything else is refused with an :class:`OptionsError`
naming the field, in the user's language, and nothing is submitted. The result is a
:class:`SessionRequest`: the only thing the batch-script builder ever sees.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from .i18n import gettext_for
from .site import Site

UNLISTED = "unlisted_choice"
UNLISTED_SUFFIX = "--unlisted-choice"
FORM_PREFIX = "profile-option-"
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_INT = re.compile(r"^[0-9]{1,5}$")


class OptionsError(ValueError):
    """A user option is unknown or has a value outside the allowlist; ``field`` is its key."""

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
    environment: str = "default"
    reservation: str = ""
    shards: int = 0  # a share of one GPU (Slurm gres/shard) instead of whole GPUs
    # The options as chosen, in the REST API's keys: validating {"profile": ..., **choices} again gives the same.
    choices: Mapping[str, Any] = field(default_factory=dict)


def text(value: str | Mapping[str, str], lang: str) -> str:
    """A site-file text (one string or ``{en, nl}``) in ``lang``."""
    if isinstance(value, str):
        return value
    return value.get(lang) or value["en"]


def profile_list(site: Site, groups: Collection[str] | None = None) -> list[dict[str, Any]]:
    """The profiles a user in ``groups`` may see, in site-file order (``None``: all of them)."""
    return [p for p in site["spawner"]["profile_list"]
            if groups is None or not p.get("allowed_groups") or set(p["allowed_groups"]) & set(groups)]


def profiles_by_slug(site: Site, groups: Collection[str] | None = None) -> dict[str, dict[str, Any]]:
    """The visible profiles keyed by slug."""
    return {p["slug"]: p for p in profile_list(site, groups)}


def default_profile(profiles: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The profile marked ``default: true``, else the first one (``None`` when there is none)."""
    return next((p for p in profiles if p.get("default")), profiles[0] if profiles else None)


def default_choice(option: Mapping[str, Any]) -> str | None:
    """The choice an option has when the user gives none: the default one, else the first, else none."""
    choices = option.get("choices", {})
    return next((k for k, c in choices.items() if c.get("default")), next(iter(choices), None))


def range_default(option: Mapping[str, Any]) -> int:
    """The number a range option has when the user gives none."""
    return option["range"].get("default", option["range"]["max"])


def form_field(slug: str, key: str) -> str:
    """The spawn form's field name for option ``key`` of profile ``slug`` (KubeSpawner's naming)."""
    return f"{FORM_PREFIX}{slug}--{key}"


def _single(value: Any) -> Any:
    """Form and query data come as lists of strings; take the one value."""
    if isinstance(value, list):
        if len(value) != 1:
            raise TypeError
        return value[0]
    return value


def options_from_form(form: Mapping[str, list[str]]) -> dict[str, Any]:
    """Turn spawn-form fields into user options: the chosen profile's fields only; other profiles' are dropped.

    Empty fields count as not given. A field that belongs to no profile card is kept under its own name,
    so that :func:`validate_options` refuses it.
    """
    fields = {k: v for k, v in form.items() if k != "_xsrf" and v not in ([""], "", [])}
    try:
        slug = _single(fields.get("profile", ""))
    except TypeError:
        slug = fields.get("profile")
    options: dict[str, Any] = {}
    if "profile" in fields:
        options["profile"] = slug
    own = f"{FORM_PREFIX}{slug}--" if isinstance(slug, str) else None
    for name, value in fields.items():
        if name == "profile":
            continue
        if own and name.startswith(own):
            options[name.removeprefix(own)] = value
        elif not name.startswith(FORM_PREFIX):
            options[name] = value
    return options


def validate_options(site: Site, options: Mapping[str, Any] | None, lang: str = "en",
                     groups: Collection[str] | None = None) -> SessionRequest:
    """Turn raw user options into a :class:`SessionRequest`, or raise :class:`OptionsError`.

    ``groups`` are the user's hub groups (``None`` skips the ``allowed_groups`` check, for tools).
    """
    _ = gettext_for(lang)
    options = dict(options or {})
    visible = profile_list(site, groups)
    profiles = {p["slug"]: p for p in visible}
    fallback = default_profile(visible)
    try:
        slug = _single(options.pop("profile", fallback["slug"] if fallback else None))
    except TypeError:
        slug = None
    if not isinstance(slug, str) or not _SLUG.fullmatch(slug) or slug not in profiles:
        if not profiles:
            raise OptionsError("profile", _("No profile is open to you. Ask the lab's administrator."))
        raise OptionsError("profile", _("Choose one of the offered profiles: {choices}.").format(
            choices=", ".join(text(p["display_name"], lang) for p in visible)))
    profile = profiles[slug]
    known = profile.get("profile_options", {})
    allowed = set(known) | {k + UNLISTED_SUFFIX for k, o in known.items() if o.get(UNLISTED, {}).get("enabled")}
    unknown = sorted(str(k)[:40] for k in options if k not in allowed)
    if unknown:
        raise OptionsError(unknown[0], _("Unknown option '{key}'. This profile has: {allowed}.").format(
            key=unknown[0], allowed=", ".join(sorted(allowed)) or _("no options")))

    values: dict[str, Any] = dict(profile["slurm_override"])
    chosen: dict[str, Any] = {}
    for key, option in known.items():
        label = text(option["display_name"], lang)
        if "range" in option:
            number = _number(options, key, label, option["range"], _)
            (target,) = option["range"]["slurm_override"]
            values[target] = number
            chosen[key] = number
            continue
        choice, typed = _choice(options, key, label, option, lang, _)
        if choice == UNLISTED:
            for target in option[UNLISTED]["slurm_override"]:
                values[target] = typed
            chosen[key + UNLISTED_SUFFIX] = typed
        elif choice is not None:
            values.update(option["choices"][choice]["slurm_override"])
            chosen[key] = choice
    return _request(site, slug, values, chosen, _)


def _number(options: Mapping[str, Any], key: str, label: str, bounds: Mapping[str, Any], _: Any) -> int:
    low, high = bounds["min"], bounds["max"]
    if key not in options:
        return bounds.get("default", high)
    try:
        raw = _single(options[key])
    except TypeError:
        raw = None
    if isinstance(raw, bool) or not (
        (isinstance(raw, int) and 0 <= raw <= 99999) or (isinstance(raw, str) and _INT.fullmatch(raw.strip()))
    ):
        raise OptionsError(key, _("{label}: give a whole number from {low} to {high}.").format(
            label=label, low=low, high=high))
    number = int(raw)
    if not low <= number <= high:
        raise OptionsError(key, _("{label}: choose from {low} to {high}.").format(label=label, low=low, high=high))
    return number


def _choice(options: Mapping[str, Any], key: str, label: str, option: Mapping[str, Any], lang: str,
            _: Any) -> tuple[str | None, str]:
    """The chosen choice (or ``UNLISTED`` with the typed value) of a choices option."""
    unlisted = option.get(UNLISTED) if option.get(UNLISTED, {}).get("enabled") else None
    typed_key = key + UNLISTED_SUFFIX
    try:
        choice = _single(options[key]) if key in options else (UNLISTED if typed_key in options else None)
    except TypeError:
        choice = ""
    if choice is None:
        return default_choice(option), ""
    names = [text(c["display_name"], lang) for c in option["choices"].values()]
    if choice == UNLISTED and unlisted:
        try:
            typed = _single(options.get(typed_key, ""))
        except TypeError:
            typed = None
        if not isinstance(typed, str) or not typed.strip():
            raise OptionsError(typed_key, _("{label}: type a value or pick one from the list.").format(label=label))
        typed = typed.strip()
        if len(typed) > 64 or not re.fullmatch(unlisted["validation_regex"], typed):
            message = unlisted.get("validation_message")
            raise OptionsError(typed_key, text(message, lang) if message else _(
                "{label}: '{value}' is not allowed here.").format(label=label, value=typed[:40]))
        return UNLISTED, typed
    if not isinstance(choice, str) or choice not in option["choices"]:
        if names:
            raise OptionsError(key, _("{label}: choose one of {choices}.").format(
                label=label, choices=", ".join(names)))
        raise OptionsError(key, _("{label}: type a value.").format(label=label))
    return choice, ""


def _request(site: Site, slug: str, values: Mapping[str, Any], chosen: Mapping[str, Any],
             _: Any) -> SessionRequest:
    accounting, spawner = site["accounting"], site["spawner"]
    environment = values.get("environment", spawner["environment"])
    if environment not in spawner.get("environments", [spawner["environment"]]):
        raise OptionsError("environment", _("There is no software environment '{name}'.").format(name=environment))
    qos = values.get("qos", accounting["default_qos"])
    if qos not in {q["name"] for q in accounting["qos"]}:
        raise OptionsError("qos", _("There is no quality of service '{name}'.").format(name=qos))
    return SessionRequest(
        profile=slug,
        partition=values["partition"],
        gpus=values["gpus"],
        cpus=values["cpus"],
        memory_gb=values["memory_gb"],
        hours=values["hours"],
        account=values.get("account", accounting["default_account"]),
        qos=qos,
        environment=environment,
        reservation=values.get("reservation", ""),
        shards=values.get("shards", 0),
        choices=dict(chosen),
    )
