"""``/hub/aifl/organisations``: administrators confirm or reject the organisations people asked for.

People ask for an organisation at sign-up or through their OIDC provider's claim
(:mod:`aifl_hub.membership`). This page lists the open requests with the organisation's category;
**Confirm** makes the person a member (hub group ``org-<name>``) and creates their Slurm association
under the organisation's account at once (``aifl-mkuser NAME ORG``, as an argv list through sudo), and
a person who moves leaves the old organisation in Slurm too (:func:`aifl_hub.membership.leave`);
**Reject** drops the request. Both are XSRF-checked POSTs by an administrator; a user name or
organisation that is not on the list changes nothing.
"""

from __future__ import annotations

from jupyterhub import handlers, orm
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.utils import url_path_join
from tornado import web

from . import membership
from .facility_service import CATEGORY_LABELS
from .organisations import organisation, organisation_of
from .slurm import SlurmError, run_argv

ROUTE = r"/aifl/organisations"


class OrganisationRequestsHandler(BaseHandler):
    """The list of open organisation requests, for administrators."""

    def _site(self) -> dict:
        site = getattr(self.authenticator, "site", None)
        if site is None:
            raise web.HTTPError(404)
        return site

    def _require_admin(self) -> None:
        if self.current_user is None or not self.current_user.admin:
            raise web.HTTPError(403)

    @web.authenticated
    async def get(self) -> None:
        """Show the open requests."""
        self._require_admin()
        site = self._site()
        # (name, organisation, whether the hub has the user: a sign-up not approved yet has none)
        rows = [(name, organisation(site, org), orm.User.find(self.db, name) is not None)
                for name, org in sorted(membership.requested(site).items())]
        done = self.get_argument("done", "")
        html = await self.render_template("organisations.html", requests=[row for row in rows if row[1]],
                                          category_labels=CATEGORY_LABELS,
                                          done=done if done in ("confirmed", "rejected") else "")
        self.finish(html)

    @web.authenticated
    async def post(self) -> None:
        """Confirm or reject one request."""
        self._require_admin()
        site = self._site()
        name, action = self.get_body_argument("user", ""), self.get_body_argument("action", "")
        asked = membership.requested(site).get(name)
        if asked is None or action not in ("confirm", "reject"):
            raise web.HTTPError(400, "No such request")
        if action == "reject":
            membership.reject(site, name)
            self.log.info("%s rejected %s's request to join %s", self.current_user.name, name, asked)
        else:
            orm_user = orm.User.find(self.db, name)
            if orm_user is None:
                raise web.HTTPError(400, "Approve the sign-up first")
            old = organisation_of(site, [group.name for group in orm_user.groups])
            org = membership.confirm(site, self.db, orm_user)
            self.log.info("%s confirmed %s as a member of %s", self.current_user.name, name, org)
            if org and getattr(self.authenticator, "create_local_accounts", False):
                try:
                    await run_argv([*self.authenticator.mkuser_command, name, org], timeout=60)
                    await membership.sync_datasets(site, name, org)
                except SlurmError as exc:
                    self.log.error("Could not add %s to %s in Slurm: %s", name, org, exc.stderr)
                    raise web.HTTPError(500, "The Slurm association could not be made") from exc
            if org and old is not None and old["name"] != org:
                try:
                    await membership.leave(site, name, old["name"])
                except SlurmError as exc:
                    self.log.error("Could not remove %s from %s in Slurm: %s", name, old["name"], exc.stderr)
                    raise web.HTTPError(500, "The old Slurm association could not be removed") from exc
        done = "confirmed" if action == "confirm" else "rejected"
        self.redirect(url_path_join(self.hub.base_url, f"aifl/organisations?done={done}"))


def install_membership_page() -> None:
    """Put the page into JupyterHub's page routes (idempotent)."""
    routes = handlers.default_handlers
    routes[:] = [r for r in routes if r[0] != ROUTE]
    routes.append((ROUTE, OrganisationRequestsHandler))
