"""The workshop pages and API inside the hub: trainers create and run workshops, participants join with a code.

Pages (Dutch and English, like every hub page):

* ``/hub/workshops`` — a trainer's workshops and the form for a new one (POST creates it; the course
  material is a folder of the site's, or the trainer's own files in the multipart field ``material_upload``);
* ``/hub/workshops/<id>`` — the live view of the seats (joined, server waiting/starting/running, last
  activity), the join link and code; ``POST /hub/workshops/<id>/end`` ends the workshop;
* ``/hub/join?code=…`` — join: a display name (a temporary account is made) or, when logged in, one's own
  account. The participant is sent straight on to their session with the workshop's profile;
* ``/hub/workshops/<id>/seats/<account>/view?path=…`` — a participant's notebook, read-only, for the trainer
  (read through ``aifl-work`` as the participant, so whether their server runs or not);
* ``/hub/workshops/mine`` — a participant's workshops, each with ``/hub/workshops/<id>/my-work.zip``: their
  workshop folder as a zip, until the workshop's temporary accounts are disabled.

REST API (tokens): ``GET|POST /hub/api/workshops`` (POST may carry the trainer's own material as ``upload``,
base64 files: see :meth:`WorkshopsAPI.post`), ``GET /hub/api/workshops/<id>``,
``POST /hub/api/workshops/<id>/end`` and ``POST /hub/api/workshops/tend`` (the tender service: takes away
what workshops whose grace period is over gave, through the root helper ``aifl-revoke``: temporary
accounts are removed from the hub and Slurm and locked, members lose the workshop's Slurm account).

Who may do what (RBAC): the scope ``custom:workshops:run`` (role ``trainer``, given to the site's trainer
group) lets a user create workshops; a trainer sees and ends only their own (admins see all). Each
workshop has a role ``workshop-<id>-trainer`` for its trainer with read scopes filtered to the workshop's
group ``workshop-<id>``: through the REST API a trainer reads about their participants and no one else,
and reaches no participant's server. Push and collect go through the hub, which uses each server's own
token once it has checked that the trainer runs the workshop; what they copy is never trusted by the
receiving server (a notebook's HTML and JavaScript outputs do not run as another account). The trainer reaches
only the workshop's own folder, whose name carries the workshop's id.

Join codes are limited by the address the proxy saw (:func:`client_address`), per address and overall
(:class:`JoinLimiter`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import unicodedata
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote, urlencode

from jupyterhub import handlers, orm, roles
from jupyterhub.apihandlers import default_handlers as api_routes
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.utils import maybe_future, url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError

from .accounts import TRUSTED_PROXIES, client_address
from .i18n import gettext_for
from .options import profiles_by_slug, text
from .pages import request_language
from .site import Site
from .slurm import SlurmError, run_argv
from .workshop_files import WorkError, folder_notebooks, notebook_cells, read_notebook, zip_chunks
from .workshop_material import (
    DATA_SUFFIXES,
    MAX_FILE_BYTES,
    MAX_TOTAL_BYTES,
    MB,
    check_upload,
    decode_api_upload,
    discard_material,
    store_material,
)
from .workshops import (
    FIELD_LABELS,
    RESERVATION_HELPER,
    Participant,
    Workshop,
    WorkshopError,
    folder_name,
    materials,
    new_code,
    normalise_code,
    own_material_folder,
    partition_nodes,
    plan_reservation,
    reservation_argv,
    reserved_size,
    settings,
    short_of,
    slurm_reason,
    store_for,
    validate_new,
)

SITE_SETTING = "aifl_workshops_site"
RUN_SCOPE = "custom:workshops:run"
TEND_SCOPE = "custom:workshops:tend"
CUSTOM_SCOPES = {
    RUN_SCOPE: {"description": "Create and run workshops (trainers)."},
    TEND_SCOPE: {"description": "Disable the temporary accounts of workshops whose grace period is over."},
}
SUDO = "/usr/bin/sudo"
MKUSER = "/usr/local/sbin/aifl-mkuser"
REVOKE_HELPER = "/usr/local/sbin/aifl-revoke"
WORKSHOP_ID = r"([a-z0-9]{6})"
DISPLAY_NAME_MAX = 60
# Wrong codes per address within JOIN_WINDOW seconds before that address is answered "too many" (a class
# behind one address that mistypes now and then is not locked out; guessing an 8-character code is hopeless).
JOIN_FAILURES_ALLOWED = 20
JOIN_WINDOW = 60.0
# Wrong codes from everyone together within JOIN_WINDOW before addresses that tried wrong ones are not
# heard at all (so many addresses do not guess faster than a few), and addresses remembered at most.
JOIN_FAILURES_OVERALL = 200
JOIN_ADDRESSES_MAX = 10_000
# Collect and push: what is copied between servers, and how long one seat may take.
COPY_MAX_BYTES = 20 * MB
COPY_NOTEBOOKS_MAX = 200
NOTEBOOK_NAME_MAX = 200
SEAT_TIMEOUT = 120.0
LISTING_TTL = 20.0
_listings: dict[tuple[str, str], tuple[float, list[str]]] = {}  # (workshop, seat) -> (when read, notebooks)


def untrusted(content: Any) -> dict[str, Any] | None:
    """A copy of a notebook (nbformat 4) that the server it is saved in will not trust; None for anything else.

    Jupyter signs a notebook on saving when all its code cells say ``metadata.trusted`` (as a server marks
    them when it reads a notebook it trusts), and shows the HTML and JavaScript outputs of a signed notebook
    as they are. Without those marks the receiving server signs only a notebook without such outputs, so a
    notebook trusted by one account never runs its outputs in another account's browser.
    """
    if not isinstance(content, dict) or content.get("nbformat") != 4 or not isinstance(content.get("cells"), list) \
            or not all(isinstance(cell, dict) for cell in content["cells"]):
        return None
    copy = json.loads(json.dumps(content))
    for cell in copy["cells"]:
        metadata = cell.get("metadata")
        cell["metadata"] = {k: v for k, v in metadata.items() if k != "trusted"} if isinstance(metadata, dict) else {}
    return copy


def notebook_name_ok(name: Any) -> bool:
    """A plain notebook file name: ``NAME.ipynb``, not hidden, no path, no control characters, not too long."""
    return isinstance(name, str) and 6 < len(name) <= NOTEBOOK_NAME_MAX and name.endswith(".ipynb") and \
        not name.startswith(".") and "/" not in name and "\\" not in name and \
        not any(unicodedata.category(ch).startswith("C") for ch in name)


def printable(name: Any) -> str:
    """A file name as a report shows it: control characters as ``?``, at most 80 characters."""
    if not isinstance(name, str):
        return "?"
    shown = "".join("?" if unicodedata.category(ch).startswith("C") else ch for ch in name)
    return shown if len(shown) <= 80 else shown[:79] + "…"


def trainer_roles(site: Site) -> list[dict[str, Any]]:
    """The roles to load at start: ``trainer`` for the trainer group, one per workshop still in use."""
    found = settings(site)
    if found is None:
        return []
    loaded = [{"name": "trainer", "description": "Create and run workshops", "groups": [found.trainer_group],
               "scopes": [RUN_SCOPE]}]
    for workshop in store_for(site["hub"]["state_dir"]).all():
        if not workshop.expired:
            loaded.append({**workshop_role(workshop), "users": [workshop.trainer]})
    return loaded


def workshop_role(workshop: Workshop) -> dict[str, Any]:
    """The role of one workshop's trainer: reading about its participants and their servers, nobody else's.

    No access to the servers themselves: the trainer reads a participant's notebook read-only through the
    workshop page, and push and collect go through the hub.
    """
    group = f"group={workshop.group}"
    return {"name": workshop.trainer_role, "description": f"Trainer of workshop {workshop.id}",
            "scopes": [f"list:users!{group}", f"read:users!{group}", f"read:users:activity!{group}",
                       f"read:servers!{group}"]}


# ---------------------------------------------------------------- what pages and API share

class WorkshopMixin:
    """The site, the store and the checks that pages and API handlers share (mixed into a hub handler)."""

    settings: dict[str, Any]

    @property
    def site(self) -> Site:
        """The validated site file."""
        return self.settings[SITE_SETTING]

    @property
    def store(self):  # noqa: ANN201 - the WorkshopStore of this hub
        """The workshops of this hub."""
        return store_for(self.site["hub"]["state_dir"])

    @property
    def lang(self) -> str:
        """The request's language."""
        return request_language(self)

    def may_run_workshops(self) -> bool:
        """A trainer (scope ``custom:workshops:run``) or an admin."""
        user = self.current_user
        return bool(user) and (RUN_SCOPE in self.expanded_scopes or bool(getattr(user, "admin", False)))

    def require_trainer(self) -> None:
        """403 unless :meth:`may_run_workshops`."""
        if not self.may_run_workshops():
            _ = gettext_for(self.lang)
            raise web.HTTPError(403, _("Only trainers can create and run workshops."))

    def own_workshop(self, workshop_id: str) -> Workshop:
        """The workshop, when the current user runs it (or is an admin); 404 otherwise (no hint it exists)."""
        self.require_trainer()
        workshop = self.store.get(workshop_id)
        user = self.current_user
        if workshop is None or not (workshop.trainer == user.name or user.admin):
            raise web.HTTPError(404)
        return workshop

    def visible_workshops(self) -> list[Workshop]:
        """The current trainer's workshops (all of them for admins)."""
        user = self.current_user
        return [w for w in self.store.all() if user.admin or w.trainer == user.name]

    async def create_workshop(self, form: Mapping[str, Any], upload: Sequence[tuple[str, bytes]] = ()) -> Workshop:
        """Check the form, reserve the window in Slurm, keep the workshop; :class:`WorkshopError` if not possible.

        ``upload``: the trainer's own course material (file names and contents), instead of a folder.
        """
        found = settings(self.site)
        lang, now = self.lang, datetime.now()
        _ = gettext_for(lang)
        new = validate_new(self.site, form, now, lang, materials(found.material_dir))
        if upload and new.material:
            raise WorkshopError("material", _("Choose a folder or upload your own notebooks, not both."))
        own = check_upload(upload, lang) if upload else None
        override = profiles_by_slug(self.site)[new.profile]["slurm_override"]
        try:
            nodes = await partition_nodes(self.site["cluster"]["slurm_bin"], override["partition"])
        except SlurmError as exc:
            self.log.error("Could not read the nodes of %s: %s", override["partition"], exc.stderr)
            raise WorkshopError("", _("The cluster does not answer right now. Nothing was created; "
                                      "try again in a minute.")) from None
        plan = plan_reservation(override, new.seats, nodes, lang)
        workshop_id = self.store.new_id()
        workshop = Workshop(**asdict(new), id=workshop_id,
                            folder=folder_name(new.title, workshop_id), trainer=self.current_user.name, code=new_code(),
                            partition=plan.partition, created_at=now.replace(microsecond=0),
                            own_notebooks=own.notebooks if own else 0)
        argv = reservation_argv([SUDO, "-n", RESERVATION_HELPER], workshop, plan, found.organisation, now)
        try:
            await run_argv(argv, timeout=60)
            shown = await run_argv([f"{self.site['cluster']['slurm_bin']}/scontrol", "show", "reservation",
                                    workshop.reservation], timeout=30)
        except SlurmError as exc:
            self.log.warning("Slurm refused the reservation of workshop %s: %s", workshop.id, exc.stderr)
            raise WorkshopError("seats", _("Slurm cannot reserve {seats} seats for this window: {reason}. "
                                           "Nothing was created; try fewer seats or another window.").format(
                seats=new.seats, reason=slurm_reason(exc.stderr))) from None
        if short_of(plan, *reserved_size(shown)):
            await run_argv([SUDO, "-n", RESERVATION_HELPER, "delete", workshop.reservation], timeout=60)
            self.log.warning("Slurm reserved less than workshop %s needs: %s", workshop.id, shown.strip())
            raise WorkshopError("seats", _("Slurm cannot reserve {seats} seats for this window: {reason}. "
                                           "Nothing was created; try fewer seats or another window.").format(
                seats=new.seats, reason=_("part of the cluster is taken then")))
        if own is not None:
            folder = own_material_folder(self.site, workshop.id)
            try:
                store_material(folder, own)
            except OSError as exc:
                discard_material(folder)
                await run_argv([SUDO, "-n", RESERVATION_HELPER, "delete", workshop.reservation], timeout=60)
                self.log.error("Could not store the material of workshop %s in %s: %s", workshop.id, folder, exc)
                raise WorkshopError("material", _("Your notebooks could not be stored. Nothing was created; try "
                                                  "again, or tell the administrator.")) from None
        self.store.add(workshop)
        group = orm.Group.find(self.db, workshop.group) or orm.Group(name=workshop.group)
        self.db.add(group)
        roles.create_role(self.db, workshop_role(workshop))
        roles.grant_role(self.db, self.current_user.orm_user, workshop.trainer_role)
        self.log.info("%s created workshop %s (%d seats of %s, %s to %s, reservation %s)", workshop.trainer,
                      workshop.id, workshop.seats, workshop.profile, workshop.starts_at, workshop.ends_at,
                      workshop.reservation)
        return workshop

    async def open_notebooks(self, spawner: Any, folder: str) -> list[str]:
        """The notebooks open in a running server inside its ``folder`` (asked with the server's own token)."""
        url = url_path_join(spawner.server.url, "api/sessions")
        request = HTTPRequest(url, headers={"Authorization": f"token {spawner.api_token}"}, request_timeout=3)
        try:
            sessions = json.loads((await AsyncHTTPClient().fetch(request)).body)
        except (HTTPClientError, OSError, ValueError) as exc:
            self.log.debug("No sessions from %s: %s", spawner._log_name, exc)
            return []
        return sorted(s["path"] for s in sessions if isinstance(s, dict) and s.get("type") == "notebook"
                      and isinstance(s.get("path"), str) and s["path"].startswith(folder + "/"))

    async def seat_rows(self, workshop: Workshop) -> list[dict[str, Any]]:
        """Each participant, their server and the notebooks open in it, for the live view."""
        rows = []
        asked, listed = [], []
        for participant in sorted(workshop.participants.values(), key=lambda p: (p.waiting, p.joined_at, p.name)):
            user = self.find_user(participant.name)
            spawner = user.spawner if user is not None else None
            if spawner is None:
                state = "gone"
            elif spawner.ready:
                state = "running"
            elif spawner.pending == "spawn":
                state = "starting" if getattr(spawner, "phase", lambda: "")() == "starting" else "waiting"
            else:
                state = "stopped"
            activity = user.last_activity if user is not None else None
            rows.append({"name": participant.name, "display_name": participant.display_name,
                         "temporary": participant.temporary, "joined_at": participant.joined_at,
                         "warm_seat_free": participant.waiting,
                         "server": state, "last_activity": activity.isoformat() + "Z" if activity else None,
                         "node": (getattr(spawner, "session", None) or {}).get("node", "") if spawner else "",
                         "notebooks": [], "files": []})
            reached = workshop.reaches(participant) and not workshop.expired
            asked.append(self.open_notebooks(spawner, workshop.folder) if state == "running" and reached
                         else asyncio.sleep(0, []))
            listed.append(self.seat_files(workshop, participant.name) if reached and not participant.waiting
                          else asyncio.sleep(0, []))
        for row, notebooks, files in zip(rows, await asyncio.gather(*asked), await asyncio.gather(*listed),
                                         strict=True):
            row["notebooks"], row["files"] = notebooks, files
        return rows

    async def seat_files(self, workshop: Workshop, name: str) -> list[str]:
        """The notebooks in participant ``name``'s workshop folder (none when it cannot be read).

        Read at most once per :data:`LISTING_TTL` seconds per seat: the live view refreshes every 10 s.
        """
        key = (workshop.id, name)
        cached = _listings.get(key)
        if cached is not None and time.monotonic() - cached[0] < LISTING_TTL:
            return cached[1]
        try:
            files = [n["path"] for n in await folder_notebooks(name, workshop.folder)]
        except (WorkError, ValueError) as exc:
            self.log.debug("No notebook list of %s in workshop %s: %s", name, workshop.id, exc)
            files = []
        _listings[key] = (time.monotonic(), files)
        return files

    async def live_view(self, workshop: Workshop, **values: Any) -> None:
        """Render the live view of ``workshop`` (``values``: the outcome of a push)."""
        profile = profiles_by_slug(self.site).get(workshop.profile)
        self.finish(await self.render_template(
            "workshop.html", workshop=workshop, rows=await self.seat_rows(workshop), now=datetime.now(),
            join_url=f"{self.request.protocol}://{self.request.host}{self.join_url(workshop)}",
            profile_name=text(profile["display_name"], self.lang) if profile else workshop.profile,
            **{"pushed": None, "push_error": None, "push_path": "", "collected": None, "collect_error": None,
               **values}))

    async def workshop_json(self, workshop: Workshop) -> dict[str, Any]:
        """The workshop as the API shows it to its trainer."""
        data = workshop.to_json()
        data.pop("participants")
        return {**data, "reservation": workshop.reservation, "group": workshop.group,
                "join_url": self.join_url(workshop), "finished": workshop.finished(datetime.now()),
                "seats_taken": sum(not p.waiting for p in workshop.participants.values()),
                "participants": await self.seat_rows(workshop)}

    def join_url(self, workshop: Workshop) -> str:
        """The link participants follow (with the code in it)."""
        return url_path_join(self.hub.base_url, "join") + "?" + urlencode({"code": workshop.code})

    async def end_workshop(self, workshop: Workshop) -> None:
        """Stop its seats' servers, remove the reservation, mark it ended (nothing else is deleted)."""
        if workshop.ended_at is None:
            workshop.ended_at = datetime.now().replace(microsecond=0)
            self.store.save()
        for name in workshop.participants:
            user = self.find_user(name)
            spawner = user.spawner if user is not None else None
            if spawner is None or not spawner.active:
                continue
            # A session of the workshop's profile is the seat's (known also after a hub restart).
            if (spawner.user_options or {}).get("profile") == workshop.profile:
                await self.stop_seat(user, spawner)
        try:
            await run_argv([SUDO, "-n", RESERVATION_HELPER, "delete", workshop.reservation], timeout=60)
        except SlurmError as exc:
            if "invalid" not in exc.stderr.lower():  # already gone (its window passed): fine
                raise
        self.log.info("%s ended workshop %s", self.current_user.name, workshop.id)

    async def contents(self, user: Any, path: str, model: dict[str, Any] | None = None) -> Any:
        """GET (or, with ``model``, PUT) ``path`` of the contents API of ``user``'s running server; None on 404.

        Asked with that server's own token: the hub checked first that the trainer runs the workshop and
        ``user`` is the trainer or one of its participants (the trainer has no access to their servers).
        """
        token = user.spawner.api_token
        url = url_path_join(user.spawner.server.url, "api/contents", quote(path)) + ("" if model else "?content=1")
        request = HTTPRequest(url, method="PUT" if model else "GET", body=json.dumps(model) if model else None,
                              headers={"Authorization": f"token {token}"}, request_timeout=30)
        try:
            return json.loads((await AsyncHTTPClient().fetch(request)).body)
        except HTTPClientError as exc:
            if exc.code == 404:
                return None
            raise

    async def push(self, workshop: Workshop, path: str) -> dict[str, list[str]]:
        """Copy the notebook ``path`` of the trainer's running server into every running seat's workshop folder.

        Nobody's work is overwritten: a participant whose copy differs gets the new one beside it, named
        ``<name> (updated HH-MM).ipynb``. The copy is never trusted in the participant's server. Returns the
        participants by outcome (``failed``: their server did not take it; the others still got it).
        """
        _ = gettext_for(self.lang)
        pure = PurePosixPath(path)
        if not path or pure.is_absolute() or ".." in pure.parts or pure.suffix != ".ipynb" or len(path) > 200 or any(
                unicodedata.category(ch).startswith("C") for ch in path):
            raise WorkshopError("path", _("Give the path of a notebook in your home folder, such as "
                                          "course/lesson.ipynb."))
        trainer = self.find_user(workshop.trainer)
        if trainer is None or not trainer.spawner.ready:
            raise WorkshopError("path", _("Start your own server first: the notebook is taken from it."))
        try:
            source = await self.contents(trainer, path)
        except HTTPClientError:  # the server cannot read it (not JSON, not a notebook)
            raise WorkshopError("path", _("This file cannot be read as a notebook.")) from None
        if source is None or source.get("type") != "notebook":
            raise WorkshopError("path", _("There is no notebook {path} in your home folder.").format(path=path))
        content = untrusted(source.get("content"))
        if content is None:
            raise WorkshopError("path", _("This file cannot be read as a notebook."))
        outcome: dict[str, list[str]] = {"copied": [], "beside": [], "not_running": [], "failed": []}
        stamp = datetime.now().strftime("%H-%M")
        for participant in workshop.participants.values():
            user = self.find_user(participant.name)
            if participant.waiting or user is None or not user.spawner.ready:
                outcome["not_running"].append(participant.name)
                continue
            if not workshop.reaches(participant):
                outcome["failed"].append(participant.name)
                continue
            try:
                kind = await asyncio.wait_for(self.push_seat(workshop, user, pure, content, stamp), SEAT_TIMEOUT)
            except (HTTPClientError, OSError, ValueError, TimeoutError) as exc:
                self.log.warning("Push of %s to %s (workshop %s) failed: %s", path, participant.name, workshop.id,
                                 exc)
                kind = "failed"
            outcome[kind].append(participant.name)
        self.log.info("%s pushed %s to workshop %s: %s", self.current_user.name, path, workshop.id,
                      {k: len(v) for k, v in outcome.items()})
        return outcome

    async def push_seat(self, workshop: Workshop, user: Any, pure: PurePosixPath, content: dict[str, Any],
                        stamp: str) -> str:
        """Put ``content`` into ``user``'s workshop folder as ``pure.name``, or beside their changed copy."""
        target = f"{workshop.folder}/{pure.name}"
        if await self.contents(user, workshop.folder) is None:
            await self.contents(user, workshop.folder, {"type": "directory"})
        try:
            theirs = await self.contents(user, target)
        except HTTPClientError:  # their file of that name cannot be read: it is theirs, left alone
            theirs = {}
        if theirs is not None and untrusted(theirs.get("content")) != content:
            target, kind = f"{workshop.folder}/{pure.stem} (updated {stamp}){pure.suffix}", "beside"
        else:
            kind = "copied"
        await self.contents(user, target, {"type": "notebook", "format": "json", "content": content})
        return kind

    async def collect(self, workshop: Workshop) -> dict[str, list[str]]:
        """Copy the notebooks of every running seat's workshop folder into the trainer's running server.

        They land in ``collected-<folder>/<account>/`` of the trainer's home (again later: the same files,
        newer), never trusted there. A file that is not a readable notebook, has an odd name or is too big is
        skipped (``skipped``: ``account/name``), and a folder that cannot be read is reported (``failed``):
        everyone else is still collected. Returns the participants by outcome.
        """
        _ = gettext_for(self.lang)
        trainer = self.find_user(workshop.trainer)
        if trainer is None or not trainer.spawner.ready:
            raise WorkshopError("path", _("Start your own server first: the notebooks are put into it."))
        outcome: dict[str, list[str]] = {"collected": [], "not_running": [], "skipped": [], "failed": []}
        base = f"collected-{workshop.folder}"
        if await self.contents(trainer, base) is None:
            await self.contents(trainer, base, {"type": "directory"})
        for participant in workshop.participants.values():
            user = self.find_user(participant.name)
            if participant.waiting or user is None or not user.spawner.ready:
                outcome["not_running"].append(participant.name)
                continue
            if not workshop.reaches(participant):
                outcome["failed"].append(participant.name)
                continue
            try:
                skipped = await asyncio.wait_for(
                    self.collect_seat(workshop, user, trainer, f"{base}/{participant.name}"), SEAT_TIMEOUT)
            except (HTTPClientError, OSError, ValueError, TimeoutError) as exc:
                self.log.warning("Collecting from %s (workshop %s) failed: %s", participant.name, workshop.id, exc)
                outcome["failed"].append(participant.name)
                continue
            outcome["collected"].append(participant.name)
            outcome["skipped"] += [f"{participant.name}/{name}" for name in skipped]
        self.log.info("%s collected the notebooks of workshop %s: %s", self.current_user.name, workshop.id,
                      {k: len(v) for k, v in outcome.items()})
        return outcome

    async def collect_seat(self, workshop: Workshop, user: Any, trainer: Any, target: str) -> list[str]:
        """Copy ``user``'s notebooks into the trainer's ``target`` folder; the names of those skipped (printable)."""
        listing = await self.contents(user, workshop.folder)
        items = (listing or {}).get("content") if isinstance(listing, dict) else None
        notebooks = [item for item in items if isinstance(item, dict) and item.get("type") == "notebook"] \
            if isinstance(items, list) else []
        if await self.contents(trainer, target) is None:
            await self.contents(trainer, target, {"type": "directory"})
        skipped = []
        for item in notebooks[:COPY_NOTEBOOKS_MAX]:
            name = item.get("name")
            size = item.get("size")
            small = size is None or (isinstance(size, int) and size <= COPY_MAX_BYTES)
            if not (notebook_name_ok(name) and item.get("path") == f"{workshop.folder}/{name}" and small):
                skipped.append(printable(name))
                continue
            try:
                model = await self.contents(user, f"{workshop.folder}/{name}")
                content = untrusted(model.get("content")) if isinstance(model, dict) else None
                if content is None:
                    raise ValueError("not a notebook")
                await self.contents(trainer, f"{target}/{name}", {"type": "notebook", "format": "json",
                                                                  "content": content})
            except (HTTPClientError, ValueError) as exc:
                self.log.info("Skipped %s of %s (workshop %s): %s", printable(name), user.name, workshop.id, exc)
                skipped.append(printable(name))
        skipped += [printable(item.get("name")) for item in notebooks[COPY_NOTEBOOKS_MAX:]]
        return skipped

    async def stop_seat(self, user: Any, spawner: Any) -> None:
        """Stop a participant's server, also one that is still starting (its start is interrupted first)."""
        if spawner.pending == "spawn" and spawner._spawn_future and not spawner._spawn_future.done():
            spawner._spawn_future.cancel()
            for _attempt in range(100):  # JupyterHub clears the flag once the interrupted start has unwound
                if spawner.pending != "spawn":
                    break
                await asyncio.sleep(0.1)
        if spawner.active and spawner.pending != "stop":
            await self.stop_single_user(user, spawner.name)

    async def tend(self, now: datetime) -> list[str]:
        """Close the workshops whose grace is over (see :meth:`close_rights`); return their ids.

        A workshop whose rights could not all be taken away stays as it is and is tried again next time.
        """
        grace = timedelta(days=settings(self.site).grace_days)
        due = [w for w in self.store.all() if w.warm_due(now)]
        await asyncio.gather(*(self.warm_up(w) for w in due))
        done = []
        for workshop in self.store.all():
            if workshop.expired or not workshop.finished(now) or workshop.closes_at() + grace > now:
                continue
            try:
                await self.close_rights(workshop)
            except SlurmError as exc:
                self.log.error("The rights of workshop %s could not all be taken away (tried again later): %s",
                               workshop.id, exc.stderr)
                continue
            if orm.Role.find(self.db, workshop.trainer_role) is not None:
                roles.delete_role(self.db, workshop.trainer_role)
            workshop.expired = True
            self.store.save()
            if workshop.own_notebooks:  # the participants have their copies; the hub's is no longer needed
                discard_material(own_material_folder(self.site, workshop.id))
            done.append(workshop.id)
            self.log.info("The temporary accounts of workshop %s are disabled (grace period over)", workshop.id)
        return done

    async def close_rights(self, workshop: Workshop) -> None:
        """Take away what ``workshop`` gave; :class:`SlurmError` when the root helper could not.

        A temporary account loses its hub user, its jobs and its Slurm association, and its Unix account is
        locked (its files stay). An own account leaves the workshop's groups and, unless another workshop
        still running has it, the workshop's Slurm account (its jobs under it are cancelled).
        """
        organisation = settings(self.site).organisation
        still_in = {name for other in self.store.all() if other is not workshop and not other.expired
                    for name in other.participants}
        for participant in workshop.participants.values():
            user = self.find_user(participant.name)
            if participant.temporary:
                if user is not None:
                    await self.disable_user(user)
                await run_argv([SUDO, "-n", REVOKE_HELPER, "temporary", participant.name], timeout=300)
                continue
            if user is not None:  # no more workshop profiles on their spawn page
                self.leave_groups(user, [workshop.group] + ([] if participant.name in still_in else ["workshop"]))
            if participant.name not in still_in:
                await run_argv([SUDO, "-n", REVOKE_HELPER, "member", participant.name, organisation], timeout=300)

    def leave_groups(self, user: Any, names: list[str]) -> None:
        """Take ``user`` out of the hub groups ``names`` (those they are in)."""
        user.orm_user.groups = [g for g in user.orm_user.groups if g.name not in names]
        self.db.commit()

    async def disable_user(self, user: Any) -> None:
        """Stop the server and remove the hub user (its Unix account, files and Slurm history stay)."""
        if user.spawner.active:
            await self.stop_seat(user, user.spawner)
        await maybe_future(self.authenticator.delete_user(user))
        await user.delete_spawners()
        self.users.delete(user)

    async def join(self, workshop: Workshop, display_name: str) -> tuple[Any, bool]:
        """Add the current user, or give ``display_name`` a warm seat or a new temporary account; log them in.

        Returns the user and whether they took a warm seat (their session already runs or starts).
        """
        _ = gettext_for(self.lang)
        user = self.current_user
        if user is not None and user.name in workshop.participants:
            return user, False
        joined_at = datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
        warm = workshop.free_warm_seat() if user is None else None
        if warm is None and len(workshop.participants) >= workshop.seats:
            raise WorkshopError("code", _("All {seats} seats of this workshop are taken. Please tell your "
                                          "trainer.").format(seats=workshop.seats))
        if user is not None:
            workshop.participants[user.name] = Participant(user.name, user.name, False, joined_at)
            self.store.save()
            await self.seat_in_groups(workshop, user)
            return user, False
        if not display_name or len(display_name) > DISPLAY_NAME_MAX or any(
                unicodedata.category(ch).startswith("C") for ch in display_name):
            raise WorkshopError("display_name", _("Type the name the trainer will see, up to {n} characters.")
                                .format(n=DISPLAY_NAME_MAX))
        if warm is not None:
            workshop.participants[warm] = Participant(warm, display_name, True, joined_at)
            self.store.save()
            user = self.find_user(warm)
        else:
            try:
                user = await self.temporary_account(workshop, display_name, joined_at)
            except SlurmError:
                raise WorkshopError("code", _("Your place could not be prepared. Please try again, or tell your "
                                              "trainer.")) from None
        self.set_login_cookie(user)
        self.log.info("%s joined workshop %s (%s)", user.name, workshop.id, "warm seat" if warm else "new account")
        return user, warm is not None

    async def temporary_account(self, workshop: Workshop, display_name: str, joined_at: str) -> Any:
        """A new temporary account of ``workshop`` (Unix account, Slurm association, hub user in its groups)."""
        name = workshop.temporary_name()
        # The seat is taken before anything slow happens, so that people joining at once never share one.
        workshop.participants[name] = Participant(name, display_name, True, joined_at)
        self.store.save()
        try:
            await run_argv([SUDO, "-n", MKUSER, name, settings(self.site).organisation], timeout=120)
        except SlurmError as exc:
            self.log.error("Could not make the temporary account %s: %s", name, exc.stderr)
            del workshop.participants[name]
            self.store.save()
            raise
        user = self.user_from_username(name)
        await self.seat_in_groups(workshop, user)
        return user

    async def seat_in_groups(self, workshop: Workshop, user: Any) -> None:
        """Put ``user`` in the groups ``workshop`` and ``workshop-<id>`` (what the trainer's role may read)."""
        for group_name in ("workshop", workshop.group):
            group = orm.Group.find(self.db, group_name)
            if group is None:
                group = orm.Group(name=group_name)
                self.db.add(group)
            if group not in user.orm_user.groups:
                user.orm_user.groups.append(group)
        self.db.commit()

    async def warm_up(self, workshop: Workshop) -> None:
        """Make the warm seats' accounts and start their sessions (inside the reservation)."""
        workshop.warm_started = True
        self.store.save()
        made = []
        for _seat in range(min(workshop.warm, workshop.seats - len(workshop.participants))):
            try:
                made.append(await self.temporary_account(workshop, "", ""))
            except SlurmError:
                break
        results = await asyncio.gather(*(self.spawn_single_user(user, options={"profile": workshop.profile})
                                         for user in made), return_exceptions=True)
        failed = [user.name for user, result in zip(made, results, strict=True) if isinstance(result, Exception)]
        self.log.info("Workshop %s: %d warm seats started%s", workshop.id, len(made) - len(failed),
                      f" ({', '.join(failed)} failed)" if failed else "")


