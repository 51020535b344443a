"""The example notebooks reach ``~/examples``: copied on first start, updated while unchanged, and an
edited copy is kept with the newer version written beside it (:mod:`aifl_notebook.examples`)."""

from __future__ import annotations

import json
from pathlib import Path

from aifl_notebook.examples import MANIFEST, install_examples, sibling


def ship(folder: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def test_first_start_copies_every_notebook(tmp_path: Path) -> None:
    shipped = ship(tmp_path / "shipped", {"a/one.en.ipynb": "1", "a/one.nl.ipynb": "één", "b/two.en.ipynb": "2"})
    home = tmp_path / "home"
    home.mkdir()
    report = install_examples(home, shipped)
    assert sorted(report.copied) == ["a/one.en.ipynb", "a/one.nl.ipynb", "b/two.en.ipynb"]
    assert (home / "examples" / "a" / "one.nl.ipynb").read_text() == "één"
    manifest = json.loads((home / MANIFEST).read_text())
    assert set(manifest) == {"a/one.en.ipynb", "a/one.nl.ipynb", "b/two.en.ipynb"}
    # A second start with the same notebooks changes nothing.
    again = install_examples(home, shipped)
    assert (again.copied, again.updated, again.offered) == ([], [], [])


def test_an_unchanged_copy_is_updated_and_an_edited_one_kept_with_the_new_version_beside_it(tmp_path: Path) -> None:
    shipped = ship(tmp_path / "shipped", {"x.ipynb": "v1", "y.ipynb": "v1"})
    home = tmp_path / "home"
    home.mkdir()
    install_examples(home, shipped)
    examples = home / "examples"
    (examples / "y.ipynb").write_text("my own work")

    ship(shipped, {"x.ipynb": "v2", "y.ipynb": "v2"})
    report = install_examples(home, shipped)
    assert report.updated == ["x.ipynb"] and report.offered == ["y.ipynb"]
    assert (examples / "x.ipynb").read_text() == "v2"
    assert (examples / "y.ipynb").read_text() == "my own work"
    assert sibling("y.ipynb") == "y.new-version.ipynb"
    assert (examples / "y.new-version.ipynb").read_text() == "v2"

    # A later version replaces the untouched new-version file; the user's own copy still stays.
    ship(shipped, {"x.ipynb": "v3", "y.ipynb": "v3"})
    report = install_examples(home, shipped)
    assert report.updated == ["x.ipynb"] and report.offered == ["y.ipynb"]
    assert (examples / "y.ipynb").read_text() == "my own work"
    assert (examples / "y.new-version.ipynb").read_text() == "v3"

    # If the user edits the new-version file too, both of their files stay as they are.
    (examples / "y.new-version.ipynb").write_text("also mine")
    ship(shipped, {"y.ipynb": "v4"})
    report = install_examples(home, shipped)
    assert report.kept == ["y.ipynb"]
    assert (examples / "y.new-version.ipynb").read_text() == "also mine"


def test_a_deleted_notebook_stays_deleted_until_the_manifest_is_removed(tmp_path: Path) -> None:
    shipped = ship(tmp_path / "shipped", {"x.ipynb": "v1"})
    home = tmp_path / "home"
    home.mkdir()
    install_examples(home, shipped)
    (home / "examples" / "x.ipynb").unlink()
    assert install_examples(home, shipped).copied == []
    assert not (home / "examples" / "x.ipynb").exists()
    (home / MANIFEST).unlink()
    assert install_examples(home, shipped).copied == ["x.ipynb"]


def test_symbolic_links_are_never_followed(tmp_path: Path) -> None:
    shipped = ship(tmp_path / "shipped", {"x.ipynb": "v1", "d/y.ipynb": "v1"})
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    (home / "examples").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "target").write_text("not yours")
    (home / "examples" / "x.ipynb").symlink_to(elsewhere / "target")
    (home / "examples" / "d").symlink_to(elsewhere)
    report = install_examples(home, shipped)
    assert report.copied == [] and report.updated == [] and report.offered == []
    assert (elsewhere / "target").read_text() == "not yours"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["target"]


def test_no_shipped_notebooks_changes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    report = install_examples(home, tmp_path / "missing")
    assert report.copied == [] and not (home / "examples").exists() and not (home / MANIFEST).exists()
