"""Which organisation a user belongs to: asked at sign-up or read from an OIDC claim, confirmed by an administrator.

A person picks their organisation on the sign-up page, or (on a site with OIDC) the provider's claim
names it (:func:`organisation_for_claim`); either way it is kept as a *request* in the hub's state
folder (``organisation-requests.json``, readable by the hub only). An administrator confirms it when
approving the sign-up, or on the organisation requests page (:mod:`aifl_hub.membership_page`). A
confirmed request becomes membership of the hub group ``org-<name>`` — the one fact the spawner reads
(:func:`aifl_hub.organisations.organisation_of`) — and is remembered in ``organisation-members.json``,
so that an OIDC login, which sets a user's groups from the provider, keeps it.

Leaving an organisation (an administrator removes the person from its group, deletes the group, or
confirms another organisation) takes away the Slurm association with its account at once
(:func:`leave`, through the root helper ``aifl-org-revoke``): ``sbatch --account=<org>`` is refused after.
Confirming or leaving also sets which controlled data sets the person may read (:func:`sync_datasets`,
through the root helper ``aifl-datasets-access``; see :mod:`aifl_hub.datasets`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jupyterhub import orm

from .organisations import GROUP_PREFIX, organisation
from .site import Site
from .slurm import run_argv

REQUESTS_FILE = "organisation-requests.json"
MEMBERS_FILE = "organisation-members.json"
REVOKE_COMMAND = ("/usr/bin/sudo", "-n", "/usr/local/sbin/aifl-org-revoke")
DATASETS_COMMAND = ("/usr/bin/sudo", "-n", "/usr/local/sbin/aifl-datasets-access")


def requests_path(site: Site) -> Path:
    """The file of requested organisations (user name -> organisation name)."""
    return Path(site["hub"]["state_dir"]) / REQUESTS_FILE


def _read(path: Path) -> dict[str, str]:
    """A user name -> organisation file; an unreadable or missing file is empty."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def requested(site: Site) -> dict[str, str]:
    """All open requests."""
    return _read(requests_path(site))


def confirmed(site: Site) -> dict[str, str]:
    """Every confirmed membership (user name -> organisation)."""
    return _read(Path(site["hub"]["state_dir"]) / MEMBERS_FILE)


def organisation_for_claim(site: Site, values: object) -> str | None:
    """The organisation whose ``claim_values`` hold the claim's value (a string or a list); None if none does."""
    if isinstance(values, str):
        given = {values}
    elif isinstance(values, list):
        given = {v for v in values if isinstance(v, str)}
    else:
        return None
    for org in site.get("organisations", {}).get("list", []):
        if given & set(org.get("claim_values", [])):
            return org["name"]
    return None


def reject(site: Site, user: str) -> str | None:
    """Drop ``user``'s open request; return the organisation it named (or None)."""
    data = requested(site)
    org = data.pop(user, None)
    if org is not None:
        _write(requests_path(site), data)
    return org


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
    for old in [g for g in orm_user.groups if g.name.startswith(GROUP_PREFIX) and g is not group]:
        orm_user.groups.remove(old)  # one organisation at a time: a confirmed change replaces the old one
    if group not in orm_user.groups:
        orm_user.groups.append(group)
    db.commit()
    members = confirmed(site)
    members[orm_user.name] = org
    _write(Path(site["hub"]["state_dir"]) / MEMBERS_FILE, members)
    _write(requests_path(site), data)
    return org


async def leave(site: Site, user: str, org: str, command: tuple[str, ...] = REVOKE_COMMAND) -> None:
    """``user`` is no longer a member of ``org``: forget the confirmed membership, remove the Slurm association.

    Raises :class:`~aifl_hub.slurm.SlurmError` when the helper could not remove it.
    """
    members = confirmed(site)
    if members.get(user) == org:
        del members[user]
        _write(Path(site["hub"]["state_dir"]) / MEMBERS_FILE, members)
    await run_argv([*command, user, org], timeout=150)
    await sync_datasets(site, user, confirmed(site).get(user))


async def sync_datasets(site: Site, user: str, org: str | None, command: tuple[str, ...] = DATASETS_COMMAND) -> None:
    """Let ``user`` read exactly the controlled data sets of ``org`` (None: no organisation, none of them).

    Nothing runs when the site has no controlled data set. Raises :class:`~aifl_hub.slurm.SlurmError`
    when the helper failed.
    """
    if not any(d["access"] == "controlled" for d in site.get("datasets", [])):
        return
    await run_argv([*command, user, *([org] if org else [])], timeout=60)


def _write(path: Path, data: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.new")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(data, out, indent=1, sort_keys=True)
    os.replace(tmp, path)
