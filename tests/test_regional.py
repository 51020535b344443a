"""The regional-priority promise on the real local cluster: caps, priority with requeue, budgets, idempotent sync."""

from __future__ import annotations

import html
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from aifl_hub.organisations import ACCOUNT_FORMAT, QOS_FORMAT, Current, parse_accounts, parse_qos, plan
from aifl_hub.site import load_site
from conftest import BASE, browser_session, remove_account, slurm
from test_spawn import site_changed

pytestmark = pytest.mark.cluster


def sbatch(user: str, account: str, qos: str, gpus: int, minutes: int = 10) -> str:
    """A sleeping GPU job of ``user`` (the association is added as the hub would); return its id."""
    if not slurm("sacctmgr", "-nP", "show", "assoc", f"user={user}", f"account={account}", "format=user").strip():
        slurm("sacctmgr", "-i", "add", "user", user, f"account={account}")
    return slurm("runuser", "-u", user, "--", "sbatch", "--parsable", "-p", "gpu", "-A", account, "--qos", qos,
                 f"--gres=gpu:{gpus}", "-c", "1", "--mem=1G", "-t", str(minutes), "-o", "/dev/null",
                 "--chdir=/tmp", "--requeue", "--wrap", "sleep 600").strip()


def states(jobs: list[str]) -> dict[str, tuple[str, str]]:
    out = slurm("squeue", "-h", "-j", ",".join(jobs), "-o", "%i|%T|%r")
    return {i: (t, r) for i, t, r in (line.split("|") for line in out.splitlines())}


