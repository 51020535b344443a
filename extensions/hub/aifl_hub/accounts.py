"""Authenticators of the lab: local accounts an admin approves, or an OIDC provider.

Both create the approved user's Unix account and Slurm association (embedded default) through
the ``aifl-mkuser`` helper, run with ``sudo`` as an argv list.
"""

from __future__ import annotations

import inspect
from functools import cached_property

from jupyterhub.auth import Authenticator
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import DiscardHandler, SignUpHandler, ToggleAuthorizationHandler
from nativeauthenticator.handlers import LoginHandler as NativeLoginHandler
from nativeauthenticator.orm import UserInfo
from oauthenticator.generic import GenericOAuthenticator
from tornado import web
from traitlets import Bool, List, Unicode

from . import membership
from .organisations import GROUP_PREFIX, organisation
from .site import Site, load_site
from .slurm import SlurmError, run_argv

USERNAME_PATTERN = r"^[a-z][a-z0-9_-]{0,30}$"


class LocalAccountsMixin(Authenticator):
    """Create a Unix account for each user the hub adds (when ``create_local_accounts``)."""

    create_local_accounts = Bool(
        True, help="Create a Unix account and Slurm association for each approved user (embedded default).",
    ).tag(config=True)

    mkuser_command = List(
        Unicode(), ["/usr/bin/sudo", "-n", "/usr/local/sbin/aifl-mkuser"],
        help="argv prefix of the account helper; the user name is appended.",
    ).tag(config=True)

    async def add_user(self, user) -> None:  # noqa: ANN001 - a jupyterhub.user.User
        """Create the user's account, then let JupyterHub add them."""
        if self.create_local_accounts:
            try:
                await run_argv([*self.mkuser_command, user.name], timeout=60)
            except SlurmError as exc:
                self.log.error("Could not create the account of %s: %s", user.name, exc.stderr)
                raise
        result = super().add_user(user)
        if inspect.isawaitable(result):
            await result


class SiteMixin(Authenticator):
    """The site file's organisations, which people ask to join (an administrator confirms)."""

    site_file = Unicode("", help="The site file (its organisations people ask to join).").tag(config=True)

    @cached_property
    def site(self) -> Site | None:
        """The validated site file, if configured."""
        return load_site(self.site_file) if self.site_file else None


class _NoStatsd:
    """Stands in for the statsd client that JupyterHub 6 removed and NativeAuthenticator 1.3 still times with."""

    def timer(self, name: str) -> _NoStatsd:
        """Return a timer that records nothing."""
        return self

    def start(self) -> _NoStatsd:
        """Start nothing."""
        return self

    def stop(self, send: bool = True) -> None:
        """Stop nothing."""


class LabLoginHandler(NativeLoginHandler):
    """NativeAuthenticator's login page, working on JupyterHub 6."""

    statsd = _NoStatsd()


class LabSignUpHandler(SignUpHandler):
    """NativeAuthenticator's sign-up, which also asks for the person's organisation (an admin confirms it)."""

    async def post(self) -> None:
        """Keep the organisation asked for (a new sign-up only), then sign up as NativeAuthenticator does."""
        site = self.authenticator.site
        org = self.get_body_argument("organisation", "", strip=True)
        if org and (site is None or organisation(site, org) is None):
            raise web.HTTPError(400, "Unknown organisation")
        name = self.authenticator.normalize_username(self.get_body_argument("username", "", strip=False))
        if org and UserInfo.find(self.db, name) is None and self.authenticator.validate_username(name):
            membership.request(site, name, org)
        await super().post()


