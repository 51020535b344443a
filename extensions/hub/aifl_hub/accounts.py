"""Authenticators of the lab: local accounts an admin approves, or an OIDC provider.

Both create the approved user's Unix account and Slurm association (embedded default) through
the ``aifl-mkuser`` helper, run with ``sudo`` as an argv list.

Sign-up refuses, with a message saying why, the names of the hub's administrators (only the ``lab``
service or an administrator may sign them up: nobody can take ``admin`` before ``lab up`` does), the
names of workshops' temporary accounts (``ws-…``), names used before (a Unix account of the lab's
group, a hub user, or a name the hub once gave an account: a newcomer never inherits a former user's
home) and system accounts; with an OIDC provider, a workshop's or a system account's name cannot log
in. Failed logins are counted per (name, address) and per address, in a bounded table (:class:`LoginThrottle`);
the address is the one the trusted proxy saw (:func:`client_address`), never a header the client chose.
"""

from __future__ import annotations

import grp
import inspect
import ipaddress
import math
import os
import pwd
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from functools import cached_property
from pathlib import Path
from typing import Any

from jupyterhub import orm, scopes
from jupyterhub.auth import Authenticator
from jupyterhub.utils import utcnow
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import DiscardHandler, SignUpHandler, ToggleAuthorizationHandler
from nativeauthenticator.handlers import LoginHandler as NativeLoginHandler
from nativeauthenticator.orm import UserInfo
from oauthenticator.generic import GenericOAuthenticator
from tornado import httputil, web
from traitlets import Bool, Integer, List, Unicode

from . import membership
from .i18n import N_, gettext_for
from .organisations import GROUP_PREFIX, organisation
from .pages import request_language
from .site import Site, load_site
from .slurm import SlurmError, run_argv

USERNAME_PATTERN = r"^[a-z][a-z0-9_-]{0,30}$"
TEMPORARY_PREFIX = "ws-"  # workshops' temporary accounts (workshops.Workshop.temporary_name)
USED_NAMES_FILE = "used-names"  # in the hub's state folder: every name the hub gave an account, one a line

ADMIN_NAME = N_("The name {name} is reserved for the lab's administrators; choose another name.")
WORKSHOP_NAME = N_("Names beginning with ws- are reserved for the temporary accounts of workshops; "
                   "choose another name.")
USED_NAME = N_("The name {name} was used before in this lab; choose another name.")
SYSTEM_NAME = N_("The name {name} belongs to a system account of this computer; choose another name.")
PROVIDER_NAME_RESERVED = N_("The name your login provider gives you is reserved in this lab (for the temporary "
                            "accounts of workshops or the computer's own accounts); ask the lab's helpdesk.")
TOO_MANY_FAILURES = N_("Too many failed logins. Try again in {seconds} seconds.")


def signup_refusal(raw: str, name: str, *, admin_names: Collection[str], may_name_admins: bool,
                   used_before: Callable[[str], bool], system_account: Callable[[str], bool]) -> str | None:
    """Why ``raw`` (``name`` once normalised) may not be signed up (an English message with ``{name}``), or None.

    An administrator's name is compared without case or surrounding spaces; only a caller that may
    name administrators (``may_name_admins``) signs one up, whatever else is known of the name.
    """
    admins = {a.strip().casefold() for a in admin_names}
    if raw.strip().casefold() in admins or name.strip().casefold() in admins:
        return None if may_name_admins else ADMIN_NAME
    if name.startswith(TEMPORARY_PREFIX) or raw.strip().casefold().startswith(TEMPORARY_PREFIX):
        return WORKSHOP_NAME
    if used_before(name):
        return USED_NAME
    if system_account(name):
        return SYSTEM_NAME
    return None


def unix_account(name: str) -> pwd.struct_passwd | None:
    """The Unix account called ``name``, or None."""
    try:
        return pwd.getpwnam(name)
    except (KeyError, ValueError):
        return None


def in_group(entry: pwd.struct_passwd, group: str) -> bool:
    """Whether the account is in the Unix group ``group`` (as a member or by its primary group)."""
    try:
        found = grp.getgrnam(group)
    except KeyError:
        return False
    return entry.pw_name in found.gr_mem or entry.pw_gid == found.gr_gid


def used_names(state_dir: str | Path) -> set[str]:
    """The names the hub gave accounts to (its record in the state folder)."""
    try:
        return set((Path(state_dir) / USED_NAMES_FILE).read_text().split())
    except OSError:
        return set()


def remember_name(state_dir: str | Path, name: str) -> None:
    """Add ``name`` to the hub's record of names given out (kept when the user is deleted)."""
    if name in used_names(state_dir):
        return
    descriptor = os.open(Path(state_dir) / USED_NAMES_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "a") as out:
        out.write(f"{name}\n")


