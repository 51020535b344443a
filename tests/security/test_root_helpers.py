"""The root helpers survive what a lab user puts in their own home (links, FIFOs, folders swapped during the
call), refuse every malformed command line without changing anything, and `lab` writes nothing as root
through a name in a world-writable folder."""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from attacker import as_user, shell_as
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
MKUSER = "/usr/local/sbin/aifl-mkuser"
RESERVATION = "/usr/local/sbin/aifl-reservation"
ORG = "umcg"  # the users fixture's organisation: mkuser is run for it, as the hub does
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
HUB_USER = "aifl-hub"
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def mkuser(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run aifl-mkuser as root, as the hub's sudo does."""
    return subprocess.run([MKUSER, *argv], capture_output=True, text=True, timeout=timeout, check=False)


def ownership(path: str | Path) -> tuple[int, int, int]:
    """Owner, group and mode of ``path`` itself (a link is not followed)."""
    info = os.lstat(path)
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


@pytest.fixture
def target() -> Iterator[Path]:
    """A root-owned folder (with a root-owned ``logs`` folder and file in it) a user would like to own."""
    folder = Path(f"/var/tmp/aifl-root-target-{secrets.token_hex(4)}")
    (folder / "logs").mkdir(parents=True)
    (folder / "file").write_text("root's\n")
    yield folder
    shutil.rmtree(folder)


def unchanged(paths: list[Path]) -> dict[Path, tuple[int, int, int]]:
    return {path: ownership(path) for path in paths}


def under(target: Path) -> list[Path]:
    return [target, target / "logs", target / "file"]


@pytest.mark.parametrize("where", ["target", "/etc"])
def test_mkuser_does_not_take_a_linked_log_folder(users, target, where):
    name, _ = users()
    pointed = target if where == "target" else Path("/etc")
    watched = under(target) if where == "target" else [Path("/etc"), Path("/etc/passwd"), Path("/etc/shadow")]
    before = unchanged(watched)
    shell_as(name, f"rm -rf ~/.aifl/logs && mkdir -p ~/.aifl && ln -s {pointed} ~/.aifl/logs", check=True)
    try:
        done = mkuser(name, ORG)
        assert done.returncode == 2, done
        assert "~/.aifl/logs is a link or not a folder" in done.stderr
        assert unchanged(watched) == before
    finally:  # should the attack ever work again, the system is given back to root at once
        for path, (uid, gid, mode) in before.items():
            if ownership(path) != (uid, gid, mode):
                os.chown(path, uid, gid)
                os.chmod(path, mode)
    assert os.readlink(f"/home/{name}/.aifl/logs") == str(pointed)


def test_mkuser_does_not_take_a_linked_aifl_folder(users, target):
    name, _ = users()
    before = unchanged(under(target))
    shell_as(name, f"rm -rf ~/.aifl && ln -s {target} ~/.aifl", check=True)
    done = mkuser(name, ORG)
    assert done.returncode == 2, done
    assert "~/.aifl is a link or not a folder" in done.stderr
    assert unchanged(under(target)) == before


def test_mkuser_does_not_hang_on_a_fifo(users):
    name, _ = users()
    shell_as(name, "rm -rf ~/.aifl/logs && mkfifo ~/.aifl/logs", check=True)
    done = mkuser(name, ORG, timeout=30)  # an open() that waited on the FIFO would run into the timeout
    assert done.returncode == 2, done
    assert "~/.aifl/logs is a link or not a folder" in done.stderr
    assert stat.S_ISFIFO(os.lstat(f"/home/{name}/.aifl/logs").st_mode)


def test_mkuser_does_not_take_a_hard_linked_file(users, target):
    """Where fs.protected_hardlinks is off a user may hard-link a root file into their home (made here as root)."""
    name, _ = users()
    shell_as(name, "rm -rf ~/.aifl/logs", check=True)
    os.link(target / "file", f"/home/{name}/.aifl/logs")
    before = unchanged(under(target))
    done = mkuser(name, ORG)
    assert done.returncode == 2, done
    assert "~/.aifl/logs is a link or not a folder" in done.stderr
    assert unchanged(under(target)) == before
    assert (target / "file").read_text() == "root's\n"


def test_mkuser_survives_a_folder_swapped_during_the_call(users, target):
    name, _ = users()
    before = unchanged(under(target))
    # the user swaps ~/.aifl between a real folder and a link to the root folder as fast as they can
    swapper = subprocess.Popen(
        ["setpriv", f"--reuid={name}", f"--regid={name}", "--init-groups", "--", "timeout", "20", "bash", "-c",
         f"cd ~{name} && while :; do rm -rf .aifl; mkdir -p .aifl/logs; rm -rf .aifl; ln -s {target} .aifl; done"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, runs = time.monotonic() + 15, 0
        while time.monotonic() < deadline:
            done = mkuser(name, ORG)
            assert done.returncode in (0, 2), done  # made, or refused with a message; never a crash
            assert unchanged(under(target)) == before
            runs += 1
    finally:
        # The whole process group: killing only `timeout` would leave its bash loop running on its own.
        os.killpg(swapper.pid, signal.SIGKILL)
        swapper.wait()
    assert runs >= 3
    assert unchanged(under(target)) == before


@pytest.mark.parametrize("change", ["root's", "link"])
def test_mkuser_refuses_a_home_that_is_not_the_users_folder(users, change):
    """Not something a user can do (/home is root's), but the helper must not work in such a home either."""
    name, _ = users()
    home, real = Path(f"/home/{name}"), Path(f"/home/{name}.real")
    shell_as(name, "rm -rf ~/.aifl", check=True)
    if change == "link":
        home.rename(real)
        home.symlink_to(real)
    else:
        os.chown(home, 0, 0)
    try:
        done = mkuser(name, ORG)
        assert done.returncode == 2, done
        assert ("is a link or not a folder" if change == "link" else "does not belong to") in done.stderr
        assert not (real if change == "link" else home).joinpath(".aifl").exists()
    finally:
        if change == "link":
            home.unlink()
            real.rename(home)
        else:
            shutil.chown(home, name, name)


def test_mkuser_makes_the_log_folder_as_the_user(users):
    name, _ = users()
    shell_as(name, "rm -rf ~/.aifl", check=True)
    done = mkuser(name, ORG)
    assert done.returncode == 0, done
    uid = os.lstat(f"/home/{name}").st_uid
    assert ownership(f"/home/{name}/.aifl")[0] == uid
    assert ownership(f"/home/{name}/.aifl/logs")[0] == uid
    assert ownership(f"/home/{name}/.aifl/logs")[2] == 0o700
    assert ownership(f"/home/{name}")[2] == 0o700  # a new account's home is private


def accounts_named(argv: list[str]) -> set[str]:
    """Which of ``argv`` are names of Unix accounts (others make accounts at the same time: only these count)."""
    found = set()
    for arg in argv:
        try:
            pwd.getpwnam(arg)
        except (KeyError, ValueError):
            continue
        found.add(arg)
    return found


ODD = ["", "-", "--help", "-rf", "--uid=0", "root", "a\n", "\na", "a b", "a/../b", "A", "é", "ölf", "a" * 32,
       "a" * 300, "1abc", "_abc", "abc\u200b", "abc\r", "x;id", "$(id)", "ls\x1b[31m", "𝒶bc", "ａbc"]
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=80)


@FEW
@given(first=st.one_of(st.sampled_from(ODD), text).filter(lambda s: not NAME.fullmatch(s)),
       rest=st.lists(st.one_of(st.sampled_from(ODD), text), max_size=2))
def test_mkuser_refuses_a_malformed_name(lab_system, first, rest):
    before = accounts_named([first, *rest])
    done = mkuser(first, *rest)
    assert done.returncode == 2, done
    assert "aifl-mkuser: usage" in done.stderr
    assert accounts_named([first, *rest]) == before


@FEW
@given(account=st.one_of(st.sampled_from(ODD), text, st.sampled_from(["lab ", "LAB", "umcg\n", "--account=lab"])))
def test_mkuser_refuses_an_account_the_site_does_not_list(lab_system, account):
    accounts = json.loads(Path("/etc/aifl/mkuser.json").read_text())["accounts"]
    if account in accounts:
        return
    name = f"h{secrets.token_hex(4)}"
    done = mkuser(name, account)
    assert done.returncode == 2, done
    assert "is not an organisation account of this site" in done.stderr
    assert not accounts_named([name]) and not Path(f"/home/{name}").exists()


def reservations() -> str:
    return subprocess.run(["scontrol", "show", "reservation"], capture_output=True, text=True, check=True,
                          timeout=60).stdout


FIELDS = {
    "name": re.compile(r"^aifl-ws-[a-z0-9]{6}$"),
    "start": re.compile(r"^(now|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})$"),
    "end": re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}$"),
    "size": re.compile(r"^(nodes|cores)=[1-9][0-9]{0,4}$"),
}
RESERVATION_ODD = [*ODD, "aifl-ws-abc", "aifl-ws-ABCDEF", "aifl-ws-abcdef\n", "root", "now\n", "cores=0",
                   "nodes=1 Flags=MAINT", "cores=1\n", "Users=root", "2030-01-01T00:00:00 Users=root",
                   "ReservationName=x", "2030-01-01 00:00:00"]


@FEW
@given(field=st.sampled_from(["name", "start", "end", "partition", "size", "account", "extra", "fewer"]),
       junk=st.one_of(st.sampled_from(RESERVATION_ODD), text))
def test_reservation_refuses_a_malformed_command(lab_system, field, junk):
    config = json.loads(Path("/etc/aifl/reservation.json").read_text())
    if not config["accounts"]:
        pytest.skip("this site has no workshops")
    name = f"aifl-ws-{secrets.token_hex(3)}"
    good = {"name": name, "start": "2031-01-01T10:00:00", "end": "2031-01-01T12:00:00",
            "partition": config["partitions"][0], "size": "cores=1", "account": config["accounts"][0]}
    valid = {"partition": config["partitions"], "account": config["accounts"]}
    if (field in FIELDS and FIELDS[field].fullmatch(junk)) or (field in valid and junk in valid[field]):
        return  # well-formed after all: not this test's business
    argv = [good[key] if key != field else junk for key in good]
    if field == "extra":
        argv.append(junk)
    elif field == "fewer":
        argv = argv[:-1]
    done = subprocess.run([RESERVATION, "create", *argv], capture_output=True, text=True, timeout=60, check=False)
    try:
        assert done.returncode == 2, done
        assert done.stderr.startswith("aifl-reservation: ")
        assert name not in reservations()
    finally:
        if name in reservations():
            subprocess.run(["scontrol", "delete", f"ReservationName={name}"], capture_output=True, timeout=60,
                           check=False)


@FEW
@given(argv=st.lists(st.one_of(st.sampled_from([*RESERVATION_ODD, "create", "delete"]), text), max_size=8))
def test_reservation_refuses_any_other_command_line(lab_system, argv):
    if argv[:1] == ["delete"] and len(argv) == 2 and FIELDS["name"].fullmatch(argv[1]):
        return
    def named() -> set[str]:  # the reservations named in argv (others make workshops at the same time)
        listed = set(re.findall(r"ReservationName=(\S+)", reservations()))
        return {arg for arg in argv if arg in listed}

    before = named()
    done = subprocess.run([RESERVATION, *argv], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done
    assert named() == before


@pytest.fixture
def lab_user(users) -> str:
    name, _ = users()
    return name


def test_lab_writes_no_pip_log_through_a_link_in_tmp(lab_user, target, tmp_path):
    """A user's link at the old fixed /tmp name of pip's log: `lab`'s install neither writes through it nor uses it.

    `lab` runs from a copy of the repository whose hub package is not a Python project: the hub's environment
    is then due for an install (another stamp), pip fails at once and the environment stays as it was.
    """
    old = Path("/tmp/aifl-hub-pip.log")
    old.unlink(missing_ok=True)
    victim = target / "file"
    before, text = unchanged(under(target)), victim.read_text()
    as_user(lab_user, ["ln", "-s", str(victim), str(old)], check=True)
    copy = tmp_path / "repo"
    (copy / "extensions" / "hub").mkdir(parents=True)
    (copy / "extensions" / "hub" / "README").write_text("not a Python project\n")
    shutil.copy2(REPO / "lab", copy / "lab")
    try:
        done = subprocess.run([str(copy / "lab"), "status"], capture_output=True, text=True, timeout=300,
                              check=False)
        assert done.returncode == 1, done
        log = Path(re.search(r"failed \(log: (\S+)\)", done.stderr).group(1))
        assert victim.read_text() == text and unchanged(under(target)) == before
        assert old.is_symlink() and os.readlink(old) == str(victim)
        assert log != old and "extensions/hub" in log.read_text()
        for folder in [log.parent, *log.parents]:  # no one but root may change that name
            info = os.lstat(folder)
            assert info.st_uid == 0 and not info.st_mode & stat.S_IWOTH and not stat.S_ISLNK(info.st_mode)
    finally:
        old.unlink(missing_ok=True)


def test_lab_imports_nothing_from_the_folder_it_is_run_from(lab_user, tmp_path):
    """Root running ./lab from a folder a user can write (a shared scratch folder) runs none of the user's code."""
    folder = Path(f"/var/tmp/aifl-cwd-{secrets.token_hex(4)}")
    folder.mkdir()
    shutil.chown(folder, lab_user, lab_user)
    marker = folder / "ran-as-root"
    try:
        for module in ("aifl_hub/__init__.py", "aifl_hub/cli.py", "argparse.py", "yaml.py", "requests.py"):
            shell_as(lab_user, f"mkdir -p {folder}/aifl_hub && "
                               f"echo 'open(\"{marker}\", \"w\").write(\"x\")' > {folder}/{module}", check=True)
        subprocess.run([str(REPO / "lab"), "status"], cwd=folder, capture_output=True, text=True, timeout=300,
                       check=False)
        assert not marker.exists()
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize("log", ["hub.log", "proxy.log"])
def test_the_hub_accounts_logs_are_for_root_and_the_hub_account(lab_user, log):
    path = Path("/var/log/aifl") / log
    uid, gid, mode = ownership(path)
    assert (uid, gid, mode) == (0, grp.getgrnam(HUB_USER).gr_gid, 0o640)
    refused = as_user(lab_user, ["cat", str(path)])
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    assert as_user(HUB_USER, ["head", "-c", "1", str(path)]).returncode == 0


def test_no_user_can_put_anything_where_the_lab_lock_lives(lab_user):
    """In a world-writable folder (/run/lock) a user could make the lock's name before root does (at boot): a FIFO
    that root's open() waits on forever, a link, or a file they hold locked, so that `lab up` and the watchdog
    never run. The lock's folder takes no new name from a user."""
    from aifl_hub.cli import LAB_LOCK

    fresh = str(LAB_LOCK.with_name(f"{LAB_LOCK.name}.{secrets.token_hex(4)}"))
    for attempt in (["mkfifo", fresh], ["ln", "-s", "/etc/shadow", fresh], ["touch", fresh]):
        refused = as_user(lab_user, attempt)
        assert refused.returncode != 0 and "Permission denied" in refused.stderr, (attempt, refused)


# lab up's own writes as root in folders a service account owns (the hub's state folder, say): pure tests


@pytest.fixture
def root_file(tmp_path) -> Path:
    victim = tmp_path / "root-only"
    victim.write_text("ROOT-SECRET\n")
    os.chmod(victim, 0o600)
    return victim


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_write_file_replaces_a_link_or_fifo_and_never_writes_through_it(tmp_path, root_file, kind):
    from aifl_hub.procs import write_file

    me = pwd.getpwuid(os.getuid()).pw_name
    path = tmp_path / "owned-by-a-service" / "setting"
    path.parent.mkdir()
    {"symlink": lambda: path.symlink_to(root_file), "hardlink": lambda: os.link(root_file, path),
     "fifo": lambda: os.mkfifo(path)}[kind]()
    before = ownership(root_file)
    # the same content: what is there must not count as the file (a FIFO opened for reading would block here)
    changed = write_file(path, "ROOT-SECRET\n", mode=0o640, owner=me)
    assert changed and path.read_text() == "ROOT-SECRET\n" and not path.is_symlink()
    assert stat.S_ISREG(os.lstat(path).st_mode) and os.lstat(path).st_nlink == 1
    assert ownership(path)[2] == 0o640
    assert root_file.read_text() == "ROOT-SECRET\n" and ownership(root_file) == before


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_a_daemon_log_is_never_opened_through_a_link_or_fifo(tmp_path, root_file, kind):
    from aifl_hub.procs import LabError, protect_log

    log = tmp_path / "hub.log"
    {"symlink": lambda: log.symlink_to(root_file), "hardlink": lambda: os.link(root_file, log),
     "fifo": lambda: os.mkfifo(log)}[kind]()
    before = ownership(root_file)
    with pytest.raises(LabError, match="is not a plain log file"):
        protect_log(log)
    assert root_file.read_text() == "ROOT-SECRET\n" and ownership(root_file) == before


def test_a_daemon_log_is_for_root_and_the_daemons_group(tmp_path):
    from aifl_hub.procs import protect_log

    log = tmp_path / "proxy.log"
    log.write_text("old lines\n")
    os.chmod(log, 0o644)
    me = pwd.getpwuid(os.getuid())
    protect_log(log, me.pw_name)
    assert ownership(log) == (0, me.pw_gid, 0o640) and log.read_text() == "old lines\n"


def test_a_secret_is_never_read_through_a_link(tmp_path, root_file):
    """The hub's account owns its state folder: a link there at a token's name must not hand root's file over."""
    from aifl_hub.cli import _secret

    token = tmp_path / "proxy-token"
    token.symlink_to(root_file)
    secret = _secret(token, pwd.getpwuid(os.getuid()).pw_name)
    assert "ROOT-SECRET" not in secret and len(secret) == 64
    assert token.read_text() == secret and not token.is_symlink() and ownership(token)[2] == 0o600
    assert root_file.read_text() == "ROOT-SECRET\n"
    assert _secret(token, pwd.getpwuid(os.getuid()).pw_name) == secret  # kept from then on
