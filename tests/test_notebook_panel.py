"""The session panel: :mod:`aifl_notebook.panel` (plain API) and its widget view, and the panel inside
a real session on the local cluster (run in the session's own kernel through Jupyter Server's API).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import string
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import aifl_notebook
import pytest
import requests
from aifl_hub.site import load_site
from aifl_notebook import panel as panel_api
from aifl_notebook.i18n import translations
from aifl_notebook.panel import (
    GPU_ERROR,
    GPU_NO_DRIVER,
    GPU_NONE,
    GPU_OK,
    SessionProbe,
    format_duration,
    format_session,
    hub_user_options,
    load_profiles,
    match_profile,
    read_gpu_use,
)
from aifl_notebook.session import SessionClock
from babel.messages.extract import extract
from babel.messages.pofile import read_po
from conftest import BASE, REPO, slurm
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

SITE = load_site(REPO / "hub_config" / "site.yaml")
PROFILES = {"gpu_type": "h200", "profile_list": SITE["spawner"]["profile_list"]}
PACKAGE = Path(aifl_notebook.__file__).parent
PANEL_PO = PACKAGE / "locale" / "nl" / "LC_MESSAGES" / "panel.po"
NOW = 1_800_000_000.0
GB = 1024**3

GPU_JOB = {"SLURM_JOB_ID": "4711", "SLURMD_NODENAME": "gpu02", "SLURM_JOB_NODELIST": "gpu02",
           "SLURM_JOB_GPUS": "1", "CUDA_VISIBLE_DEVICES": "0", "SLURM_JOB_PARTITION": "gpu",
           "SLURM_CPUS_PER_TASK": "16", "SLURM_MEM_PER_NODE": "122880", "AIFL_LANG": "en"}


class FakeNvml:
    """Enough of ``pynvml`` for the panel: ``devices`` are (minor number, name, utilization %, used GB)."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    def __init__(self, devices: list[tuple[int, str, int, float]], *, init_fails: bool = False,
                 read_fails: bool = False) -> None:
        self.devices, self.init_fails, self.read_fails = devices, init_fails, read_fails
        self.open = 0

    def nvmlInit(self) -> None:
        if self.init_fails:
            raise self.NVMLError("Driver Not Loaded")
        self.open += 1

    def nvmlShutdown(self) -> None:
        self.open -= 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> tuple[int, str, int, float]:
        return self.devices[i]

    def nvmlDeviceGetMinorNumber(self, h) -> int:
        return h[0]

    def nvmlDeviceGetName(self, h) -> str:
        return h[1]

    def nvmlDeviceGetUtilizationRates(self, h) -> SimpleNamespace:
        if self.read_fails:
            raise self.NVMLError("GPU is lost")
        return SimpleNamespace(gpu=h[2], memory=0)

    def nvmlDeviceGetMemoryInfo(self, h) -> SimpleNamespace:
        return SimpleNamespace(used=int(h[3] * 1e9), total=int(141e9), free=0)

    def nvmlDeviceGetPowerUsage(self, h) -> int:
        return 350_000  # milliwatts

    def nvmlDeviceGetTemperature(self, h, sensor: int) -> int:
        raise self.NVMLError("Not Supported")  # some GPUs do not report it: the panel leaves it out


H200S = [(n, "NVIDIA H200", 10 * (n + 1), 2.5 * n) for n in range(4)]


def probe_for(env: dict[str, str], *, end: float | None = NOW + 2 * 3600 + 5 * 60, now: list[float] | None = None,
              nvml=None, options: dict | None = None, lang: str | None = None) -> SessionProbe:
    """A probe of a session with this environment whose job ends at ``end``, at time ``now[0]``."""
    now = now or [NOW]
    clock = SessionClock(env, last_activity=lambda: datetime.now(UTC), end_time=lambda job: end,
                         clock=lambda: now[0])
    return SessionProbe(env, lang=lang, clock=clock, profiles=PROFILES, user_options=lambda e: options,
                        nvml=nvml or FakeNvml(H200S), now=lambda: now[0])


