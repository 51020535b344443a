"""Build the Slurm batch script for a session: a pure function, no I/O.

Every value that reaches the script is checked against a strict pattern here, even though it was
validated before (options allowlist, site schema): a value that could change the script's meaning
(a newline, a space in an #SBATCH line, a quote) raises :class:`ScriptError` instead.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from .options import SessionRequest

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PATH = re.compile(r"^/[A-Za-z0-9_.%/-]*$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_GPU_TYPE = re.compile(r"^[a-z0-9]{1,16}$")
ENERGY_AGENT = "aifl-energy-agent"  # next to the session command (aifl_notebook.energy_agent)


class ScriptError(ValueError):
    """A value is not safe to put into a batch script."""


@dataclass(frozen=True)
class JobSpec:
    """Everything about a session job that does not come from the user's options."""

    username: str
    home: str
    log_path: str
    command: Sequence[str]
    export_names: Sequence[str]
    path_dirs: Sequence[str]
    job_name: str = "aifl-lab"
    gpu_type: str = ""
    save_lead: int = 0  # seconds before the time limit at which Slurm sends SIGUSR1 (0: no signal)
    # A workshop's course material: (folder to copy from, folder in the home); copied once, never over work.
    material: tuple[str, str] | None = None


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ScriptError(f"{what} {value!r} is not allowed in a batch script")
    return value


def _walltime(hours: int) -> str:
    return f"{hours:d}:00:00"


def build_script(request: SessionRequest, job: JobSpec) -> str:
    """Return the batch script text for ``request`` run as ``job``."""
    _check(_NAME, job.username, "user name")
    _check(_PATH, job.home, "home directory")
    _check(_PATH, job.log_path, "log path")
    _check(_NAME, job.job_name, "job name")
    for name in job.export_names:
        _check(_ENV_NAME, name, "environment variable")
    for directory in job.path_dirs:
        _check(_PATH, directory, "PATH entry")
    for value, what in ((request.partition, "partition"), (request.account, "account"), (request.qos, "QOS")):
        _check(_NAME, value, what)
    if request.reservation:
        _check(_NAME, request.reservation, "reservation")
    numbers = {"hours": request.hours, "cpus": request.cpus, "memory": request.memory_gb, "gpus": request.gpus,
               "shards": request.shards, "save lead": job.save_lead}
    for what, number in numbers.items():
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise ScriptError(f"{what} must be a non-negative whole number")
    if request.gpus and request.shards:
        raise ScriptError("a session gets whole GPUs or a share of one, not both")
    if not job.command:
        raise ScriptError("the session command is empty")
    if job.material:
        _check(_PATH, job.material[0], "material folder")
        _check(_PATH, job.material[1], "material target")

    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job.job_name}",
        f"#SBATCH --output={job.log_path}",
        f"#SBATCH --chdir={job.home}",
        f"#SBATCH --export={','.join(job.export_names) or 'NONE'}",
        f"#SBATCH --partition={request.partition}",
        f"#SBATCH --account={request.account}",
        f"#SBATCH --qos={request.qos}",
        f"#SBATCH --time={_walltime(request.hours)}",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        # A session is interactive: when its node fails or it is preempted it ends (and the hub says so);
        # Slurm must not start a second JupyterLab later that nobody waits for.
        "#SBATCH --no-requeue",
        f"#SBATCH --cpus-per-task={request.cpus}",
        f"#SBATCH --mem={request.memory_gb}G",
    ]
    if request.reservation:
        lines.append(f"#SBATCH --reservation={request.reservation}")
    if job.save_lead:
        # The batch shell execs the server, so B: delivers the warning to it (it saves open notebooks).
        lines.append(f"#SBATCH --signal=B:USR1@{job.save_lead:d}")
    if request.gpus:
        gpu_type = f"{_check(_GPU_TYPE, job.gpu_type, 'GPU type')}:" if job.gpu_type else ""
        lines.append(f"#SBATCH --gres=gpu:{gpu_type}{request.gpus}")
    if request.shards:
        lines.append(f"#SBATCH --gres=shard:{request.shards}")
    lines += [
        "set -euo pipefail",
        "umask 0077",
        "export PATH=" + ":".join(shlex.quote(d) for d in job.path_dirs),
    ]
    if job.material:
        source, target = (shlex.quote(p) for p in job.material)
        lines.append(f"if [ -d {source} ] && [ ! -e {target} ]; then cp -R {source} {target}; fi")
    if request.gpus:
        # The job's energy meter (NVML) from the same environment, where it has one; it writes
        # ~/.aifl/energy/job-<id>.json and ends by itself on a node without NVML.
        agent = shlex.quote(_check(_PATH, str(PurePosixPath(job.command[0]).with_name(ENERGY_AGENT)), "energy agent"))
        output = shlex.quote(f"{job.home}/.aifl/energy/job-") + '"$SLURM_JOB_ID".json'
        lines.append(f"if [ -x {agent} ]; then {agent} --output {output} & fi")
    lines += [
        "exec " + " ".join(shlex.quote(arg) for arg in job.command),
        "",
    ]
    return "\n".join(lines)
