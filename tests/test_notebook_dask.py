"""Dask on the cluster: :mod:`aifl_notebook.dask` (sizes, the session's account, settings, progress,
clean-up) and its widget; then real SLURMClusters inside real sessions on the local cluster, driven
through the session's own kernel (Jupyter Server's API), with no worker job left behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import yaml
from aifl_hub.site import load_site
from aifl_notebook import dask as api
from aifl_notebook.dask import (
    DaskChoiceError,
    DaskSetupError,
    Scaling,
    SessionJob,
    choose_scaling,
    cluster_options,
    cluster_progress,
    pending_jobs,
    progress_message,
    session_job,
    slurm_refusal,
    walltime,
    worker_environment,
)
from aifl_notebook.i18n import translations
from babel.messages.extract import extract
from babel.messages.pofile import read_po
from conftest import BASE, REPO, slurm
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

DASK_ETC = REPO / "images" / "default" / "etc" / "dask"
NOTEBOOK = REPO / "extensions" / "notebook" / "aifl_notebook"
DASK_PO = NOTEBOOK / "locale" / "nl" / "LC_MESSAGES" / "dask.po"


def shipped_config() -> dict:
    """The dask configuration the notebook environment ships (all files of etc/dask, merged by top key)."""
    config: dict = {}
    for path in sorted(DASK_ETC.glob("*.yaml")):
        for key, value in yaml.safe_load(path.read_text()).items():
            config.setdefault(key, {}).update(value)
    return config


SETTINGS = shipped_config()["aifl"]["dask"]


def fake_command(tmp_path: Path, name: str, output: str = "", status: int = 0) -> tuple[str, Path]:
    """A stand-in for a Slurm command that records its argv (one JSON list per line) and prints ``output``."""
    log = tmp_path / f"{name}.calls"
    script = tmp_path / name
    script.write_text(f"#!{sys.executable}\nimport json, sys\n"
                      f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                      f"sys.stdout.write({output!r})\nsys.exit({status})\n")
    script.chmod(0o755)
    return str(script), log


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


# ---- the shipped settings ---------------------------------------------------------------------------
def test_shipped_settings_fit_the_site_and_use_the_proxy_for_the_dashboard() -> None:
    config = shipped_config()
    slurm_cfg = config["jobqueue"]["slurm"]
    site = load_site(REPO / "hub_config" / "site.yaml")
    assert slurm_cfg["queue"] == site["cluster"]["partitions"]["cpu"]  # workers go to the CPU partition
    assert (slurm_cfg["cores"], slurm_cfg["processes"]) == (1, 1)
    assert 0 < slurm_cfg["death-timeout"] <= 120  # a worker without its scheduler stops by itself
    assert "--no-dashboard" in slurm_cfg["worker-extra-args"]
    assert slurm_cfg["scheduler-options"]["dashboard_address"].startswith("127.0.0.1:")  # this node only
    assert config["distributed"]["dashboard"]["link"] == "{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status"
    assert set(SETTINGS["sizes"]) == {"small", "medium", "large"} and SETTINGS["sizes"]["small"] == 2
    assert SETTINGS["default-size"] in SETTINGS["sizes"]
    assert max(SETTINGS["sizes"].values()) <= SETTINGS["max-workers"]
    # The largest cluster fits on the CPU nodes next to a session.
    cpu = site["cluster"]["cpu_nodes"]
    assert SETTINGS["max-workers"] * slurm_cfg["cores"] <= cpu["count"] * cpu["cpus"]
    assert SETTINGS["max-workers"] * int(slurm_cfg["memory"].removesuffix("GiB")) <= cpu["count"] * cpu["memory_gb"]
    walltime(slurm_cfg["walltime"], None, 0)  # H:MM:SS


# ---- choosing a size --------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "expected"), [
    ({}, Scaling(2, 2)),
    ({"size": "small"}, Scaling(2, 2)),
    ({"size": "medium"}, Scaling(4, 4)),
    ({"size": "large"}, Scaling(8, 8)),
    ({"minimum": 0, "maximum": 8}, Scaling(0, 8)),
    ({"maximum": 3}, Scaling(0, 3)),
    ({"minimum": 3}, Scaling(3, 3)),
    ({"minimum": 12, "maximum": 12}, Scaling(12, 12)),
])
def test_sizes_and_adaptive_ranges(args: dict, expected: Scaling) -> None:
    scaling = choose_scaling(**args, settings=SETTINGS)
    assert scaling == expected
    assert scaling.adaptive is (expected.minimum != expected.maximum)


@pytest.mark.parametrize(("args", "english", "dutch"), [
    ({"size": "huge"}, "There is no size “huge”. Choose one of: small: 2 workers, medium: 4 workers, "
     "large: 8 workers.", "Er is geen grootte “huge”. Kies uit: klein: 2 workers, middel: 4 workers, "
     "groot: 8 workers."),
    ({"size": "small", "maximum": 4}, "Choose a size or a minimum and maximum, not both.",
     "Kies een grootte of een minimum en maximum, niet allebei."),
    ({"minimum": 0, "maximum": 13}, "At most 12 workers are possible; you asked for 13.",
     "Er zijn hoogstens 12 workers mogelijk; je vroeg er 13."),
    ({"minimum": 5, "maximum": 2}, "The minimum (5) is larger than the maximum (2).",
     "Het minimum (5) is groter dan het maximum (2)."),
    ({"minimum": -1, "maximum": 2}, "The minimum cannot be below 0.", "Het minimum kan niet lager zijn dan 0."),
    ({"minimum": 0, "maximum": 0}, "At least one worker is needed: set the maximum to 1 or more.",
     "Er is minstens één worker nodig: zet het maximum op 1 of meer."),
    ({"maximum": 2.5}, "The number of workers must be a whole number, not “2.5”.",
     "Het aantal workers moet een geheel getal zijn, niet “2.5”."),
    ({"minimum": True}, "The number of workers must be a whole number, not “True”.",
     "Het aantal workers moet een geheel getal zijn, niet “True”."),
    ({"maximum": "4"}, "The number of workers must be a whole number, not “4”.",
     "Het aantal workers moet een geheel getal zijn, niet “4”."),
])
def test_wrong_choices_get_a_clear_message_in_both_languages(args: dict, english: str, dutch: str) -> None:
    for lang, text in (("en", english), ("nl", dutch)):
        with pytest.raises(DaskChoiceError) as caught:
            choose_scaling(**args, settings=SETTINGS, lang=lang)
        assert str(caught.value) == text


def test_a_wrong_choice_submits_nothing(monkeypatch, tmp_path: Path) -> None:
    _sbatch, log = fake_command(tmp_path, "sbatch", "1\n")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(api, "site_settings", lambda: SETTINGS)
    monkeypatch.setattr(api, "session_job", lambda: pytest.fail("nothing may be looked up or submitted"))
    with pytest.raises(DaskChoiceError):
        api.start_cluster(minimum=0, maximum=100)
    assert calls(log) == []


# ---- the session job: account, QOS, time limit, environment -------------------------------------------
def test_account_and_qos_come_from_slurm_for_the_session_job(tmp_path: Path) -> None:
    squeue, log = fake_command(tmp_path, "squeue", "tu-eindhoven|interactive\n")
    env = {"SLURM_JOB_ID": "42", "SLURM_JOB_ACCOUNT": "tu-eindhoven",
           "SLURM_JOB_QOS": "interactive sessions of other organisations"}  # 22.05: the QOS's description
    job = session_job(env, squeue=squeue, end_time=lambda job_id: 1234.0)
    assert job == SessionJob("42", "tu-eindhoven", "interactive", 1234.0)
    assert calls(log) == [["-h", "-j", "42", "-o", "%a|%q"]]  # an argv list, never a shell


def test_account_and_qos_from_the_environment_when_squeue_cannot_answer(tmp_path: Path) -> None:
    broken, _log = fake_command(tmp_path, "squeue", "", status=1)
    env = {"SLURM_JOB_ID": "41", "SLURM_JOB_ACCOUNT": "umcg", "SLURM_JOB_QOS": "regional"}
    assert session_job(env, squeue=broken, end_time=lambda job_id: None) == SessionJob("41", "umcg", "regional", None)
    with pytest.raises(DaskSetupError, match="Slurm does not answer"):
        session_job({"SLURM_JOB_ID": "41"}, squeue=broken, end_time=lambda job_id: None)


@pytest.mark.parametrize("env", [{}, {"SLURM_JOB_ID": "12; rm -rf ~"}])
def test_outside_a_session_job_nothing_starts(env: dict) -> None:
    with pytest.raises(DaskSetupError, match="only from a session on the cluster"):
        session_job(env, end_time=lambda job_id: None)


def test_a_strange_account_or_qos_is_refused(tmp_path: Path) -> None:
    squeue, _log = fake_command(tmp_path, "squeue", "lab\n--wrap=x|normal\n")
    with pytest.raises(DaskSetupError, match="account or QOS is unknown"):
        session_job({"SLURM_JOB_ID": "42"}, squeue=squeue, end_time=lambda job_id: None)
    broken, _log = fake_command(tmp_path, "squeue-broken", "", status=1)
    with pytest.raises(DaskSetupError, match="account or QOS is unknown"):
        session_job({"SLURM_JOB_ID": "42", "SLURM_JOB_ACCOUNT": "lab", "SLURM_JOB_QOS": "Interactive sessions"},
                    squeue=broken, end_time=lambda job_id: None)


def test_worker_jobs_do_not_inherit_the_session_jobs_slurm_gpu_or_token_variables() -> None:
    session_env = {"SLURM_JOB_ID": "7", "SLURM_JOB_PARTITION": "gpu", "SLURM_MEM_PER_NODE": "122880",
                   "SBATCH_PARTITION": "gpu", "SLURM_JOB_GPUS": "0", "CUDA_VISIBLE_DEVICES": "0",
                   "GPU_DEVICE_ORDINAL": "0", "JUPYTERHUB_API_TOKEN": "secret", "JPY_API_TOKEN": "secret",
                   "SLURM_CONF": "/etc/slurm/slurm.conf", "PATH": "/opt/aifl/envs/default/bin:/usr/bin",
                   "HOME": "/home/ann", "AIFL_LANG": "nl"}
    assert worker_environment(session_env) == {"SLURM_CONF": "/etc/slurm/slurm.conf", "HOME": "/home/ann",
                                               "PATH": "/opt/aifl/envs/default/bin:/usr/bin", "AIFL_LANG": "nl"}


@pytest.mark.parametrize(("default", "left", "expected"), [
    ("08:00:00", None, "8:00:00"),             # no known end: the site's limit
    ("08:00:00", 2 * 3600, "1:59:00"),         # ends a minute before the session
    ("00:30:00", 2 * 3600, "0:30:00"),         # the site's limit is shorter
    ("08:00:00", 30, "0:01:00"),               # at least a minute
])
def test_worker_time_limit_never_passes_the_session_end(default: str, left: int | None, expected: str) -> None:
    now = 1_800_000_000.0
    assert walltime(default, None if left is None else now + left, now) == expected


def test_a_broken_walltime_setting_is_named() -> None:
    with pytest.raises(DaskSetupError, match=r"jobqueue\.slurm\.walltime"):
        walltime("8h", None, 0)


def test_cluster_options_charge_the_session_account_and_qos() -> None:
    now = 1_800_000_000.0
    job = SessionJob("42", "umcg", "regional", now + 3600)
    options = cluster_options(job, "08:00:00", home=Path("/home/ann"), prefix="/opt/aifl/envs/default", now=now)
    assert options == {
        "account": "umcg",
        "job_extra_directives": ["--qos=regional"],
        "walltime": "0:59:00",
        "python": "/opt/aifl/envs/default/bin/python",
        "log_directory": "/home/ann/.aifl/logs/dask",
        "security": True,
        "shared_temp_directory": "/home/ann/.aifl/dask",
    }


# ---- progress --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("started", "wanted", "waiting", "english", "dutch"), [
    (2, 4, 2, "2 of 4 workers started; the rest wait for a free node.",
     "2 van 4 workers gestart; de rest wacht op een vrije node."),
    (1, 4, 0, "1 of 4 workers started; the rest are starting.", "1 van 4 workers gestart; de rest start nu."),
    (0, 1, 1, "0 of 1 worker started; the rest wait for a free node.",
     "0 van 1 worker gestart; de rest wacht op een vrije node."),
    (4, 4, 0, "All 4 workers started.", "Alle 4 workers gestart."),
    (1, 1, 0, "1 worker started.", "1 worker gestart."),
    (0, 0, 0, "No workers now: they start when there is work.", "Nu geen workers: ze starten zodra er werk is."),
])
def test_progress_in_plain_words(started: int, wanted: int, waiting: int, english: str, dutch: str) -> None:
    assert progress_message(started, wanted, waiting, "en") == english
    assert progress_message(started, wanted, waiting, "nl") == dutch


def test_pending_jobs_asks_squeue_for_exactly_these_jobs(tmp_path: Path, monkeypatch) -> None:
    squeue, log = fake_command(tmp_path, "squeue", "PENDING\nRUNNING\nPENDING\n")
    assert pending_jobs(["11", "12", "13"], squeue=squeue) == 2
    assert calls(log) == [["-h", "-j", "11,12,13", "-o", "%T"]]
    assert pending_jobs([], squeue=squeue) == 0
    assert len(calls(log)) == 1


def test_cluster_progress_counts_connected_workers_and_queued_jobs(monkeypatch) -> None:
    asked: list[list[str]] = []
    monkeypatch.setattr(api, "pending_jobs", lambda ids: asked.append(ids) or 2)
    cluster = SimpleNamespace(worker_spec=dict.fromkeys("abcd"),
                              workers={"a": SimpleNamespace(job_id="11"), "b": SimpleNamespace(job_id="12"),
                                       "c": SimpleNamespace(job_id="13"), "d": SimpleNamespace(job_id="14")},
                              scheduler_info={"workers": {"tls://x:1": {}, "tls://x:2": {}}})
    progress = cluster_progress(cluster, "en")
    assert (progress.started, progress.wanted, progress.waiting) == (2, 4, 2)
    assert progress.message == "2 of 4 workers started; the rest wait for a free node."
    assert asked == [["11", "12", "13", "14"]]
    cluster.scheduler_info["workers"].update({"tls://x:3": {}, "tls://x:4": {}})
    assert cluster_progress(cluster, "nl").message == "Alle 4 workers gestart."
    assert len(asked) == 1  # squeue is not asked once every worker is there


SBATCH_REFUSED = """Command exited with non-zero exit code.
Exit code: 1
Command:
sbatch /tmp/tmpx.sh
stdout:

