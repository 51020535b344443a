"""Messages of the notebook side in Dutch and English (Python APIs and widgets).

English is the source language; Dutch comes from the ``.po`` files in ``locale/nl/LC_MESSAGES/`` (one
per part: ``panel.po``, ``dask.po``, ``batch.po`` …), merged into one catalog, read once with Babel.
The language is the one the user chose in the hub (``AIFL_LANG`` in the session's environment) unless
a caller asks for another. The JupyterLab extension's own texts are in JupyterLab's catalog format
(``locale/nl_NL/LC_MESSAGES/aifl_notebook.json``).
"""

from __future__ import annotations

import gettext
import os
from collections.abc import Callable
from functools import cache
from importlib import resources
from io import BytesIO

from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from .session import LANGUAGES, session_language


def N_(message: str) -> str:
    """Mark ``message`` for the catalog; it is translated where it is shown."""
    return message


@cache
def translations(lang: str) -> gettext.NullTranslations:
    """The catalog for ``lang`` (English and unknown languages get the source strings)."""
    if lang not in LANGUAGES or lang == "en":
        return gettext.NullTranslations()
    merged = Catalog(locale=lang, charset="utf-8")
    folder = resources.files(__package__).joinpath(f"locale/{lang}/LC_MESSAGES")
    for po in sorted((f for f in folder.iterdir() if f.name.endswith(".po")), key=lambda f: f.name):
        with po.open("rb") as fh:
            for message in read_po(fh, locale=lang, charset="utf-8"):
                if message.id:
                    merged[message.id] = message
    buf = BytesIO()
    write_mo(buf, merged)
    buf.seek(0)
    return gettext.GNUTranslations(buf)


def language(lang: str | None = None) -> str:
    """``lang`` if given and known, else the session's language (``AIFL_LANG``), else English."""
    return lang if lang in LANGUAGES else session_language(os.environ)


def gettext_for(lang: str | None = None) -> Callable[[str], str]:
    """A ``_`` function translating into ``lang`` (default: the session's language)."""
    return translations(language(lang)).gettext
