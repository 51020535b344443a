"""The example notebooks in ``~/examples/``: copied on first start, updated without losing anyone's edits.

``lab up`` puts the lab's example notebooks into the environment (``{sys.prefix}/share/aifl/notebooks``).
At every session start :func:`install_examples` brings them to the user's ``~/examples/``:

- a notebook the user does not have yet is copied;
- a copy the user never changed (its content is still what the lab wrote) is replaced by a newer version;
- a copy the user changed is kept as it is, and the newer version is written beside it as
  ``<name>.new-version.ipynb`` (itself replaced by later versions as long as the user leaves it alone);
- a notebook the user deleted stays deleted (delete ``~/.aifl/examples.json`` to get all of them back).

What the lab wrote is remembered in ``~/.aifl/examples.json``: for each notebook the SHA-256 of the
version written into ``~/examples/`` and of the one written beside it. Symbolic links are never
followed or replaced; files are written to a temporary name and then renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import datasets

MANIFEST = Path(".aifl") / "examples.json"
FOLDER = "examples"
NEW_VERSION = ".new-version"


def shipped_folder() -> Path:
    """Where ``lab up`` puts the example notebooks in the notebook environment."""
    return Path(sys.prefix) / "share" / "aifl" / "notebooks"


@dataclass
class Report:
    """What :func:`install_examples` did, as paths relative to ``~/examples``."""

    copied: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    offered: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def sibling(relative: str) -> str:
    """The name of the newer version written beside an edited notebook: ``x.ipynb`` → ``x.new-version.ipynb``."""
    path = Path(relative)
    return str(path.with_name(path.stem + NEW_VERSION + path.suffix))


def _digest(path: Path) -> str | None:
    """SHA-256 of a regular file (not a symbolic link), or None when there is none."""
    if path.is_symlink() or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` through a temporary file in the same folder, then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.aifl-tmp")
    temporary.write_bytes(content)
    os.replace(temporary, path)


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` (and every folder on the way) stays inside ``folder`` without symbolic links."""
    current = path
    while current != folder:
        if current.is_symlink():
            return False
        if current.parent == current:
            return False
        current = current.parent
    return True


def _load_manifest(path: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {key: {k: v for k, v in value.items() if isinstance(v, str)}
            for key, value in data.items() if isinstance(key, str) and isinstance(value, dict)}


def install_examples(home: Path, source: Path | None = None) -> Report:
    """Bring the shipped notebooks (``source``, default :func:`shipped_folder`) into ``home/examples``."""
    source = shipped_folder() if source is None else source
    report = Report()
    if not source.is_dir():
        return report
    target = home / FOLDER
    if target.is_symlink():
        return report
    manifest_path = home / MANIFEST
    manifest = _load_manifest(manifest_path)
    for notebook in sorted(source.rglob("*.ipynb")):
        relative = notebook.relative_to(source).as_posix()
        content = notebook.read_bytes()
        new = hashlib.sha256(content).hexdigest()
        record = manifest.setdefault(relative, {})
        path = target / relative
        if not _inside(path.parent, home) or path.is_symlink():
            continue
        current = _digest(path)
        if current is None:
            if path.exists() or "copied" in record:
                continue  # not a plain file, or the user deleted it: leave it so
            _write(path, content)
            record["copied"] = new
            report.copied.append(relative)
        elif current == new:
            record["copied"] = new
        elif current == record.get("copied"):
            _write(path, content)
            record["copied"] = new
            report.updated.append(relative)
        else:
            beside = target / sibling(relative)
            present = _digest(beside)
            if present == new:
                continue
            if beside.is_symlink() or (beside.exists() and present != record.get("offered")):
                report.kept.append(relative)  # the user changed the newer version too: leave both
                continue
            _write(beside, content)
            record["offered"] = new
            report.offered.append(relative)
    manifest = {key: value for key, value in manifest.items() if value}
    _write(manifest_path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    return report


def install_at_start(home: Path | None = None) -> None:
    """Called when the session's server starts: install the examples, never stopping the start on failure.

    The data sets on the shelf are listed in ``~/datasets`` at the same moment (:mod:`aifl_notebook.datasets`).
    ``home`` defaults to the account's home folder (not ``$HOME``).
    """
    home = Path(pwd.getpwuid(os.getuid()).pw_dir) if home is None else home
    try:
        install_examples(home)
    except OSError as error:
        print(f"aifl-singleuser: the example notebooks could not be copied to {home / FOLDER}: {error}",
              file=sys.stderr)
    datasets.install_at_start(home)