stderr:
sbatch: error: Batch job submission failed: Invalid qos specification

"""


def test_slurms_reason_for_a_refused_worker_job_is_kept() -> None:
    assert slurm_refusal(SBATCH_REFUSED) == "Invalid qos specification"
    assert slurm_refusal("sbatch: error: QOSMaxSubmitJobPerUserLimit\n"
                         "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy") == \
        "Job violates accounting/QOS policy"
    assert slurm_refusal("Command exited with non-zero exit code.") == "sbatch failed"


def test_refused_worker_jobs_are_named_in_the_progress(monkeypatch) -> None:
    monkeypatch.setattr(api, "pending_jobs", lambda ids: 0)
    cluster = SimpleNamespace(worker_spec=dict.fromkeys("ab"),
                              workers={"a": SimpleNamespace(job_id="11"),
                                       "b": SimpleNamespace(job_id=None, refusal="Invalid qos specification")},
                              scheduler_info={"workers": {"tls://x:1": {}}})
    progress = cluster_progress(cluster, "en")
    assert progress.refused == 1
    assert progress.message == ("1 of 2 workers started; the rest are starting. "
                                "Slurm refused 1 worker job: Invalid qos specification")
    assert cluster_progress(cluster, "nl").message.endswith("Slurm weigerde 1 worker-job: Invalid qos specification")


# ---- clean-up inside the kernel process ----------------------------------------------------------------
CLEANUP = """
import os, signal, sys, time
from aifl_notebook.dask import JOBS
JOBS.install()
JOBS.add("501"); JOBS.add("502"); JOBS.discard("502")
print("ready", flush=True)
{ending}
"""


@pytest.mark.parametrize(("ending", "returncode"), [
    ("sys.exit(0)", 0),                                          # the kernel shuts down normally
    ("os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)", -signal.SIGTERM),  # the session job ends
    ("os.kill(os.getpid(), signal.SIGHUP); time.sleep(30)", -signal.SIGHUP),
])
def test_jobs_are_cancelled_at_exit_and_on_termination(tmp_path: Path, ending: str, returncode: int) -> None:
    _scancel, log = fake_command(tmp_path, "scancel")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_ID": "7"}
    # The child starts with SIGHUP's default action even when the tests run under nohup (which ignores it).
    done = subprocess.run([sys.executable, "-c", CLEANUP.format(ending=ending)], env=env, capture_output=True,
                          text=True, timeout=60, check=False,
                          preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    assert done.stdout.startswith("ready"), done.stderr
    assert done.returncode == returncode  # the signal still ends the process, as before
    assert calls(log) == [["501"]]  # exactly once, only the job not cancelled yet


def test_the_cancel_does_not_pass_the_session_jobs_variables(tmp_path: Path) -> None:
    (tmp_path / "scancel").write_text(f"#!/bin/sh\nenv > {tmp_path / 'env'}\n")
    (tmp_path / "scancel").chmod(0o755)
    code = "from aifl_notebook.dask import JOBS\nJOBS.add('9')\nJOBS.cancel_all()\n"
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_ID": "7", "SLURM_JOB_QOS": "x"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    seen = (tmp_path / "env").read_text()
    assert "SLURM_JOB_ID" not in seen and "SLURM_JOB_QOS" not in seen


# ---- catalog ---------------------------------------------------------------------------------------
def _fields(text: str) -> list[str]:
    return sorted(re.findall(r"\{[^}]*\}", text))


def test_every_dask_message_has_a_dutch_translation_with_the_same_fields() -> None:
    used: set[str | tuple[str, str]] = set()
    for source in (NOTEBOOK / "dask.py", NOTEBOOK / "widgets" / "dask.py", NOTEBOOK / "dask_dashboard.py"):
        with source.open("rb") as fh:
            for _line, message, _comments, _context in extract(
                    "python", fh, keywords={"_": None, "N_": None, "gettext": None, "ngettext": (1, 2)}):
                used.add(message if isinstance(message, str) else tuple(message))
    catalog = {}
    for po in (DASK_PO, DASK_PO.with_name("dask_dashboard.po")):
        with po.open("rb") as fh:
            catalog.update({m.id: m.string for m in read_po(fh) if m.id})
    assert len(used) >= 25
    assert sorted(map(str, used - set(catalog))) == []  # every message is translated
    assert sorted(map(str, set(catalog) - used)) == []  # every entry is still used
    nl = translations("nl")
    for message in used:
        if isinstance(message, tuple):
            for count, source in ((1, message[0]), (2, message[1])):
                assert _fields(nl.ngettext(*message, count)) == _fields(source), message
        else:
            assert _fields(nl.gettext(message)) == _fields(message), message


# ---- with dask-jobqueue installed (the notebook environment; the test venv when it has dask) ----------
def test_the_worker_job_script_and_its_clean_environment(monkeypatch, tmp_path: Path) -> None:
    pytest.importorskip("dask_jobqueue")
    cls = api.cluster_class()
    job = SessionJob("42", "umcg", "regional", None)
    options = cluster_options(job, "08:00:00", home=tmp_path)
    for folder in (options["log_directory"], options["shared_temp_directory"]):
        Path(folder).mkdir(parents=True)
    cluster = cls(**options, cores=1, memory="4GiB", queue="cpu", death_timeout=60)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -p cpu", "#SBATCH -A umcg", "#SBATCH --qos=regional", "#SBATCH -t 8:00:00",
                 "#SBATCH --cpus-per-task=1", "#SBATCH --mem=4G"):
        assert line in script.splitlines(), script
    assert f"{sys.prefix}/bin/python -m distributed.cli.dask_worker tls://" in script
    assert "--death-timeout 60" in script and "--tls-key" in script
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "secret")
    out = asyncio.run(cls.job_cls._call(["env"]))
    assert "SLURM_JOB_ID=" not in out and "secret" not in out


def test_a_cluster_speaks_tls_only_and_keeps_its_keys_script_and_dashboard_private(tmp_path: Path) -> None:
    pytest.importorskip("dask_jobqueue")
    import socket

    options = cluster_options(SessionJob("42", "umcg", "regional", None), "08:00:00", home=tmp_path)
    for folder in (options["log_directory"], options["shared_temp_directory"]):
        Path(folder).mkdir(mode=0o700, parents=True)
    private = api.private_folder(tmp_path)
    cluster = api.cluster_class()(**options, cores=1, memory="4GiB", queue="cpu", death_timeout=60)
    try:
        assert cluster.scheduler_address.startswith("tls://")
        assert cluster.security.require_encryption
        keys = [path for path in private.iterdir() if path.name.startswith(".dask-jobqueue.worker.")]
        assert len(keys) == 3 and all(path.stat().st_mode & 0o777 == 0o600 for path in keys)
        # The dashboard: a unix socket of mode 600 in the private folder, and no TCP port.
        sock = api.dashboard_socket(cluster.dashboard_id, private)
        assert sock.is_socket() and sock.stat().st_mode & 0o777 == 0o600
        families = {s.family for s in cluster.scheduler.http_server._sockets.values()}
        assert families == {socket.AF_UNIX}
        assert cluster.dashboard_link == api.dashboard_link(cluster.dashboard_id)
        # The job script: a new file of mode 600 in the job's log folder, gone after submission.
        job = cluster._dummy_job
        with job.job_file() as name:
            script = Path(name)
            assert script.parent == Path(options["log_directory"]) and script.stat().st_mode & 0o777 == 0o600
            assert script.read_text() == job.job_script()
        assert not script.exists()
    finally:
        cluster.close()
    assert not sock.exists()


def test_dashboard_addresses_and_sockets() -> None:
    env = {"JUPYTERHUB_SERVICE_PREFIX": "/user/ann/"}
    assert api.dashboard_link("0123456789abcdef", env) == "/user/ann/aifl/dask/0123456789abcdef/status"
    folder = Path("/h/.aifl/dask")
    assert api.dashboard_socket("0123456789abcdef", folder) == folder / "0123456789abcdef.sock"
    for wrong in ("../../x", "0123456789ABCDEF", "0123456789abcde", "0123456789abcdef/..", ""):
        with pytest.raises(ValueError, match="not a cluster id"):
            api.dashboard_socket(wrong, Path("/h"))


# ---- the widget --------------------------------------------------------------------------------------
class FakeCluster:
    """What the widget uses of a cluster."""

    dashboard_link = "/user/ann/proxy/41234/status"

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def fake_start(started: list[dict]):
    def start(lang: str, **choice):
        choose_scaling(**choice, settings=SETTINGS, lang=lang)
        started.append(choice)
        return FakeCluster()
    return start


@pytest.mark.timed_thread_waits
def test_widget_starts_follows_and_closes_a_cluster() -> None:
    pytest.importorskip("ipywidgets")
    from aifl_notebook.widgets.dask import ADAPTIVE, DaskPanel

    started: list[dict] = []
    progress = [api.Progress(0, 4, 4, progress_message(0, 4, 4, "en"))]
    panel = DaskPanel("en", start=fake_start(started), progress=lambda cluster, lang: progress[-1],
                      settings=SETTINGS, refresh=0.05)
    assert panel.state == "idle"
    assert [label for label, _value in panel.size.options] == [
        "small: 2 workers", "medium: 4 workers", "large: 8 workers", "adaptive: between a minimum and a maximum"]
    assert panel.size.value == "small" and panel.limits.layout.display == "none"
    panel.size.value = ADAPTIVE
    assert panel.limits.layout.display == "flex"
    panel.size.value = "medium"

    panel.start_button.click()
    assert started == [{"size": "medium"}]
    assert panel.state == "starting"
    assert "0 of 4 workers started; the rest wait for a free node." in panel.status.value
    assert '<a href="/user/ann/proxy/41234/status" target="_blank">Dashboard</a>' == panel.dashboard.value
    assert (panel.start_button.disabled, panel.close_button.disabled) == (True, False)
    progress.append(api.Progress(2, 4, 2, progress_message(2, 4, 2, "en")))
    deadline = time.monotonic() + 5
    while "2 of 4" not in panel.status.value:  # updated by the panel's own thread
        assert time.monotonic() < deadline, panel.status.value
        time.sleep(0.02)
    progress.append(api.Progress(4, 4, 0, progress_message(4, 4, 0, "en")))
    while panel.state != "running":
        assert time.monotonic() < deadline, panel.status.value
        time.sleep(0.02)
    assert "All 4 workers started." in panel.status.value

    cluster = panel.cluster
    panel.close_button.click()
    assert cluster.closed and panel.cluster is None and panel.state == "closed"
    assert "The cluster is closed; its workers are stopped." in panel.status.value
    assert panel.dashboard.value == ""
    assert (panel.start_button.disabled, panel.close_button.disabled) == (False, True)


def test_widget_shows_a_wrong_choice_in_dutch_and_submits_nothing() -> None:
    pytest.importorskip("ipywidgets")
    from aifl_notebook.widgets.dask import ADAPTIVE, DaskPanel

    started: list[dict] = []
    panel = DaskPanel("nl", start=fake_start(started), progress=lambda cluster, lang: None, settings=SETTINGS)
    assert panel.size.options[0][0] == "klein: 2 workers"
    assert panel.start_button.description == "Workers starten"
    panel.size.value = ADAPTIVE
    panel.minimum.value, panel.maximum.value = 2, 40
    panel.start_button.click()
    assert started == [] and panel.cluster is None and panel.state == "idle"
    assert "Er zijn hoogstens 12 workers mogelijk; je vroeg er 40." in panel.status.value
    assert "error-color" in panel.status.value
    panel.maximum.value = 6
    panel.start_button.click()
    assert started == [{"minimum": 2, "maximum": 6}]
    panel.close()


def test_widget_outside_a_session_says_so() -> None:
    pytest.importorskip("ipywidgets")
    from aifl_notebook.widgets.dask import DaskPanel

    def start(lang: str, **choice):
        raise DaskSetupError(translations(lang).gettext(
            "Dask workers start only from a session on the cluster (no Slurm job found)."))

    panel = DaskPanel("en", start=start, settings=SETTINGS)
    panel.start_button.click()
    assert "only from a session on the cluster" in panel.status.value and panel.state == "idle"


# ---- inside real sessions on the local cluster ---------------------------------------------------------
class Kernel:
    """A kernel of a running session, driven through Jupyter Server's REST and websocket API."""

    def __init__(self, url: str, token: str, name: str = "python3") -> None:
        self.url, self.headers = url, {"Authorization": f"token {token}"}
        r = requests.post(f"{url}api/kernels", headers=self.headers, json={"name": name}, timeout=60)
        assert r.status_code == 201, r.text
        self.id = r.json()["id"]

    def run(self, code: str, timeout: float = 240) -> dict:
        """Run ``code``; return the ``KEY json`` lines it printed as {KEY: value}; its error fails the test."""
        messages = asyncio.run(self._execute(textwrap.dedent(code), timeout))
        errors = [m["content"] for m in messages if m["msg_type"] == "error"]
        assert not errors, "\n".join(errors[0]["traceback"])
        text = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")
        return {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1])
                for line in text.splitlines() if re.match(r"^[A-Z_]+ ", line)}

    async def _execute(self, code: str, timeout: float) -> list[dict]:
        ws_url = self.url.replace("http://", "ws://") + f"api/kernels/{self.id}/channels"
        ws = await websocket_connect(HTTPRequest(ws_url, headers=self.headers, connect_timeout=30))
        msg_id = uuid.uuid4().hex
        ws.write_message(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                       "msg_type": "execute_request", "version": "5.3", "date": datetime.now(UTC).isoformat()},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        messages: list[dict] = []
        try:
            while True:
                raw = await asyncio.wait_for(ws.read_message(), timeout=timeout)
                assert raw is not None, "the kernel's websocket closed"
                msg = json.loads(raw)
                if msg.get("channel") == "iopub" and msg["parent_header"].get("msg_id") == msg_id:
                    messages.append(msg)
                    if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                        return messages
        finally:
            ws.close()


