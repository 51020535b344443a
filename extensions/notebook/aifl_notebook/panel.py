"""What the running session is: its profile, node, GPUs, time left and GPU use, for code and people.

Plain Python, no widgets: :func:`session_info` returns a :class:`SessionInfo`; :func:`format_session`
writes it as text in the session's language; :func:`show_session` shows the live panel
(:mod:`aifl_notebook.widgets.panel`) in a notebook, or prints the text where widgets are not available.

Where the facts come from, all optional (outside a session job every field is simply unknown):

- the job's environment: ``SLURM_JOB_ID``, ``SLURMD_NODENAME`` / ``SLURM_JOB_NODELIST``,
  ``SLURM_JOB_GPUS`` (else ``CUDA_VISIBLE_DEVICES``), ``SLURM_JOB_PARTITION``, ``SLURM_CPUS_PER_TASK``,
  ``SLURM_MEM_PER_NODE`` and ``AIFL_LANG``;
- the end of the job: :class:`aifl_notebook.session.SessionClock` (squeue);
- the profile: ``AIFL_PROFILE`` where the spawner sets it, else the hub's record of the session's options
  (``GET {JUPYTERHUB_API_URL}/user`` with the session's own token, where that token may read them), else
  the profile of the site's list (``{sys.prefix}/etc/aifl/profiles.json``, written by ``lab up``) whose
  resources match the job's;
- GPU use: NVML (``nvidia-ml-py``) on nodes with an NVIDIA driver.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from .energy import Energy, describe, energy_model, job_energy, measured_file, read_measured, squeue_start_time
from .i18n import N_, gettext_for
from .session import LANGUAGES, SessionClock, session_language, squeue_end_time

PROFILES_FILE = Path(sys.prefix) / "etc" / "aifl" / "profiles.json"
HUB_TIMEOUT = 5.0  # seconds for the one question to the hub

GPU_OK = "ok"
GPU_NONE = "no-gpus"
GPU_NO_DRIVER = "no-driver"
GPU_ERROR = "error"

_GPU_NOTES = {
    GPU_NONE: N_("This session has no GPU."),
    GPU_NO_DRIVER: N_("GPU figures are not available on this node (no NVIDIA driver)."),
    GPU_ERROR: N_("GPU figures could not be read: {error}"),
}


@dataclass(frozen=True)
class GpuUse:
    """One GPU's use at one moment, as NVML reports it."""

    index: str  # the GPU's number on the node (as in SLURM_JOB_GPUS)
    name: str
    utilization_percent: int
    memory_used_bytes: int
    memory_total_bytes: int
    power_watts: float | None = None
    temperature_celsius: int | None = None


@dataclass(frozen=True)
class GpuReading:
    """GPU use of the session's GPUs: ``status`` is ``ok``, ``no-gpus``, ``no-driver`` or ``error``."""

    status: str
    gpus: tuple[GpuUse, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class SessionInfo:
    """The session as it is now. Unknown facts are None (or empty); texts are in ``language``."""

    job_id: str | None
    profile: str | None  # the profile's slug
    profile_name: str | None  # its display name in ``language``
    partition: str | None
    node: str | None
    gpus: tuple[str, ...]  # the GPUs Slurm gave the job, by their number on the node
    gpu_type: str
    cpus: int | None
    memory_gb: int | None
    end_time: datetime | None
    seconds_left: int | None
    gpu_status: str  # see GpuReading
    gpu_use: tuple[GpuUse, ...]
    gpu_note: str | None  # why there are no GPU figures, in ``language``
    energy_kwh: float | None  # the job's energy so far (None: unknown), see aifl_notebook.energy
    language: str
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC).astimezone())
    energy_text: str | None = None  # the same in words, with its source ("measured" or "estimate")


# ---- the job's environment -----------------------------------------------------------------------
def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def assigned_gpus(env: Mapping[str, str]) -> tuple[str, ...]:
    """The job's GPUs by their number on the node: ``SLURM_JOB_GPUS``, else ``CUDA_VISIBLE_DEVICES``."""
    for name in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES"):
        ids = tuple(p.strip() for p in env.get(name, "").split(",") if p.strip())
        if ids and ids != ("NoDevFiles",):
            return ids
    return ()


def node_name(env: Mapping[str, str]) -> str | None:
    """The node the session runs on (Slurm's name for it), or None outside a job."""
    if not env.get("SLURM_JOB_ID"):
        return None
    return env.get("SLURMD_NODENAME") or env.get("SLURM_JOB_NODELIST") or socket.gethostname()


def memory_gb(env: Mapping[str, str]) -> int | None:
    """The job's memory in GB (``SLURM_MEM_PER_NODE`` is in MB), or None."""
    mb = _int(env.get("SLURM_MEM_PER_NODE"))
    return round(mb / 1024) if mb is not None else None