def _form_values(handler: web.RequestHandler) -> dict[str, str]:
    return {k: handler.get_body_argument(k, "", strip=True) for k in FIELD_LABELS}


# ---------------------------------------------------------------- pages

class WorkshopsPage(WorkshopMixin, BaseHandler):
    """``/hub/workshops``: the trainer's workshops and the form for a new one."""

    async def page(self, error: WorkshopError | None = None, values: Mapping[str, str] | None = None) -> str:
        """The page, with the form's values and error when a creation was refused."""
        found = settings(self.site)
        lang = self.lang
        profiles = profiles_by_slug(self.site)
        today = datetime.now()
        defaults = {"date": today.strftime("%Y-%m-%d"), "start": (today + timedelta(minutes=1)).strftime("%H:%M"),
                    "end": (today + timedelta(hours=3)).strftime("%H:%M"), "seats": "20", "warm": "0",
                    "profile": found.profiles[0], "material": ""}
        return await self.render_template(
            "workshops.html", workshops=self.visible_workshops(), now=today, error=error,
            values={**defaults, **(values or {})}, field_labels=FIELD_LABELS, max_seats=found.max_seats,
            profiles=[(slug, text(profiles[slug]["display_name"], lang)) for slug in found.profiles
                      if slug in profiles],
            materials=materials(found.material_dir), data_suffixes=", ".join(DATA_SUFFIXES),
            file_mb=MAX_FILE_BYTES // MB, total_mb=MAX_TOTAL_BYTES // MB)

    @web.authenticated
    async def get(self) -> None:
        """Show the page (trainers and admins)."""
        self.require_trainer()
        self.finish(await self.page())

    @web.authenticated
    async def post(self) -> None:
        """Create the workshop and go to its live view, or show the form again with what is wrong."""
        self.require_trainer()
        values = _form_values(self)
        upload = [(f.filename, f.body) for f in self.request.files.get("material_upload", []) if f.filename or f.body]
        try:
            workshop = await self.create_workshop(values, upload)
        except WorkshopError as exc:
            self.set_status(400)
            self.finish(await self.page(exc, values))
            return
        self.redirect(url_path_join(self.hub.base_url, "workshops", workshop.id), status=303)


class WorkshopPage(WorkshopMixin, BaseHandler):
    """``/hub/workshops/<id>``: the live view of one workshop."""

    @web.authenticated
    async def get(self, workshop_id: str) -> None:
        """The seats, the join link and code, and the end button."""
        await self.live_view(self.own_workshop(workshop_id))


class WorkshopPushPage(WorkshopMixin, BaseHandler):
    """``POST /hub/workshops/<id>/push``: push a notebook, then the live view with what happened."""

    @web.authenticated
    async def post(self, workshop_id: str) -> None:
        """Push (XSRF-checked like every hub form) and show the outcome or the problem."""
        workshop = self.own_workshop(workshop_id)
        path = self.get_body_argument("path", "", strip=True)
        try:
            outcome, error = await self.push(workshop, path), None
        except WorkshopError as exc:
            outcome, error = None, exc
            self.set_status(400)
        await self.live_view(workshop, pushed=outcome, push_error=error, push_path=path)


class WorkshopCollectPage(WorkshopMixin, BaseHandler):
    """``POST /hub/workshops/<id>/collect``: collect the notebooks, then the live view with what happened."""

    @web.authenticated
    async def post(self, workshop_id: str) -> None:
        """Collect (XSRF-checked like every hub form) and show the outcome or the problem."""
        workshop = self.own_workshop(workshop_id)
        try:
            outcome, error = await self.collect(workshop), None
        except WorkshopError as exc:
            outcome, error = None, exc
            self.set_status(400)
        await self.live_view(workshop, collected=outcome, collect_error=error)


class WorkshopEndPage(WorkshopMixin, BaseHandler):
    """``POST /hub/workshops/<id>/end``: end the workshop, back to its view."""

    @web.authenticated
    async def post(self, workshop_id: str) -> None:
        """End it (XSRF-checked like every hub form)."""
        workshop = self.own_workshop(workshop_id)
        await self.end_workshop(workshop)
        self.redirect(url_path_join(self.hub.base_url, "workshops", workshop.id), status=303)


class SeatNotebookPage(WorkshopMixin, BaseHandler):
    """``/hub/workshops/<id>/seats/<account>/view?path=…``: a participant's notebook, read-only (its trainer)."""

    @web.authenticated
    async def get(self, workshop_id: str, account: str) -> None:
        """Read the notebook as the participant and show its cells as text and images."""
        workshop = self.own_workshop(workshop_id)
        participant = workshop.participants.get(account)
        if workshop.expired or participant is None or participant.waiting or not workshop.reaches(participant):
            raise web.HTTPError(404)
        _ = gettext_for(self.lang)
        path = self.get_query_argument("path", "")
        try:
            if not path.startswith(workshop.folder + "/"):
                raise WorkError(2, "outside the workshop folder")
            cells = notebook_cells(await read_notebook(account, path))
        except WorkError as exc:
            self.log.info("Notebook %r of %s (workshop %s) not shown: %s", path, account, workshop.id, exc.stderr)
            raise web.HTTPError(404 if exc.missing else 400, _("There is no such notebook in the workshop folder.")
                                if exc.missing else _("Only notebooks in the workshop folder can be shown.")) from None
        except ValueError:
            raise web.HTTPError(400, _("This file cannot be read as a notebook.")) from None
        self.finish(await self.render_template("workshop_notebook.html", workshop=workshop, participant=participant,
                                               path=path, cells=cells))


class MyWorkshopsPage(WorkshopMixin, BaseHandler):
    """``/hub/workshops/mine``: the workshops the current user joined, each with the download of their work."""

    @web.authenticated
    async def get(self) -> None:
        """The workshops whose work can still be downloaded, newest first."""
        name = self.current_user.name
        joined = [w for w in self.store.all()
                  if name in w.participants and not w.participants[name].waiting and not w.expired]
        self.finish(await self.render_template("workshop_mine.html", workshops=joined, now=datetime.now()))


class MyWorkZip(WorkshopMixin, BaseHandler):
    """``/hub/workshops/<id>/my-work.zip``: the participant's workshop folder as a zip (read as themselves)."""

    @web.authenticated
    async def get(self, workshop_id: str) -> None:
        """Stream the zip; 404 for anyone who did not join, and once the temporary accounts are disabled."""
        workshop = self.store.get(workshop_id)
        name = self.current_user.name
        if workshop is None or workshop.expired or name not in workshop.participants or \
                workshop.participants[name].waiting:
            raise web.HTTPError(404)
        chunks = zip_chunks(name, workshop.folder)
        try:
            first = await anext(chunks)
        except WorkError as exc:
            self.log.info("No zip of %s for workshop %s: %s", name, workshop.id, exc.stderr)
            _ = gettext_for(self.lang)
            message = _("Your workshop folder ~/{folder} does not exist (any more).") if exc.missing else _(
                "Your workshop folder ~/{folder} cannot be downloaded as a zip: it is larger than 500 MB, or not a "
                "plain folder.")
            raise web.HTTPError(404 if exc.missing else 400, message.format(folder=workshop.folder)) from None
        self.set_header("Content-Type", "application/zip")
        self.set_header("Content-Disposition", f'attachment; filename="{workshop.folder}.zip"')
        self.set_header("Cache-Control", "no-store")
        self.write(first)
        try:
            async for chunk in chunks:
                self.write(chunk)
                await self.flush()
        except WorkError as exc:  # the headers are sent: the download ends short, the log says why
            self.log.warning("The zip of %s for workshop %s ended early: %s", name, workshop.id, exc.stderr)
        except StreamClosedError:
            self.log.info("%s stopped the download of the zip of workshop %s", name, workshop.id)
            return
        finally:
            await chunks.aclose()  # stops the helper when the download stopped early
        self.finish()


class JoinLimiter:
    """Wrong join codes counted per address and overall, in a sliding window (bounded memory).

    An address past :data:`JOIN_FAILURES_ALLOWED` wrong codes is told "too many" for its wrong codes, yet a
    correct code still joins (someone else behind the same address typed wrong ones). Past
    :data:`JOIN_FAILURES_OVERALL` wrong codes from everyone, the codes of addresses that tried a wrong one are
    not checked at all, so that spreading guesses over many addresses does not help.
    """

    def __init__(self, allowed: int = JOIN_FAILURES_ALLOWED, overall: int = JOIN_FAILURES_OVERALL,
                 window: float = JOIN_WINDOW, addresses: int = JOIN_ADDRESSES_MAX) -> None:
        self.allowed, self.window, self.addresses = allowed, window, addresses
        self._by_address: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque(maxlen=overall)

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._by_address.get(address, deque())
        while times and now - times[0] > self.window:
            times.popleft()
        return times

    def heard(self, address: str, now: float) -> bool:
        """Whether a code from ``address`` is checked at all now."""
        overall_full = len(self._all) == self._all.maxlen and now - self._all[0] <= self.window
        return not (overall_full and self._recent(address, now))

    def limited(self, address: str, now: float) -> bool:
        """``address`` tried too many wrong codes lately."""
        return len(self._recent(address, now)) >= self.allowed

    def failed(self, address: str, now: float) -> None:
        """Count a wrong code from ``address`` (the address least recently wrong is forgotten when full)."""
        times = self._recent(address, now)
        times.append(now)
        while len(times) > self.allowed:
            times.popleft()
        self._by_address[address] = times
        self._by_address.move_to_end(address)
        while len(self._by_address) > self.addresses:
            self._by_address.popitem(last=False)
        self._all.append(now)


_join_limiter = JoinLimiter()


class JoinPage(WorkshopMixin, BaseHandler):
    """``/hub/join``: join a workshop with its code."""

    async def form(self, code: str = "", display_name: str = "", error: str = "") -> str:
        """The join form."""
        return await self.render_template("workshop_join.html", code=code, display_name=display_name,
                                          error=error, display_name_max=DISPLAY_NAME_MAX)

    async def get(self) -> None:
        """The form, with the code from the link filled in."""
        self.finish(await self.form(code=normalise_code(self.get_query_argument("code", ""))))

    async def post(self) -> None:
        """Join; a wrong code is refused politely, and an address that keeps trying is slowed down."""
        _ = gettext_for(self.lang)
        code = self.get_body_argument("code", "", strip=True)
        display_name = self.get_body_argument("display_name", "", strip=True)
        address = client_address(self.request, getattr(self.authenticator, "trusted_proxy_ips", TRUSTED_PROXIES),
                                 os.getuid())
        now = time.monotonic()
        too_many = _("Too many attempts with a wrong code. Please wait a minute, then check the code with your "
                     "trainer.")
        if not _join_limiter.heard(address, now):
            self.set_status(429)
            self.finish(await self.form(code, display_name, too_many))
            return
        workshop = self.store.by_code(code) if code else None
        if workshop is None or workshop.finished(datetime.now()):
            _join_limiter.failed(address, now)
            if _join_limiter.limited(address, now):
                self.log.warning("Wrong workshop codes from %s: answered with 429", address)
                self.set_status(429)
                self.finish(await self.form(code, display_name, too_many))
                return
            self.set_status(400)
            message = _("This code does not belong to a workshop that is open now. Please check it with your "
                        "trainer.")
            self.finish(await self.form(code, display_name, message))
            return
        try:
            user, warm = await self.join(workshop, display_name)
        except WorkshopError as exc:
            self.set_status(400)
            self.finish(await self.form(code, display_name, exc.message))
            return
        if warm and user.spawner.ready:
            self.redirect(url_path_join(user.url, "lab"), status=303)
        elif warm and user.spawner.pending:
            self.redirect(url_path_join(self.hub.base_url, "spawn-pending", user.name), status=303)
        else:
            self.redirect(url_path_join(self.hub.base_url, "spawn", user.name) + "?" +
                          urlencode({"profile": workshop.profile}), status=303)

# ---------------------------------------------------------------- REST API

class WorkshopAPIBase(WorkshopMixin, APIHandler):
    """JSON answers; a refused workshop is a 400 with the field and the message."""

    def refuse(self, exc: WorkshopError) -> None:
        """HTTP 400 with ``{"field", "message"}``."""
        self.set_status(400)
        self.finish(json.dumps({"status": 400, "field": exc.field, "message": exc.message}))


class WorkshopsAPI(WorkshopAPIBase):
    """``GET|POST /hub/api/workshops``."""

    async def get(self) -> None:
        """The current trainer's workshops."""
        self.require_trainer()
        self.finish(json.dumps([await self.workshop_json(w) for w in self.visible_workshops()]))

    async def post(self) -> None:
        """Create a workshop from ``{title, date, start, end, seats, profile, material}``.

        Instead of ``material`` (a folder), ``upload`` may give the trainer's own:
        ``[{"name": "lesson.ipynb", "content": "<base64>"}, …]`` (notebooks and data files, or one zip).
        """
        self.require_trainer()
        body = self.get_json_body() or {}
        if not isinstance(body, dict):
            raise web.HTTPError(400, "a JSON object is expected")
        try:
            upload = decode_api_upload(body["upload"], self.lang) if "upload" in body else []
            workshop = await self.create_workshop(body, upload)
        except WorkshopError as exc:
            self.refuse(exc)
            return
        self.set_status(201)
        self.finish(json.dumps({**await self.workshop_json(workshop), "code": workshop.code}))


class WorkshopAPI(WorkshopAPIBase):
    """``GET /hub/api/workshops/<id>``: the workshop and its seats (its trainer, admins)."""

    async def get(self, workshop_id: str) -> None:
        """The live view as JSON."""
        self.finish(json.dumps(await self.workshop_json(self.own_workshop(workshop_id))))


class WorkshopEndAPI(WorkshopAPIBase):
    """``POST /hub/api/workshops/<id>/end``."""

    async def post(self, workshop_id: str) -> None:
        """End the workshop; answer with its state."""
        workshop = self.own_workshop(workshop_id)
        await self.end_workshop(workshop)
        self.finish(json.dumps(await self.workshop_json(workshop)))


class PushAPI(WorkshopAPIBase):
    """``POST /hub/api/workshops/<id>/push`` with ``{"path": "<notebook in the trainer's home>"}``."""

    async def post(self, workshop_id: str) -> None:
        """Push the notebook to every running seat; answer who got it, beside their own, or not at all."""
        workshop = self.own_workshop(workshop_id)
        body = self.get_json_body() or {}
        try:
            outcome = await self.push(workshop, str(body.get("path", "")) if isinstance(body, dict) else "")
        except WorkshopError as exc:
            self.refuse(exc)
            return
        self.finish(json.dumps(outcome))


class CollectAPI(WorkshopAPIBase):
    """``POST /hub/api/workshops/<id>/collect``: the participants' notebooks into the trainer's home."""

    async def post(self, workshop_id: str) -> None:
        """Collect from every running seat; answer who was collected and who had no running session."""
        workshop = self.own_workshop(workshop_id)
        try:
            outcome = await self.collect(workshop)
        except WorkshopError as exc:
            self.refuse(exc)
            return
        self.finish(json.dumps(outcome))


class TendAPI(WorkshopAPIBase):
    """``POST /hub/api/workshops/tend``: disable temporary accounts whose grace is over (the tender service).

    The body may say ``{"as_of": "YYYY-MM-DDTHH:MM:SS"}``, a moment in the future: what is over by then is
    done now (an administrator closing a workshop's accounts early; the tests).
    """

    async def post(self) -> None:
        """Tend every workshop; answer with the ids whose accounts were disabled."""
        if TEND_SCOPE not in self.expanded_scopes:  # a custom scope: defined at start, so checked here
            raise web.HTTPError(403)
        now = datetime.now()
        body = self.get_json_body() or {}
        as_of = body.get("as_of") if isinstance(body, dict) else None
        if as_of is not None:
            try:
                as_of = datetime.strptime(str(as_of), "%Y-%m-%dT%H:%M:%S")
            except ValueError:
                raise web.HTTPError(400, "as_of is YYYY-MM-DDTHH:MM:SS") from None
            now = max(now, as_of)
        self.finish(json.dumps({"disabled": await self.tend(now)}))


PAGE_ROUTES = [
    (r"/workshops", WorkshopsPage),
    (rf"/workshops/{WORKSHOP_ID}", WorkshopPage),
    (rf"/workshops/{WORKSHOP_ID}/end", WorkshopEndPage),
    (rf"/workshops/{WORKSHOP_ID}/push", WorkshopPushPage),
    (rf"/workshops/{WORKSHOP_ID}/collect", WorkshopCollectPage),
    (rf"/workshops/{WORKSHOP_ID}/seats/([^/]+)/view", SeatNotebookPage),
    (rf"/workshops/{WORKSHOP_ID}/my-work\.zip", MyWorkZip),
    (r"/workshops/mine", MyWorkshopsPage),
    (r"/join", JoinPage),
]
API_ROUTES = [
    (r"/api/workshops", WorkshopsAPI),
    (r"/api/workshops/tend", TendAPI),
    (rf"/api/workshops/{WORKSHOP_ID}", WorkshopAPI),
    (rf"/api/workshops/{WORKSHOP_ID}/end", WorkshopEndAPI),
    (rf"/api/workshops/{WORKSHOP_ID}/push", PushAPI),
    (rf"/api/workshops/{WORKSHOP_ID}/collect", CollectAPI),
]


def install_workshop_handlers() -> None:
    """Put the workshop pages and API into JupyterHub's routes (idempotent)."""
    for routes, ours in ((handlers.default_handlers, PAGE_ROUTES), (api_routes, API_ROUTES)):
        paths = {path for path, _ in ours}
        routes[:] = [r for r in routes if r[0] not in paths]
        routes.extend(ours)
