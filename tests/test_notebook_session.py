"""The notebook side of a session: the session API (end time, Slurm's save signal, idleness), the
language of JupyterLab, and the JupyterLab extension in the notebook environment.

Unit tests of :mod:`aifl_notebook.session` run anywhere; the rest starts real Jupyter servers of the
notebook environment that ``./lab up`` builds (``/opt/aifl/envs/default``), one inside a real Slurm job.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from aifl_notebook.session import SessionClock, parse_squeue_end, session_language, squeue_end_time
from aifl_notebook.singleuser import LANGUAGE_CONFIG, language_environment
from conftest import REPO, clock_environment, slurm

ENV = Path("/opt/aifl/envs/default")
JUPYTER = ENV / "bin" / "jupyter"
NOTEBOOK = REPO / "extensions" / "notebook"
CATALOG = NOTEBOOK / "aifl_notebook" / "locale" / "nl_NL" / "LC_MESSAGES" / "aifl_notebook.json"
LANGUAGE_PLUGIN = "@jupyterlab/translation-extension:plugin"


# ---- the plain Python API ------------------------------------------------------------------------
def clock_for(env: dict[str, str], end: float | None = None, idle: float = 0.0,
              now: float = 1_800_000_000.0) -> SessionClock:
    """A SessionClock at time ``now`` whose server was last active ``idle`` seconds ago."""
    return SessionClock(env, last_activity=lambda: datetime.fromtimestamp(now - idle, UTC),
                        end_time=lambda job: end, clock=lambda: now)


def test_status_reports_end_idleness_and_language() -> None:
    now = 1_800_000_000.0
    clock = clock_for({"SLURM_JOB_ID": "42", "AIFL_SAVE_LEAD": "300", "AIFL_IDLE_TIMEOUT": "3600",
                       "AIFL_LANG": "nl"}, end=now + 900, idle=125.4, now=now)
    status = clock.status()
    assert status["job_id"] == "42"
    assert status["seconds_left"] == 900
    assert datetime.fromisoformat(status["end_time"]).timestamp() == now + 900
    assert (status["save_signal"], status["save_signal_time"]) == (False, None)
    assert (status["save_lead"], status["idle_timeout"], status["idle_seconds"]) == (300, 3600, 125)
    assert status["language"] == "nl"
    json.dumps(status)  # JSON-ready


def test_save_signal_is_recorded_and_estimates_an_unknown_end() -> None:
    now = 1_800_000_000.0
    clock = clock_for({"AIFL_SAVE_LEAD": "600"}, end=None, now=now)
    assert clock.status()["seconds_left"] is None
    clock.record_save_signal()
    status = clock.status()
    assert status["save_signal"] is True
    assert status["seconds_left"] == 600  # the signal came save_lead seconds before the end


def test_end_time_falls_back_to_slurm_job_end_time() -> None:
    now = 1_800_000_000.0
    clock = clock_for({"SLURM_JOB_ID": "42", "SLURM_JOB_END_TIME": str(int(now) + 120)}, end=None, now=now)
    assert clock.status()["seconds_left"] == 120


def test_bad_environment_values_fall_back() -> None:
    status = clock_for({"AIFL_SAVE_LEAD": "soon", "AIFL_IDLE_TIMEOUT": "-5", "AIFL_LANG": "de"}).status()
    assert (status["save_lead"], status["idle_timeout"], status["language"]) == (600, 0, "en")
    assert status["job_id"] is None
    assert session_language({"AIFL_LANG": " NL "}) == "nl"


def test_squeue_is_asked_at_most_every_two_minutes() -> None:
    calls: list[str] = []
    now = [1_800_000_000.0]

    def end_time(job: str) -> float:
        calls.append(job)
        return now[0] + 3600

    clock = SessionClock({"SLURM_JOB_ID": "7"}, lambda: datetime.now(UTC), end_time=end_time, clock=lambda: now[0])
    clock.status()
    now[0] += 60
    clock.status()
    assert calls == ["7"]
    now[0] += 61
    clock.status()
    assert calls == ["7", "7"]


def test_parse_squeue_end() -> None:
    assert parse_squeue_end("2026-11-25T15:43:35\n") == datetime(2026, 11, 25, 15, 43, 35).timestamp()
    for text in ("N/A", "Unknown", ""):
        assert parse_squeue_end(text) is None


def test_squeue_end_time_never_passes_a_bad_job_id(tmp_path: Path) -> None:
    squeue = tmp_path / "squeue"
    squeue.write_text("#!/bin/sh\necho 2026-11-25T15:43:35\n")
    squeue.chmod(0o755)
    assert squeue_end_time("12; rm -rf /", str(squeue)) is None
    assert squeue_end_time("12", str(squeue)) == datetime(2026, 11, 25, 15, 43, 35).timestamp()


def test_language_environment_points_at_the_language_default() -> None:
    nl = language_environment({"AIFL_LANG": "nl", "JUPYTER_CONFIG_PATH": "/site/etc"})
    assert nl["JUPYTER_CONFIG_PATH"] == f"/site/etc:{LANGUAGE_CONFIG / 'nl'}"
    overrides = json.loads((LANGUAGE_CONFIG / "nl" / "labconfig" / "default_setting_overrides.json").read_text())
    assert overrides[LANGUAGE_PLUGIN]["locale"] == "nl_NL"
    assert language_environment({"AIFL_LANG": "xx"})["JUPYTER_CONFIG_PATH"] == str(LANGUAGE_CONFIG / "en")


def test_every_frontend_message_has_a_dutch_translation() -> None:
    """The plugin's English source strings (``trans.__``/``trans._n``) are all in the Dutch catalog."""
    source = (NOTEBOOK / "src" / "index.ts").read_text()
    singular = re.findall(r"trans\.__\(\s*'([^']+)'", source)
    plural = re.findall(r"trans\._n\(\s*'([^']+)',\s*'([^']+)'", source)
    catalog = json.loads(CATALOG.read_text())
    assert singular or plural
    for msgid in singular:
        assert len(catalog.get(msgid, [])) == 1, msgid
    for msgid, _ in plural:
        assert len(catalog.get(msgid, [])) == 2, msgid
        assert all("%1" in text for text in catalog[msgid]), msgid
    assert set(catalog) - {""} == set(singular) | {m for m, _ in plural}, "catalog entries no source uses"


