"""The facility page as a JupyterHub service: who may see what, the page in NL and EN, the figures against Slurm.

The tornado app runs here on a free port with the real handlers and a stand-in for the hub's OAuth
(:class:`FakeHubAuth`, a real ``HubOAuth`` that reads the visitor from a test header); the hub's
static files are served beside it as the hub serves them. With the running lab, a known mix of jobs
under a regional and a national test organisation must give in the service's JSON and CSV the
GPU-hours that ``sacct --truncate`` (Slurm clipping every job to the period itself) gives. ``sreport``
is not used: it sees a period only after slurmdbd's hourly roll-up. When the hub runs the service
(``/services/facility/``), anonymous visitors are sent to log in and logged-in users get the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import html
import secrets
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests
import yaml
from aifl_hub.facility import (
    ALL_CATEGORIES,
    PERIODS,
    Facility,
    FacilityCache,
    parse_sacct,
    period_figures,
    this_month,
)
from aifl_hub.facility_service import Service, describe_wait, make_app, share_chart
from conftest import BASE, REPO, slurm
from jupyterhub._data import DATA_FILES_PATH
from jupyterhub.services.auth import HubOAuth
from playwright.sync_api import expect, sync_playwright
from test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, RequestLog
from test_facility import Replay
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

DATA = Path(__file__).parent / "data" / "facility"
PREFIX = "/services/facility/"
ACCESS = "access:services!service=facility"
SITE = {
    "site": {"name": "AI Factory Lab", "languages": ["nl", "en"], "default_language": "nl"},
    "cluster": {"slurm_bin": "/usr/bin"},
    "organisations": {"list": [
        {"name": "ftreg", "display_name": {"en": "Regional test org", "nl": "Regionale testorganisatie"},
         "category": "regional", "gpu_hours_per_month": 10},
        {"name": "ftnat", "display_name": "National test org", "category": "national"}]},
}


class FakeHubAuth(HubOAuth):
    """The hub's OAuth, except that the visitor comes from the ``X-Test-User`` header (or cookie).

    ``boss`` is an admin, ``service:<name>`` a hub service, ``stranger`` lacks access to this service.
    """

    def get_user(self, handler, **kwargs):
        name = handler.request.headers.get("X-Test-User") or handler.get_cookie("test-user")
        if not name:
            return None
        if name.startswith("service:"):
            return {"kind": "service", "name": name.split(":", 1)[1], "scopes": [ACCESS]}
        return {"kind": "user", "name": name, "admin": name == "boss",
                "scopes": [] if name == "stranger" else [ACCESS, f"read:users:name!user={name}"]}


def fake_auth() -> FakeHubAuth:
    return FakeHubAuth(api_token="test", api_url="http://127.0.0.1:8081/hub/api", base_url=PREFIX,
                       hub_prefix="/hub/", oauth_client_id="service-facility",
                       oauth_redirect_uri=f"http://127.0.0.1:8000{PREFIX}oauth_callback",
                       access_scopes={ACCESS})


def replay_clock() -> datetime:
    jobs = parse_sacct((DATA / "sacct.txt").read_text())
    return max(j.end for j in jobs if j.end) + timedelta(minutes=1)


@contextlib.contextmanager
def serve(service_factory) -> Iterator[str]:
    """Run the service's app (made inside its own event loop) on a free port; yield its base URL."""
    sock, port = bind_unused_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        app = make_app(service_factory(), b"x" * 32)
        static = f"{DATA_FILES_PATH}/static"  # as the hub serves them
        app.add_handlers(".*", [(r"/hub/static/(.*)", web.StaticFileHandler, {"path": static}),
                                (r"/hub/logo", web.RedirectHandler, {"url": "/hub/static/images/jupyterhub-80.png"})])
        HTTPServer(app).add_sockets([sock])
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def replay_service() -> Service:
    return Service(SITE, FacilityCache(Facility(SITE, runner=Replay(), clock=replay_clock)), fake_auth(), PREFIX)


@pytest.fixture(scope="module")
def replayed() -> Iterator[str]:
    with serve(replay_service) as url:
        yield url


def get(url: str, user: str | None = None, **kw) -> requests.Response:
    headers = {"X-Test-User": user} if user else {}
    return requests.get(url, headers={**headers, **kw.pop("headers", {})}, timeout=30, allow_redirects=False, **kw)