START = """
import json, os
from aifl_notebook.dask import start_cluster, cluster_progress
cluster = start_cluster("small")
print("FIRST", json.dumps(cluster_progress(cluster).message))
client = cluster.get_client()
client.wait_for_workers(2, timeout=180)
print("STARTED", json.dumps({
    "kernel_pid": os.getpid(),
    "session_job": os.environ["SLURM_JOB_ID"],
    "dashboard": cluster.dashboard_link,
    "progress": cluster_progress(cluster).message,
    "jobs": sorted(str(job.job_id) for job in cluster.workers.values()),
    "sum": client.submit(sum, range(1000)).result(),
    "squares": sum(client.gather(client.map(lambda x: x * x, range(100)))),
    "worker_env": list(client.run(lambda: {k: os.environ.get(k) for k in
        ("SLURM_JOB_ID", "SLURM_JOB_PARTITION", "JUPYTERHUB_API_TOKEN", "CUDA_VISIBLE_DEVICES")}).values()),
}))
"""


REFUSED = """
import time
bad = start_cluster("small", account="no-such-account")
deadline = time.monotonic() + 60
while not cluster_progress(bad).refused and time.monotonic() < deadline:
    time.sleep(0.5)
time.sleep(1)
progress = cluster_progress(bad, "en")
print("REFUSED", json.dumps({"refused": progress.refused, "message": progress.message,
                             "jobs": [str(j.job_id) for j in bad.workers.values() if j.job_id]}))
bad.close()
"""


