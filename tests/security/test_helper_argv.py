"""Generated hostile command lines for the revocation helpers and aifl-work: each is refused (exit 2) and
changes nothing."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from attacker import as_user
from conftest import remove_account, slurm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_root_helpers import NAME, ODD, text

REVOKE = "/usr/local/sbin/aifl-revoke"
ORG_REVOKE = "/usr/local/sbin/aifl-org-revoke"
WORK = "/usr/local/sbin/aifl-work"
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
WORDS = st.one_of(st.sampled_from([*ODD, "member", "temporary", "ws-", "ws-a/b", "expertise-centre", "lab", "umcg",
                                   "aifl-hub", "list", "show", "zip", "..", "../..", "/etc/shadow"]), text)


def associations() -> str:
    return slurm("sacctmgr", "-n", "-P", "show", "assoc", "format=User,Account")


def helper(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def well_formed_revoke(argv: list[str]) -> bool:
    """A command line aifl-revoke would act on (its patterns), left to the workshop tests."""
    return ((argv[:1] == ["member"] and len(argv) == 3 and bool(NAME.fullmatch(argv[1])))
            or (argv[:1] == ["temporary"] and len(argv) == 2 and bool(NAME.fullmatch(argv[1]))))


@FEW
@given(argv=st.lists(WORDS, max_size=4))
def test_the_workshop_revoke_helper_refuses_generated_command_lines(lab_system, argv):
    if well_formed_revoke(argv):
        return
    before = associations()
    done = helper([REVOKE, *argv])
    assert done.returncode == 2, done
    assert done.stderr.startswith("aifl-revoke: ")
    assert associations() == before


@FEW
@given(argv=st.lists(WORDS, max_size=3))
def test_the_organisation_revoke_helper_refuses_generated_command_lines(lab_system, argv):
    if len(argv) == 2 and NAME.fullmatch(argv[0]):
        return  # a well-formed name: whether the account is the site's is tested with the hub
    before = associations()
    done = helper([ORG_REVOKE, *argv])
    assert done.returncode == 2, done
    assert done.stderr.startswith("aifl-org-revoke: ")
    assert associations() == before


@pytest.fixture(scope="module")
def reader(hub) -> Iterator[str]:
    """A lab user (made once for these examples) who runs aifl-work."""
    name, _ = hub.new_user("aw")
    yield name
    hub.api("DELETE", f"/users/{name}")
    remove_account(name)


@FEW
@given(argv=st.lists(WORDS, max_size=3))
def test_aifl_work_refuses_generated_command_lines_and_shows_nothing_outside_the_folder(reader, argv):
    done = as_user(reader, [WORK, *argv], timeout=60)
    if done.returncode == 0:  # a well-formed request of a folder the user does not have: an empty list
        assert argv[:1] == ["list"] and done.stdout.strip() == "[]", done
    else:
        assert done.returncode in (2, 3), done
        assert done.stderr.startswith("aifl-work: ") and done.stdout == ""