# ---------------------------------------------------------------- pure presentation

def _period():
    jobs = parse_sacct((DATA / "sacct.txt").read_text())
    cats = {"ftreg": "regional", "ftnat": "national", "umcg": "regional", "tu-eindhoven": "national"}
    return period_figures("today", jobs, lambda a: cats.get(a, "other"), replay_clock())


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_chart_is_svg_with_a_bar_per_category_and_the_25_percent_line(lang):
    svg = ET.fromstring(str(share_chart(_period(), lang)))  # noqa: S314 - our own SVG
    ns = {"s": "http://www.w3.org/2000/svg"}
    bars = svg.findall("s:rect", ns)
    assert len(bars) == 2 * len(ALL_CATEGORIES)  # a track and a bar each
    (line,) = svg.findall("s:line", ns)
    assert float(line.get("x1")) == 130 + 300 * 0.25
    texts = [t.text for t in svg.findall("s:text", ns)]
    assert ("Regionaal" if lang == "nl" else "Regional") in texts
    assert ("25%-lijn" if lang == "nl" else "25% line") in texts
    assert svg.get("role") == "img" and svg.find("s:title", ns).text


def test_chart_escapes_and_handles_an_empty_period():
    empty = period_figures("7d", [], lambda a: "other", datetime(2026, 11, 25, 12))
    svg = str(share_chart(empty, "en"))
    assert "No GPU work in this period yet." in svg and 'width="0.0"' in svg


@pytest.mark.parametrize(("seconds", "lang", "expected"), [
    (None, "en", "no GPU jobs started"), (12, "nl", "minder dan een minuut"), (600, "en", "10 min"),
    (7500, "nl", "2 u 5 min"),
])
def test_waits_in_words(seconds, lang, expected):
    assert describe_wait(seconds, lang) == expected


# ---------------------------------------------------------------- who may see what (captured Slurm answers)

def test_anonymous_visitors_are_sent_to_the_hub_to_log_in(replayed):
    r = get(f"{replayed}{PREFIX}")
    assert r.status_code == 302
    assert r.headers["Location"].startswith("/hub/api/oauth2/authorize?")
    assert "client_id=service-facility" in r.headers["Location"]
    for path in ("api/figures", "api/organisation", "report.csv", "metrics"):
        assert get(f"{replayed}{PREFIX}{path}").status_code == 403, path


def test_users_without_access_to_the_service_are_refused(replayed):
    assert get(f"{replayed}{PREFIX}", "stranger").status_code == 403


@pytest.mark.parametrize(("lang", "title"), [("nl", "Wie krijgt de GPU's"), ("en", "Who gets the GPUs")])
def test_the_page_in_both_languages(replayed, lang, title):
    r = get(f"{replayed}{PREFIX}", "root", headers={"Accept-Language": lang})
    assert r.status_code == 200
    assert f'<html lang="{lang}">' in r.text and title in html.unescape(r.text)
    assert r.text.count("<svg") == len(PERIODS)
    assert "report.csv" not in r.text  # admin links only for admins
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    # root works for one of the test organisations (its first account in the captures)
    assert ("Je organisatie" if lang == "nl" else "Your organisation") in r.text


def test_the_cookie_wins_over_accept_language(replayed):
    r = get(f"{replayed}{PREFIX}", "root", headers={"Accept-Language": "nl", "Cookie": "aifl-lang=en"})
    assert "Who gets the GPUs" in r.text


