"""Turn the site file into JupyterHub configuration (called from hub_config/jupyterhub_config.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import membership
from .api import install_handlers
from .datasets_page import install_datasets_page
from .energy import EnergyReport
from .facility import Facility, FacilityCache
from .grid import builtin_profile
from .membership_page import install_membership_page
from .organisations import organisation_of
from .pages import configure_pages
from .site import Site, load_site
from .spawnpage import install_page_handlers
from .workshop_handlers import CUSTOM_SCOPES, SITE_SETTING, TEND_SCOPE, install_workshop_handlers, trainer_roles
from .workshops import check_site

TEMPLATES = Path(__file__).parent / "templates" / "hub"
PROXY_API_PORT = 8001
HUB_API_PORT = 8081


def end_message(user: Any) -> Callable[[str], str]:
    """Template variable: why the user's last session ended outside the lab, as ``f(lang)`` ('' when nothing)."""
    spawner = getattr(user, "spawner", None)  # the default server's spawner (made on first use)
    if spawner is None or not hasattr(spawner, "end_message"):
        return lambda lang: ""
    return spawner.end_message


def session_card(user: Any) -> Callable[[str], list[tuple[str, str]]]:
    """Template variable: the running session's profile, node, GPU and time left, as ``f(lang)`` (empty when none)."""
    spawner = getattr(user, "spawner", None)
    if spawner is None or not hasattr(spawner, "session_card"):
        return lambda lang: []
    return spawner.session_card


def org_name(site: Site, user: Any) -> str | None:
    """The name of the user's organisation (their hub group ``org-<name>``), or None."""
    org = organisation_of(site, [group.name for group in getattr(user, "groups", [])]) if user else None
    return org["name"] if org else None