def worker_jobs(name: str) -> list[str]:
    """The user's Dask worker jobs that Slurm still knows (pending, running or ending)."""
    return slurm("squeue", "-h", "-u", name, "-n", "dask-worker", "-o", "%i").split()


def wait_no_workers(name: str, timeout: float) -> float:
    """Wait until the user has no worker job left; return how long that took."""
    started = time.monotonic()
    while jobs := worker_jobs(name):
        assert time.monotonic() - started < timeout, f"worker jobs left behind: {jobs}"
        time.sleep(0.5)
    return time.monotonic() - started


def start_session(hub, users, lang: str = "en") -> tuple[str, str, str]:
    """A fresh user's running cpu-small session: (user name, their token, the session's URL)."""
    name, token = users("dsk")
    r = hub.api("POST", f"/users/{name}/server", token=token, json={"user_options": {"profile": "cpu-small"}},
                headers={"Accept-Language": lang})
    assert r.status_code in (201, 202), r.text
    return name, token, BASE + hub.wait_ready(name)["url"]


def final_states(jobs: list[str]) -> list[str]:
    """How the jobs ended, from Slurm's accounting (waits until it has recorded their end)."""
    deadline = time.monotonic() + 30
    while True:
        states = slurm("sacct", "-n", "-X", "-P", "-j", ",".join(jobs), "-o", "State").splitlines()
        if (len(states) == len(jobs) and not {"PENDING", "RUNNING"} & set(states)) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def check_started(out: dict, name: str, token: str, progress: str = "All 2 workers started.") -> list[str]:
    """A started cluster computed the right answers with 2 worker jobs of the user; return their ids."""
    started = out["STARTED"]
    session = started["session_job"]
    assert (started["sum"], started["squares"]) == (499500, 328350)
    assert started["progress"] == progress
    jobs = started["jobs"]
    assert len(jobs) == 2 and sorted(worker_jobs(name)) == jobs
    account_qos = slurm("squeue", "-h", "-j", session, "-o", "%a|%q").strip()
    for job in jobs:
        user, partition, charged = slurm("squeue", "-h", "-j", job, "-o", "%u|%P|%a|%q").strip().split("|", 2)
        assert (user, partition, charged) == (name, "cpu", account_qos)  # the user's own account and QOS
    for env in started["worker_env"]:  # each worker is its own job, without the session's token or GPU
        assert env["SLURM_JOB_ID"] in jobs and env["SLURM_JOB_PARTITION"] == "cpu"
        assert env["JUPYTERHUB_API_TOKEN"] is None and env["CUDA_VISIBLE_DEVICES"] is None
    # The dashboard answers through the session's server (its unix socket), behind the hub's login.
    assert re.fullmatch(rf"/user/{name}/aifl/dask/[0-9a-f]{{16}}/status", started["dashboard"]), started["dashboard"]
    headers = {"Authorization": f"token {token}"}
    page = requests.get(BASE + started["dashboard"], headers=headers, timeout=60)
    assert page.status_code == 200 and "<title>Dask Diagnostic UI</title>" in page.text, page.text[:300]
    script = re.search(r'src="(static/js/bokeh\.min\.js[^"]*)"', page.text)
    assert script, "the dashboard's own scripts are missing"  # relative: they load through the proxy too
    base = BASE + started["dashboard"].removesuffix("status")
    assert requests.get(base + script[1], headers=headers, timeout=60).status_code == 200
    assert requests.get(BASE + started["dashboard"], timeout=60, allow_redirects=False).status_code in (302, 403)
    return jobs


