"""The spawn page's profile cards as plain data: what each profile gives, its options and any error.

:func:`build_cards` is pure (site, language, groups, availability, energy and the last refused form
in, cards out); the spawner renders the cards with ``templates/options_form.html``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup, escape

from .energy import format_number
from .i18n import gettext_for
from .options import (
    UNLISTED,
    UNLISTED_SUFFIX,
    default_choice,
    default_profile,
    form_field,
    profile_list,
    range_default,
    text,
)
from .organisations import shards_per_gpu as shards_per_gpu_of
from .site import Site


@dataclass(frozen=True)
class FormState:
    """A refused form, shown again: the chosen profile, its fields as sent, and the refused field's message."""

    profile: str
    values: Mapping[str, str] = field(default_factory=dict)  # form field name -> value as sent
    field: str = ""  # form field name ("profile" for the profile choice)
    message: str = ""


@dataclass
class Option:
    """One input of a card."""

    key: str
    name: str
    kind: str  # "range" or "choices"
    label: str
    hint: str
    value: str
    min: int = 0
    max: int = 0
    choices: list[tuple[str, str]] = field(default_factory=list)
    unlisted: bool = False
    unlisted_label: str = ""
    typed: str = ""
    error: str = ""
    unlisted_error: str = ""


@dataclass
class Card:
    """One profile as the spawn page shows it."""

    profile: Mapping[str, Any]
    selected: bool
    what: str
    availability: str
    availability_state: str
    kwh_per_hour: float | None
    energy: Markup
    options: list[Option]
    advanced: list[Option]
    open_advanced: bool


def what_you_get(override: Mapping[str, Any], gpu_type: str, lang: str, shards_per_gpu: int = 0) -> str:
    """E.g. "1 GPU (H200), 16 CPU cores, 120 GB memory, up to 8 hours" (a share: "1/8 of a GPU (H200)")."""
    _ = gettext_for(lang)
    gpus, shards = override["gpus"], override.get("shards", 0)
    kind = gpu_type.upper()
    if shards and shards_per_gpu:
        parts = [_("{part}/{whole} of a GPU ({type}), shared with others").format(
            part=shards, whole=shards_per_gpu, type=kind)]
    else:
        parts = [_("No GPU") if not gpus else (_("1 GPU ({type})") if gpus == 1 else _("{n} GPUs ({type})")).format(
            n=gpus, type=kind)]
    parts.append(_("{n} CPU cores").format(n=override["cpus"]) if override["cpus"] != 1 else _("1 CPU core"))
    parts.append(_("{n} GB memory").format(n=override["memory_gb"]))
    parts.append(_("up to {n} hours").format(n=override["hours"]) if override["hours"] != 1 else _("up to 1 hour"))
    return ", ".join(parts)


def energy_line(kwh_per_hour: float, hours: int, lang: str) -> Markup:
    """"About 3.2 kWh for 4 hours (estimate)", with the numbers marked so the page can update them."""
    _ = gettext_for(lang)
    return escape(_("About {kwh} kWh for {hours} hours (estimate)")).format(
        kwh=Markup('<span data-kwh="">{}</span>').format(format_number(kwh_per_hour * hours, lang)),
        hours=Markup('<span data-hours="">{}</span>').format(hours))


def last_used(options: Mapping[str, Any] | None) -> FormState | None:
    """The form as the user last sent it (JupyterHub keeps each start's ``user_options``): start like last time.

    ``None`` when there is no earlier start with a profile; values are shown as sent and checked on submit.
    """
    slug = (options or {}).get("profile")
    if not isinstance(slug, str):
        return None
    return FormState(profile=slug, values={form_field(slug, key): str(value) for key, value in (options or {}).items()
                                           if key != "profile" and isinstance(value, str | int | float)})


def build_cards(site: Site, lang: str, groups: Collection[str] | None, *,
                availability: Mapping[str, tuple[str, str]] | None = None,
                kwh_per_hour: Callable[[Mapping[str, Any]], float | None] | None = None,
                state: FormState | None = None) -> list[Card]:
    """The cards for the profiles open to ``groups``.

    ``availability`` maps a slug to (state, words); ``kwh_per_hour`` gives a profile's estimated energy
    per hour (or ``None``); ``state`` is the last refused form, whose values and error are shown again.
    """
    _ = gettext_for(lang)
    profiles = profile_list(site, groups)
    chosen = state.profile if state and state.profile in {p["slug"] for p in profiles} else (
        (default_profile(profiles) or {}).get("slug"))
    gpu_type = site["cluster"].get("gpu_nodes", {}).get("gpu_type", "gpu")
    shards_per_gpu = shards_per_gpu_of(site)
    cards = []
    for profile in profiles:
        slug = profile["slug"]
        mine = state if state and state.profile == slug else None
        options: list[Option] = []
        advanced: list[Option] = []
        hours = profile["slurm_override"]["hours"]
        for key, spec in profile.get("profile_options", {}).items():
            option = _option(slug, key, spec, lang, mine)
            if option.kind == "range" and key == "hours" and option.value.isdigit():
                hours = int(option.value)
            (advanced if spec.get("advanced") else options).append(option)
        state_word, words = (availability or {}).get(slug, ("unknown", ""))
        per_hour = kwh_per_hour(profile) if kwh_per_hour else None
        cards.append(Card(
            profile=profile, selected=slug == chosen,
            what=what_you_get(profile["slurm_override"], gpu_type, lang, shards_per_gpu),
            availability=words, availability_state=state_word, kwh_per_hour=per_hour,
            energy=energy_line(per_hour, hours, lang) if per_hour is not None else Markup(""),
            options=options, advanced=advanced,
            open_advanced=any(o.error or o.unlisted_error or o.typed for o in advanced)))
    return cards


def _option(slug: str, key: str, spec: Mapping[str, Any], lang: str, state: FormState | None) -> Option:
    _ = gettext_for(lang)
    name = form_field(slug, key)
    sent = dict(state.values) if state else {}
    error = state.message if state and state.field == name else ""
    label = text(spec["display_name"], lang)
    hint = text(spec["help"], lang) if spec.get("help") else ""
    if "range" in spec:
        bounds = spec["range"]
        return Option(key=key, name=name, kind="range", label=label,
                      hint=hint or _("From {low} to {high}.").format(low=bounds["min"], high=bounds["max"]),
                      value=sent.get(name, str(range_default(spec))), min=bounds["min"], max=bounds["max"],
                      error=error)
    unlisted = spec.get(UNLISTED, {})
    enabled = bool(unlisted.get("enabled"))
    typed_name = name + UNLISTED_SUFFIX
    return Option(
        key=key, name=name, kind="choices", label=label, hint=hint,
        value=sent.get(name, default_choice(spec) or ""),
        choices=[(value, text(choice["display_name"], lang)) for value, choice in spec["choices"].items()],
        unlisted=enabled, unlisted_label=text(unlisted["display_name"], lang) if enabled else "",
        typed=sent.get(typed_name, ""), error=error,
        unlisted_error=state.message if state and state.field == typed_name else "")