# ---- the plain API -------------------------------------------------------------------------------
def test_session_info_of_a_gpu_session() -> None:
    nvml = FakeNvml(H200S)
    info = probe_for(GPU_JOB, nvml=nvml).info()
    assert (info.job_id, info.node, info.partition, info.gpus) == ("4711", "gpu02", "gpu", ("1",))
    assert (info.cpus, info.memory_gb, info.gpu_type) == (16, 120, "h200")
    assert (info.profile, info.profile_name) == ("gpu-1", "One GPU for training a model")  # by its resources
    assert info.seconds_left == 2 * 3600 + 5 * 60
    assert info.end_time == datetime.fromtimestamp(NOW + 7500).astimezone()
    assert info.gpu_status == GPU_OK and info.gpu_note is None
    (gpu,) = info.gpu_use  # only the job's own GPU (minor number 1), not the node's four
    assert (gpu.index, gpu.name, gpu.utilization_percent) == ("1", "NVIDIA H200", 20)
    assert (gpu.memory_used_bytes, gpu.memory_total_bytes, gpu.power_watts) == (int(2.5e9), int(141e9), 350.0)
    assert gpu.temperature_celsius is None
    assert info.energy_kwh is None
    assert nvml.open == 0  # NVML is shut down after each reading
    json.dumps(dataclasses.asdict(info), default=str)


def test_the_named_profile_wins_over_matching() -> None:
    assert probe_for(GPU_JOB, options={"profile": "gpu-4"}).info().profile == "gpu-4"  # the hub's record
    assert probe_for(GPU_JOB, options={"profile": "gone"}).info().profile == "gpu-1"  # unknown slug: match
    named = {**GPU_JOB, "AIFL_PROFILE": "workshop-seat"}
    assert probe_for(named, options={"profile": "gpu-4"}).info().profile == "workshop-seat"  # the job's own


def test_profile_matching() -> None:
    profiles = PROFILES["profile_list"]

    def slug(**kw) -> str | None:
        found = match_profile(profiles, **{"partition": None, "gpus": 0, "cpus": None, "memory_gb": None, **kw})
        return found["slug"] if found else None

    assert slug(partition="cpu", cpus=2, memory_gb=8) == "cpu-small"
    assert slug(partition="gpu", gpus=1, cpus=8, memory_gb=60) == "workshop-seat"
    assert slug(partition="gpu", gpus=4) == "gpu-4"
    assert slug(partition="gpu", gpus=1) is None  # gpu-1 or the workshop seat: no guess
    assert slug(partition="gpu", gpus=2, cpus=16) is None


def test_outside_a_job_everything_is_unknown_and_the_hub_is_not_asked() -> None:
    asked: list[dict] = []
    probe = SessionProbe({"AIFL_LANG": "nl"}, profiles=PROFILES, user_options=lambda e: asked.append(e),
                         nvml=FakeNvml(H200S))
    info = probe.info()
    assert asked == []
    assert (info.job_id, info.node, info.profile, info.seconds_left, info.gpus) == (None, None, None, None, ())
    assert info.gpu_status == GPU_NONE
    assert format_session(info).splitlines()[0] == "Dit draait niet als Slurm-job."


def test_a_cpu_session_says_it_has_no_gpu() -> None:
    env = {"SLURM_JOB_ID": "9", "SLURMD_NODENAME": "cpu01", "SLURM_JOB_PARTITION": "cpu",
           "SLURM_CPUS_PER_TASK": "2", "SLURM_MEM_PER_NODE": "8192"}
    info = probe_for(env).info()
    assert (info.profile, info.gpus, info.gpu_status) == ("cpu-small", (), GPU_NONE)
    assert info.gpu_note == "This session has no GPU."


@pytest.mark.parametrize("how", ["no pynvml", "no driver"])
def test_without_nvidia_driver_the_panel_says_so_plainly(monkeypatch, how: str) -> None:
    if how == "no pynvml":
        monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
        nvml = None
    else:
        nvml = FakeNvml(H200S, init_fails=True)
    clock = SessionClock(GPU_JOB, last_activity=lambda: datetime.now(UTC), end_time=lambda job: None)
    for lang, note in [("en", "GPU figures are not available on this node (no NVIDIA driver)."),
                       ("nl", "GPU-cijfers zijn niet beschikbaar op deze node (geen NVIDIA-driver).")]:
        probe = SessionProbe(GPU_JOB, lang=lang, clock=clock, profiles=PROFILES, user_options=lambda e: None,
                             nvml=nvml)
        info = probe.info()
        assert (info.gpu_status, info.gpu_use, info.gpu_note) == (GPU_NO_DRIVER, (), note)
        assert f"  {note}" in format_session(info).splitlines()
        assert info.seconds_left is None


