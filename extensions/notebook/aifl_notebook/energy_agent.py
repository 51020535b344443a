"""A job's energy meter: samples its GPUs' energy through NVML and writes the total to the job's folder.

Started by the job itself, in the background (``aifl-energy-agent --output <file>``; the session's
batch script and batch runs do this on GPU nodes). Every ``--interval`` seconds it reads, for each of
the job's GPUs (``SLURM_JOB_GPUS``, matched by minor number as in :mod:`aifl_notebook.panel`), NVML's
energy counter (``nvmlDeviceGetTotalEnergyConsumption``, millijoules since the driver loaded) and adds
the increase since the last sample; a GPU without that counter adds its power (``nvmlDeviceGetPowerUsage``)
times the time between samples. The file (``{"source": "measured", "method": "nvml", "gpu_joules": …}``)
is replaced in one step at every sample, so it survives the agent, the session and a hub restart.

Without NVML (no ``nvidia-ml-py``, no driver, no GPUs of the job) the agent writes nothing and ends:
the energy of that job is an estimate (:mod:`aifl_notebook.energy`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from .panel import assigned_gpus


class NoNvml(RuntimeError):
    """NVML cannot measure here; the reason says why."""


def load_nvml() -> ModuleType:
    """The ``pynvml`` module, initialised; :class:`NoNvml` when it is missing or finds no driver."""
    try:
        import pynvml
    except ImportError:
        raise NoNvml("nvidia-ml-py is not installed") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise NoNvml(f"NVML cannot start: {exc}") from None
    return pynvml


def job_handles(nvml: Any, gpus: Sequence[str]) -> list[Any]:
    """NVML handles of the job's GPUs (by minor number; all the node's when none match)."""
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    numbered = []
    for handle in handles:
        try:
            numbered.append((str(nvml.nvmlDeviceGetMinorNumber(handle)), handle))
        except nvml.NVMLError:
            numbered.append(("", handle))
    own = [h for minor, h in numbered if minor in gpus]
    return own or handles


@dataclass
class Meter:
    """Adds up the energy of ``handles``: counter increases, else power × time. ``now`` is in seconds."""

    nvml: Any
    handles: Sequence[Any]
    joules: float = 0.0
    counters: dict[int, float] = field(default_factory=dict)  # GPU → last counter reading (mJ)
    last: float | None = None
    methods: set[str] = field(default_factory=set)

    def sample(self, now: float) -> float:
        """Read every GPU once; return the total joules so far."""
        elapsed = 0.0 if self.last is None else max(0.0, now - self.last)
        for number, handle in enumerate(self.handles):
            try:
                counter = float(self.nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
            except self.nvml.NVMLError:
                counter = None
            if counter is not None:
                previous = self.counters.get(number)
                if previous is not None and counter >= previous:  # a reset (driver reload) adds nothing
                    self.joules += (counter - previous) / 1000
                self.counters[number] = counter
                self.methods.add("energy counter")
                continue
            try:
                self.joules += float(self.nvml.nvmlDeviceGetPowerUsage(handle)) / 1000 * elapsed
                self.methods.add("power")
            except self.nvml.NVMLError:
                continue
        self.last = now
        return self.joules


def record(meter: Meter, job_id: str, started: datetime, now: datetime) -> dict[str, Any]:
    """What the agent writes: a measurement of the job's GPUs so far."""
    return {"job": job_id, "source": "measured", "method": "nvml", "gpus": len(meter.handles),
            "counters": sorted(meter.methods), "started": started.isoformat(timespec="seconds"),
            "updated": now.isoformat(timespec="seconds"), "gpu_joules": round(meter.joules, 3)}


def write_atomically(path: Path, data: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON in one step."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def run(output: Path, env: Mapping[str, str], *, interval: float = 10, nvml: Any = None,
        clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
        samples: int | None = None) -> Meter:
    """Measure until stopped (or ``samples`` samples), writing ``output`` after each; :class:`NoNvml` if it cannot."""
    gpus = assigned_gpus(env)
    if not gpus:
        raise NoNvml("the job has no GPUs")
    nvml = nvml or load_nvml()
    try:
        handles = job_handles(nvml, gpus)
    except nvml.NVMLError as exc:
        raise NoNvml(f"NVML sees no GPUs: {exc}") from None
    if not handles:
        raise NoNvml("NVML sees no GPUs")
    meter, started, count = Meter(nvml, handles), datetime.now(), 0
    while samples is None or count < samples:
        meter.sample(clock())
        write_atomically(output, record(meter, env.get("SLURM_JOB_ID", ""), started, datetime.now()))
        count += 1
        if samples is None or count < samples:
            sleep(interval)
    return meter


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``aifl-energy-agent --output FILE [--interval SECONDS]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--interval", type=float, default=10)
    args = parser.parse_args(argv)
    try:
        run(args.output, os.environ, interval=max(1.0, args.interval))
    except NoNvml as exc:
        print(f"aifl-energy-agent: {exc}; the job's energy is estimated", file=sys.stderr)


if __name__ == "__main__":
    main()
