"""The data sets on the shelf in ``~/datasets/``: a link to each one the user may read, and a README.md.

``lab up`` publishes the catalogue of the site's data sets in the environment
(``{sys.prefix}/etc/aifl/datasets.json``: name, description, licence, location, access and the
organisations of a controlled set). At every session start :func:`install_datasets`, running as the
user, brings it to ``~/datasets``:

- ``~/datasets/<name>`` is a link to each data set the user can read (the file system decides: a
  controlled set's folder is readable only by its Unix group);
- a link the lab made to a data set the user can no longer read is removed; anything else the user put
  there is left alone, and a ``~/datasets`` that is itself a link is not touched;
- ``~/datasets/README.md`` lists every data set with its description and licence in the session's
  language and, for one the user cannot read, why not and how to get access.
"""

from __future__ import annotations

import json
import os
import pwd
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .i18n import gettext_for, language

FOLDER = "datasets"
README = "README.md"


def catalogue_path() -> Path:
    """Where ``lab up`` publishes the data sets' catalogue in the notebook environment."""
    return Path(sys.prefix) / "etc" / "aifl" / "datasets.json"


def load_catalogue(path: Path | None = None) -> list[dict[str, Any]]:
    """The data sets of the catalogue (none when there is no catalogue)."""
    try:
        data = json.loads((catalogue_path() if path is None else path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [d for d in data.get("datasets", []) if isinstance(d, dict)] if isinstance(data, dict) else []


def readable(location: str) -> bool:
    """Whether this process may list and read the data set's folder (its permissions decide)."""
    return os.path.isdir(location) and os.access(location, os.R_OK | os.X_OK)


def _text(value: Any, lang: str) -> str:
    return value if isinstance(value, str) else str(value.get(lang) or value.get("en", ""))


def access_line(dataset: Mapping[str, Any], can_read: bool, lang: str, _: Callable[[str], str]) -> str:
    """One plain sentence: whether the user may read the data set, and if not, how to get access."""
    if can_read:
        return _("You have access: ~/datasets/{name} (read-only).").format(name=dataset["name"])
    if dataset.get("access") != "controlled":
        return _("This data set is not available on this machine right now; ask the helpdesk.")
    names = ", ".join(_text(label, lang) for label in dataset.get("organisations", {}).values())
    return _("You do not have access: this data set is only for members of {organisations}. If you work for one "
             "of them, ask your organisation's contact person to have your membership confirmed in the lab; "
             "access starts with your next session.").format(organisations=names)


def readme(datasets: list[dict[str, Any]], access: Mapping[str, bool], lang: str) -> str:
    """``~/datasets/README.md`` in ``lang``."""
    _ = gettext_for(lang)
    lines = [f"# {_('Data sets')}", "",
             _("Data sets on the shelf of this lab. They are read-only: copy what you want to change into your "
               "own folder. Use them only as their licence says."), ""]
    for dataset in datasets:
        kind = _("Controlled access") if dataset.get("access") == "controlled" else _("Open to all users")
        lines += [f"## {dataset['name']}", "", _text(dataset.get("description", ""), lang), "",
                  f"- {_('Licence')}: {_text(dataset.get('licence', ''), lang)}",
                  f"- {_('Access')}: {kind}",
                  f"- {access_line(dataset, access[dataset['name']], lang, _)}", ""]
    if not datasets:
        lines += [_("There are no data sets on this lab's shelf yet."), ""]
    return "\n".join(lines)


def _replace_link(path: Path, target: str) -> None:
    """Make ``path`` a link to ``target`` through a temporary name (an old link of ours is replaced)."""
    temporary = path.with_name(f".{path.name}.aifl-tmp")
    if temporary.is_symlink() or temporary.exists():
        temporary.unlink()
    temporary.symlink_to(target)
    os.replace(temporary, path)


def install_datasets(home: Path, catalogue: Path | None = None, lang: str | None = None) -> dict[str, bool]:
    """Bring the data sets into ``home/datasets``; return which ones the user can read (name -> bool)."""
    datasets = load_catalogue(catalogue)
    target = home / FOLDER
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        return {}
    target.mkdir(mode=0o755, exist_ok=True)
    access = {}
    for dataset in datasets:
        name, location = str(dataset.get("name", "")), str(dataset.get("location", ""))
        if not name or "/" in name or name.startswith(".") or not location.startswith("/"):
            continue
        access[name] = readable(location)
        link = target / name
        ours = link.is_symlink() and os.readlink(link) == location
        if access[name] and not ours and (link.is_symlink() or not link.exists()):
            _replace_link(link, location)
        elif not access[name] and ours:
            link.unlink()
    datasets = [d for d in datasets if str(d.get("name", "")) in access]
    path = target / README
    if not path.is_symlink():
        temporary = target / f".{README}.aifl-tmp"
        temporary.write_text(readme(datasets, access, language(lang)), encoding="utf-8")
        os.replace(temporary, path)
    return access


def install_at_start(home: Path | None = None) -> None:
    """Called when the session's server starts: ``~/datasets``, never stopping the start on failure."""
    home = Path(pwd.getpwuid(os.getuid()).pw_dir) if home is None else home
    try:
        install_datasets(home)
    except OSError as error:
        print(f"aifl-singleuser: the data sets could not be listed in {home / FOLDER}: {error}", file=sys.stderr)