def test_an_nvml_error_while_reading_is_reported() -> None:
    nvml = FakeNvml(H200S, read_fails=True)
    reading = read_gpu_use(("0",), nvml)
    assert (reading.status, reading.error, nvml.open) == (GPU_ERROR, "GPU is lost", 0)
    info = probe_for(GPU_JOB, nvml=FakeNvml(H200S, read_fails=True), lang="nl").info()
    assert info.gpu_note == "GPU-cijfers konden niet worden gelezen: GPU is lost"


def test_gpus_that_nvml_numbers_differently_are_all_shown() -> None:
    reading = read_gpu_use(("7",), FakeNvml(H200S[:2]))
    assert [g.index for g in reading.gpus] == ["0", "1"]


def test_the_job_gpus_come_from_slurm_first() -> None:
    assert panel_api.assigned_gpus({"SLURM_JOB_GPUS": "0,2", "CUDA_VISIBLE_DEVICES": "0,1"}) == ("0", "2")
    assert panel_api.assigned_gpus({"CUDA_VISIBLE_DEVICES": "3"}) == ("3",)
    assert panel_api.assigned_gpus({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}) == ()


def test_texts_in_english_and_dutch() -> None:
    env = {**GPU_JOB, "SLURM_JOB_GPUS": "0,1,2,3", "SLURM_CPUS_PER_TASK": "64", "SLURM_MEM_PER_NODE": "491520"}
    english = format_session(probe_for(env).info())
    assert english.splitlines() == [
        "Your session (Slurm job 4711)",
        "Profile:    Four GPUs for a big model",
        "Node:       gpu02",
        "GPUs:       4 × H200 (GPU 0, 1, 2, 3)",
        f"Time left:  2 h 05 min, until {datetime.fromtimestamp(NOW + 7500).strftime('%H:%M')}",
        "GPU use:",
        "  GPU 0 (NVIDIA H200): 10 % busy, memory 0.0 of 141.0 GB, 350 W",
        "  GPU 1 (NVIDIA H200): 20 % busy, memory 2.5 of 141.0 GB, 350 W",
        "  GPU 2 (NVIDIA H200): 30 % busy, memory 5.0 of 141.0 GB, 350 W",
        "  GPU 3 (NVIDIA H200): 40 % busy, memory 7.5 of 141.0 GB, 350 W",
        "Energy use: not available yet",
    ]
    dutch = format_session(probe_for({**env, "AIFL_LANG": "nl"}).info()).splitlines()
    assert dutch[0] == "Je sessie (Slurm-job 4711)"
    assert dutch[1] == "Profiel:         Vier GPU's voor een groot model"
    assert dutch[4].startswith("Resterende tijd: 2 u 05 min, tot ")
    assert dutch[7] == "  GPU 1 (NVIDIA H200): 20 % in gebruik, geheugen 2,5 van 141,0 GB, 350 W"
    assert dutch[-1] == "Energieverbruik: nog niet beschikbaar"


@pytest.mark.parametrize(("seconds", "lang", "expected"), [
    (None, "en", "unknown"), (None, "nl", "onbekend"),
    (30, "en", "less than a minute"), (30, "nl", "minder dan een minuut"),
    (59 * 60 + 59, "en", "59 min"), (3600, "nl", "1 u 00 min"), (8 * 3600 - 1, "en", "7 h 59 min"),
])
def test_durations(seconds: int | None, lang: str, expected: str) -> None:
    assert format_duration(seconds, None, lang) == expected


def test_an_end_on_another_day_shows_the_date() -> None:
    now = datetime(2026, 11, 25, 23, 0).astimezone()
    end = datetime(2026, 11, 26, 1, 30).astimezone()
    assert format_duration(9000, end, "en", now) == "2 h 30 min, until 26-11 01:30"