# ---- the profile -----------------------------------------------------------------------------------
def load_profiles(path: Path = PROFILES_FILE) -> dict[str, Any]:
    """The site's profiles as ``lab up`` wrote them (``{"gpu_type", "profile_list"}``); empty if unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"gpu_type": "", "profile_list": []}
    if not isinstance(data, dict) or not isinstance(data.get("profile_list"), list):
        return {"gpu_type": "", "profile_list": []}
    return data


def match_profile(profiles: Sequence[Mapping[str, Any]], *, partition: str | None, gpus: int,
                  cpus: int | None, memory_gb: int | None) -> Mapping[str, Any] | None:
    """The one profile whose ``slurm_override`` asks for exactly these resources (unknown ones match any).

    None when no profile or more than one fits: a guess would be worse than "unknown".
    """
    wanted = {"partition": partition, "gpus": gpus, "cpus": cpus, "memory_gb": memory_gb}
    fits = [p for p in profiles
            if all(value is None or p.get("slurm_override", {}).get(key, 0 if key == "gpus" else None) == value
                   for key, value in wanted.items())]
    return fits[0] if len(fits) == 1 else None


def hub_user_options(env: Mapping[str, str], timeout: float = HUB_TIMEOUT) -> dict[str, Any] | None:
    """The options this session was started with, as the hub keeps them; None if the hub does not say.

    Asks ``GET {JUPYTERHUB_API_URL}/user`` with the session's own token. The hub includes the servers
    only where that token may read them; any failure is None, never an exception.
    """
    url, token = env.get("JUPYTERHUB_API_URL", ""), env.get("JUPYTERHUB_API_TOKEN", "")
    if not token or not url.startswith(("http://", "https://")):
        return None
    request = urllib.request.Request(url.rstrip("/") + "/user",  # noqa: S310 - http(s) checked above
                                     headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - the hub's API URL
            model = json.load(response)
        options = model["servers"][env.get("JUPYTERHUB_SERVER_NAME", "")]["user_options"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return options if isinstance(options, dict) else None


def _text(value: Any, lang: str) -> str:
    """A site-file text (one string or ``{en, nl}``) in ``lang``."""
    if isinstance(value, Mapping):
        return str(value.get(lang) or value.get("en") or "")
    return str(value or "")


# ---- GPU use ---------------------------------------------------------------------------------------
def _optional(call: Callable[[], Any], error: type[Exception]) -> Any:
    try:
        return call()
    except error:
        return None


def read_gpu_use(gpus: Sequence[str], nvml: ModuleType | None = None) -> GpuReading:
    """Read the use of the job's ``gpus`` through NVML (``pynvml``; injectable for tests).

    NVML sees every GPU of the node: the job's own are those whose minor number (``/dev/nvidiaN``) is
    one of ``gpus``; when none matches (a site that numbers differently), all GPUs NVML shows.
    """
    if not gpus:
        return GpuReading(GPU_NONE)
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return GpuReading(GPU_NO_DRIVER)
    try:
        nvml.nvmlInit()
    except nvml.NVMLError:
        return GpuReading(GPU_NO_DRIVER)
    try:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        numbered = [(str(_optional(lambda h=h: nvml.nvmlDeviceGetMinorNumber(h), nvml.NVMLError)), h)
                    for h in handles]
        ours = [(n, h) for n, h in numbered if n in gpus] or numbered
        use = []
        for number, handle in ours:
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            power = _optional(lambda h=handle: nvml.nvmlDeviceGetPowerUsage(h), nvml.NVMLError)
            use.append(GpuUse(
                index=number,
                name=str(nvml.nvmlDeviceGetName(handle)),
                utilization_percent=int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                memory_used_bytes=int(memory.used),
                memory_total_bytes=int(memory.total),
                power_watts=power / 1000 if power is not None else None,
                temperature_celsius=_optional(
                    lambda h=handle: int(nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)),
                    nvml.NVMLError),
            ))
        return GpuReading(GPU_OK, tuple(use))
    except nvml.NVMLError as exc:
        return GpuReading(GPU_ERROR, error=str(exc))
    finally:
        _optional(nvml.nvmlShutdown, nvml.NVMLError)


# ---- putting it together ----------------------------------------------------------------------------
class SessionProbe:
    """Reads the session's facts: the fixed ones once, the time left and GPU use on every :meth:`info`.

    Every source is injectable for tests: ``env`` (default ``os.environ``), ``clock`` (a
    :class:`SessionClock`), ``profiles`` (the content of ``profiles.json``), ``user_options`` (asks the
    hub) and ``nvml`` (a ``pynvml``-like module). Nothing here raises for a missing or broken source.
    """

    def __init__(self, env: Mapping[str, str] | None = None, *, lang: str | None = None,
                 clock: SessionClock | None = None, profiles: Mapping[str, Any] | None = None,
                 user_options: Callable[[Mapping[str, str]], dict[str, Any] | None] = hub_user_options,
                 nvml: ModuleType | None = None, now: Callable[[], float] = time.time,
                 energy: Mapping[str, Any] | None = None,
                 start_time: Callable[[str], float | None] = squeue_start_time, home: Path | None = None) -> None:
        env = dict(os.environ if env is None else env)
        self.language = lang if lang in LANGUAGES else session_language(env)
        self._now = now
        self._clock = clock or SessionClock(env, last_activity=lambda: datetime.now(UTC),
                                            end_time=squeue_end_time, clock=now)
        self._nvml = nvml
        self.job_id = env.get("SLURM_JOB_ID") or None
        self.partition = env.get("SLURM_JOB_PARTITION") or None
        self.node = node_name(env)
        self.gpus = assigned_gpus(env)
        self.cpus = _int(env.get("SLURM_CPUS_PER_TASK")) or _int(env.get("SLURM_CPUS_ON_NODE"))
        self.memory_gb = memory_gb(env)
        site = profiles if profiles is not None else load_profiles()
        self.gpu_type = str(site.get("gpu_type") or "")
        self.profile = self._profile(site.get("profile_list") or [], env, user_options)
        # Energy: the site's model, when the job started (asked once) and where its agent writes.
        self._energy_model = energy_model() if energy is None else energy
        self._started = start_time(self.job_id) if self.job_id and self._energy_model else None
        self._measured = measured_file(home or Path(pwd.getpwuid(os.getuid()).pw_dir), self.job_id or "")

    def _profile(self, profiles: Sequence[Mapping[str, Any]], env: Mapping[str, str],
                 user_options: Callable[[Mapping[str, str]], dict[str, Any] | None]) -> Mapping[str, Any] | None:
        """The session's profile as the job or the hub names it, else the one matching its resources."""
        if not self.job_id:
            return None
        by_slug = {p.get("slug"): p for p in profiles}
        if env.get("AIFL_PROFILE") in by_slug:
            return by_slug[env["AIFL_PROFILE"]]
        options = user_options(env)
        if options and options.get("profile") in by_slug:
            return by_slug[options["profile"]]
        return match_profile(profiles, partition=self.partition, gpus=len(self.gpus), cpus=self.cpus,
                             memory_gb=self.memory_gb)

    def info(self) -> SessionInfo:
        """The session now (asks squeue at most every two minutes and NVML every time)."""
        _ = gettext_for(self.language)
        end = self._clock.end_time() if self.job_id else None
        reading = read_gpu_use(self.gpus, self._nvml)
        note = _GPU_NOTES.get(reading.status)
        energy = self._energy(reading)
        return SessionInfo(
            job_id=self.job_id,
            profile=self.profile.get("slug") if self.profile else None,
            profile_name=_text(self.profile.get("display_name"), self.language) if self.profile else None,
            partition=self.partition,
            node=self.node,
            gpus=self.gpus,
            gpu_type=self.gpu_type,
            cpus=self.cpus,
            memory_gb=self.memory_gb,
            end_time=datetime.fromtimestamp(end).astimezone() if end else None,
            seconds_left=max(0, round(end - self._now())) if end else None,
            gpu_status=reading.status,
            gpu_use=reading.gpus,
            gpu_note=_(note).format(error=reading.error) if note else None,
            energy_kwh=energy.kwh if energy else None,
            language=self.language,
            checked_at=datetime.fromtimestamp(self._now()).astimezone(),
            energy_text=describe(energy, self.language) if energy else None,
        )

    def _energy(self, reading: GpuReading) -> Energy | None:
        """The session's energy so far (measured by its agent, else estimated), None when unknown."""
        if self._started is None or self.cpus is None or self.memory_gb is None:
            return None
        use = [g.utilization_percent / 100 for g in reading.gpus]
        try:
            return job_energy(self._energy_model, gpu_type=self.gpu_type, gpus=len(self.gpus), cpus=self.cpus,
                              memory_gb=self.memory_gb, hours=max(0.0, self._now() - self._started) / 3600,
                              utilisation=sum(use) / len(use) if use else None,
                              measured_gpu_joules=read_measured(self._measured))
        except ValueError:
            return None


