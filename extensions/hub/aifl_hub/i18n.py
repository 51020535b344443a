"""Message catalogs (gettext .po files under ``locale/``) for the hub side, in Dutch and English.

English is the source language; Dutch comes from the ``.po`` files in ``locale/nl/LC_MESSAGES/`` (one
per part of the hub: ``aifl.po`` for the spawner and its pages, others beside it), merged into one
catalog. Catalogs are read once with Babel and cached.
"""

from __future__ import annotations

import gettext
from functools import cache
from importlib import resources
from io import BytesIO

from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

LANGUAGES = ("nl", "en")
DEFAULT_LANGUAGE = "en"


def N_(message: str) -> str:
    """Mark ``message`` for the catalog; it is translated where it is shown."""
    return message


@cache
def translations(lang: str) -> gettext.NullTranslations:
    """The catalog for ``lang`` (English and unknown languages get the source strings)."""
    if lang not in LANGUAGES or lang == "en":
        return gettext.NullTranslations()
    catalog = catalog_for(lang)
    buf = BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return gettext.GNUTranslations(buf)


def catalog_for(lang: str) -> Catalog:
    """All ``.po`` files of ``lang`` merged into one Babel catalog."""
    merged = Catalog(locale=lang, charset="utf-8")
    folder = resources.files(__package__).joinpath(f"locale/{lang}/LC_MESSAGES")
    for po in sorted((f for f in folder.iterdir() if f.name.endswith(".po")), key=lambda f: f.name):
        with po.open("rb") as fh:
            for message in read_po(fh, locale=lang, charset="utf-8"):
                if message.id:
                    merged[message.id] = message
    return merged


def gettext_for(lang: str):  # noqa: ANN201 - returns the bound gettext function
    """A ``_`` function translating into ``lang``."""
    return translations(lang).gettext


def pick_language(accept_language: str | None, cookie: str | None = None,
                  default: str = DEFAULT_LANGUAGE) -> str:
    """Choose ``nl`` or ``en``: a remembered choice first, then the browser's Accept-Language."""
    if cookie in LANGUAGES:
        return cookie
    weighted: list[tuple[float, str]] = []
    for part in (accept_language or "").split(","):
        tag, _, q = part.strip().partition(";q=")
        try:
            weight = float(q) if q else 1.0
        except ValueError:
            continue
        base = tag.split("-")[0].lower()
        if base in LANGUAGES:
            weighted.append((weight, base))
    return max(weighted, key=lambda w: w[0])[1] if weighted else default