def test_profiles_file_missing_or_broken_gives_no_profiles(tmp_path: Path) -> None:
    assert load_profiles(tmp_path / "absent.json")["profile_list"] == []
    (tmp_path / "broken.json").write_text("{")
    assert load_profiles(tmp_path / "broken.json")["profile_list"] == []
    (tmp_path / "ok.json").write_text(json.dumps(PROFILES))
    assert [p["slug"] for p in load_profiles(tmp_path / "ok.json")["profile_list"]][:2] == ["cpu-small", "gpu-1"]


@pytest.fixture
def fake_hub():
    """A tiny HTTP server in the hub's place: ``GET /hub/api/user`` with the right token answers ``model``."""
    state = {"model": {}, "token": "s3cret", "seen": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            state["seen"].append((self.path, self.headers.get("Authorization")))
            ok = self.path == "/hub/api/user" and self.headers.get("Authorization") == f"token {state['token']}"
            body = json.dumps(state["model"] if ok else {"message": "no"}).encode()
            self.send_response(200 if ok else 403)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/hub/api"
    yield state
    server.shutdown()


def test_the_profile_from_the_hub(fake_hub) -> None:
    fake_hub["model"] = {"name": "ann", "servers": {
        "": {"user_options": {"profile": "gpu-4", "hours": 2}}, "other": {"user_options": {"profile": "x"}}}}
    env = {"JUPYTERHUB_API_URL": fake_hub["url"], "JUPYTERHUB_API_TOKEN": "s3cret", "JUPYTERHUB_SERVER_NAME": ""}
    assert hub_user_options(env) == {"profile": "gpu-4", "hours": 2}
    assert fake_hub["seen"] == [("/hub/api/user", "token s3cret")]
    assert hub_user_options({**env, "JUPYTERHUB_SERVER_NAME": "other"}) == {"profile": "x"}


def test_the_hub_lookup_fails_soft(fake_hub) -> None:
    env = {"JUPYTERHUB_API_URL": fake_hub["url"], "JUPYTERHUB_API_TOKEN": "s3cret"}
    fake_hub["model"] = {"name": "ann"}  # a token that may not read servers gets no "servers"
    assert hub_user_options(env) is None
    assert hub_user_options({**env, "JUPYTERHUB_API_TOKEN": "wrong"}) is None  # 403
    assert hub_user_options({**env, "JUPYTERHUB_API_URL": "http://127.0.0.1:9/hub/api"}, timeout=2) is None
    assert hub_user_options({**env, "JUPYTERHUB_API_URL": "file:///etc/passwd"}) is None
    assert hub_user_options({}) is None
    assert len(fake_hub["seen"]) == 2


def test_show_session_prints_text_outside_a_kernel(monkeypatch, capsys) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("AIFL_LANG", "nl")
    assert panel_api.show_session() is None
    assert capsys.readouterr().out.splitlines()[0] == "Dit draait niet als Slurm-job."


def _fields(text: str) -> set[str]:
    return {f[1] for f in string.Formatter().parse(text) if f[1] is not None and f[1] != ""}


def test_every_panel_message_has_a_dutch_translation_with_the_same_fields() -> None:
    used = set()
    for module in (PACKAGE / "panel.py", PACKAGE / "widgets" / "panel.py"):
        with module.open("rb") as fh:
            used |= {m[1] for m in extract("python", fh, keywords={"_": None, "N_": None})}
    with PANEL_PO.open("rb") as fh:
        catalog = {m.id: m.string for m in read_po(fh) if m.id}
    assert "Time left" in used and len(used) >= 15
    assert sorted(used - set(catalog)) == []  # every message is translated
    assert sorted(set(catalog) - used) == []  # every entry is still used
    for message in used:
        assert _fields(translations("nl").gettext(message)) == _fields(message), message


# ---- the widget ------------------------------------------------------------------------------------
def test_widget_shows_the_session_and_updates_in_place() -> None:
    from aifl_notebook.widgets.panel import SessionPanel

    now = [NOW]
    nvml = FakeNvml(H200S)
    panel = SessionPanel(probe_for(GPU_JOB, now=now, nvml=nvml), start=False)
    assert not panel.running
    assert panel.title.value == "Your session (Slurm job 4711)"
    assert panel.values["profile"].value == "One GPU for training a model"
    assert panel.values["gpus"].value == "1 × H200 (GPU 1)"
    assert panel.values["time_left"].value.startswith("2 h 05 min, until ")
    assert panel.energy.value == "not available yet"
    (row,) = panel.gpu_rows.children
    bar, label = row.children
    assert (bar.value, label.value) == (20, "GPU 1 (NVIDIA H200): 20 % busy, memory 2.5 of 141.0 GB, 350 W")

    now[0] += 2 * 3600
    nvml.devices = [(1, "NVIDIA H200", 97, 100.0)]
    info = panel.update()
    assert info.seconds_left == 300
    assert panel.values["time_left"].value.startswith("5 min, until ")
    assert panel.gpu_rows.children == (row,) and bar.value == 97  # the same widgets, new values
    assert "memory 100.0 of 141.0 GB" in label.value
    assert panel.updated.value == f"Updated at {datetime.fromtimestamp(now[0]).strftime('%H:%M:%S')}"
    assert panel.text().splitlines()[-2:] == ["Energy use: not available yet", panel.updated.value]
    panel.close()


def test_widget_in_dutch_without_driver() -> None:
    from aifl_notebook.widgets.panel import SessionPanel

    panel = SessionPanel(probe_for({**GPU_JOB, "AIFL_LANG": "nl"}, nvml=FakeNvml([], init_fails=True)), start=False)
    assert panel.text().splitlines()[:7] == [
        "Je sessie (Slurm-job 4711)",
        "Profiel: Eén GPU om een model te trainen",
        "Node: gpu02",
        "GPU's: 1 × H200 (GPU 1)",
        f"Resterende tijd: 2 u 05 min, tot {datetime.fromtimestamp(NOW + 7500).strftime('%H:%M')}",
        "GPU-gebruik: GPU-cijfers zijn niet beschikbaar op deze node (geen NVIDIA-driver).",
        "Energieverbruik: nog niet beschikbaar",
    ]
    assert panel.updated.value.startswith("Bijgewerkt om ")
    panel.close()


@pytest.mark.timed_thread_waits
def test_widget_updates_itself_in_a_thread_until_stopped() -> None:
    from aifl_notebook.widgets.panel import SessionPanel

    now = [NOW]
    probe = probe_for(GPU_JOB, now=now)
    reads: list[float] = []
    real_info = probe.info

    def info():
        now[0] += 60
        reads.append(now[0])
        return real_info()

    probe.info = info
    started = time.monotonic()
    panel = SessionPanel(probe, refresh=0.05)
    assert time.monotonic() - started < 1  # making it does not wait for the first refresh
    deadline = time.monotonic() + 5
    while len(reads) < 4:
        assert time.monotonic() < deadline, "the panel did not update itself"
        time.sleep(0.02)
    assert panel.running
    panel.close()
    assert not panel.running
    count = len(reads)
    time.sleep(0.2)
    assert len(reads) <= count + 1  # at most one update was already under way
    assert panel.info is not None and panel.info.seconds_left < 7500 - 3 * 60


# ---- inside a real session ----------------------------------------------------------------------------
async def _run_cells(url: str, token: str, cells: list[str], pause: float) -> list[list[dict]]:
    """Run ``cells`` one after another in a new kernel of the server at ``url``; the iopub messages of each."""
    headers = {"Authorization": f"token {token}"}
    for _attempt in range(3):  # the server checks the token with the hub, which another test may restart
        r = requests.post(f"{url}api/kernels", headers=headers, json={"name": "python3"}, timeout=60)
        if r.status_code < 500:
            break
        await asyncio.sleep(5)
    assert r.status_code == 201, r.text
    kernel = r.json()["id"]
    ws_url = url.replace("http://", "ws://") + f"api/kernels/{kernel}/channels"
    session, results = uuid.uuid4().hex, []
    try:
        ws = await websocket_connect(HTTPRequest(ws_url, headers=headers, connect_timeout=30))
        for code in cells:
            msg_id = uuid.uuid4().hex
            ws.write_message(json.dumps({
                "header": {"msg_id": msg_id, "username": "test", "session": session, "msg_type": "execute_request",
                           "version": "5.3", "date": datetime.now(UTC).isoformat()},
                "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                            "allow_stdin": False, "stop_on_error": True}}))
            messages: list[dict] = []
            while True:
                raw = await asyncio.wait_for(ws.read_message(), timeout=60)
                assert raw is not None, "the kernel's websocket closed"
                msg = json.loads(raw)
                if msg.get("channel") != "iopub" or msg["parent_header"].get("msg_id") != msg_id:
                    continue
                messages.append(msg)
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    break
            results.append(messages)
            await asyncio.sleep(pause)
        ws.close()
    finally:
        requests.delete(f"{url}api/kernels/{kernel}", headers=headers, timeout=60)
    return results


def _stdout(messages: list[dict]) -> dict[str, object]:
    """Lines ``KEY json`` that a cell printed, as {KEY: value}; a cell's error fails the test."""
    errors = [m["content"] for m in messages if m["msg_type"] == "error"]
    assert not errors, "\n".join(errors[0]["traceback"])
    text = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")
    return {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1]) for line in text.splitlines() if " " in line}


SHOW = """
import dataclasses, json, time
from aifl_notebook.panel import session_info, show_session
print("INFO", json.dumps(dataclasses.asdict(session_info()), default=str))
started = time.monotonic()
panel = show_session(refresh=0.5)
print("SHOWN", json.dumps({"text": panel.text(), "seconds": time.monotonic() - started,
                           "checked_at": panel.info.checked_at.isoformat()}))
"""
LATER = """
print("LATER", json.dumps({"running": panel.running, "checked_at": panel.info.checked_at.isoformat()}))
panel.close()
"""


@pytest.mark.cluster
def test_the_panel_inside_a_dutch_gpu_session(hub, users) -> None:
    name, token = users("pnl")
    r = hub.api("POST", f"/users/{name}/server", token=token, json={"user_options": {"profile": "gpu-1", "hours": 1}},
                headers={"Accept-Language": "nl"})
    assert r.status_code in (201, 202), r.text
    url = BASE + hub.wait_ready(name)["url"]
    job = hub.job_of(name)
    node = slurm("squeue", "-h", "-j", job, "-o", "%N").strip()

    shown, later = asyncio.run(_run_cells(url, token, [SHOW, LATER], pause=1.5))
    out = _stdout(shown)
    info = out["INFO"]
    assert (info["job_id"], info["node"], info["partition"], info["language"]) == (job, node, "gpu", "nl")
    assert (info["profile"], info["profile_name"]) == ("gpu-1", "Eén GPU om een model te trainen")
    assert len(info["gpus"]) == 1 and info["gpus"][0].isdigit()
    assert 0 < info["seconds_left"] <= 3600
    assert info["gpu_status"] == "no-driver"  # emulated GPUs: no NVIDIA driver on the node
    assert info["gpu_note"] == "GPU-cijfers zijn niet beschikbaar op deze node (geen NVIDIA-driver)."

    text = out["SHOWN"]["text"].splitlines()
    assert text[0] == f"Je sessie (Slurm-job {job})"
    assert text[1:4] == ["Profiel: Eén GPU om een model te trainen", f"Node: {node}",
                         f"GPU's: 1 × H200 (GPU {info['gpus'][0]})"]
    assert text[4].startswith(("Resterende tijd: 59 min, tot ", "Resterende tijd: 1 u 00 min, tot "))
    # No NVIDIA driver on the emulated node: the energy so far is the site model's estimate.
    (energy,) = [line for line in text if line.startswith("Energieverbruik: ")]
    assert re.fullmatch(r"Energieverbruik: [0-9,]+ kWh tot nu toe \(schatting\): zoveel als een elektrische auto "
                        r"gebruikt om [0-9,]+ km te rijden", energy), energy
    assert out["SHOWN"]["seconds"] < 10
    views = [m for m in shown if m["msg_type"] == "display_data"
             and "application/vnd.jupyter.widget-view+json" in m["content"]["data"]]
    assert len(views) == 1  # a widget was displayed, not text

    after = _stdout(later)["LATER"]
    assert after["running"] is True
    assert after["checked_at"] > out["SHOWN"]["checked_at"]  # it updated itself while the kernel was idle
