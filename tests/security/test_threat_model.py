"""docs/security.md names, for every actor, tests that exist."""

from __future__ import annotations

import re

from conftest import REPO

DOC = (REPO / "docs" / "security.md").read_text()
DEFINED = {m.group(1) for f in (REPO / "tests").rglob("test_*.py")
           for m in re.finditer(r"^def (test_\w+)", f.read_text(), flags=re.M)}


def test_every_test_the_threat_model_names_exists():
    named = set(re.findall(r"\b(test_\w+)\b(?!\.py)", DOC))
    assert named and not named - DEFINED, sorted(named - DEFINED)


def test_every_actor_has_a_test_but_the_administrator():
    actors = re.split(r"^### ", DOC.split("## Actors", 1)[1].split("## Known limits", 1)[0], flags=re.M)[1:]
    assert len(actors) == 9
    for actor in actors:
        title = actor.splitlines()[0]
        if title != "Administrator":
            assert re.search(r"\btest_\w+", actor), title