# ---- real Jupyter servers of the notebook environment --------------------------------------------
@dataclass
class NotebookServer:
    """A Jupyter server of the notebook environment, with its token and log."""

    url: str
    token: str
    process: subprocess.Popen[bytes] | None
    log: Path
    home: Path

    def get(self, path: str, authenticated: bool = True) -> requests.Response:
        headers = {"Authorization": f"token {self.token}"} if authenticated else {}
        return requests.get(self.url + path, headers=headers, timeout=30)

    def session(self) -> dict:
        response = self.get("aifl/session")
        assert response.status_code == 200, response.text
        return response.json()


def needs_environment() -> None:
    if not JUPYTER.exists():
        pytest.skip(f"the notebook environment is not built ({ENV}); ./lab up builds it")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_environment(home: Path, extra: dict[str, str]) -> dict[str, str]:
    """A clean environment for a server whose home, Jupyter config and data are under ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": f"{ENV / 'bin'}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "JUPYTER_CONFIG_DIR": str(home / ".jupyter"), "JUPYTER_DATA_DIR": str(home / ".local/share/jupyter"),
            "JUPYTER_RUNTIME_DIR": str(home / ".local/share/jupyter/runtime"), **clock_environment(), **extra}


def server_argv(port: int, token: str, home: Path) -> list[str]:
    return [str(JUPYTER), "server", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={home}"]


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.3) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if result := condition():
                return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextlib.contextmanager
def notebook_server(tmp: Path, extra_env: dict[str, str]) -> Iterator[NotebookServer]:
    """Start ``jupyter server`` of the notebook environment on 127.0.0.1 and stop it afterwards."""
    needs_environment()
    port, token, home, log = free_port(), secrets.token_hex(16), tmp / "home", tmp / "server.log"
    env = server_environment(home, extra_env)
    with log.open("wb") as out:
        process = subprocess.Popen(server_argv(port, token, home), env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    server = NotebookServer(f"http://127.0.0.1:{port}/", token, process, log, home)
    try:
        wait_until(lambda: process.poll() is None and server.get("api/status").ok, 90, "the server to answer")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def test_session_api_with_a_fake_job_and_sigusr1(tmp_path: Path) -> None:
    end = int(time.time()) + 900
    env = {"SLURM_JOB_ID": "999999999", "SLURM_JOB_END_TIME": str(end), "AIFL_SAVE_LEAD": "600",
           "AIFL_IDLE_TIMEOUT": "3600", "AIFL_LANG": "nl"}
    with notebook_server(tmp_path, env) as server:
        assert server.get("aifl/session", authenticated=False).status_code == 403
        first = server.session()
        assert first["job_id"] == "999999999"  # squeue does not know it: SLURM_JOB_END_TIME counts
        # SLURM_JOB_END_TIME counts: the end is exactly it, and the time left counts down to it
        assert datetime.fromisoformat(first["end_time"]).timestamp() == end
        assert 0 < first["seconds_left"] <= 900
        assert (first["save_signal"], first["save_lead"], first["idle_timeout"], first["language"]) == \
            (False, 600, 3600, "nl")

        time.sleep(2.1)  # polling the session API is not activity: idleness keeps growing
        assert server.session()["idle_seconds"] >= first["idle_seconds"] + 2
        assert server.get("api/contents").ok  # a real action is activity
        assert server.session()["idle_seconds"] <= 1

        assert server.process is not None
        server.process.send_signal(signal.SIGUSR1)
        flipped = wait_until(lambda: (s := server.session())["save_signal"] and s, 10, "save_signal to flip")
        assert isinstance(flipped, dict) and flipped["save_signal_time"]
        assert server.process.poll() is None, "SIGUSR1 must not stop the server"
        assert "save signal arrived" in server.log.read_text()


@pytest.mark.cluster
def test_session_api_in_a_real_slurm_job_gets_slurms_signal(lab_system: None, tmp_path: Path) -> None:
    """The server runs as a Slurm job; ``--signal=B:USR1@110`` on a 2-minute job arrives within a minute."""
    needs_environment()
    port, token, home = free_port(), secrets.token_hex(16), tmp_path / "home"
    script = tmp_path / "job.sh"
    script.write_text('#!/bin/bash\nexec "$@"\n')
    env = server_environment(home, {"AIFL_SAVE_LEAD": "110", "AIFL_LANG": "en"})
    submitted = time.time()
    job = subprocess.run(["sbatch", "--parsable", "--account=root", "--partition=cpu", "--time=0:02:00",
                          "--signal=B:USR1@110", f"--output={tmp_path / 'job.log'}", "--export=ALL",
                          str(script), *server_argv(port, token, home)],
                         env=env, capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    server = NotebookServer(f"http://127.0.0.1:{port}/", token, None, tmp_path / "job.log", home)
    try:
        status = wait_until(lambda: server.get("aifl/session").ok and server.session(), 90, "the job's server")
        assert isinstance(status, dict) and status["job_id"] == job
        end = datetime.fromisoformat(status["end_time"])
        assert end - datetime.fromtimestamp(submitted).astimezone() <= timedelta(seconds=125)
        assert 0 < status["seconds_left"] <= 120
        wait_until(lambda: server.session()["save_signal"], 100, "Slurm's SIGUSR1 to reach the server", interval=2)
        assert "save signal arrived" in (tmp_path / "job.log").read_text()
    finally:
        slurm("scancel", job)


def settings_of(server: NotebookServer, plugin: str = LANGUAGE_PLUGIN) -> dict:
    response = server.get(f"lab/api/settings/{plugin}")
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(("lang", "locale"), [("nl", "nl_NL"), ("en", "en")])
def test_language_becomes_jupyterlabs_default(tmp_path: Path, lang: str, locale: str) -> None:
    env = {"AIFL_LANG": lang, **language_environment({"AIFL_LANG": lang})}
    with notebook_server(tmp_path, env) as server:
        settings = settings_of(server)
        assert settings["schema"]["properties"]["locale"]["default"] == locale
        assert "locale" not in settings["settings"]  # a default, not the user's own choice


def test_users_own_language_choice_wins(tmp_path: Path) -> None:
    user_settings = tmp_path / "home" / ".jupyter" / "lab" / "user-settings" / "@jupyterlab" / "translation-extension"
    user_settings.mkdir(parents=True)
    (user_settings / "plugin.jupyterlab-settings").write_text('{"locale": "en"}')
    with notebook_server(tmp_path, {"AIFL_LANG": "nl", **language_environment({"AIFL_LANG": "nl"})}) as server:
        settings = settings_of(server)
        assert settings["schema"]["properties"]["locale"]["default"] == "nl_NL"
        assert settings["settings"]["locale"] == "en"  # what JupyterLab uses: the user's choice


def test_dutch_translations_reach_jupyterlab(tmp_path: Path) -> None:
    """The language pack and the extension's own Dutch texts come from the server's translations API."""
    with notebook_server(tmp_path, {"AIFL_LANG": "nl", **language_environment({"AIFL_LANG": "nl"})}) as server:
        data = server.get("lab/api/translations/nl_NL").json()["data"]
        assert data["jupyterlab"]["menu\x04File"] == ["Bestand"]  # the menu bar's File
        ours = data["aifl_notebook"]
        assert ours["Your session ends in %1 minute — save your work."][1].startswith("Je sessie eindigt over %1")


def test_labextension_is_installed_and_enabled() -> None:
    needs_environment()
    listing = subprocess.run([str(JUPYTER), "labextension", "list"], capture_output=True, text=True, timeout=120,
                             env={"PATH": f"{ENV / 'bin'}:/usr/bin:/bin", "HOME": "/nonexistent"}, check=True)
    output = re.sub(r"\x1b\[[0-9;]*m", "", listing.stdout + listing.stderr)
    assert re.search(r"aifl-notebook v0\.1\.0 enabled OK", output), output
    servers = subprocess.run([str(JUPYTER), "server", "extension", "list"], capture_output=True, text=True,
                             timeout=120, env={"PATH": f"{ENV / 'bin'}:/usr/bin:/bin", "HOME": "/nonexistent"})
    assert re.search(r"aifl_notebook\s+OK", re.sub(r"\x1b\[[0-9;]*m", "", servers.stdout + servers.stderr))