def socket_owner(ip: str, port: int) -> int | None:
    """The uid of the established local TCP socket whose own end is ``ip:port`` (from ``/proc/net``), or None."""
    try:
        packed = ipaddress.ip_address(ip).packed
    except ValueError:
        return None
    words = b"".join(packed[i:i + 4][::-1] for i in range(0, len(packed), 4))  # /proc's byte order
    wanted = f"{words.hex().upper()}:{port:04X}"
    try:
        with open("/proc/net/tcp" if len(packed) == 4 else "/proc/net/tcp6") as table:
            for line in table:
                fields = line.split()
                if len(fields) > 7 and fields[1] == wanted and fields[3] == "01":
                    return int(fields[7])
    except (OSError, ValueError):
        return None
    return None


TRUSTED_PROXIES = ("127.0.0.1", "::1")  # the lab's own proxy, on this host


def client_address(request: httputil.HTTPServerRequest, trusted_proxies: Iterable[str] = TRUSTED_PROXIES,
                   proxy_uid: int | None = None) -> str:
    """The address of the client: the last ``X-Forwarded-For`` entry when the peer is the trusted proxy, else the peer.

    The trusted proxy (configurable-http-proxy) appends the peer it saw to ``X-Forwarded-For``; entries
    before it and ``X-Real-IP`` come from the client and are never believed (the hub's server reads
    them into ``remote_ip``). On this host's loopback the proxy is also told apart from other local
    programs that reach the hub's port directly (a lab user's job): its end of the connection belongs to
    ``proxy_uid`` (the hub's own service account). IPv4 in IPv6 is written as IPv4.
    """
    address = getattr(getattr(request.connection, "context", None), "address", None)
    peer, port = (address[0], address[1]) if isinstance(address, tuple) and len(address) >= 2 else ("", 0)
    peer = _plain_ip(peer) or str(peer)
    forwarded = [part.strip() for part in request.headers.get("X-Forwarded-For", "").split(",") if part.strip()]
    appended = _plain_ip(forwarded[-1]) if forwarded else ""
    if not appended:
        return peer or "local"
    if peer and peer not in {_plain_ip(p) or p for p in trusted_proxies}:
        return peer
    if peer and proxy_uid is not None and ipaddress.ip_address(peer).is_loopback \
            and socket_owner(peer, port) != proxy_uid:
        return peer
    return appended


def _plain_ip(text: object) -> str:
    """``text`` as an IP address (IPv4 in IPv6 as IPv4), or "" when it is none."""
    try:
        ip = ipaddress.ip_address(str(text).strip())
    except ValueError:
        return ""
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