@pytest.mark.cluster
def test_a_cluster_computes_and_leaves_nothing_when_closed_or_when_its_kernel_is_killed(hub, users) -> None:
    name, token, url = start_session(hub, users)
    kernel = Kernel(url, token)
    out = kernel.run(START)
    assert re.fullmatch(r"0 of 2 workers started; the rest (wait for a free node|are starting)\.", out["FIRST"])
    jobs = check_started(out, name, token)
    kernel.run('cluster.close(); print("CLOSED", json.dumps(True))')
    assert wait_no_workers(name, timeout=15) < 15
    assert all(state.startswith("CANCELLED") for state in final_states(jobs))  # cancelled by close()

    # Worker jobs that Slurm refuses are named in the progress with Slurm's reason, not "starting" forever.
    refused = kernel.run(REFUSED)["REFUSED"]
    assert refused["refused"] == 2 and refused["jobs"] == []
    assert refused["message"].startswith("0 of 2 workers started;")
    assert "Slurm refused 2 worker jobs: Invalid account" in refused["message"]

    # A killed kernel cannot clean up: the workers notice their scheduler is gone and end their jobs.
    kernel = Kernel(url, token)
    out = kernel.run(START)
    jobs = check_started(out, name, token)
    os.kill(out["STARTED"]["kernel_pid"], signal.SIGKILL)
    assert wait_no_workers(name, timeout=90) < 90
    assert not any(state.startswith("CANCELLED") for state in final_states(jobs))  # they ended themselves


