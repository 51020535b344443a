"""Hub API handlers that replace unsafe or unchecked routes.

* ``POST /hub/api/batchspawner``: batchspawner's own handler ``setattr``s every posted key on the
  spawner (so a user holding their server's token could set ``exec_prefix`` and make the hub run
  commands). This replacement accepts exactly ``{"port": <1024..65535>}``, only while that server
  is starting.
* ``POST /hub/api/users/{name}/server[s/{server}]``: checks ``user_options`` against the profile
  allowlist *before* anything is stored or started, so bad input gets a clear 400 and changes nothing.
* ``DELETE /hub/api/users/{name}``: a start still waiting in the queue is cancelled first (its Slurm
  job too); JupyterHub alone would refuse to delete the user, or leave the job behind.
* ``DELETE /hub/api/groups/org-<name>[/users]``: people who leave an organisation's group (the admin
  page uses these routes) lose their Slurm association with its account first
  (:func:`aifl_hub.membership.leave`); when that fails the group stays as it was and the answer says why.
  ``POST /hub/api/groups/org-<name>/users`` also gives the new members the organisation's controlled
  data sets (:func:`aifl_hub.membership.sync_datasets`).

:func:`install_handlers` swaps them into JupyterHub's API route list; call it from the hub config.
"""

from __future__ import annotations

import json

from jupyterhub import apihandlers, orm
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.apihandlers.groups import GroupAPIHandler, GroupUsersAPIHandler
from jupyterhub.apihandlers.users import UserAPIHandler, UserServerAPIHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from . import membership
from .organisations import GROUP_PREFIX, organisation
from .slurm import SlurmError
from .spawnpage import cancel_pending_start

PORT_ROUTE = r"/api/batchspawner"


def parse_port_report(body: bytes) -> int:
    """The port from a job's report ``{"port": N}``; anything else raises HTTP 400."""
    try:
        data = json.loads(body or b"null")
    except ValueError:
        data = None
    port = data.get("port") if isinstance(data, dict) and set(data) == {"port"} else None
    if not isinstance(port, int) or isinstance(port, bool) or not 1024 <= port <= 65535:
        raise web.HTTPError(400, 'Only {"port": <a number from 1024 to 65535>} is accepted')
    return port


class PortAPIHandler(APIHandler):
    """The job reports the port its server listens on; nothing else can be set."""

    @web.authenticated
    async def post(self) -> None:
        """Accept the port from the session's own token while it starts."""
        user = self.current_user
        token = self.get_auth_token()
        spawner = next((s for s in getattr(user, "spawners", {}).values() if s.api_token and s.api_token == token),
                       None)
        if spawner is None:
            raise web.HTTPError(403, "Only a session's own token may report its port")
        port = parse_port_report(self.request.body)
        if not spawner.pending:
            raise web.HTTPError(409, "The port can only be reported while the session starts")
        if hasattr(spawner, "set_port"):
            spawner.set_port(port)
        else:
            spawner.port = port
        self.set_status(201)
        self.finish(json.dumps({"port": port}))


class CheckedUserServerAPIHandler(UserServerAPIHandler):
    """Starting a server through the REST API validates ``user_options`` first."""

    @needs_scope("start:servers")
    async def post(self, user_name: str, server_name: str = "") -> None:
        """Refuse disallowed ``user_options`` with HTTP 400, then start as JupyterHub does."""
        body = self.get_server_json_body() or {}
        options = body.get("user_options")
        user = self.find_user(user_name)
        if user is not None and options is not None:
            spawner = user.spawners.get(server_name)
            if spawner is None:
                spawner = user.get_or_create_spawner(server_name, body.get("display_name") or server_name,
                                                     replace_failed=True)
            check = getattr(spawner, "check_user_options", None)
            if check is not None:
                check(options, handler=self)
        await super().post(user_name, server_name)


