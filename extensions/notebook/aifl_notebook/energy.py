"""Energy of a job so far, one API: measured where the node's GPUs report it, else estimated.

:func:`job_energy` returns an :class:`Energy`, always labelled with its ``source``:

* ``measured`` (method ``nvml``): the job's GPU energy as its agent (:mod:`aifl_notebook.energy_agent`)
  read it from NVML's counters and wrote it to the job's folder; the CPU cores and memory the job
  holds and the facility's PUE come from the site's model (they have no meter of their own here);
* ``estimate`` (method ``model``): the site's energy model for the whole job — the same model as the
  spawn page's estimate (``aifl_hub.energy``; ``lab up`` gives sessions a copy in
  ``{sys.prefix}/etc/aifl/energy.json``): per GPU ``idle + u × (full − idle)`` watts with ``u`` the
  GPU use NVML reports now where it can, else the site's typical use; per CPU core and per GB of
  memory their watts; all times the PUE.

Where the site gives an everyday factor (``everyday_km_per_kwh``) the energy is also put in
kilometres by electric car.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .i18n import N_, gettext_for, language

SETTINGS_FILE = Path(sys.prefix) / "etc" / "aifl" / "energy.json"
MEASURED_DIR = ".aifl/energy"  # in the home folder: one file per session job, written by its agent
SOURCE_LABELS = {"measured": N_("measured"), "estimate": N_("estimate")}
_JOB_ID = re.compile(r"^[0-9]{1,12}\Z")


@dataclass(frozen=True)
class Energy:
    """A job's energy so far: ``kwh`` over ``hours``, its ``source`` and how it was found."""

    kwh: float
    source: str  # "measured" or "estimate"
    method: str  # "nvml" or "model"
    hours: float
    km: float | None = None


def energy_model(path: Path = SETTINGS_FILE) -> dict[str, Any]:
    """The site's energy model as ``lab up`` gave it to this environment (``{}`` when there is none)."""
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    model = settings.get("energy") if isinstance(settings, dict) else None
    return model if isinstance(model, dict) and "pue" in model else {}


def measured_file(home: Path, job_id: str) -> Path | None:
    """Where the agent of session job ``job_id`` writes its measurement (None for an odd job id)."""
    return home / MEASURED_DIR / f"job-{job_id}.json" if _JOB_ID.match(job_id or "") else None


def read_measured(path: Path | None) -> float | None:
    """The GPU energy in joules that the job's agent measured, or None (no file, or not a measurement)."""
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    joules = data.get("gpu_joules") if isinstance(data, dict) and data.get("source") == "measured" else None
    return float(joules) if isinstance(joules, int | float) and joules >= 0 else None


def squeue_start_time(job_id: str) -> float | None:
    """When the job started, as a timestamp (``squeue -o %S``); None when Slurm cannot tell."""
    squeue = shutil.which("squeue")
    if not squeue or not _JOB_ID.match(job_id or ""):
        return None
    try:
        result = subprocess.run([squeue, "-h", "-j", job_id, "-o", "%S"], capture_output=True, text=True,
                                timeout=10, check=False)
        return datetime.fromisoformat(result.stdout.strip()).timestamp() if result.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


def gpu_watts(model: Mapping[str, Any], gpu_type: str, utilisation: float | None) -> float:
    """Watts of one GPU of ``gpu_type`` at ``utilisation`` (0–1; None: the site's typical use)."""
    full = model.get("gpu_watts", {}).get(gpu_type)
    if full is None:
        raise ValueError(f"the energy model has no watts for GPU type {gpu_type!r}")
    idle = model.get("gpu_idle_watts", {}).get(gpu_type, 0.0)
    use = model.get("typical_gpu_utilisation", 1.0) if utilisation is None else min(1.0, max(0.0, utilisation))
    return idle + use * (full - idle)


def job_energy(model: Mapping[str, Any], *, gpu_type: str, gpus: int, cpus: int, memory_gb: float, hours: float,
               utilisation: float | None = None, measured_gpu_joules: float | None = None) -> Energy:
    """The job's energy after ``hours``: measured GPU energy where given, else the model (see the module docstring).

    Raises :class:`ValueError` when the model lacks what is needed (no PUE, an unknown GPU type).
    """
    if "pue" not in model:
        raise ValueError("there is no energy model")
    rest_watts = cpus * model.get("cpu_core_watts", 0.0) + memory_gb * model.get("memory_gb_watts", 0.0)
    if gpus and measured_gpu_joules is not None:
        kwh = (measured_gpu_joules / 3.6e6 + rest_watts * hours / 1000) * model["pue"]
        source, method = "measured", "nvml"
    else:
        watts = (gpus * gpu_watts(model, gpu_type, utilisation) if gpus else 0.0) + rest_watts
        kwh = watts * model["pue"] * hours / 1000
        source, method = "estimate", "model"
    factor = model.get("everyday_km_per_kwh")
    return Energy(kwh, source, method, hours, kwh * factor if factor else None)


def _number(value: float, lang: str) -> str:
    """Two significant digits, with a decimal comma in Dutch."""
    text = f"{value:.2g}" if value < 10 else f"{value:.0f}"
    text = f"{float(text):g}" if "e" in text else text
    return text.replace(".", ",") if lang == "nl" else text


def describe(energy: Energy, lang: str | None = None) -> str:
    """``energy`` in plain words: kWh so far, its source and the everyday comparison."""
    lang = language(lang)
    _ = gettext_for(lang)
    text = _("{kwh} kWh so far ({source})").format(kwh=_number(energy.kwh, lang),
                                                  source=_(SOURCE_LABELS[energy.source]))
    if energy.km is None:
        return text
    return _("{energy}: as much as an electric car uses to drive {km} km").format(
        energy=text, km=_number(energy.km, lang))