PANEL = """
import time
from aifl_notebook.widgets.dask import DaskPanel
panel = DaskPanel(refresh=0.5)
panel.start_button.click()
first = panel.status.value
deadline = time.monotonic() + 180
while panel.state != "running" and time.monotonic() < deadline:
    time.sleep(0.2)  # the kernel is busy: only the panel's own thread updates it
print("PANEL", json.dumps({"first": first, "state": panel.state, "status": panel.status.value,
                           "dashboard": panel.dashboard.value,
                           "jobs": sorted(str(job.job_id) for job in panel.cluster.workers.values())}))
"""


@pytest.mark.cluster
def test_the_widget_and_the_end_of_the_session_cancels_its_workers(hub, users) -> None:
    name, token, url = start_session(hub, users, lang="nl")
    kernel = Kernel(url, token)
    out = kernel.run(START)
    jobs = check_started(out, name, token, progress="Alle 2 workers gestart.")  # the session's language
    # The widget in the same kernel: a second cluster, its progress updated live, in Dutch.
    panel = kernel.run(PANEL)["PANEL"]
    assert re.search(r"0 van 2 workers gestart; de rest (wacht op een vrije node|start nu)\.", panel["first"])
    assert panel["state"] == "running" and "Alle 2 workers gestart." in panel["status"]
    assert re.search(rf'<a href="/user/{name}/aifl/dask/[0-9a-f]{{16}}/status" target="_blank">Dashboard</a>',
                     panel["dashboard"])
    jobs += panel["jobs"]
    assert sorted(worker_jobs(name)) == sorted(jobs) and len(jobs) == 4
    # Stopping the session ends its job: Slurm terminates the kernel, which cancels its workers.
    assert hub.api("DELETE", f"/users/{name}/server", token=token).status_code in (202, 204)
    hub.wait_gone(name)
    assert wait_no_workers(name, timeout=30) < 30
    # Cancelled by the ending kernel, or ended by themselves once their scheduler was gone (whichever
    # came first): either way no worker outlives the session.
    states = final_states(jobs)
    assert all(state.startswith(("CANCELLED", "COMPLETED")) for state in states), states