class LabUserAPIHandler(UserAPIHandler):
    """Deleting a user cancels their waiting start first."""

    @needs_scope("delete:users")
    async def delete(self, user_name: str) -> None:
        """Cancel a pending start (and its job), then delete as JupyterHub does."""
        user = self.find_user(user_name)
        if user is not None and user.name != self.current_user.name:
            await cancel_pending_start(self, user)
        await super().delete(user_name)


async def leave_organisation(handler: APIHandler, group_name: str, names: object) -> None:
    """The members among ``names`` leave the organisation of hub group ``group_name`` (if it is one) in Slurm."""
    site = getattr(handler.authenticator, "site", None)
    org = group_name.removeprefix(GROUP_PREFIX) if group_name.startswith(GROUP_PREFIX) else ""
    group = orm.Group.find(handler.db, group_name)
    if site is None or not org or organisation(site, org) is None or group is None or not isinstance(names, list):
        return
    members = {user.name for user in group.users}
    for name in names:
        if name not in members:
            continue
        try:
            await membership.leave(site, name, org)
        except SlurmError as exc:
            handler.log.error("%s could not leave %s in Slurm: %s", name, org, exc.stderr)
            raise web.HTTPError(500, f"{name} could not leave {org} in Slurm; nothing was changed") from exc
        handler.log.info("%s removed %s from %s (also in Slurm)", handler.current_user.name, name, org)


class LabGroupUsersAPIHandler(GroupUsersAPIHandler):
    """Removing people from an organisation's group removes their Slurm association with its account too.

    Adding people to it lets them read the organisation's controlled data sets (:mod:`aifl_hub.datasets`).
    """

    @needs_scope("groups")
    async def post(self, group_name: str) -> None:
        """Add to the group as JupyterHub does, then give the new members the organisation's data sets."""
        super().post(group_name)
        site = getattr(self.authenticator, "site", None)
        org = group_name.removeprefix(GROUP_PREFIX) if group_name.startswith(GROUP_PREFIX) else ""
        data = self.get_json_body()
        if site is None or not org or organisation(site, org) is None or not isinstance(data, dict):
            return
        for name in data.get("users") or []:
            if isinstance(name, str) and orm.User.find(self.db, name) is not None:
                try:
                    await membership.sync_datasets(site, name, org)
                except SlurmError as exc:
                    self.log.error("%s could not get the data sets of %s: %s", name, org, exc.stderr)

    @needs_scope("groups")
    async def delete(self, group_name: str) -> None:
        """Revoke in Slurm, then remove from the group as JupyterHub does."""
        data = self.get_json_body()
        await leave_organisation(self, group_name, data.get("users") if isinstance(data, dict) else None)
        await super().delete(group_name)


class LabGroupAPIHandler(GroupAPIHandler):
    """Deleting an organisation's group removes its members' Slurm associations with its account too."""

    @needs_scope("delete:groups")
    async def delete(self, group_name: str) -> None:
        """Revoke every member in Slurm, then delete the group as JupyterHub does."""
        group = orm.Group.find(self.db, group_name)
        await leave_organisation(self, group_name, [user.name for user in group.users] if group else None)
        super().delete(group_name)


def install_handlers() -> None:
    """Replace batchspawner's port route and the server-start routes in JupyterHub's API."""
    routes = apihandlers.default_handlers
    routes[:] = [r for r in routes if r[0] != PORT_ROUTE]
    routes.append((PORT_ROUTE, PortAPIHandler))
    for i, route in enumerate(routes):
        if route[1] is UserServerAPIHandler:
            routes[i] = (route[0], CheckedUserServerAPIHandler, *route[2:])
        elif route[1] is UserAPIHandler:
            routes[i] = (route[0], LabUserAPIHandler, *route[2:])
        elif route[1] is GroupUsersAPIHandler:
            routes[i] = (route[0], LabGroupUsersAPIHandler, *route[2:])
        elif route[1] is GroupAPIHandler:
            routes[i] = (route[0], LabGroupAPIHandler, *route[2:])
