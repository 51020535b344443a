"""Data sets on the shelf, as real Unix users on the running lab: the file system decides who reads what.

A member of an organisation a controlled data set lists reads it (from a shell and inside a Slurm job);
anybody else gets "permission denied" (EACCES), also after leaving the organisation, and
``~/datasets/README.md`` (made by the user's own session code, with their groups) says why and how to
get access. The root helper that sets the data set groups refuses every command line it was not made for.
"""

from __future__ import annotations

import errno
import grp
import secrets
import subprocess
import time
from pathlib import Path

import pytest
from attacker import as_user, shell_as
from conftest import Hub, browser_session, remove_account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_root_helpers import NAME, ODD, text

pytestmark = pytest.mark.cluster

HELPER = "/usr/local/sbin/aifl-datasets-access"
ENV_PYTHON = "/opt/aifl/envs/default/bin/python"
COHORT = "/srv/aifl/datasets/cohort"
VEHICLES = "/srv/aifl/datasets/vehicles"
NO_ACCESS = "Je hebt geen toegang: deze dataset is alleen voor leden van Universitair Medisch Centrum Groningen"
ORGANISATIONS = {"umcg", "noorderveld", "gemeente-groningen", "tu-eindhoven", "eu-partner", "expertise-centre"}
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
WORDS = st.one_of(st.sampled_from([*ODD, "umcg", "lab", "root", "aifl-hub", "nobody", "aifl-ds-cohort", "sudo",
                                   "..", "/etc/shadow", "-a", "--help"]), text)


def _session_start(name: str) -> str:
    """What a session start does for ``~/datasets``, run as ``name`` (their groups) in the notebook environment."""
    done = as_user(name, [ENV_PYTHON, "-I", "-c", "from aifl_notebook.datasets import install_at_start; "
                          "install_at_start()"], env={"AIFL_LANG": "nl"})
    assert done.returncode == 0, done.stderr
    return (Path(f"/home/{name}") / "datasets" / "README.md").read_text()


@pytest.mark.cluster
def test_a_member_reads_the_controlled_set_and_anybody_else_is_refused(hub: Hub, users):
    member, _ = users("dm", org="umcg")
    other, _ = users("do", org="noorderveld")
    for name in (member, other):
        shown = shell_as(name, f"head -n 2 {VEHICLES}/vehicles.csv")
        assert shown.returncode == 0 and shown.stdout.startswith("kenteken,"), shown
    read = shell_as(member, f"head -n 1 {COHORT}/participants.csv")
    assert read.returncode == 0 and read.stdout.startswith("participant_id,"), read
    refused = shell_as(other, f"head -n 1 {COHORT}/participants.csv")
    assert refused.returncode != 0 and "Permission denied" in refused.stderr, refused
    code = f"import errno\ntry:\n    open({COHORT + '/participants.csv'!r})\nexcept OSError as e:\n    print(e.errno)"
    assert as_user(other, ["python3", "-c", code]).stdout.strip() == str(errno.EACCES)
    assert shell_as(other, f"ls {COHORT}").returncode != 0
    for path in (f"{COHORT}/participants.csv", f"{VEHICLES}/vehicles.csv", f"{VEHICLES}/new.csv"):
        assert shell_as(member, f"echo x >> {path}").returncode != 0, path  # read-only, also for members
    # ~/datasets, made by the user's own session code: a link where they may read, a plain explanation where not.
    assert "Je hebt toegang: ~/datasets/cohort" in _session_start(member)
    assert shell_as(member, "head -n 1 ~/datasets/cohort/visits.csv").stdout.startswith("participant_id,")
    readme = _session_start(other)
    assert NO_ACCESS in readme
    assert not Path(f"/home/{other}/datasets/cohort").exists()
    assert Path(f"/home/{other}/datasets/vehicles").is_symlink()
    # Removed from the organisation: the next session can no longer read it.
    r = hub.api("DELETE", "/groups/org-umcg/users", json={"users": [member]})
    assert r.status_code == 200, r.text
    after = shell_as(member, f"head -n 1 {COHORT}/participants.csv")
    assert after.returncode != 0 and "Permission denied" in after.stderr, after
    assert "Je hebt geen toegang" in _session_start(member)
    assert not Path(f"/home/{member}/datasets/cohort").exists()



def test_a_slurm_job_reads_the_controlled_set_only_for_a_member(users):
    """Sessions and batch work run as Slurm jobs: a job gets the groups the user has when it starts."""
    member, _ = users("dj", org="umcg")
    other, _ = users("dk", org="noorderveld")
    code = (f"try:\n    print(open({COHORT + '/visits.csv'!r}).readline().split(',')[0])\n"
            "except OSError as e:\n    print(e.errno)")
    job = ["srun", "--partition=cpu", "--ntasks=1", "--cpus-per-task=1", "--mem=256M", "--time=2", "--quiet",
           "python3", "-c", code]
    assert as_user(member, job, timeout=120).stdout.strip() == "participant_id"
    assert as_user(other, job, timeout=120).stdout.strip() == str(errno.EACCES)


def test_approving_a_sign_up_for_an_organisation_gives_its_controlled_set(hub: Hub):
    """The admin approves someone who said "UMCG" at sign-up: the confirmed member reads the cohort at once."""
    name = f"da{secrets.token_hex(3)}"
    try:
        browser_session(name, secrets.token_urlsafe(12), signup=True, organisation="umcg").close()
        deadline = time.monotonic() + 60  # the approval's answer comes before its Unix account and groups are made
        while name not in grp.getgrnam("aifl-ds-cohort").gr_mem and time.monotonic() < deadline:
            time.sleep(0.2)
        assert name in grp.getgrnam("aifl-ds-cohort").gr_mem
        read = shell_as(name, f"head -n 1 {COHORT}/participants.csv")
        assert read.returncode == 0 and read.stdout.startswith("participant_id,"), read
    finally:
        hub.api("DELETE", f"/users/{name}")
        remove_account(name)


def memberships(names: list[str]) -> dict[str, bool]:
    """Whether each of ``names`` is in the cohort's data set group (other tests add their own users meanwhile)."""
    members = grp.getgrnam("aifl-ds-cohort").gr_mem
    return {name: name in members for name in names}


@FEW
@given(argv=st.lists(WORDS, max_size=3))
def test_the_datasets_access_helper_refuses_generated_command_lines(lab_system, argv):
    before = memberships(argv)
    done = subprocess.run([HELPER, *argv], capture_output=True, text=True, timeout=60, check=False)
    well_formed = (len(argv) in (1, 2) and bool(NAME.fullmatch(argv[0]))
                   and (len(argv) == 1 or argv[1] in ORGANISATIONS))
    if not well_formed:
        assert done.returncode == 2, done
        assert done.stderr.startswith("aifl-datasets-access: ")
    else:  # a name without a lab account: refused when it is a system account, else nothing to do
        assert done.returncode in (0, 2), done
    assert memberships(argv) == before
