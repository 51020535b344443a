"""Energy per job in the session: the NVML agent (with NVML absent, failing or a stand-in), the one API
(measured or estimate) and the session panel's live line.

No GPU machine is used here: NVML is replaced by a small stand-in for the agent's arithmetic, and the
real ``nvidia-ml-py`` of the notebook environment is run on this machine without a driver.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from aifl_hub.energy import estimate_session
from aifl_hub.options import SessionRequest
from aifl_hub.script import JobSpec, build_script
from aifl_notebook import energy_agent
from aifl_notebook.energy import Energy, describe, job_energy, measured_file, read_measured
from aifl_notebook.energy_agent import Meter, NoNvml, run
from aifl_notebook.panel import SessionProbe, energy_row
from aifl_notebook.session import SessionClock
from conftest import REPO

MODEL = yaml.safe_load((REPO / "hub_config" / "site.yaml").read_text())["energy"]
ENV_PYTHON = Path("/opt/aifl/envs/default/bin/python")
GPU_JOB = {"SLURM_JOB_ID": "4711", "SLURMD_NODENAME": "gpu02", "SLURM_JOB_GPUS": "1", "SLURM_JOB_PARTITION": "gpu",
           "SLURM_CPUS_PER_TASK": "16", "SLURM_MEM_PER_NODE": str(120 * 1024)}


class Nvml:
    """A stand-in for ``pynvml``: GPUs as dicts with an energy counter (mJ) or only power (mW)."""

    class NVMLError(Exception):
        pass

    def __init__(self, gpus: list[dict]) -> None:
        self.gpus = gpus

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> dict:
        return self.gpus[i]

    def nvmlDeviceGetMinorNumber(self, h: dict) -> int:
        return h["minor"]

    def nvmlDeviceGetTotalEnergyConsumption(self, h: dict) -> int:
        if "mj" not in h:
            raise self.NVMLError("Not Supported")
        return h["mj"]

    def nvmlDeviceGetPowerUsage(self, h: dict) -> int:
        if "mw" not in h:
            raise self.NVMLError("Not Supported")
        return h["mw"]


# ---- the agent ------------------------------------------------------------------------------------------
def test_the_meter_adds_counter_increases_and_power_over_time():
    counter, power, broken = {"minor": 0, "mj": 1_000_000}, {"minor": 1, "mw": 300_000}, {"minor": 2}
    meter = Meter(Nvml([]), [counter, power, broken])
    assert meter.sample(100.0) == 0  # the first sample sets the counters; power has no interval yet
    counter["mj"] += 450_000  # 450 J
    assert meter.sample(110.0) == pytest.approx(450 + 300 * 10)
    counter["mj"] = 5  # the counter restarted (driver reload): nothing is added, it counts on from there
    counter_after = meter.sample(120.0)
    assert counter_after == pytest.approx(450 + 300 * 20)
    assert meter.methods == {"energy counter", "power"}


def test_the_agent_writes_a_measurement_of_the_jobs_own_gpus(tmp_path):
    gpus = [{"minor": 0, "mj": 0}, {"minor": 1, "mj": 0}]
    output = tmp_path / "energy" / "job-4711.json"
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        gpus[1]["mj"] += 3_600_000  # 1 Wh per interval on the job's GPU; GPU 0 belongs to another job
        gpus[0]["mj"] += 99_000_000

    meter = run(output, GPU_JOB, interval=5, nvml=Nvml(gpus), clock=iter([0.0, 5.0, 10.0]).__next__, sleep=sleep,
                samples=3)
    assert meter.handles == [gpus[1]] and sleeps == [5, 5]
    data = json.loads(output.read_text())
    assert (data["job"], data["source"], data["method"], data["gpus"]) == ("4711", "measured", "nvml", 1)
    assert data["gpu_joules"] == pytest.approx(7200)
    assert read_measured(output) == pytest.approx(7200)
    assert [p.name for p in output.parent.iterdir()] == ["job-4711.json"]  # no temporary files left


def test_without_nvml_the_agent_ends_and_writes_nothing(tmp_path, monkeypatch, capsys):
    output = tmp_path / "job.json"
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py absent
    with pytest.raises(NoNvml, match="nvidia-ml-py is not installed"):
        run(output, GPU_JOB, samples=1)
    monkeypatch.setenv("SLURM_JOB_GPUS", "0")
    energy_agent.main(["--output", str(output)])
    assert "nvidia-ml-py is not installed; the job's energy is estimated" in capsys.readouterr().err
    with pytest.raises(NoNvml, match="no GPUs"):
        run(output, {"SLURM_JOB_ID": "1"}, nvml=Nvml([]), samples=1)
    with pytest.raises(NoNvml, match="NVML sees no GPUs"):
        run(output, GPU_JOB, nvml=Nvml([]), samples=1)
    assert not output.exists()


@pytest.mark.cluster
def test_the_real_nvml_library_without_a_driver_degrades_to_an_estimate(lab_system, tmp_path):
    """nvidia-ml-py of the notebook environment (built by ``./lab up``), on this machine without an NVIDIA
    driver: nothing is written."""
    output = tmp_path / "job.json"
    result = subprocess.run([str(ENV_PYTHON), "-m", "aifl_notebook.energy_agent", "--output", str(output)],
                            env={"SLURM_JOB_ID": "1", "SLURM_JOB_GPUS": "0", "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0
    assert "NVML cannot start" in result.stderr and "the job's energy is estimated" in result.stderr
    assert not output.exists()


def test_the_session_script_starts_the_agent_on_gpu_jobs_only():
    job = JobSpec("alice", "/home/alice", "/home/alice/.aifl/logs/session-%j.log",
                  ["/opt/aifl/envs/default/bin/aifl-singleuser"], ["PATH"], ["/usr/bin"], gpu_type="h200")
    gpu = build_script(SessionRequest("gpu-1", "gpu", 1, 16, 120, 2, "umcg", "regional"), job).splitlines()
    assert gpu[-2] == ("if [ -x /opt/aifl/envs/default/bin/aifl-energy-agent ]; then "
                       "/opt/aifl/envs/default/bin/aifl-energy-agent --output "
                       '/home/alice/.aifl/energy/job-"$SLURM_JOB_ID".json & fi')
    assert gpu[-1].startswith("exec ")
    cpu = build_script(SessionRequest("cpu", "cpu", 0, 2, 8, 2, "lab", "interactive"), job)
    assert "energy-agent" not in cpu


# ---- one API: measured or estimate -------------------------------------------------------------------
def test_the_estimate_is_the_spawn_pages_model():
    energy = job_energy(MODEL, gpu_type="h200", gpus=1, cpus=16, memory_gb=120, hours=8)
    spawn = estimate_session(MODEL, "h200", gpus=1, cpus=16, memory_gb=120, hours=8)
    assert (energy.source, energy.method) == ("estimate", "model")
    assert energy.kwh == pytest.approx(spawn.kwh) and energy.km == pytest.approx(spawn.km)
    # GPU use as NVML sees it now replaces the typical use: 75 + 0.2 × 625 = 200 W per GPU.
    low = job_energy(MODEL, gpu_type="h200", gpus=1, cpus=16, memory_gb=120, hours=1, utilisation=0.2)
    assert low.kwh == pytest.approx((200 + 96 + 48) * 1.15 / 1000)


def test_a_measurement_replaces_the_gpu_part_only():
    # 1.8 MJ = 0.5 kWh measured on the GPU; 16 cores and 120 GB for 2 h by the model: 0.288 kWh; × PUE 1.15.
    energy = job_energy(MODEL, gpu_type="h200", gpus=1, cpus=16, memory_gb=120, hours=2, measured_gpu_joules=1.8e6)
    assert (energy.source, energy.method) == ("measured", "nvml")
    assert energy.kwh == pytest.approx((0.5 + 0.288) * 1.15)
    cpu_only = job_energy(MODEL, gpu_type="", gpus=0, cpus=2, memory_gb=8, hours=1, measured_gpu_joules=5.0)
    assert cpu_only.source == "estimate"  # no GPUs: nothing was measured for this job
    with pytest.raises(ValueError, match="no watts for GPU type"):
        job_energy(MODEL, gpu_type="a100", gpus=1, cpus=1, memory_gb=1, hours=1)
    with pytest.raises(ValueError, match="no energy model"):
        job_energy({}, gpu_type="h200", gpus=1, cpus=1, memory_gb=1, hours=1)


def test_odd_measurement_files_are_not_measurements(tmp_path):
    path = tmp_path / "m.json"
    for text in ("{", "[]", '{"source": "estimate", "gpu_joules": 5}', '{"source": "measured", "gpu_joules": -1}',
                 '{"source": "measured", "gpu_joules": "5"}'):
        path.write_text(text)
        assert read_measured(path) is None
    assert read_measured(tmp_path / "missing.json") is None and read_measured(None) is None
    assert measured_file(tmp_path, "12") == tmp_path / ".aifl" / "energy" / "job-12.json"
    assert measured_file(tmp_path, "../x") is None


def test_in_words():
    energy = Energy(kwh=0.1234, source="estimate", method="model", hours=1, km=0.7404)
    assert describe(energy, "en") == "0.12 kWh so far (estimate): as much as an electric car uses to drive 0.74 km"
    assert describe(Energy(12.34, "measured", "nvml", 3, None), "nl") == "12 kWh tot nu toe (gemeten)"


# ---- the session panel ---------------------------------------------------------------------------------
def _probe(tmp_path: Path, started: float | None, nvml=None) -> SessionProbe:
    clock = SessionClock(GPU_JOB, last_activity=lambda: None, end_time=lambda job: 10_000.0, clock=lambda: 7200.0)
    return SessionProbe(GPU_JOB, lang="en", clock=clock, profiles={"gpu_type": "h200", "profile_list": []},
                        user_options=lambda env: None, nvml=nvml or SimpleNamespace(), now=lambda: 7200.0,
                        energy=MODEL, start_time=lambda job: started, home=tmp_path)


def test_the_panel_shows_the_estimate_then_the_measurement(tmp_path):
    class NoDriver:
        class NVMLError(Exception):
            pass

        def nvmlInit(self):
            raise self.NVMLError("Driver Not Loaded")

    info = _probe(tmp_path, started=0.0, nvml=NoDriver()).info()  # two hours in, no driver: the typical use
    assert info.energy_kwh == pytest.approx(2 * 683.1 / 1000)
    label, value = energy_row(info)
    assert (label, value) == ("Energy use", "1.4 kWh so far (estimate): as much as an electric car uses to drive "
                                            "8.2 km")
    measured = tmp_path / ".aifl" / "energy" / "job-4711.json"
    measured.parent.mkdir(parents=True)
    measured.write_text(json.dumps({"source": "measured", "gpu_joules": 3.6e6}))  # 1 kWh on the GPU
    info = _probe(tmp_path, started=0.0, nvml=NoDriver()).info()
    assert info.energy_kwh == pytest.approx((1 + 2 * 144 / 1000) * 1.15)
    assert "(measured)" in energy_row(info)[1]
    assert _probe(tmp_path, started=None, nvml=NoDriver()).info().energy_kwh is None  # start unknown
