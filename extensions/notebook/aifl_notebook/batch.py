"""Run a notebook as a Slurm batch job with papermill, and keep the result.

From inside a session::

    from aifl_notebook.batch import BatchOptions, submit, list_runs, cancel
    run = submit(BatchOptions("analysis.ipynb", profile="gpu-1", hours=2, parameters={"epochs": 5}))
    list_runs()          # newest first: state, duration, link to the output notebook, the error if it failed
    cancel(run.run_id)

Each run gets its own folder ``~/batch-runs/<name>-<time>/``: a copy of the input notebook
(``input.ipynb``, so later edits do not change the run), the executed notebook (``output.ipynb``,
written by papermill, with the ``injected-parameters`` cell), the job's log (``run.log``), the batch
script (``job.sh``) and a small metadata file (``run.json``).

Only the hub's profiles are accepted (``{sys.prefix}/etc/aifl/profiles.json``, written by ``lab up``),
within their limits; a profile with ``allowed_groups`` only for members of those hub groups (asked
from the hub with the session's token; unknown groups mean no). Only ``.ipynb`` files inside the home
folder are accepted: no URLs (papermill would fetch them), no ``..`` or symbolic links leading out.
Every refusal is a :class:`BatchError` in the user's language, raised before anything is submitted.

The batch script is built by the pure function :func:`build_batch_script`: every value is checked
against a strict pattern and the command is quoted with :func:`shlex.quote`. ``sbatch`` runs with a
clean environment (no ``SLURM_*`` variables of the session, no hub token) and an explicit
``--export`` list; the job is charged to the account and QOS the hub gives batch work
(``AIFL_ACCOUNT``, ``AIFL_BATCH_QOS``), else to the session job's own.

Flexible work (``grid_quiet=True`` with a ``deadline``) is submitted held (``--hold``) and tagged in
its comment (``aifl-grid:deadline=…``); the hub's grid service releases it when the power grid is
quiet, or in time to finish by the deadline. :func:`list_runs` says when such a run is expected to
start (from the status the service publishes) and :func:`start_now` starts it at once instead.
"""

from __future__ import annotations

import json
import keyword
import math
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .energy import MEASURED_DIR
from .i18n import N_, gettext_for

RUNS_DIR = "batch-runs"
INPUT, OUTPUT, LOG, SCRIPT, META = "input.ipynb", "output.ipynb", "run.log", "job.sh", "run.json"
RESTARTS = "restarts.txt"  # the job writes the time of each restart after Slurm requeued it
JOB_NAME = "aifl-batch"
MAX_TEXT = 2000  # characters of a string parameter
SYSTEM_PATH = ("/usr/local/bin", "/usr/bin", "/bin")
# Session variables a batch job may keep (values checked); everything else, SLURM_* included, stays behind.
KEPT_VARIABLES = ("LANG", "LC_ALL", "TZ", "AIFL_LANG", "BOKEH_RESOURCES")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_PATH = re.compile(r"^/[A-Za-z0-9_./-]*\Z")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*\Z")
_ENV_VALUE = re.compile(r"^[A-Za-z0-9_.:/@+=-]{0,200}\Z")
_GPU_TYPE = re.compile(r"^[a-z0-9]{1,16}\Z")
_PARAMETER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_TEXT = re.compile(r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*\Z")
_BEGIN = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\Z")
ENERGY_AGENT = "aifl-energy-agent"  # next to python in the environment (aifl_notebook.energy_agent)
GRID_TAG = "aifl-grid"  # the comment the hub's grid service looks for (aifl_hub.release.TAG)
HELD_REASON = "JobHeldUser"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}\Z")
_JOB_ID = re.compile(r"^[0-9]{1,12}\Z")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")

Scalar = str | int | float | bool | None

# What Slurm's job states (squeue %T, sacct State) mean for a run.
STATES: dict[str, str] = {
    **dict.fromkeys(("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED",
                     "STOPPED"), "waiting"),
    **dict.fromkeys(("CONFIGURING", "RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"), "running"),
    "COMPLETED": "completed",
    "CANCELLED": "cancelled",
    **dict.fromkeys(("TIMEOUT", "DEADLINE"), "timeout"),
    **dict.fromkeys(("FAILED", "NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "SPECIAL_EXIT",
                     "REVOKED"), "failed"),
}
ACTIVE = frozenset({"waiting", "running"})
STATE_LABELS: dict[str, str] = {
    "waiting": N_("waiting"),
    "running": N_("running"),
    "completed": N_("completed"),
    "failed": N_("failed"),
    "cancelled": N_("cancelled"),
    "timeout": N_("stopped at its time limit"),
    "unknown": N_("state unknown"),
}


