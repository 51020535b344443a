"""The site file alone decides the hub's configuration: native accounts or OIDC, restart safety, hardening."""

from pathlib import Path

import pytest
import yaml
from aifl_hub import api
from aifl_hub.hubconfig import configure
from jupyterhub.apihandlers import default_handlers
from tornado.web import HTTPError
from traitlets.config import Config

SITE = Path(__file__).resolve().parents[1] / "hub_config" / "site.yaml"


def configured(tmp_path, mutate=None) -> Config:
    site = yaml.safe_load(SITE.read_text())
    if mutate:
        mutate(site)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site))
    c = Config()
    configure(c, str(path))
    return c


def test_native_default_is_hardened_and_restart_safe(tmp_path):
    c = configured(tmp_path)
    assert c.JupyterHub.authenticator_class == "aifl_hub.accounts.LabNativeAuthenticator"
    assert c.JupyterHub.spawner_class == "aifl_hub.spawner.SlurmLabSpawner"
    assert c.JupyterHub.cleanup_servers is False
    assert c.ConfigurableHTTPProxy.should_start is False
    assert c.Spawner.disable_user_config is True
    assert c.Spawner.env_keep == []
    assert c.LabNativeAuthenticator.minimum_password_length == 10


def test_oauth_is_a_site_file_switch(tmp_path):
    secret = tmp_path / "client-secret"
    secret.write_text("s3cret\n")

    def to_oauth(site):
        site["auth"] = {"type": "oauth", "oauth": {
            "authorize_url": "https://login.example.org/authorize", "token_url": "https://login.example.org/token",
            "userdata_url": "https://login.example.org/userinfo", "client_id": "lab",
            "client_secret_file": str(secret), "groups_claim": "entitlements", "allowed_groups": ["lab-users"]}}

    c = configured(tmp_path, to_oauth)
    assert c.JupyterHub.authenticator_class == "aifl_hub.accounts.LabOAuthenticator"
    assert c.LabOAuthenticator.client_secret == "s3cret"
    assert c.LabOAuthenticator.allow_all is False
    assert c.LabOAuthenticator.allowed_groups == {"lab-users"}
    assert c.LabOAuthenticator.auth_state_groups_key == "oauth_user.entitlements"


def test_batchspawner_port_route_is_replaced(tmp_path):
    import batchspawner.api  # noqa: F401 - importing it adds the unsafe route, as it does in a hub

    configured(tmp_path)
    routes = [r for r in default_handlers if r[0] == api.PORT_ROUTE]
    assert routes == [(api.PORT_ROUTE, api.PortAPIHandler)]
    assert all(r[1] is not api.UserServerAPIHandler for r in default_handlers)
    configured(tmp_path)  # twice changes nothing
    assert [r for r in default_handlers if r[0] == api.PORT_ROUTE] == routes


def test_port_reports_other_than_a_port_are_refused():
    assert api.parse_port_report(b'{"port": 40000}') == 40000
    for body in (b'{"port": 40000, "exec_prefix": "id"}', b'{"exec_prefix": "id"}', b'{"port": "40000"}',
                 b'{"port": 1023}', b'{"port": 65536}', b'{"port": true}', b"[40000]", b"not json", b""):
        with pytest.raises(HTTPError) as info:
            api.parse_port_report(body)
        assert info.value.status_code == 400



def test_idle_sessions_are_culled_by_a_least_privilege_service(tmp_path):
    c = configured(tmp_path)
    culler = next(s for s in c.JupyterHub.services if s["name"] == "idle-culler")
    assert "--timeout=3600" in culler["command"]
    role = next(r for r in c.JupyterHub.load_roles if r["name"] == "idle-culler")
    assert set(role["scopes"]) == {"list:users", "read:users:activity", "read:servers", "delete:servers"}
    off = configured(tmp_path, lambda s: s["spawner"].update(idle_timeout=0))
    assert all(s["name"] != "idle-culler" for s in off.JupyterHub.services)
