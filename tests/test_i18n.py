"""Message catalogs: every message the hub side uses has a Dutch translation with the same fields."""

import re
import string
from pathlib import Path

import aifl_hub
import pytest
from aifl_hub.i18n import catalog_for, pick_language, translations
from babel.messages.extract import extract_from_dir

PACKAGE = Path(aifl_hub.__file__).parent


def _messages():
    found = extract_from_dir(str(PACKAGE), method_map=[("**.py", "python")], keywords={"_": None, "N_": None})
    return {m[2] for m in found if isinstance(m[2], str)}


def _template_messages():
    pattern = re.compile(r'_\("((?:[^"\\]|\\.)*)"\)')
    return {m for f in (PACKAGE / "templates").rglob("*.html") for m in pattern.findall(f.read_text())}


MESSAGES = sorted(_messages() | _template_messages())
DUTCH = catalog_for("nl")


def test_messages_were_found():
    assert "What do you need?" in MESSAGES
    assert len(MESSAGES) >= 10


@pytest.mark.parametrize("message", MESSAGES)
def test_every_message_has_a_dutch_translation_with_the_same_fields(message):
    entry = DUTCH.get(message)
    assert entry is not None and entry.string, f"no Dutch translation for {message!r}"
    dutch = translations("nl").gettext(message)
    fields = {f[1] for f in string.Formatter().parse(message) if f[1]}
    assert {f[1] for f in string.Formatter().parse(dutch) if f[1]} == fields


@pytest.mark.parametrize(("header", "cookie", "expected"), [
    ("nl-NL,nl;q=0.9,en;q=0.8", None, "nl"),
    ("en-GB,en;q=0.9,nl;q=0.5", None, "en"),
    ("de-DE,de;q=0.9", None, "en"),
    ("de-DE,nl;q=0.3", None, "nl"),
    ("nl", "en", "en"),
    (None, "xx", "en"),
    ("en;q=abc,nl;q=0.2", None, "nl"),
])
def test_language_choice(header, cookie, expected):
    assert pick_language(header, cookie) == expected


def test_non_ascii_translations_are_decoded_as_utf8():
    dutch = translations("nl").gettext(
        "Your last session (job {job}) was ended outside the lab: Slurm reports {state}. "
        "Your files are kept; the job log is in {log}.")
    assert "beëindigd" in dutch


def test_every_catalog_entry_is_still_used():
    unused = sorted(m.id for m in DUTCH if m.id and m.id not in set(MESSAGES))
    assert unused == []