class LoginThrottle:
    """Failed logins per (name, address) and per address; a bounded table whose entries expire.

    After ``per_pair`` failures for a name from one address, that name waits ``seconds`` from that
    address (from elsewhere it can still log in: failing someone's password does not lock them out);
    after ``per_address`` failures from one address for any names, that address waits. A wait starts at
    the last failure; a refused try is not counted. The oldest entries go when the table is full.
    """

    def __init__(self, per_pair: int, per_address: int, seconds: float, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = {"pair": per_pair, "address": per_address}
        self.seconds, self.max_entries, self.clock = seconds, max_entries, clock
        self.failures: OrderedDict[tuple[str, ...], tuple[int, float]] = OrderedDict()

    def _keys(self, name: str, address: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("pair", name, address), ("address", address)

    def _current(self, key: tuple[str, ...], now: float) -> tuple[int, float] | None:
        entry = self.failures.get(key)
        if entry is not None and now - entry[1] >= self.seconds:
            del self.failures[key]
            return None
        return entry

    def wait(self, name: str, address: str) -> int:
        """Seconds until ``name`` may try again from ``address`` (0: now)."""
        now, waits = self.clock(), [0.0]
        for key in self._keys(name, address):
            entry = self._current(key, now)
            if entry is not None and self.limits[key[0]] and entry[0] >= self.limits[key[0]]:
                waits.append(entry[1] + self.seconds - now)
        return math.ceil(max(waits))

    def failed(self, name: str, address: str) -> None:
        """Count a failed login."""
        now = self.clock()
        for key in self._keys(name, address):
            entry = self._current(key, now)
            self.failures[key] = ((entry[0] if entry else 0) + 1, now)
            self.failures.move_to_end(key)
        while len(self.failures) > self.max_entries:
            self.failures.popitem(last=False)

    def succeeded(self, name: str, address: str) -> None:
        """Forget the failures of ``name`` from ``address`` (the address's own count stays)."""
        self.failures.pop(("pair", name, address), None)


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
        site = getattr(self, "site", None)
        if site is not None:
            remember_name(site["hub"]["state_dir"], user.name)  # the name stays taken after a deletion
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
    """NativeAuthenticator's login page, working on JupyterHub 6; a throttled try says when to try again."""

    statsd = _NoStatsd()
    aifl_wait = 0  # seconds, set by the authenticator when it refused to check the password

    def _render(self, login_error: str | None = None, username: str | None = None, **_error_page: Any) -> Any:
        # (JupyterHub renders a failed form submission's error page through here, with the error page's namespace)
        if self.aifl_wait:
            self.set_status(429)
            login_error = gettext_for(request_language(self))(TOO_MANY_FAILURES).format(seconds=self.aifl_wait)
        return super()._render(login_error=login_error, username=username)


class LabSignUpHandler(SignUpHandler):
    """NativeAuthenticator's sign-up, which also asks for the person's organisation (an admin confirms it)."""

    def _may_name_admins(self) -> bool:
        """Whether the request comes from the ``lab`` service's token or an administrator (they sign up admins)."""
        token = self.get_token()
        live = token is not None and (token.expires_at is None or token.expires_at > utcnow(with_tz=False))
        if live and "admin:users" in scopes.get_scopes_for(token):
            return True
        return bool(getattr(self.current_user, "admin", False))

    async def post(self) -> None:
        """Refuse reserved names, keep the organisation asked for, then sign up as NativeAuthenticator does."""
        if not self.authenticator.enable_signup:
            raise web.HTTPError(404)
        site = self.authenticator.site
        org = self.get_body_argument("organisation", "", strip=True)
        if org and (site is None or organisation(site, org) is None):
            raise web.HTTPError(400, "Unknown organisation")
        raw = self.get_body_argument("username", "", strip=False)
        name = self.authenticator.normalize_username(raw)
        refusal = self.authenticator.signup_refusal(raw, name, self.db, self._may_name_admins())
        if refusal:
            self.log.warning("Sign-up as %r refused: %s", name, refusal.format(name=name))
            self.set_status(400)
            html = await self.render_template(
                "signup.html", ask_email=self.authenticator.ask_email_on_signup, alert="alert-danger",
                result_message=gettext_for(request_language(self))(refusal).format(name=name),
                two_factor_auth=self.authenticator.allow_2fa, recaptcha_key=self.authenticator.recaptcha_key,
                tos=self.authenticator.tos)
            self.finish(html)
            return
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
                await membership.sync_datasets(site, slug, org)

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

    address_failed_logins = Integer(
        20, help="Failed logins from one address (for any names) before that address waits seconds_before_next_try.",
    ).tag(config=True)

    trusted_proxy_ips = List(
        Unicode(), list(TRUSTED_PROXIES),
        help="Peers whose last X-Forwarded-For entry is the client's address (the lab's own proxy).",
    ).tag(config=True)

    @cached_property
    def throttle(self) -> LoginThrottle:
        """The failed-login table (NativeAuthenticator's own counts per name only, without bound)."""
        return LoginThrottle(self.allowed_failed_logins, self.address_failed_logins, self.seconds_before_next_try)

    def signup_refusal(self, raw: str, name: str, db: Any, may_name_admins: bool) -> str | None:
        """Why ``name`` (typed as ``raw``) may not be signed up, or None (see :func:`signup_refusal`)."""
        site = self.site
        group = site["users"]["group"] if site else None

        def used_before(candidate: str) -> bool:
            if orm.User.find(db, candidate) is not None or (site and candidate in used_names(site["hub"]["state_dir"])):
                return True
            entry = unix_account(candidate) if self.create_local_accounts else None
            return entry is not None and group is not None and in_group(entry, group)

        def system_account(candidate: str) -> bool:
            return self.create_local_accounts and unix_account(candidate) is not None

        return signup_refusal(raw, name, admin_names=self.admin_users, may_name_admins=may_name_admins,
                              used_before=used_before, system_account=system_account)

    async def authenticate(self, handler: Any, data: dict[str, str]) -> str | None:
        """NativeAuthenticator's check of the password, throttled per (name, address) and per address."""
        name = self.normalize_username(data.get("username", ""))
        address = client_address(handler.request, self.trusted_proxy_ips, os.getuid()) if handler else "local"
        wait = self.throttle.wait(name, address) if self.allowed_failed_logins else 0
        if wait:
            self.log.warning("Login of %r from %s refused for %d s: too many failed logins", name, address, wait)
            if handler is not None:
                handler.aifl_wait = wait
            return None
        info = self.get_user(name)
        ok = (info is not None and info.is_authorized and info.is_valid_password(data.get("password", ""))
              and (not info.has_2fa or info.is_valid_token(data.get("2fa"))))
        if ok:
            self.throttle.succeeded(name, address)
            return name
        self.throttle.failed(name, address)
        return None

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

    def check_blocked_users(self, username: str, authentication: dict | None = None) -> Any:
        """Refuse (HTTP 403, saying why) a provider's name of a workshop's temporary account or a system account."""
        site = self.site
        entry = unix_account(username) if self.create_local_accounts else None
        if username.startswith(TEMPORARY_PREFIX) or (
                entry is not None and not (site and in_group(entry, site["users"]["group"]))):
            self.log.warning("Login as %r refused: the name is reserved", username)
            raise web.HTTPError(403, PROVIDER_NAME_RESERVED)
        return super().check_blocked_users(username, authentication)

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