def configure(c: Any, site_file: str) -> None:
    """Apply the site file at ``site_file`` to the JupyterHub config object ``c``."""
    site = load_site(site_file)
    hub, auth, users = site["hub"], site["auth"], site["users"]
    state = Path(hub["state_dir"])

    install_handlers()
    install_page_handlers()

    c.JupyterHub.bind_url = f"http://{hub['ip']}:{hub['port']}"
    c.JupyterHub.hub_bind_url = f"http://{hub.get('api_ip', '127.0.0.1')}:{HUB_API_PORT}"
    c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
    c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
    # The proxy is its own process (started by `lab up`) so users' connections survive a hub restart;
    # the hub leaves session jobs running when it stops and re-attaches to them when it starts.
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.cleanup_proxy = False
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{PROXY_API_PORT}"
    c.JupyterHub.template_paths = [str(TEMPLATES), str(TEMPLATES.parent)]  # the second: workshop*.html
    usage = FacilityCache(Facility(site), ttl=60)
    energy_report = EnergyReport(site)
    c.JupyterHub.template_vars = {
        "aifl_site_name": site["site"]["name"], "aifl_end_message": end_message, "aifl_session": session_card,
        # Sign-up and approval pages: the organisations to choose from, and what each person asked for.
        "aifl_organisations": [(o["name"], o["display_name"]) for o in site.get("organisations", {}).get("list", [])],
        # (read only by the approval page that calls it, not on every page JupyterHub renders)
        "aifl_requested_organisations": lambda user: (lambda: membership.requested(site)),
        # The home page: the user's own and their organisation's GPU hours this month (from Slurm, at most
        # a minute old).
        "aifl_usage": lambda user: (lambda lang: usage.home_usage(user.name, lang, org_name(site, user))),
        # The home page: the energy of the user's own work this month (from Slurm, at most a minute old).
        "aifl_energy": lambda user: (lambda lang: energy_report.home_line(user.name, lang)),
    }
    c.JupyterHub.shutdown_on_logout = False
    c.JupyterHub.tornado_settings = {"cookie_options": {"SameSite": "Lax"}}

    c.JupyterHub.spawner_class = "aifl_hub.spawner.SlurmLabSpawner"
    c.SlurmLabSpawner.site_file = site_file
    c.Spawner.default_url = "/lab"
    c.Spawner.disable_user_config = True
    c.Spawner.env_keep = []

    c.Authenticator.admin_users = set(hub["admin_users"])
    if auth["type"] == "native":
        # Only accounts an admin approved can log in at all, so every user who logs in is allowed.
        c.Authenticator.allow_all = True
        c.JupyterHub.authenticator_class = "aifl_hub.accounts.LabNativeAuthenticator"
        c.LabNativeAuthenticator.create_local_accounts = users["create_local_accounts"]
        c.LabNativeAuthenticator.site_file = site_file
        c.LabNativeAuthenticator.minimum_password_length = auth.get("minimum_password_length", 10)
        c.LabNativeAuthenticator.check_common_password = True
        c.LabNativeAuthenticator.allowed_failed_logins = 5
        c.LabNativeAuthenticator.seconds_before_next_try = 60
    else:
        oauth = auth["oauth"]
        c.JupyterHub.authenticator_class = "aifl_hub.accounts.LabOAuthenticator"
        c.LabOAuthenticator.create_local_accounts = users["create_local_accounts"]
        c.LabOAuthenticator.authorize_url = oauth["authorize_url"]
        c.LabOAuthenticator.token_url = oauth["token_url"]
        c.LabOAuthenticator.userdata_url = oauth["userdata_url"]
        c.LabOAuthenticator.client_id = oauth["client_id"]
        c.LabOAuthenticator.client_secret = Path(oauth["client_secret_file"]).read_text().strip()
        c.LabOAuthenticator.username_claim = oauth.get("username_claim", "preferred_username")
        c.LabOAuthenticator.scope = oauth.get("scope", ["openid", "profile", "email"])
        c.LabOAuthenticator.allow_all = oauth.get("allow_all", False)
        if oauth.get("allowed_groups"):
            c.LabOAuthenticator.allowed_groups = set(oauth["allowed_groups"])
            c.LabOAuthenticator.manage_groups = True
            c.LabOAuthenticator.auth_state_groups_key = f"oauth_user.{oauth.get('groups_claim', 'groups')}"
        c.LabOAuthenticator.site_file = site_file
        c.LabOAuthenticator.organisation_claim = oauth.get("organisation_claim", "")

    services: list[dict[str, Any]] = []
    roles: list[dict[str, Any]] = []
    # A service token for `lab` itself (health checks, first admin, tests): read from a 0600 file.
    token_file = state / "lab-service-token"
    if token_file.exists():
        services.append({"name": "lab", "api_token": token_file.read_text().strip()})
        roles.append({"name": "lab-service", "services": ["lab"],
                      "scopes": ["admin:users", "admin:servers", "admin:groups", "tokens", "read:hub",
                                 "access:servers", TEND_SCOPE]})
    idle = site["spawner"].get("idle_timeout", 0)
    if idle:
        # jupyterhub-idle-culler as a hub service, with only the scopes it needs.
        services.append({"name": "idle-culler", "command": [
            sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={idle}", f"--cull-every={max(10, idle // 6)}"]})
        roles.append({"name": "idle-culler", "services": ["idle-culler"],
                      "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"]})
    # The facility page (GPU-hours by category against the regional promise), for every logged-in user.
    services.append({"name": "facility", "url": "http://127.0.0.1:8082", "display": True, "oauth_no_confirm": True,
                     "command": [sys.executable, "-m", "aifl_hub.facility_service", f"--site-file={site_file}"]})
    roles.append({"name": "user", "scopes": ["self", "access:services!service=facility"]})
    if site.get("workshops"):
        # Workshops: trainers' roles, and the tender that disables temporary accounts after the grace period.
        problems = check_site(site)
        if problems:
            raise ValueError(f"{site_file}: " + "; ".join(problems))
        install_workshop_handlers()
        c.JupyterHub.custom_scopes = CUSTOM_SCOPES
        roles += trainer_roles(site)
        services.append({"name": "workshop-tender", "command": [sys.executable, "-m", "aifl_hub.workshop_tender"]})
        roles.append({"name": "workshop-tender", "services": ["workshop-tender"], "scopes": [TEND_SCOPE]})
    # Releases flexible batch work when the grid is quiet (it needs no hub API scopes; Slurm via sudo).
    builtin_profile(site.get("grid", {}))  # a span such as 23:00-06:00 stops the hub here, with the span
    services.append({"name": "grid", "command": [sys.executable, "-m", "aifl_hub.grid_service",
                                                 f"--site-file={site_file}"]})
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = roles
    configure_pages(c, site)
    install_membership_page()
    install_datasets_page()
    c.JupyterHub.tornado_settings = {**c.JupyterHub.tornado_settings, SITE_SETTING: site}