def wait_for(condition, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@contextmanager
def jobs_cancelled_after(jobs: list[str]) -> Iterator[list[str]]:
    try:
        yield jobs
    finally:
        if jobs:
            slurm("scancel", *jobs)
            wait_for(lambda: not slurm("squeue", "-h", "-j", ",".join(jobs), "-o", "%i").strip(), timeout=60,
                     what="the cancelled jobs to be gone")


def test_syncing_the_site_file_twice_changes_nothing(hub):
    site = load_site("/etc/aifl/site.yaml")
    current = Current(qos=parse_qos(slurm("sacctmgr", "-nP", *QOS_FORMAT)),
                      accounts=parse_accounts(slurm("sacctmgr", "-nP", *ACCOUNT_FORMAT)))
    assert plan(site, current).commands == []
    assert current.qos["interactive"]["grptres"] == "gres/gpu=12,gres/shard=96"  # shared GPUs capped alike
    assert current.accounts["umcg"]["parent"] == "regional"


def test_other_organisations_never_hold_more_than_three_quarters_of_the_gpus(hub, users):
    name, _token = users(org="tu-eindhoven")
    jobs = [sbatch(name, "tu-eindhoven", "interactive", 4) for _ in range(4)]
    with jobs_cancelled_after(jobs):
        wait_for(lambda: sum(s == "RUNNING" for s, _r in states(jobs).values()) == 3, what="three jobs to run")
        time.sleep(3)  # and the fourth stays out
        waiting = [s for s in states(jobs).values() if s[0] == "PENDING"]
        assert len(waiting) == 1 and "QOS" in waiting[0][1], states(jobs)


def test_a_regional_session_starts_within_a_minute_when_others_hold_every_gpu(hub, users):
    other, _ = users(org="tu-eindhoven")
    sessions = [sbatch(other, "tu-eindhoven", "interactive", 4) for _ in range(3)]  # 12 GPUs: the cap
    batch = sbatch(other, "tu-eindhoven", "flex", 4)  # flexible work fills the last 4
    with jobs_cancelled_after([*sessions, batch]):
        wait_for(lambda: all(s == "RUNNING" for s, _r in states([*sessions, batch]).values()), timeout=60,
                 what=f"16 GPUs busy: {slurm('squeue', '-h', '-o', '%i|%u|%T|%b|%r')}")
        name, token = users(org="umcg")
        started = time.monotonic()
        r = hub.api("POST", f"/users/{name}/server", token=token, json={"user_options": {"profile": "gpu-1"}})
        assert r.status_code in (201, 202), r.text
        hub.wait_ready(name, timeout=60)
        assert time.monotonic() - started < 60
        # The flexible job was requeued, not lost: it waits to run again; the sessions were not touched.
        assert states([batch])[batch][0] in ("PENDING", "REQUEUED", "CONFIGURING"), states([batch])
        assert "PREEMPTED" in slurm("sacct", "-nP", "-D", "-j", batch, "-o", "State") or \
            "REQUEUED" in slurm("sacct", "-nP", "-D", "-j", batch, "-o", "State")
        assert all(s == "RUNNING" for s, _r in states(sessions).values())
        account, qos = slurm("squeue", "-h", "-u", name, "-o", "%a|%q").strip().split("|")
        assert (account, qos) == ("umcg", "regional")


def test_gpu_work_needs_an_organisation_and_the_page_says_so(hub, users):
    name, token, browser = users.with_login(org=None)
    page = browser.get(f"{BASE}/hub/spawn", headers={"Accept-Language": "en"}, timeout=30).text
    assert 'id="aifl-organisation"' in page and "GPU work needs an organisation" in page
    r = hub.api("POST", f"/users/{name}/server", token=token, json={"user_options": {"profile": "gpu-1"}},
                headers={"Accept-Language": "en"})
    assert r.status_code == 400 and "GPU work needs an organisation" in r.json()["message"]
    assert slurm("squeue", "-h", "-u", name, "-o", "%i").strip() == ""
    # Trying things out on the CPU node needs none.
    r = hub.api("POST", f"/users/{name}/server", token=token, json={"user_options": {"profile": "cpu-small"}})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(name)
    assert slurm("squeue", "-h", "-u", name, "-o", "%a|%q").strip() == "lab|interactive"


def organisation_line(browser: requests.Session) -> str:
    """The spawn page's line about the user's organisation (in English); where the hub could not read the
    organisation's GPU hours, the hub's own log lines about it are added, to say why."""
    page = browser.get(f"{BASE}/hub/spawn", headers={"Accept-Language": "en"}, timeout=30).text
    found = re.search(r'id="aifl-organisation"[^>]*>(.*?)</div>', page, re.S)
    line = html.unescape(found.group(1).strip()) if found else f"no organisation line on the page: {page[-3000:]}"
    if "not known right now" in line:
        hub_log = Path("/var/log/aifl/hub.log").read_text(errors="replace").splitlines()
        line += "\n" + "\n".join(entry for entry in hub_log if "Could not read the GPU hours" in entry)[-3000:]
    return line


def test_an_organisation_over_its_budget_is_handled_as_the_site_file_says(hub, users, tmp_path):
    with site_changed(tmp_path, "      gpu_hours_per_month: 300\n", "      gpu_hours_per_month: 0\n"):
        name, token, browser = users.with_login(org="noorderveld")
        line = organisation_line(browser)
        # Whatever the organisation used earlier this month (other tests, earlier runs), a budget of 0 is spent.
        spent = r"used [\d.,]+ of its 0 GPU hours this month\. Its GPU sessions get a lower priority"
        assert re.search(spent, line), line
        r = hub.api("POST", f"/users/{name}/server", token=token, json={"user_options": {"profile": "gpu-1"}})
        assert r.status_code in (201, 202), r.text
        hub.wait_ready(name)
        assert slurm("squeue", "-h", "-u", name, "-o", "%a|%q").strip() == "noorderveld|overbudget"
        hub.api("DELETE", f"/users/{name}/server", token=token)
        hub.wait_gone(name)
    with site_changed(tmp_path, "      gpu_hours_per_month: 300\n", "      gpu_hours_per_month: 0\n",
                      more={"  over_budget: lower_priority\n": "  over_budget: stop\n"}):
        name, token, browser = users.with_login(org="noorderveld")
        line = organisation_line(browser)
        assert "GPU work cannot start until the 1st" in line, line
        r = hub.api("POST", f"/users/{name}/server", token=token, json={"user_options": {"profile": "gpu-1"}},
                    headers={"Accept-Language": "en"})
        assert r.status_code >= 400 or hub.wait_gone(name) is None
        progress = hub.api("GET", f"/users/{name}/server/progress", token=token).text
        assert "has used all its GPU hours for this month" in progress
        assert slurm("squeue", "-h", "-u", name, "-o", "%i").strip() == ""
        # Slurm enforces it too: a job submitted by hand waits on the account's GPU-minutes limit.
        (job,) = [sbatch(name, "noorderveld", "regional", 1)]
        with jobs_cancelled_after([job]):
            wait_for(lambda: "GrpGRESMin" in states([job])[job][1] or "GrpTRESMin" in states([job])[job][1],
                     what="the budget limit as the reason", timeout=30)


def test_the_organisation_asked_for_at_sign_up_is_confirmed_by_the_admin(hub):
    name, password = f"o{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    try:
        user = browser_session(name, password, signup=True, organisation="noorderveld")  # the admin approves
        assert "org-noorderveld" in hub.api("GET", f"/users/{name}").json()["groups"]
        page = user.get(f"{BASE}/hub/spawn", headers={"Accept-Language": "nl"}, timeout=30).content.decode()
        assert "Je werkt voor Coöperatie Noorderveld, die deze maand" in page
        # The home page says it too (from the facility figures, refreshed in the background).
        deadline, home = time.monotonic() + 30, ""
        while not ('id="aifl-org-usage"' in home and 'id="aifl-own-usage"' in home) and time.monotonic() < deadline:
            home = user.get(f"{BASE}/hub/home", headers={"Accept-Language": "en"}, timeout=30).content.decode()
            time.sleep(1)
        assert "Your organisation, Noorderveld farmers&#39; co-operative, used" in home
        assert "You used 0 GPU hours this month." in home  # their own, from sacct -u: nothing yet
        assert re.search(r'<meter[^>]*id="aifl-budget"[^>]*value="\d+"', home)  # the budget of 300 GPU hours
        # A made-up organisation is refused and nothing is kept.
        other = requests.Session()
        other.get(f"{BASE}/hub/signup", timeout=10)
        r = other.post(f"{BASE}/hub/signup", timeout=30, data={
            "username": f"x{name}", "signup_password": password, "signup_password_confirmation": password,
            "_xsrf": other.cookies.get("_xsrf", ""), "organisation": "evil-corp"})
        assert r.status_code == 400
    finally:
        hub.api("DELETE", f"/users/{name}")
        remove_account(name)
