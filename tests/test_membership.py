"""Organisation requests: from sign-up or an OIDC claim, confirmed or rejected by an administrator.

Unit tests use a copy of the site file with its state folder in a temporary directory and a real
JupyterHub database (SQLite in memory). The page itself is tested against the running hub.
"""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
from pathlib import Path

import pytest
import requests
from aifl_hub import membership
from aifl_hub.accounts import LabOAuthenticator
from aifl_hub.site import load_site
from conftest import BASE, Hub, browser_session, remove_account, slurm
from jupyterhub import orm

SITE_FILE = Path(__file__).resolve().parents[1] / "hub_config" / "site.yaml"


@pytest.fixture
def site(tmp_path):
    site = copy.deepcopy(load_site(SITE_FILE))
    site["hub"]["state_dir"] = str(tmp_path)
    for org in site["organisations"]["list"]:
        if org["name"] == "umcg":
            org["claim_values"] = ["umcg.nl", "rug.nl/umcg"]
    return site


@pytest.fixture
def db():
    session = orm.new_session_factory("sqlite://")()
    yield session
    session.close()


def test_a_claim_names_the_organisation_that_lists_its_value(site):
    assert membership.organisation_for_claim(site, "umcg.nl") == "umcg"
    assert membership.organisation_for_claim(site, ["other.org", "rug.nl/umcg"]) == "umcg"
    assert membership.organisation_for_claim(site, "evil.example") is None
    assert membership.organisation_for_claim(site, {"umcg.nl": 1}) is None  # not a string or a list
    assert membership.organisation_for_claim(site, [3, None]) is None


def test_confirming_makes_a_member_of_one_organisation_and_remembers_it(site, db):
    user = orm.User(name="ann")
    db.add(user)
    db.commit()
    membership.request(site, "ann", "noorderveld")
    assert membership.confirm(site, db, user) == "noorderveld"
    assert [g.name for g in user.groups] == ["org-noorderveld"]
    membership.request(site, "ann", "umcg")  # she moves: the confirmed change replaces the old group
    assert membership.confirm(site, db, user) == "umcg"
    assert [g.name for g in user.groups] == ["org-umcg"]
    assert membership.confirmed(site) == {"ann": "umcg"} and membership.requested(site) == {}
    state = Path(site["hub"]["state_dir"])
    assert oct((state / membership.MEMBERS_FILE).stat().st_mode & 0o777) == "0o600"


def test_rejecting_drops_only_that_request(site):
    membership.request(site, "ann", "umcg")
    membership.request(site, "bob", "noorderveld")
    assert membership.reject(site, "ann") == "umcg"
    assert membership.reject(site, "ann") is None
    assert membership.requested(site) == {"bob": "noorderveld"}
    with pytest.raises(ValueError, match="unknown organisation"):
        membership.request(site, "bob", "evil-corp")


def authenticator(site, tmp_path, **config) -> LabOAuthenticator:
    site_file = tmp_path / "site.json"
    site_file.write_text(json.dumps(site))
    return LabOAuthenticator(site_file=str(site_file), organisation_claim="schac_home_organization",
                             username_claim="preferred_username",
                             client_id="lab", client_secret="x", **config)


def auth_model(name: str, **claims) -> dict:
    """What oauthenticator hands ``update_auth_model``: the userinfo under ``auth_state.oauth_user``."""
    return {"name": name, "admin": None,
            "auth_state": {"access_token": "t", "oauth_user": {"preferred_username": name, **claims}}}


def test_the_oidc_claim_becomes_a_request_for_an_admin(site, tmp_path):
    lab = authenticator(site, tmp_path)
    asyncio.run(lab.update_auth_model(auth_model("ann", schac_home_organization="umcg.nl")))
    asyncio.run(lab.update_auth_model(auth_model("bob", schac_home_organization="evil.example")))
    asyncio.run(lab.update_auth_model(auth_model("cas")))  # the provider sent no such claim
    assert membership.requested(site) == {"ann": "umcg"}
    assert membership.confirmed(site) == {}  # nothing is confirmed by a login alone


