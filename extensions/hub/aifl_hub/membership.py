"""Which organisation a user belongs to: asked at sign-up, confirmed by an administrator.

A person picks their organisation on the sign-up page; the choice is kept as a *request* in the
hub's state folder (``organisation-requests.json``, readable by the hub only). When an administrator
approves the sign-up, the request becomes membership of the hub group ``org-<name>`` — the one fact
the spawner reads (:func:`aifl_hub.organisations.organisation_of`). Administrators can change it
later like any group in JupyterHub's admin page. On a real site with OIDC the organisation comes from
a claim instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jupyterhub import orm

from .organisations import GROUP_PREFIX, organisation
from .site import Site

REQUESTS_FILE = "organisation-requests.json"


def requests_path(site: Site) -> Path:
    """The file of requested organisations (user name -> organisation name)."""
    return Path(site["hub"]["state_dir"]) / REQUESTS_FILE


def requested(site: Site) -> dict[str, str]:
    """All open requests; an unreadable or missing file is none."""
    try:
        data = json.loads(requests_path(site).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def request(site: Site, user: str, org: str) -> None:
    """Remember that ``user`` says they belong to ``org`` (which must be in the site file)."""
    if organisation(site, org) is None:
        raise ValueError(f"unknown organisation {org!r}")
    data = requested(site)
    data[user] = org
    _write(requests_path(site), data)


def confirm(site: Site, db: Any, orm_user: orm.User) -> str | None:
    """Make the approved user a member of the organisation they asked for; return its name (or None)."""
    data = requested(site)
    org = data.pop(orm_user.name, None)
    if org is None or organisation(site, org) is None:
        return None
    name = f"{GROUP_PREFIX}{org}"
    group = orm.Group.find(db, name)
    if group is None:
        group = orm.Group(name=name)
        db.add(group)
    if group not in orm_user.groups:
        orm_user.groups.append(group)
    db.commit()
    _write(requests_path(site), data)
    return org


def _write(path: Path, data: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.new")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(data, out, indent=1, sort_keys=True)
    os.replace(tmp, path)