def test_language_switch_is_a_checked_form(replayed):
    session = requests.Session()
    session.headers["X-Test-User"] = "root"
    page = session.get(f"{replayed}{PREFIX}", timeout=30)
    xsrf = page.text.split('name="_xsrf" value="', 1)[1].split('"', 1)[0]
    refused = session.post(f"{replayed}{PREFIX}language", data={"lang": "en"}, timeout=30, allow_redirects=False)
    assert refused.status_code == 403  # no XSRF token
    r = session.post(f"{replayed}{PREFIX}language", data={"lang": "en", "_xsrf": xsrf}, timeout=30,
                     allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == PREFIX
    assert f"Path={PREFIX}" in r.headers["Set-Cookie"] and "HttpOnly" in r.headers["Set-Cookie"]
    assert "Who gets the GPUs" in session.get(f"{replayed}{PREFIX}", timeout=30).text
    bad = session.post(f"{replayed}{PREFIX}language", data={"lang": "de", "_xsrf": xsrf}, timeout=30)
    assert bad.status_code == 400


def test_admin_routes(replayed):
    for path in ("api/figures", "report.csv", "metrics"):
        assert get(f"{replayed}{PREFIX}{path}", "root").status_code == 403, path
    figures = get(f"{replayed}{PREFIX}api/figures", "boss")
    assert figures.status_code == 200 and [p["period"] for p in figures.json()["periods"]] == list(PERIODS)
    report = get(f"{replayed}{PREFIX}report.csv", "boss")
    assert report.status_code == 200 and report.headers["Content-Type"].startswith("text/csv")
    assert report.text.splitlines()[0].startswith("month,organisation,")
    # the default month is the service's own clock's, not the wall clock's
    assert f"aifl-gpu-hours-{this_month(replay_clock())}.csv" in report.headers["Content-Disposition"]
    page = get(f"{replayed}{PREFIX}", "boss", headers={"Accept-Language": "en"})
    assert "report.csv?month=" in page.text


@pytest.mark.parametrize(("month", "lang", "words"), [
    ("2026-13", "en", "Write the month as year-month, for example {current}."),
    ("2026-1", "nl", "Schrijf de maand als jaar-maand, bijvoorbeeld {current}."),
    ("<b>", "en", "Write the month as year-month"),
    ("next", "nl", "Schrijf de maand als jaar-maand"),
    ("{next}", "en", "The month {next} has not begun yet. Choose {current} or an earlier month."),
    ("2999-01", "nl", "De maand 2999-01 is nog niet begonnen. Kies {current} of een eerdere maand."),
])
def test_a_bad_report_month_is_a_plain_400_in_the_visitors_language(replayed, month, lang, words):
    now = replay_clock()
    current = this_month(now)
    following = this_month(now.replace(day=28) + timedelta(days=4))
    month = month.replace("{next}", following)
    r = get(f"{replayed}{PREFIX}report.csv", "boss", params={"month": month}, headers={"Accept-Language": lang})
    assert r.status_code == 400 and r.headers["Content-Type"].startswith("text/html")
    assert words.format(current=current, next=following) in html.unescape(r.text)
    assert "<b>" not in r.text and "Traceback" not in r.text


def test_metrics_for_admins_and_hub_services(replayed):
    for who in ("boss", "service:prometheus"):
        r = get(f"{replayed}{PREFIX}metrics", who)
        assert r.status_code == 200 and "aifl_regional_share_target 0.25" in r.text
    assert get(f"{replayed}{PREFIX}api/figures", "service:prometheus").status_code == 403


def test_own_organisation_as_json(replayed):
    body = get(f"{replayed}{PREFIX}api/organisation", "root", headers={"Accept-Language": "en"}).json()
    assert body["organisation"] in {"ftreg", "ftnat"} and body["line"].startswith("Your organisation")
    assert get(f"{replayed}{PREFIX}api/organisation", "nobody").json() == {}


def test_errors_are_pages_in_the_visitors_language(replayed):
    r = get(f"{replayed}{PREFIX}api/figures", "root", headers={"Accept-Language": "nl"})
    assert r.status_code == 403 and "voor beheerders" in r.text and "Traceback" not in r.text


def test_slurm_not_answering_gives_a_plain_page():
    async def down(argv):
        raise RuntimeError("sacct: error: slurmdbd not answering")

    def factory() -> Service:
        return Service(SITE, FacilityCache(Facility(SITE, runner=down)), fake_auth(), PREFIX)

    with serve(factory) as url:
        r = get(f"{url}{PREFIX}", "root", headers={"Accept-Language": "en"})
    assert r.status_code == 503 and "not available right now" in r.text


# ---------------------------------------------------------------- against Slurm's accounting (running lab)

def sacctmgr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sacctmgr", "-i", *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def test_organisations(lab_system) -> Iterator[dict[str, str]]:
    """A regional and a national test organisation (Slurm accounts with root associated); removed after."""
    made_parents = []
    existing = slurm("sacctmgr", "-nP", "show", "account", "format=Account").split()
    for parent in ("regional", "national"):
        if parent not in existing:
            assert sacctmgr("add", "account", parent, "parent=root").returncode == 0
            made_parents.append(parent)
    tag = secrets.token_hex(3)
    orgs = {"regional": f"ftr{tag}", "national": f"ftn{tag}"}
    for category, name in orgs.items():
        r = sacctmgr("add", "account", name, f"parent={category}", "description=facility-test")
        assert r.returncode == 0, r.stderr
    r = sacctmgr("add", "user", "root", f"account={orgs['regional']},{orgs['national']}")
    assert r.returncode == 0, r.stderr
    yield orgs
    sacctmgr("delete", "user", "root", f"account={orgs['regional']},{orgs['national']}")
    sacctmgr("delete", "account", *orgs.values())
    for parent in made_parents:
        sacctmgr("delete", "account", parent)


def run_jobs(mix: list[tuple[str, int, int]]) -> list[str]:
    """Submit (account, GPUs, seconds) jobs as root and wait until all have ended in Slurm's accounting."""
    ids = [slurm("sbatch", "--parsable", "-A", account, "-p", "gpu", f"--gres=gpu:{gpus}", "-t", "1",
                 "-o", "/dev/null", "--wrap", f"sleep {seconds}").strip() for account, gpus, seconds in mix]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = slurm("sacct", "-X", "-n", "-P", "-j", ",".join(ids), "-o", "State").split()
        if len(states) == len(ids) and all(s == "COMPLETED" for s in states):
            return ids
        time.sleep(1)
    raise AssertionError(f"test jobs did not complete: {slurm('squeue')}")


def truncated_gpu_hours(start: datetime, end: datetime, user: str | None = None) -> dict[str, float]:
    """Account → GPU-hours in [start, end] (of ``user``'s jobs, or everyone's) by Slurm's own clipping."""
    who = ["-u", user] if user else ["-a"]
    out = slurm("sacct", "-X", *who, "-D", "-n", "-P", "--truncate", "-S", start.isoformat(timespec="seconds"),
                "-E", end.isoformat(timespec="seconds"), "-o", "Account,AllocTRES,ElapsedRaw")
    hours: dict[str, float] = {}
    for line in out.splitlines():
        account, tres, elapsed = line.split("|")
        gpus = dict(i.split("=", 1) for i in tres.split(",") if "=" in i).get("gres/gpu", "0")
        hours[account] = hours.get(account, 0.0) + int(gpus) * int(elapsed or 0) / 3600
    return hours


def category_by_tree() -> dict[str, str]:
    """Account → category, walking ``sacctmgr``'s account tree up to a category account.

    Accounts removed since (earlier tests' organisations) count where they last were.
    """
    parents = {}
    for extra in (["withdeleted"], []):  # the current tree wins
        for line in slurm("sacctmgr", "-nP", "show", "assoc", *extra, "format=Account,ParentName,User").splitlines():
            account, parent, user = line.split("|")
            if not user:
                parents[account] = parent
    out = {}
    for account in parents:
        node = account
        while node and node not in {"regional", "national", "european", "training"}:
            node = parents.get(node, "")
        out[account] = node or "other"
    return out


@pytest.mark.cluster
def test_json_and_csv_give_what_slurm_accounting_gives(test_organisations):
    regional, national = test_organisations["regional"], test_organisations["national"]
    run_jobs([(regional, 2, 4), (regional, 1, 3), (national, 4, 3)])
    time.sleep(1)
    site = yaml.safe_load((REPO / "hub_config" / "site.yaml").read_text())
    site = copy.deepcopy(site)
    site.setdefault("organisations", {}).setdefault("list", [])
    site["organisations"]["list"] += [
        {"name": regional, "display_name": "Regional test", "category": "regional", "gpu_hours_per_month": 1},
        {"name": national, "display_name": "National test", "category": "national"}]

    with serve(lambda: Service(site, FacilityCache(Facility(site), ttl=0), fake_auth(), PREFIX)) as url:
        figures = get(f"{url}{PREFIX}api/figures", "boss").json()
        report = get(f"{url}{PREFIX}report.csv", "boss").text
    now = datetime.fromisoformat(figures["generated_at"])
    today = figures["periods"][0]
    expected = truncated_gpu_hours(datetime.fromisoformat(today["start"]), now)

    # the test organisations' jobs have ended: their GPU-hours agree to the second
    month = {o["organisation"]: o for o in figures["organisations"]}
    for name in (regional, national):
        assert month[name]["gpu_hours"] == pytest.approx(expected[name], abs=1e-3)
        assert month[name]["jobs"] == (2 if name == regional else 1)
    assert expected[regional] == pytest.approx((2 * 4 + 3) / 3600, abs=3 * 2 / 3600)  # Slurm counts whole seconds
    assert month[regional]["budget_used"] == pytest.approx(expected[regional], abs=1e-3)
    rows = {line.split(",")[1]: line.split(",") for line in report.splitlines()[1:]}
    assert float(rows[national][6]) == pytest.approx(expected[national], abs=1e-3)

    # per category and the share: other people's jobs may still run, so allow a few GPU-seconds
    categories = category_by_tree()
    per_category = dict.fromkeys(ALL_CATEGORIES, 0.0)
    for account, hours in expected.items():
        per_category[categories.get(account, "other")] += hours
    for category in ALL_CATEGORIES:
        assert today["gpu_hours"][category] == pytest.approx(per_category[category], abs=0.02), category
    total = sum(per_category.values())
    assert today["regional_share"] == pytest.approx(per_category["regional"] / total, abs=0.01)
    assert today["median_wait_seconds"]["regional"] is not None

    # a user's own GPU hours this month (the hub home's line): root submitted these jobs, and maybe others
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    own = asyncio.run(Facility(site).user_month_hours("root"))
    assert own == pytest.approx(sum(truncated_gpu_hours(month_start, datetime.now(), "root").values()), abs=0.02)
    assert own >= expected[regional] + expected[national] - 1e-3


# ---------------------------------------------------------------- through the hub, which runs the service

@pytest.mark.cluster
def test_the_hub_runs_the_service(hub, users):
    anonymous = requests.get(f"{BASE}{PREFIX}", timeout=30, allow_redirects=False)
    assert anonymous.status_code in (302, 303)
    _name, _token, session = users.with_login("f")
    page = session.get(f"{BASE}{PREFIX}", timeout=60)
    assert page.status_code == 200 and page.url.startswith(f"{BASE}{PREFIX}")
    assert "<svg" in page.text
    assert session.get(f"{BASE}{PREFIX}api/figures", timeout=30).status_code == 403


# ---------------------------------------------------------------- in a real browser

@pytest.mark.browser
@pytest.mark.parametrize(("locale", "lang", "heading", "line"), [
    ("nl-NL", "nl", "Wie krijgt de GPU's", "25%-lijn"), ("en-GB", "en", "Who gets the GPUs", "25% line")])
def test_page_in_chromium(replayed, locale, lang, heading, line):
    if not CHROMIUM.exists():
        pytest.skip("Debian's Chromium is not installed (./lab test installs it)")
    log = RequestLog()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(locale=locale, viewport={"width": 1366, "height": 768},
                                          extra_http_headers={"X-Test-User": "boss"})
            log.watch(context)
            page = context.new_page()
            statuses: dict[str, int] = {}
            page.on("response", lambda response: statuses.__setitem__(response.url, response.status))
            page.goto(f"{replayed}{PREFIX}")
            expect(page.locator("html")).to_have_attribute("lang", lang)
            expect(page.get_by_role("heading", level=1)).to_have_text(heading)
            charts = page.get_by_role("img")
            expect(charts).to_have_count(len(PERIODS) + 1)  # the logo and a chart per period
            expect(page.locator("#share-30d svg text", has_text=line)).to_be_visible()
            css = next(url for url in statuses if url.endswith("css/style.min.css"))
            assert statuses[css] == 200
            assert page.evaluate("getComputedStyle(document.querySelector('.card')).borderRadius") != "0px"
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"facility-{lang}.png"), full_page=True)
            # keyboard: the first Tab reaches the skip link, Enter moves to the figures
            page.keyboard.press("Tab")
            expect(page.locator("a.visually-hidden-focusable")).to_be_focused()
            page.keyboard.press("Enter")
            expect(page.locator("#main")).to_be_focused()
            expect(page.locator("#share-today table")).to_be_visible()
        finally:
            browser.close()
    assert log.foreign() == [], f"requests that left this machine: {log.foreign()}"