def session_info(lang: str | None = None) -> SessionInfo:
    """The running session now: profile, node, GPUs, time left, GPU use (texts in ``lang``)."""
    return SessionProbe(lang=lang).info()


# ---- as text -----------------------------------------------------------------------------------------
def _number(value: float, lang: str, digits: int = 1) -> str:
    text = f"{value:.{digits}f}"
    return text.replace(".", ",") if lang == "nl" else text


def format_duration(seconds: int | None, end: datetime | None, lang: str, now: datetime | None = None) -> str:
    """Time left in words: ``2 h 05 min, until 17:30`` (``2 u 05 min, tot 17:30`` in Dutch)."""
    _ = gettext_for(lang)
    if seconds is None:
        return _("unknown")
    if seconds < 60:
        left = _("less than a minute")
    else:
        hours, minutes = divmod(seconds // 60, 60)
        left = (_("{hours} h {minutes:02d} min") if hours else _("{minutes} min")).format(hours=hours,
                                                                                       minutes=minutes)
    if end is None:
        return left
    now = now or datetime.now(end.tzinfo)
    clock = end.strftime("%H:%M") if end.date() == now.date() else end.strftime("%d-%m %H:%M")
    return _("{left}, until {time}").format(left=left, time=clock)


def format_gpus(info: SessionInfo) -> str:
    """The session's GPUs: ``1 × H200 (GPU 0)``, or ``none``."""
    _ = gettext_for(info.language)
    if not info.gpus:
        return _("none")
    return f"{len(info.gpus)} × {info.gpu_type.upper() or 'GPU'} (GPU {', '.join(info.gpus)})"


def format_gpu_use(gpu: GpuUse, lang: str) -> str:
    """One GPU's use in words: ``GPU 0 (NVIDIA H200): 45 % busy, memory 12.0 of 141.0 GB, 300 W, 54 °C``."""
    _ = gettext_for(lang)
    text = _("GPU {index} ({name}): {percent} % busy, memory {used} of {total} GB").format(
        index=gpu.index, name=gpu.name, percent=gpu.utilization_percent,
        used=_number(gpu.memory_used_bytes / 1e9, lang), total=_number(gpu.memory_total_bytes / 1e9, lang))
    if gpu.power_watts is not None:
        text += f", {gpu.power_watts:.0f} W"
    if gpu.temperature_celsius is not None:
        text += f", {gpu.temperature_celsius} °C"
    return text


def session_title(info: SessionInfo) -> str:
    """The panel's heading."""
    _ = gettext_for(info.language)
    if not info.job_id:
        return _("This is not running as a Slurm job.")
    return _("Your session (Slurm job {job})").format(job=info.job_id)


def session_rows(info: SessionInfo) -> list[tuple[str, str, str]]:
    """The panel's rows as (key, label, value), in the session's language."""
    _ = gettext_for(info.language)
    unknown = _("unknown")
    return [
        ("profile", _("Profile"), info.profile_name or unknown),
        ("node", _("Node"), info.node or unknown),
        ("gpus", _("GPUs"), format_gpus(info)),
        ("time_left", _("Time left"),
         format_duration(info.seconds_left, info.end_time, info.language, info.checked_at)),
    ]


def energy_row(info: SessionInfo) -> tuple[str, str]:
    """The energy slot as (label, value): the session's use so far, or that it is not available yet."""
    _ = gettext_for(info.language)
    if info.energy_kwh is None:
        return _("Energy use"), _("not available yet")
    return _("Energy use"), info.energy_text or f"{_number(info.energy_kwh, info.language, 2)} kWh"


def format_session(info: SessionInfo) -> str:
    """The whole panel as plain text."""
    rows = [(label, value) for _key, label, value in session_rows(info)]
    energy = energy_row(info)
    width = max(len(label) for label, _value in [*rows, energy])
    lines = [session_title(info), *(f"{label + ':':<{width + 1}} {value}" for label, value in rows)]
    _ = gettext_for(info.language)
    lines.append(_("GPU use") + ":")
    lines += [f"  {format_gpu_use(g, info.language)}" for g in info.gpu_use] or [f"  {info.gpu_note}"]
    lines.append(f"{energy[0] + ':':<{width + 1}} {energy[1]}")
    return "\n".join(lines)


def show_session(lang: str | None = None, refresh: float = 30.0) -> Any:
    """Show the session panel, which updates itself every ``refresh`` seconds; returns it.

    Where widgets cannot be shown (no ipywidgets, not in a notebook kernel) it prints the panel as
    text once and returns None.
    """
    try:
        from IPython import get_ipython
        from IPython.display import display

        from .widgets.panel import SessionPanel
    except ImportError:
        print(format_session(session_info(lang)))
        return None
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        print(format_session(session_info(lang)))
        return None
    panel = SessionPanel(SessionProbe(lang=lang), refresh=refresh)
    display(panel)
    return panel
