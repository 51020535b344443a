"""Authenticators of the lab: local accounts an admin approves, or an OIDC provider.

Both create the approved user's Unix account and Slurm association (embedded default) through
the ``aifl-mkuser`` helper, run with ``sudo`` as an argv list.
"""

from __future__ import annotations

import inspect

from jupyterhub.auth import Authenticator
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import DiscardHandler, ToggleAuthorizationHandler
from nativeauthenticator.handlers import LoginHandler as NativeLoginHandler
from oauthenticator.generic import GenericOAuthenticator
from tornado import web
from traitlets import Bool, List, Unicode

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


class PostOnlyToggleAuthorizationHandler(ToggleAuthorizationHandler):
    """Approving or revoking a user changes state: only by an XSRF-checked POST, never by following a link."""

    post = ToggleAuthorizationHandler.get

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
    ToggleAuthorizationHandler: PostOnlyToggleAuthorizationHandler,
    DiscardHandler: PostOnlyDiscardHandler,
}


class LabNativeAuthenticator(LocalAccountsMixin, NativeAuthenticator):
    """People sign up; an admin approves them; approved users get their accounts."""

    username_pattern = Unicode(USERNAME_PATTERN).tag(config=True)

    def get_handlers(self, app) -> list[tuple]:  # noqa: ANN001 - the JupyterHub application
        """NativeAuthenticator's pages: login working on JupyterHub 6, approvals only by POST."""
        return [(route, _REPLACED_HANDLERS.get(handler, handler)) for route, handler in super().get_handlers(app)]


class LabOAuthenticator(LocalAccountsMixin, GenericOAuthenticator):
    """Log in through the site's OIDC provider (for example SURF SRAM)."""

    username_pattern = Unicode(USERNAME_PATTERN).tag(config=True)