class PostOnlyToggleAuthorizationHandler(ToggleAuthorizationHandler):
    """Approving or revoking a user changes state: only by an XSRF-checked POST, never by following a link.

    Approving also confirms the organisation the person asked for at sign-up.
    """

    async def post(self, slug: str) -> None:
        """Toggle the approval; on approval, make the user a member of the organisation they asked for."""
        await ToggleAuthorizationHandler.get(self, slug)
        info = UserInfo.find(self.db, slug)
        site = self.authenticator.site
        if info is not None and info.is_authorized and site is not None and slug in membership.requested(site):
            user = self.user_from_username(slug)
            org = membership.confirm(site, self.db, user.orm_user)
            self.log.info("%s approved %s as a member of %s", self.current_user.name, slug, org)
            if org and self.authenticator.create_local_accounts:
                # The Unix account and the Slurm association under the organisation's account, at once.
                await run_argv([*self.authenticator.mkuser_command, slug, org], timeout=60)

    async def get(self, slug: str) -> None:
        """Refuse: a link must not approve anyone."""
        raise web.HTTPError(405)


class PostOnlyDiscardHandler(DiscardHandler):
    """Discarding a sign-up only by an XSRF-checked POST."""

    post = DiscardHandler.get

    async def get(self, user_name: str) -> None:
        """Refuse: a link must not delete anyone."""
        raise web.HTTPError(405)


_REPLACED_HANDLERS = {
    NativeLoginHandler: LabLoginHandler,
    SignUpHandler: LabSignUpHandler,
    ToggleAuthorizationHandler: PostOnlyToggleAuthorizationHandler,
    DiscardHandler: PostOnlyDiscardHandler,
}


class LabNativeAuthenticator(SiteMixin, LocalAccountsMixin, NativeAuthenticator):
    """People sign up (with their organisation); an admin approves them; approved users get their accounts."""

    username_pattern = Unicode(USERNAME_PATTERN).tag(config=True)

    def get_handlers(self, app) -> list[tuple]:  # noqa: ANN001 - the JupyterHub application
        """NativeAuthenticator's pages: login working on JupyterHub 6, approvals only by POST."""
        return [(route, _REPLACED_HANDLERS.get(handler, handler)) for route, handler in super().get_handlers(app)]


class LabOAuthenticator(SiteMixin, LocalAccountsMixin, GenericOAuthenticator):
    """Log in through the site's OIDC provider (for example SURF SRAM).

    With ``organisation_claim`` set, the claim's value (for example SRAM's home organisation
    ``umcg.nl``) is matched to the organisations' ``claim_values`` in the site file, and a match becomes a
    request an administrator confirms (:mod:`aifl_hub.membership_page`). The provider sets a user's
    hub groups at every login (``manage_groups``); a confirmed organisation's group is added to them.
    """

    username_pattern = Unicode(USERNAME_PATTERN).tag(config=True)

    organisation_claim = Unicode(
        "", help="The userinfo claim naming the person's organisation (empty: people are placed by an admin).",
    ).tag(config=True)

    def _username(self, auth_state: dict) -> str:
        return self.normalize_username(self.user_info_to_username(auth_state.get(self.user_auth_state_key) or {}))

    async def update_auth_model(self, auth_model: dict) -> dict:
        """Turn the organisation claim into a request for an administrator, unless the user is already placed."""
        site, claim = self.site, self.organisation_claim
        info = (auth_model.get("auth_state") or {}).get(self.user_auth_state_key) or {}
        if site is None or not claim or claim not in info:
            return auth_model
        name = auth_model["name"]
        org = membership.organisation_for_claim(site, info[claim])
        if org is None:
            self.log.info("%s's organisation claim matches no organisation of the site file", name)
        elif membership.confirmed(site).get(name) != org and membership.requested(site).get(name) != org:
            membership.request(site, name, org)
            self.log.info("%s asks to join %s (from the login provider); an administrator confirms it", name, org)
        return auth_model

    async def get_user_groups(self, auth_state: dict) -> set[str]:
        """The provider's groups, plus the group of the organisation an administrator confirmed."""
        groups = await super().get_user_groups(auth_state) if self.auth_state_groups_key else set()
        if self.site is not None:
            org = membership.confirmed(self.site).get(self._username(auth_state))
            if org:
                groups = {*groups, f"{GROUP_PREFIX}{org}"}
        return groups