class BatchError(ValueError):
    """A batch run was refused (nothing was submitted); ``field`` names the option, ``message`` says why."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(message)


class ScriptError(ValueError):
    """A value is not safe to put into a batch script."""


@dataclass
class BatchOptions:
    """What the user asks for.

    ``notebook``: a path inside the home folder (relative paths are relative to it); ``profile``: a
    profile slug of the hub; ``hours``: the time limit (default: the profile's default); ``parameters``:
    values for the notebook's ``parameters`` cell (str, int, float, bool or None); ``begin``: the
    earliest start (a datetime or ISO text such as ``2026-12-01T22:00``); ``name``: the run's name
    (default: the notebook's name); ``grid_quiet``: start only when the power grid is quiet, and
    finish by ``deadline`` (a datetime or ISO text, required with ``grid_quiet``).
    """

    notebook: str | os.PathLike[str]
    profile: str
    hours: int | None = None
    parameters: Mapping[str, Scalar] = field(default_factory=dict)
    begin: datetime | str | None = None
    name: str = ""
    grid_quiet: bool = False
    deadline: datetime | str | None = None


@dataclass(frozen=True)
class Resources:
    """What a profile asks Slurm for, with the hours chosen."""

    partition: str
    gpus: int
    cpus: int
    memory_gb: int
    hours: int
    gpu_type: str = ""


@dataclass(frozen=True)
class BatchJob:
    """Everything the batch-script builder sees, all of it validated again there."""

    run_dir: str
    python: str
    workdir: str
    resources: Resources
    export_names: Sequence[str]
    path_dirs: Sequence[str]
    parameters: Mapping[str, Scalar] = field(default_factory=dict)
    account: str = ""
    qos: str = ""
    begin: str = ""
    job_name: str = JOB_NAME
    deadline: str = ""  # flexible work: held until the grid is quiet, finished by this time
    home: str = ""  # with GPUs: the job's energy meter writes <home>/.aifl/energy/job-<id>.json


@dataclass(frozen=True)
class BatchRun:
    """One run as :func:`list_runs` sees it. ``state`` is a key of :data:`STATE_LABELS`."""

    run_id: str
    folder: Path
    name: str
    notebook: str
    profile: str
    job_id: str
    submitted: str
    state: str
    slurm_state: str = ""
    duration: float | None = None
    error: str = ""
    url: str = ""
    parameters: Mapping[str, Scalar] = field(default_factory=dict)
    begin: str = ""
    deadline: str = ""
    grid_wait: bool = False
    expected_start: str = ""
    grid_reason: str = ""
    restarts: tuple[str, ...] = ()  # when the run started again after Slurm requeued it (ISO times)
    requeued_by: str = ""  # why Slurm requeued it last: "preempted", "node" or "requeued"

    @property
    def output(self) -> Path:
        """The executed notebook (exists once papermill started)."""
        return self.folder / OUTPUT

    @property
    def log(self) -> Path:
        """The job's log."""
        return self.folder / LOG

    @property
    def active(self) -> bool:
        """Whether the job still waits or runs (and can be cancelled)."""
        return self.state in ACTIVE

    def state_text(self, lang: str | None = None) -> str:
        """The state in words, in ``lang`` (default: the session's language)."""
        _ = gettext_for(lang)
        if self.grid_wait:
            if self.grid_reason == "cap":
                return _("waiting: flexible work in the grid's busy hours is at the facility's limit")
            if self.expected_start:
                return _("waiting for a quiet grid — expected to start around {time}").format(
                    time=_clock(self.expected_start))
            return _("waiting for a quiet grid")
        words = _(STATE_LABELS.get(self.state, STATE_LABELS["unknown"]))
        if not self.restarts:
            return words
        why = {"preempted": _("requeued: regional work needed the GPU"),
               "node": _("requeued: its node failed")}.get(self.requeued_by, _("requeued by Slurm"))
        return _("{state} — {why}, restarted from the start at {time}; the earlier output is kept beside it").format(
            state=words, why=why, time=_clock(self.restarts[-1]))


def _clock(moment: str, now: datetime | None = None) -> str:
    """``HH:MM`` for a time today, else ``YYYY-MM-DD HH:MM``."""
    try:
        when = datetime.fromisoformat(moment)
    except ValueError:
        return moment
    return when.strftime("%H:%M" if when.date() == (now or datetime.now()).date() else "%Y-%m-%d %H:%M")


# ---- checks (pure) -------------------------------------------------------------------------------------
def check_notebook(path: str | os.PathLike[str], home: Path, lang: str | None = None) -> Path:
    """The real path of notebook ``path`` (relative to ``home``), or :class:`BatchError`.

    Refused: URLs and other schemes, control characters, names not ending in ``.ipynb``, paths
    outside the home folder (also through ``..`` or a symbolic link), missing or non-regular files.
    """
    _ = gettext_for(lang)
    text = os.fspath(path) if isinstance(path, str | os.PathLike) else None
    if not isinstance(text, str) or not text.strip():
        raise BatchError("notebook", _("Give the path of a notebook in your home folder."))
    if not _TEXT.match(text):
        raise BatchError("notebook", _("The notebook's path contains control characters."))
    if _SCHEME.match(text) or "://" in text:
        raise BatchError("notebook", _("Only notebooks in your home folder can run as a batch job, "
                                       "not addresses such as {path}.").format(path=text))
    if not text.endswith(".ipynb"):
        raise BatchError("notebook", _("{path} is not a notebook (.ipynb file).").format(path=text))
    home = Path(os.path.normpath(home))
    candidate = Path(os.path.normpath(home / (text[2:] if text.startswith("~/") else text)))
    if not _inside(candidate, home):
        raise BatchError("notebook", _("{path} is outside your home folder.").format(path=text))
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise BatchError("notebook", _("There is no notebook {path}.").format(path=text)) from None
    if not _inside(real, home.resolve()):
        raise BatchError("notebook", _("{path} leads outside your home folder (a symbolic link).").format(path=text))
    if not real.is_file():
        raise BatchError("notebook", _("{path} is not a notebook (.ipynb file).").format(path=text))
    return real


def _inside(path: Path, folder: Path) -> bool:
    return path != folder and path.is_relative_to(folder)


def profile_hours(profile: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(min, max, default)`` hours of ``profile``: its ``range`` option for hours, else its fixed hours."""
    fixed = int(profile["slurm_override"]["hours"])
    for option in profile.get("profile_options", {}).values():
        bounds = option.get("range")
        if bounds and list(bounds.get("slurm_override", {})) == ["hours"]:
            return int(bounds["min"]), int(bounds["max"]), int(bounds.get("default", bounds["max"]))
    return 1, fixed, fixed


def check_profile(profiles: Mapping[str, Any], slug: Any, hours: Any,
                  groups: Callable[[], Collection[str] | None], lang: str | None = None) -> Resources:
    """The resources of profile ``slug`` for ``hours``, or :class:`BatchError`.

    ``profiles`` is the content of ``profiles.json``; ``groups`` returns the user's hub groups (None:
    unknown), asked only for a profile with ``allowed_groups``, which unknown groups never open.
    """
    _ = gettext_for(lang)
    by_slug = {p["slug"]: p for p in profiles.get("profile_list", [])}
    profile = by_slug.get(slug) if isinstance(slug, str) else None
    if profile is None:
        raise BatchError("profile", _("There is no profile {profile}. Choose one of: {choices}.").format(
            profile=slug, choices=", ".join(by_slug)))
    if profile.get("allowed_groups"):
        member_of = groups()
        if member_of is None or not set(profile["allowed_groups"]) & set(member_of):
            raise BatchError("profile", _("The profile {profile} is only for members of a group you are not in.")
                             .format(profile=slug))
    low, high, default = profile_hours(profile)
    if hours is None:
        hours = default
    if not isinstance(hours, int) or isinstance(hours, bool) or not low <= hours <= high:
        raise BatchError("hours", _("Hours must be a whole number from {min} to {max} for this profile.")
                         .format(min=low, max=high))
    override = profile["slurm_override"]
    return Resources(partition=override["partition"], gpus=int(override.get("gpus", 0)),
                     cpus=int(override["cpus"]), memory_gb=int(override["memory_gb"]), hours=hours,
                     gpu_type=profiles.get("gpu_type", "") if override.get("gpus") else "")


def check_parameters(parameters: Any, lang: str | None = None) -> dict[str, Scalar]:
    """The notebook parameters as a dict of names to JSON-able scalars, or :class:`BatchError`."""
    _ = gettext_for(lang)
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise BatchError("parameters", _("Parameters are names with values, such as {example}.")
                         .format(example='{"epochs": 5}'))
    checked: dict[str, Scalar] = {}
    for name, value in parameters.items():
        if not isinstance(name, str) or not _PARAMETER.match(name) or keyword.iskeyword(name):
            raise BatchError("parameters", _("{name} is not a valid parameter name: use letters, digits and _, "
                                             "not starting with a digit.").format(name=name))
        if isinstance(value, float) and not math.isfinite(value):
            raise BatchError("parameters", _("The value of {name} must be a finite number.").format(name=name))
        if isinstance(value, str) and (len(value) > MAX_TEXT or not _TEXT.match(value)):
            raise BatchError("parameters", _("The text of {name} must be one line of at most {max} characters.")
                             .format(name=name, max=MAX_TEXT))
        if value is not None and not isinstance(value, str | int | float | bool):
            raise BatchError("parameters", _("The value of {name} must be text, a number, true/false or null.")
                             .format(name=name))
        checked[name] = value
    return checked


def parse_parameters(text: str, lang: str | None = None) -> dict[str, Scalar]:
    """Parameters typed as a JSON object (``{"epochs": 5, "model": "small"}``); empty text: none."""
    _ = gettext_for(lang)
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise BatchError("parameters", _("Parameters are names with values, such as {example}.")
                         .format(example='{"epochs": 5}'))
    return check_parameters(value, lang)


def check_begin(begin: datetime | str | None, lang: str | None = None) -> str:
    """The earliest start as Slurm's ``--begin`` value (local time, ``YYYY-MM-DDTHH:MM:SS``); ``""`` for now."""
    _ = gettext_for(lang)
    if begin is None or (isinstance(begin, str) and not begin.strip()):
        return ""
    when = begin
    if isinstance(begin, str):
        try:
            when = datetime.fromisoformat(begin.strip())
        except ValueError:
            when = None
    if not isinstance(when, datetime):
        raise BatchError("begin", _("Give the start time as a date and time, such as {example}.")
                         .format(example="2026-12-01 22:00"))
    if when.tzinfo is not None:
        when = when.astimezone().replace(tzinfo=None)
    return when.strftime("%Y-%m-%dT%H:%M:%S")


def check_deadline(grid_quiet: Any, deadline: datetime | str | None, hours: int, begin: str,
                   now: datetime, lang: str | None = None) -> str:
    """The deadline of flexible work as ``YYYY-MM-DDTHH:MM:SS`` (``""`` when not flexible), or :class:`BatchError`.

    Refused: a deadline without ``grid_quiet``, ``grid_quiet`` without a deadline, a deadline in the
    past, and one that leaves less than the run's time limit after ``now`` (or after ``begin``).
    """
    _ = gettext_for(lang)
    if not isinstance(grid_quiet, bool):
        raise BatchError("grid_quiet", _("Waiting for a quiet grid is either on (True) or off (False)."))
    given = not (deadline is None or (isinstance(deadline, str) and not deadline.strip()))
    if not grid_quiet:
        if given:
            raise BatchError("deadline", _("A deadline is only used for a run that waits for a quiet grid."))
        return ""
    example = (now + timedelta(days=1)).strftime("%Y-%m-%d 08:00")
    if not given:
        raise BatchError("deadline", _("Say by when the run must be finished, such as {example}.")
                         .format(example=example))
    try:
        when = datetime.fromisoformat(check_begin(deadline, lang))
    except BatchError:
        raise BatchError("deadline", _("Give the deadline as a date and time, such as {example}.")
                         .format(example=example)) from None
    if when <= now:
        raise BatchError("deadline", _("The deadline {deadline} has already passed.").format(
            deadline=when.strftime("%Y-%m-%d %H:%M")))
    start = max(now, datetime.fromisoformat(begin)) if begin else now
    if when - start < timedelta(hours=hours):
        raise BatchError("deadline", _("The run's time limit is {hours} h, so the deadline must be {earliest} "
                                       "or later.").format(hours=hours,
                                                           earliest=(start + timedelta(hours=hours))
                                                           .strftime("%Y-%m-%d %H:%M")))
    return when.strftime("%Y-%m-%dT%H:%M:%S")


def run_name(name: str) -> str:
    """A safe name for a run folder and job: letters, digits, ``-`` and ``_`` (``notebook`` if nothing is left)."""
    return _UNSAFE.sub("-", name).strip("-_")[:40].strip("-_") or "notebook"


def papermill_arguments(parameters: Mapping[str, Scalar]) -> list[str]:
    """The command-line parameters: ``-r`` keeps text as it is, ``-p`` gives numbers, booleans, None."""
    argv: list[str] = []
    for name, value in parameters.items():
        if isinstance(value, str):
            argv += ["-r", name, value]
        elif value is None or isinstance(value, bool):
            argv += ["-p", name, str(value)]
        else:
            argv += ["-p", name, repr(value) if isinstance(value, float) else str(int(value))]
    return argv


# ---- the batch script (pure) ---------------------------------------------------------------------------
def _check(pattern: re.Pattern[str], value: Any, what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise ScriptError(f"{what} {value!r} is not allowed in a batch script")
    return value


def _count(value: Any, what: str, low: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ScriptError(f"{what} must be a whole number of at least {low}")
    return value


def build_batch_script(job: BatchJob) -> str:
    """Return the batch script that runs papermill for ``job``; :class:`ScriptError` on any unsafe value."""
    _check(_PATH, job.run_dir, "run folder")
    _check(_PATH, job.python, "python")
    if not isinstance(job.workdir, str) or not job.workdir.startswith("/") or not _TEXT.match(job.workdir):
        raise ScriptError(f"working folder {job.workdir!r} is not allowed in a batch script")
    _check(_NAME, job.job_name, "job name")
    for name in job.export_names:
        _check(_ENV_NAME, name, "environment variable")
    for directory in job.path_dirs:
        _check(_PATH, directory, "PATH entry")
    res = job.resources
    _check(_NAME, res.partition, "partition")
    for value, what in ((job.account, "account"), (job.qos, "QOS")):
        if value:
            _check(_NAME, value, what)
    if job.begin:
        _check(_BEGIN, job.begin, "begin time")
    if job.deadline:
        _check(_BEGIN, job.deadline, "deadline")
    _count(res.hours, "hours", 1)
    _count(res.cpus, "cpus", 1)
    _count(res.memory_gb, "memory", 1)
    _count(res.gpus, "gpus")
    for name, value in job.parameters.items():
        _check(_PARAMETER, name, "parameter name")
        if keyword.iskeyword(name):
            raise ScriptError(f"parameter name {name!r} is a Python keyword")
        if isinstance(value, str):
            _check(_TEXT, value, "parameter text")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ScriptError(f"parameter {name!r} is not a finite number")
        elif value is not None and not isinstance(value, int | float | bool):
            raise ScriptError(f"parameter {name!r} has an unsupported type")

    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job.job_name}",
        f"#SBATCH --output={job.run_dir}/{LOG}",
        # Batch work is requeued when regional work needs its GPU (or its node fails); a restart appends to
        # the log and keeps the earlier output beside the fresh one.
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --chdir={job.run_dir}",
        f"#SBATCH --export={','.join(job.export_names) or 'NONE'}",
        f"#SBATCH --partition={res.partition}",
        f"#SBATCH --time={res.hours:d}:00:00",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        f"#SBATCH --cpus-per-task={res.cpus:d}",
        f"#SBATCH --mem={res.memory_gb:d}G",
    ]
    if job.account:
        lines.append(f"#SBATCH --account={job.account}")
    if job.qos:
        lines.append(f"#SBATCH --qos={job.qos}")
    if res.gpus:
        gpu_type = f"{_check(_GPU_TYPE, res.gpu_type, 'GPU type')}:" if res.gpu_type else ""
        lines.append(f"#SBATCH --gres=gpu:{gpu_type}{res.gpus:d}")
    if job.begin:
        lines.append(f"#SBATCH --begin={job.begin}")
    if job.deadline:
        lines += ["#SBATCH --hold", f"#SBATCH --comment={GRID_TAG}:deadline={job.deadline}"]
    restarts, output, earlier = (shlex.quote(f"{job.run_dir}/{name}") for name in (RESTARTS, OUTPUT,
                                                                                     "output-before-restart-"))
    command = [job.python, "-m", "papermill", "--no-progress-bar", "--log-output", "--cwd", job.workdir,
               f"{job.run_dir}/{INPUT}", f"{job.run_dir}/{OUTPUT}", *papermill_arguments(job.parameters)]
    lines += [
        "set -euo pipefail",
        "umask 0077",
        "export PATH=" + ":".join(shlex.quote(d) for d in job.path_dirs),
        f'if [ "${{SLURM_RESTART_COUNT:-0}}" -gt 0 ]; then date +%Y-%m-%dT%H:%M:%S >> {restarts}; '
        f'if [ -f {output} ]; then mv {output} {earlier}"$SLURM_RESTART_COUNT".ipynb; fi; fi',
    ]
    if res.gpus and job.home:
        # The job's energy meter (NVML), as in a session: it ends by itself on a node without NVML.
        agent = shlex.quote(_check(_PATH, str(Path(job.python).with_name(ENERGY_AGENT)), "energy agent"))
        output = shlex.quote(f"{_check(_PATH, job.home, 'home')}/{MEASURED_DIR}/job-") + '"$SLURM_JOB_ID".json'
        lines.append(f"if [ -x {agent} ]; then {agent} --output {output} & fi")
    lines += ["exec " + " ".join(shlex.quote(arg) for arg in command), ""]
    return "\n".join(lines)


# ---- what Slurm and papermill report (pure) --------------------------------------------------------------
def run_state(slurm_state: str) -> str:
    """The run's state for a Slurm job state (``CANCELLED by 1000`` counts as ``CANCELLED``)."""
    words = slurm_state.strip().upper().split()
    return STATES.get(words[0].rstrip("+"), "unknown") if words else "unknown"


def parse_squeue(text: str) -> dict[str, tuple[str, str]]:
    """``squeue -h -o %i|%T|%S`` output as ``{job: (state, start)}``."""
    jobs: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and _JOB_ID.match(parts[0]):
            jobs[parts[0]] = (parts[1], parts[2])
    return jobs


def parse_sacct(text: str) -> dict[str, tuple[str, float | None]]:
    """``sacct -X -n -P -o JobIDRaw,State,ElapsedRaw`` output as ``{job: (state, seconds)}``."""
    jobs: dict[str, tuple[str, float | None]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and _JOB_ID.match(parts[0]):
            jobs[parts[0]] = (parts[1], float(parts[2]) if parts[2].isdigit() else None)
    return jobs


def requeue_causes(text: str) -> dict[str, str]:
    """Why each job was last requeued, from the earlier records of ``sacct -D -X -n -P -o JobIDRaw,State``.

    ``preempted`` (regional work took its GPU), ``node`` (its node failed) or ``requeued`` (otherwise).
    """
    records: dict[str, list[str]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 2 and _JOB_ID.match(parts[0]):
            records.setdefault(parts[0], []).append(parts[1].split(" ")[0])
    causes = {}
    for job, states in records.items():
        earlier = states[:-1]
        if earlier:
            causes[job] = {"PREEMPTED": "preempted", "NODE_FAIL": "node"}.get(earlier[-1], "requeued")
    return causes


def read_restarts(folder: Path) -> tuple[str, ...]:
    """The restart times the job wrote into ``folder`` (well-formed lines only; none without the file)."""
    try:
        text = (folder / RESTARTS).read_text(encoding="utf-8", errors="replace")[:10_000]
    except OSError:
        return ()
    return tuple(line for line in text.split() if _BEGIN.match(line))


def notebook_outcome(notebook: Mapping[str, Any]) -> tuple[bool | None, float | None, str]:
    """From an output notebook papermill wrote: (failed or None if unknown, duration, the error's message)."""
    meta = notebook.get("metadata", {}).get("papermill", {}) if isinstance(notebook, Mapping) else {}
    error = ""
    for cell in notebook.get("cells", []) if isinstance(notebook, Mapping) else []:
        for output in cell.get("outputs", []) if isinstance(cell, Mapping) else []:
            if isinstance(output, Mapping) and output.get("output_type") == "error":
                error = f"{output.get('ename', '')}: {output.get('evalue', '')}".strip(": ")
                break
        if error:
            break
    exception = meta.get("exception")
    duration = meta.get("duration")
    return (exception if isinstance(exception, bool) else None,
            float(duration) if isinstance(duration, int | float) else None, error)


def _since(start: str, now: datetime) -> float | None:
    try:
        return max(0.0, (now - datetime.fromisoformat(start)).total_seconds())
    except ValueError:
        return None


def describe_run(meta: Mapping[str, Any], folder: Path, queued: Mapping[str, tuple[str, str]],
                 accounted: Mapping[str, tuple[str, float | None]], output: Mapping[str, Any] | None,
                 log_tail: str = "", prefix: str = "/", now: datetime | None = None, *,
                 held: Collection[str] = (), grid_jobs: Mapping[str, Any] | None = None,
                 restarts: Sequence[str] = (), requeued_by: str = "") -> BatchRun:
    """A :class:`BatchRun` from its metadata, squeue's and sacct's answers and the output notebook.

    ``held``: jobs Slurm holds for their user (``JobHeldUser``); ``grid_jobs``: the grid service's
    published waiting jobs (``{job: {"reason", "expected_start"}}``); ``restarts``: when the job started
    again after a requeue (:func:`read_restarts`), ``requeued_by`` why (:func:`requeue_causes`).
    """
    now = now or datetime.now()
    job_id = str(meta.get("job_id", ""))
    slurm_state, duration = "", None
    if job_id in queued:
        slurm_state, start = queued[job_id]
        duration = _since(start, now) if run_state(slurm_state) == "running" else None
    elif job_id in accounted:
        slurm_state, duration = accounted[job_id]
    state = run_state(slurm_state)
    failed, nb_duration, error = notebook_outcome(output or {})
    if state == "unknown" and failed is not None:
        state = "failed" if failed else "completed"
    if state == "completed" and failed:
        state = "failed"
    if duration is None and state not in ACTIVE:
        duration = nb_duration
    if state in ("failed", "timeout") and not error:
        error = log_tail
    if state not in ("failed", "timeout"):
        error = ""
    run_id = folder.name
    deadline = str(meta.get("deadline", ""))
    grid_wait = bool(deadline) and state == "waiting" and job_id in held
    waiting = (grid_jobs or {}).get(job_id) if grid_wait else None
    waiting = waiting if isinstance(waiting, Mapping) else {}
    expected = waiting.get("expected_start")
    return BatchRun(run_id=run_id, folder=folder, name=str(meta.get("name", run_id)),
                    notebook=str(meta.get("notebook", "")), profile=str(meta.get("profile", "")),
                    job_id=job_id, submitted=str(meta.get("submitted", "")), state=state,
                    slurm_state=slurm_state, duration=duration, error=error,
                    url=f"{prefix}lab/tree/{quote(f'{RUNS_DIR}/{run_id}/{OUTPUT}')}",
                    parameters=dict(meta.get("parameters") or {}), begin=str(meta.get("begin", "")),
                    deadline=deadline, grid_wait=grid_wait,
                    expected_start=expected if isinstance(expected, str) and _BEGIN.match(expected) else "",
                    grid_reason=str(waiting.get("reason", "")), restarts=tuple(restarts),
                    requeued_by=requeued_by if restarts else "")


# ---- the session around it -------------------------------------------------------------------------------
def home_folder() -> Path:
    """The user's home folder (from the account, not from ``$HOME``)."""
    return Path(pwd.getpwuid(os.getuid()).pw_dir)


def current_notebook(env: Mapping[str, str] | None = None) -> Path | None:
    """The notebook this kernel belongs to (JupyterLab tells the kernel in ``JPY_SESSION_NAME``), if known."""
    name = (os.environ if env is None else env).get("JPY_SESSION_NAME", "")
    if not name.endswith(".ipynb"):
        return None
    path = Path(name)
    return path if path.is_absolute() else home_folder() / path


def profiles_file() -> Path:
    """Where ``lab up`` puts the hub's profiles for code inside sessions."""
    return Path(sys.prefix) / "etc" / "aifl" / "profiles.json"


def load_profiles(path: Path | None = None, lang: str | None = None) -> dict[str, Any]:
    """The hub's profiles (``profiles.json``), or :class:`BatchError` when this environment has none."""
    _ = gettext_for(lang)
    try:
        profiles = json.loads((path or profiles_file()).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        profiles = None
    if not isinstance(profiles, dict) or not isinstance(profiles.get("profile_list"), list):
        raise BatchError("profile", _("The lab's profiles are not available in this environment."))
    return profiles


def hub_groups(env: Mapping[str, str] | None = None, timeout: float = 10) -> frozenset[str] | None:
    """The user's hub groups (``GET {JUPYTERHUB_API_URL}/user`` with the session's token); None if unknown."""
    env = os.environ if env is None else env
    url, token = env.get("JUPYTERHUB_API_URL", ""), env.get("JUPYTERHUB_API_TOKEN", "")
    if not url.startswith(("http://", "https://")) or not token:
        return None
    request = urllib.request.Request(url.rstrip("/") + "/user",  # noqa: S310 - http(s) checked above
                                     headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            groups = json.load(response).get("groups")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        return None
    return frozenset(groups)


def _slurm(command: str, *args: str, env: Mapping[str, str] | None = None,
           timeout: float = 30) -> subprocess.CompletedProcess[str] | None:
    program = shutil.which(command)
    if not program:
        return None
    try:
        return subprocess.run([program, *args], capture_output=True, text=True, timeout=timeout, check=False,
                              env=None if env is None else dict(env))
    except (OSError, subprocess.TimeoutExpired):
        return None


def session_account(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The Slurm account and QOS for batch work (``""`` where unknown, e.g. outside a job).

    The hub's choice for batch work (``AIFL_ACCOUNT``, ``AIFL_BATCH_QOS``) where it gives one, else
    the session job's own (``SLURM_JOB_ACCOUNT``/``SLURM_JOB_QOS``, or ``squeue -j $SLURM_JOB_ID``).
    """
    env = os.environ if env is None else env
    account = env.get("AIFL_ACCOUNT") or env.get("SLURM_JOB_ACCOUNT", "")
    qos = env.get("AIFL_BATCH_QOS") or env.get("SLURM_JOB_QOS", "")
    job = env.get("SLURM_JOB_ID", "")
    if (not account or not qos) and _JOB_ID.match(job):
        result = _slurm("squeue", "-h", "-j", job, "-o", "%a|%q")
        if result and result.returncode == 0 and result.stdout.count("|") == 1:
            found_account, found_qos = result.stdout.strip().split("|")
            account, qos = account or found_account, qos or found_qos
    return (account if _NAME.match(account) else "", qos if _NAME.match(qos) else "")


def batch_environment(home: Path, user: str, env: Mapping[str, str]) -> dict[str, str]:
    """The whole environment of ``sbatch`` and so of the job: a fixed PATH, the account, a few kept settings."""
    clean = {"PATH": ":".join([str(Path(sys.prefix) / "bin"), *SYSTEM_PATH]), "HOME": str(home),
             "USER": user, "LOGNAME": user}
    clean.update({k: env[k] for k in KEPT_VARIABLES if env.get(k) and _ENV_VALUE.match(env[k])})
    slurm_conf = env.get("SLURM_CONF", "")
    if _PATH.match(slurm_conf):
        clean["SLURM_CONF"] = slurm_conf  # where Slurm's own configuration is; sbatch needs it, the job not
    clean.setdefault("LANG", "C.UTF-8")
    return clean


def _new_run_folder(home: Path, name: str, now: datetime) -> Path:
    runs = home / RUNS_DIR
    runs.mkdir(mode=0o700, exist_ok=True)
    stamp = now.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 100):
        folder = runs / (f"{name}-{stamp}" if attempt == 1 else f"{name}-{stamp}-{attempt}")
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(runs / f"{name}-{stamp}")


def submit(options: BatchOptions, *, lang: str | None = None, env: Mapping[str, str] | None = None,
           profiles: Mapping[str, Any] | None = None) -> BatchRun:
    """Check ``options``, copy the notebook into a new run folder and submit it; return the run.

    Raises :class:`BatchError` (in ``lang``, default the session's language) on bad input, before
    anything is created or submitted, and when Slurm refuses the job (its folder is then removed).
    """
    _ = gettext_for(lang)
    env = os.environ if env is None else env
    account_entry = pwd.getpwuid(os.getuid())
    home = Path(account_entry.pw_dir)
    source = check_notebook(options.notebook, home, lang)
    profiles = load_profiles(lang=lang) if profiles is None else profiles
    resources = check_profile(profiles, options.profile, options.hours, lambda: hub_groups(env), lang)
    parameters = check_parameters(options.parameters, lang)
    begin = check_begin(options.begin, lang)
    deadline = check_deadline(options.grid_quiet, options.deadline, resources.hours, begin, datetime.now(), lang)
    name = run_name(options.name or source.stem)
    if not _PATH.match(str(home)):
        raise BatchError("notebook", _("Your home folder's path cannot be used in a batch job."))
    account, qos = session_account(env)
    clean_env = batch_environment(home, account_entry.pw_name, env)

    now = datetime.now()
    folder = _new_run_folder(home, name, now)
    try:
        shutil.copyfile(source, folder / INPUT)
        job = BatchJob(run_dir=str(folder), python=str(Path(sys.prefix) / "bin" / "python"),
                       workdir=str(source.parent), resources=resources, export_names=sorted(clean_env),
                       path_dirs=clean_env["PATH"].split(":"), parameters=parameters, account=account, qos=qos,
                       begin=begin, deadline=deadline, home=str(home))
        (folder / SCRIPT).write_text(build_batch_script(job), encoding="utf-8")
        result = _slurm("sbatch", "--parsable", str(folder / SCRIPT), env=clean_env, timeout=60)
        job_id = result.stdout.strip().split(";")[0] if result and result.returncode == 0 else ""
        if not _JOB_ID.match(job_id):
            reason = (result.stderr.strip().splitlines() or [""])[-1] if result else _("sbatch was not found")
            raise BatchError("profile", _("Slurm did not accept the batch job: {reason}").format(reason=reason))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    meta = {"job_id": job_id, "name": name, "notebook": str(source.relative_to(home.resolve())),
            "profile": options.profile, "hours": resources.hours, "parameters": parameters, "begin": begin,
            "deadline": deadline, "submitted": now.isoformat(timespec="seconds")}
    (folder / META).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return describe_run(meta, folder, {job_id: ("PENDING", "")}, {}, None, prefix=_prefix(env),
                        held={job_id} if deadline else (), grid_jobs=grid_status().get("jobs"))


def _prefix(env: Mapping[str, str]) -> str:
    prefix = env.get("JUPYTERHUB_SERVICE_PREFIX", "/") or "/"
    return prefix if prefix.endswith("/") else prefix + "/"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _log_tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - 4096))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def list_runs(*, env: Mapping[str, str] | None = None, home: Path | None = None) -> list[BatchRun]:
    """The user's batch runs, newest first, with their state from Slurm (squeue, then sacct)."""
    env = os.environ if env is None else env
    home = home or home_folder()
    metas: list[tuple[Path, dict[str, Any]]] = []
    folders = (home / RUNS_DIR).iterdir() if (home / RUNS_DIR).is_dir() else iter(())
    for folder in folders:
        meta = _read_json(folder / META) if _RUN_ID.match(folder.name) and folder.is_dir() else None
        if isinstance(meta, dict) and _JOB_ID.match(str(meta.get("job_id", ""))):
            metas.append((folder, meta))
    metas.sort(key=lambda item: (str(item[1].get("submitted", "")), item[0].name), reverse=True)
    ids = [str(meta["job_id"]) for _, meta in metas]
    queued: dict[str, tuple[str, str]] = {}
    accounted: dict[str, tuple[str, float | None]] = {}
    if ids:
        result = _slurm("squeue", "-h", "-u", pwd.getpwuid(os.getuid()).pw_name, "-o", "%i|%T|%S")
        queued = parse_squeue(result.stdout) if result and result.returncode == 0 else {}
        rest = [i for i in ids if i not in queued]
        if rest:
            result = _slurm("sacct", "-X", "-n", "-P", "-j", ",".join(rest), "-o", "JobIDRaw,State,ElapsedRaw")
            accounted = parse_sacct(result.stdout) if result and result.returncode == 0 else {}
    flexible = [str(m["job_id"]) for _, m in metas
                if m.get("deadline") and run_state(queued.get(str(m["job_id"]), ("", ""))[0]) == "waiting"]
    held: set[str] = set()
    grid_jobs: Mapping[str, Any] = {}
    if flexible:
        result = _slurm("squeue", "-h", "-j", ",".join(flexible), "-o", "%i|%r")
        held = {line.split("|")[0] for line in (result.stdout.splitlines() if result and result.returncode == 0 else ())
                if line.strip().endswith("|" + HELD_REASON)}
        grid_jobs = grid_status().get("jobs") or {}
    restarts = {str(meta["job_id"]): read_restarts(folder) for folder, meta in metas}
    causes: dict[str, str] = {}
    if restarted := [job for job, times in restarts.items() if times]:
        result = _slurm("sacct", "-D", "-X", "-n", "-P", "-j", ",".join(restarted), "-o", "JobIDRaw,State")
        causes = requeue_causes(result.stdout) if result and result.returncode == 0 else {}
    runs = []
    for folder, meta in metas:
        output = _read_json(folder / OUTPUT)
        job = str(meta["job_id"])
        runs.append(describe_run(meta, folder, queued, accounted, output if isinstance(output, dict) else None,
                                 _log_tail(folder / LOG), _prefix(env), held=held, grid_jobs=grid_jobs,
                                 restarts=restarts[job], requeued_by=causes.get(job, "")))
    return runs


def energy_settings() -> dict[str, Any]:
    """What ``lab up`` gives sessions about energy (``etc/aifl/energy.json``): the model, the grid status file."""
    settings = _read_json(Path(sys.prefix) / "etc" / "aifl" / "energy.json")
    return settings if isinstance(settings, dict) else {}


def grid_status() -> dict[str, Any]:
    """The grid's status as the hub's grid service last published it (``{}`` when there is none)."""
    path = energy_settings().get("grid_status_file")
    status = _read_json(Path(path)) if isinstance(path, str) and _PATH.match(path) else None
    return status if isinstance(status, dict) else {}


GRID_LEVELS = {"quiet": N_("quiet"), "normal": N_("normal"), "busy": N_("busy")}


def grid_line(status: Mapping[str, Any], lang: str | None = None, now: datetime | None = None) -> str:
    """The grid now and its next quiet hours in words, from the grid service's ``status`` (``""`` without one)."""
    _ = gettext_for(lang)
    level = status.get("level")
    if level not in GRID_LEVELS:
        return ""
    text = _("The power grid is {level} now.").format(level=_(GRID_LEVELS[level]))
    if level == "quiet":
        return text
    for slot in status.get("forecast") or []:
        start = slot.get("start") if isinstance(slot, Mapping) else None
        if isinstance(start, str) and slot.get("level") == "quiet" and _BEGIN.match(start[:19]):
            return " ".join([text, _("The next quiet hours begin around {time}.").format(
                time=_clock(start[:19], now))])
    return " ".join([text, _("There are no quiet hours in the next 48 hours.")])


def _job_of_run(run_id: str, home: Path | None, _: Callable[[str], str]) -> str:
    """The Slurm job of run ``run_id`` (its folder's name), or :class:`BatchError` if there is no such run."""
    home = home or home_folder()
    meta = _read_json(home / RUNS_DIR / run_id / META) if isinstance(run_id, str) and _RUN_ID.match(run_id) else None
    job_id = str(meta.get("job_id", "")) if isinstance(meta, dict) else ""
    if not _JOB_ID.match(job_id):
        raise BatchError("run", _("There is no batch run {run}.").format(run=run_id))
    return job_id


def start_now(run_id: str, *, home: Path | None = None, lang: str | None = None) -> None:
    """Start a run that waits for a quiet grid now instead (``scontrol release``). :class:`BatchError` if it cannot."""
    _ = gettext_for(lang)
    result = _slurm("scontrol", "release", _job_of_run(run_id, home, _))
    if not result or result.returncode != 0:
        reason = (result.stderr.strip() if result else "") or _("scontrol was not found")
        raise BatchError("run", _("The batch run could not be started now: {reason}").format(reason=reason))


def cancel(run_id: str, *, home: Path | None = None, lang: str | None = None) -> None:
    """Cancel run ``run_id`` (its folder's name): ``scancel`` of its job. :class:`BatchError` if unknown."""
    _ = gettext_for(lang)
    result = _slurm("scancel", _job_of_run(run_id, home, _))
    if not result or result.returncode != 0:
        reason = (result.stderr.strip() if result else "") or _("scancel was not found")
        raise BatchError("run", _("The batch run could not be cancelled: {reason}").format(reason=reason))


def format_duration(seconds: float | None) -> str:
    """A duration as ``H:MM:SS`` (``""`` when unknown)."""
    if seconds is None:
        return ""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
