"""The `lab` command on the running system: idempotent `up`, `status`, and a broken site file changes nothing."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from aifl_hub.cli import one_at_a_time
from conftest import lab

pytestmark = pytest.mark.cluster

WATCHED = [Path("/etc/aifl/site.yaml"), Path("/etc/slurm/slurm.conf"), Path("/etc/sudoers.d/aifl-hub")]


def snapshot() -> dict[str, str]:
    pids = {name: Path(f"/run/aifl/{name}.pid").read_text() for name in ("hub", "proxy")}
    files = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in WATCHED}
    return {**pids, **files}


def test_second_up_changes_nothing_and_status_is_healthy(lab_system):
    before = snapshot()
    up = lab("up")
    assert up.returncode == 0, up.stderr
    assert "is up to date" in up.stdout
    assert "AI Factory Lab is running at http://127.0.0.1:8000" in up.stdout
    assert snapshot() == before
    status = lab("status")
    assert status.returncode == 0, status.stdout
    lines = [line.split() for line in status.stdout.splitlines() if line.strip()]
    assert {line[1] for line in lines} >= {"munge", "mariadb", "slurmdbd", "slurmctld", "watchdog", "proxy", "hub"}
    assert all(line[0] == "ok" for line in lines)


@pytest.mark.parametrize(("text", "key", "problem"), [
    ("hub: [unclosed\n", "", "is not valid YAML"),
    (None, "spawner.profile_list[gpu-1].slurm_override.gpus", "-1 is less than the minimum of 0"),
])
def test_broken_site_file_stops_up_and_changes_nothing(lab_system, tmp_path, text, key, problem):
    site = tmp_path / "site.yaml"
    shipped = (Path(__file__).resolve().parents[1] / "hub_config" / "site.yaml").read_text()
    site.write_text(text if text is not None else shipped.replace("gpus: 1,", "gpus: -1,"))
    before = snapshot()
    up = lab("--site", str(site), "up")
    assert up.returncode == 2
    assert f"{site}: {key}" in up.stderr
    assert problem in up.stderr
    assert "Nothing was started or changed." in up.stderr
    assert snapshot() == before


def test_a_second_up_or_down_waits_for_the_first(tmp_path, capsys):
    """Two `lab up`/`lab down` at once would restart daemons under each other: the second waits for the lock."""
    lock = tmp_path / "run" / "lab.lock"
    order: list[str] = []

    def second_one() -> None:
        with one_at_a_time(lock):
            order.append("second")

    with one_at_a_time(lock):
        second = threading.Thread(target=second_one)
        second.start()
        second.join(timeout=1)
        assert second.is_alive() and order == []  # still waiting
        order.append("first done")
    second.join(timeout=10)
    assert order == ["first done", "second"]
    assert "another 'lab up' or 'lab down' is running" in capsys.readouterr().err


def test_the_watchdog_starts_a_stopped_slurm_daemon_again(lab_system):
    """slurmdbd (and a node's slurmd) killed between two `lab up`s: the watchdog brings them back by itself."""
    log = Path("/var/log/aifl/watchdog.log")
    before = log.read_text() if log.exists() else ""
    dbd = int(Path("/run/slurm/slurmdbd.pid").read_text().split()[0])
    slurmd = int(Path("/run/slurm/slurmd-cpu01.pid").read_text().split()[0])
    os.kill(dbd, signal.SIGKILL)
    os.kill(slurmd, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while lab("status").returncode != 0 and time.monotonic() < deadline:
        time.sleep(2)
    status = lab("status")
    assert status.returncode == 0, status.stdout
    assert int(Path("/run/slurm/slurmdbd.pid").read_text().split()[0]) != dbd
    assert int(Path("/run/slurm/slurmd-cpu01.pid").read_text().split()[0]) != slurmd
    assert "stopped: slurmdbd, slurmd cpu01; starting again" in log.read_text()[len(before):]
    assert subprocess.run(["sacctmgr", "-nP", "show", "account", "format=account"], capture_output=True,
                          text=True, check=True).stdout.strip()