def test_a_confirmed_organisation_is_not_asked_again_and_survives_group_sync(site, tmp_path, db):
    lab = authenticator(site, tmp_path, allowed_groups={"lab-users"}, manage_groups=True,
                        auth_state_groups_key="oauth_user.groups")
    user = orm.User(name="ann")
    db.add(user)
    db.commit()
    membership.request(site, "ann", "umcg")
    membership.confirm(site, db, user)
    model = auth_model("ann", schac_home_organization="umcg.nl", groups=["lab-users"])
    asyncio.run(lab.update_auth_model(model))
    assert membership.requested(site) == {}
    # manage_groups sets the user's hub groups to these at every login: the confirmed organisation stays
    assert asyncio.run(lab.get_user_groups(model["auth_state"])) == {"lab-users", "org-umcg"}
    other = auth_model("bob", groups=["lab-users"])
    assert asyncio.run(lab.get_user_groups(other["auth_state"])) == {"lab-users"}


# ---------------------------------------------------------------- the page, on the running hub

def admin_session() -> requests.Session:
    name, password = (line.split(": ", 1)[1] for line in
                      Path("/etc/aifl/admin-credentials").read_text().splitlines()[:2])
    return browser_session(name, password)


@pytest.mark.cluster
def test_an_admin_confirms_a_request_on_the_page_and_slurm_follows(hub: Hub):
    name, password = f"m{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    try:
        # a sign-up asking for noorderveld, not approved yet: the page can only reject it for now
        visitor = requests.Session()
        visitor.get(f"{BASE}/hub/signup", timeout=10)
        r = visitor.post(f"{BASE}/hub/signup", timeout=30, data={
            "username": name, "signup_password": password, "signup_password_confirmation": password,
            "_xsrf": visitor.cookies.get("_xsrf", ""), "organisation": "noorderveld"})
        assert r.status_code == 200
        admin = admin_session()
        page = admin.get(f"{BASE}/hub/aifl/organisations", headers={"Accept-Language": "nl"},
                         timeout=30).content.decode()
        row = page[page.index(f'id="request-{name}"'):]
        row = row[:row.index("</tr>")]
        assert "Coöperatie Noorderveld" in row and "Regionaal" in row
        assert 'value="confirm"' not in row and 'value="reject"' in row
        xsrf = admin.cookies.get("_xsrf", path="/hub/")
        post = lambda **data: admin.post(f"{BASE}/hub/aifl/organisations", timeout=60, data=data)  # noqa: E731
        assert post(_xsrf=xsrf, user=name, action="confirm").status_code == 400  # not approved yet
        # once the hub has the user (an admin added them), the request can be confirmed
        assert hub.api("POST", f"/users/{name}").status_code == 201
        assert post(_xsrf=xsrf, user="nobody", action="confirm").status_code == 400  # no such request
        assert post(_xsrf=xsrf, user=name, action="promote").status_code == 400  # no such action
        assert post(user=name, action="confirm").status_code == 403  # no XSRF token
        assert "org-noorderveld" not in hub.api("GET", f"/users/{name}").json()["groups"]
        done = post(_xsrf=xsrf, user=name, action="confirm")
        assert done.status_code == 200 and f'id="request-{name}"' not in done.text
        assert "org-noorderveld" in hub.api("GET", f"/users/{name}").json()["groups"]
        assoc = slurm("sacctmgr", "-nP", "show", "assoc", f"user={name}", "format=Account").split()
        assert "noorderveld" in assoc
    finally:
        hub.api("DELETE", f"/users/{name}")
        remove_account(name)


@pytest.mark.cluster
def test_only_admins_see_the_page(hub: Hub, users):
    _name, _token, session = users.with_login("m")
    assert session.get(f"{BASE}/hub/aifl/organisations", timeout=30).status_code == 403
    anonymous = requests.get(f"{BASE}/hub/aifl/organisations", timeout=30, allow_redirects=False)
    assert anonymous.status_code in (302, 303)
