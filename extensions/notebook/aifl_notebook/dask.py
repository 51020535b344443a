"""Dask on the cluster from a session: a dask-jobqueue ``SLURMCluster`` with the site's settings.

The site's settings live in the notebook environment (``{sys.prefix}/etc/dask/``, which dask reads),
not in homes: ``jobqueue.yaml`` (one worker's size, the CPU partition, time limit) and ``lab.yaml``
(the sizes people choose from, the largest number of workers). Worker logs go to ``~/.aifl/logs/dask/``.

A cluster is its user's alone. The scheduler and workers speak TLS only and accept only workers and
clients holding this cluster's own temporary certificate (in ``~/.aifl/dask/``: a 700 folder, files of
mode 600), so other people on the same nodes can neither connect nor submit work. The dashboard has no
TCP port at all: the scheduler serves it on a unix socket in that folder, and the session's Jupyter
Server shows it to its logged-in user at ``{JUPYTERHUB_SERVICE_PREFIX}aifl/dask/<id>/status``
(:mod:`aifl_notebook.dask_dashboard`). A worker's job script is a new file of mode 600 in the log
folder until ``sbatch`` has read it, never a name in ``/tmp`` that someone else could take over.

Workers are Slurm jobs of the user, charged to the session job's own account and QOS. They are
cancelled when the cluster is closed, when the kernel exits or is terminated (atexit, SIGTERM,
SIGHUP: also the end of the session job), and they stop by themselves two seconds after their
scheduler (inside the kernel) is gone, so even a killed kernel leaves no job behind. Their time limit
never goes past the session's end.

Usage in a notebook::

    from aifl_notebook.dask import cluster_progress, start_cluster
    cluster = start_cluster("small")          # or start_cluster(minimum=0, maximum=8): adaptive
    client = cluster.get_client()
    print(cluster_progress(cluster).message)  # "2 of 4 workers started; the rest wait for a free node."
    cluster.close()
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import FrameType
from typing import Any

from .i18n import N_, gettext_for, language, translations
from .session import squeue_end_time

SETTINGS_KEY = "aifl.dask"
# Variables of the session job that must not reach the worker jobs: Slurm's (sbatch inside a job
# would otherwise take over the session's partition, GPUs, memory…), the session's GPU and its tokens.
_DROPPED_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "JUPYTERHUB_", "JPY_")
_DROPPED_NAMES = frozenset({"CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "ROCR_VISIBLE_DEVICES",
                            "NVIDIA_VISIBLE_DEVICES"})
_KEPT_NAMES = frozenset({"SLURM_CONF"})
_SLURM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_WALLTIME = re.compile(r"^(\d+):([0-5]\d):([0-5]\d)$")
MARGIN = 60  # seconds: a worker's time limit ends this long before the session's
DASHBOARD_ROUTE = "aifl/dask"  # under the session's base URL: the clusters' dashboards
_CLUSTER_ID = re.compile(r"^[0-9a-f]{16}$")


class DaskChoiceError(ValueError):
    """A size or a number of workers that is not allowed; the message is in the user's language."""


class DaskSetupError(RuntimeError):
    """Dask workers cannot be started here (no session job, no site settings)."""


# ---- choosing a size -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Scaling:
    """How many workers: a fixed number (``minimum == maximum``) or adaptive between the two."""

    minimum: int
    maximum: int

    @property
    def adaptive(self) -> bool:
        """Whether dask adds and removes workers with the work (between minimum and maximum)."""
        return self.minimum != self.maximum


SIZE_NAMES = (N_("small"), N_("medium"), N_("large"))  # the shipped sizes' names, for the catalog


def site_settings() -> dict[str, Any]:
    """The site's choices: ``aifl.dask`` in dask's configuration (``sizes``, ``default-size``, ``max-workers``)."""
    import dask.config

    settings = dask.config.get(SETTINGS_KEY, default=None)
    if not settings:
        raise DaskSetupError(f"the site's Dask settings ({SETTINGS_KEY}) are missing from {sys.prefix}/etc/dask")
    return dict(settings)


def size_label(name: str, workers: int, lang: str | None = None) -> str:
    """A size as people see it: ``small: 2 workers``."""
    text = translations(language(lang))
    return text.ngettext("{name}: {count} worker", "{name}: {count} workers", workers).format(
        name=text.gettext(name), count=workers)


def choose_scaling(size: str | None = None, minimum: int | None = None, maximum: int | None = None, *,
                   settings: Mapping[str, Any] | None = None, lang: str | None = None) -> Scaling:
    """Check a choice: one of the site's sizes, or ``minimum``/``maximum`` for adaptive scaling.

    Nothing given: the site's default size. Only ``maximum``: adaptive from 0; only ``minimum``:
    exactly that many. Raises :class:`DaskChoiceError` with a message in ``lang``.
    """
    _ = gettext_for(lang)
    settings = site_settings() if settings is None else settings
    sizes: Mapping[str, int] = settings["sizes"]
    limit = int(settings["max-workers"])
    if size is not None and (minimum is not None or maximum is not None):
        raise DaskChoiceError(_("Choose a size or a minimum and maximum, not both."))
    if minimum is None and maximum is None:
        size = settings.get("default-size", next(iter(sizes))) if size is None else size
        if size not in sizes:
            known = ", ".join(size_label(name, count, lang) for name, count in sizes.items())
            raise DaskChoiceError(_("There is no size “{size}”. Choose one of: {sizes}.").format(
                size=size, sizes=known))
        return Scaling(int(sizes[size]), int(sizes[size]))
    for value in (minimum, maximum):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise DaskChoiceError(_("The number of workers must be a whole number, not “{value}”.").format(
                value=value))
    low = 0 if minimum is None else minimum
    high = low if maximum is None else maximum
    if low < 0:
        raise DaskChoiceError(_("The minimum cannot be below 0."))
    if high < 1:
        raise DaskChoiceError(_("At least one worker is needed: set the maximum to 1 or more."))
    if low > high:
        raise DaskChoiceError(_("The minimum ({minimum}) is larger than the maximum ({maximum}).").format(
            minimum=low, maximum=high))
    if high > limit:
        raise DaskChoiceError(_("At most {limit} workers are possible; you asked for {count}.").format(
            limit=limit, count=high))
    return Scaling(low, high)


# ---- the session job: who pays, until when -------------------------------------------------------
@dataclass(frozen=True)
class SessionJob:
    """The session's own Slurm job: its id, account, QOS and end (a timestamp, or None if unknown)."""

    job_id: str
    account: str
    qos: str
    end_time: float | None


def session_job(env: Mapping[str, str] = os.environ, squeue: str | None = None,
                end_time: Callable[[str], float | None] = squeue_end_time) -> SessionJob:
    """The session job, its account and QOS as Slurm has them (``squeue -o %a|%q``).

    When squeue cannot answer, the job's environment (``SLURM_JOB_ACCOUNT``, ``SLURM_JOB_QOS``) is
    used; it comes second because Slurm 22.05 puts the QOS's description into ``SLURM_JOB_QOS``.
    """
    _ = gettext_for()
    job_id = env.get("SLURM_JOB_ID", "")
    if not job_id.isdigit():
        raise DaskSetupError(_("Dask workers start only from a session on the cluster (no Slurm job found)."))
    squeue = squeue or shutil.which("squeue") or "squeue"
    try:
        answer = subprocess.run([squeue, "-h", "-j", job_id, "-o", "%a|%q"], capture_output=True,
                                text=True, timeout=30, check=True, env=worker_environment(env)).stdout
        account, _sep, qos = answer.strip().partition("|")
    except (OSError, subprocess.SubprocessError) as error:
        account, qos = env.get("SLURM_JOB_ACCOUNT", ""), env.get("SLURM_JOB_QOS", "")
        if not (account and qos):
            raise DaskSetupError(_("Slurm does not answer: {error}").format(error=error)) from error
    for value in (account, qos):
        if not _SLURM_NAME.match(value):
            raise DaskSetupError(_("The session's Slurm account or QOS is unknown ({value!r}).").format(value=value))
    return SessionJob(job_id, account, qos, end_time(job_id))


def worker_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without what belongs to the session job alone: Slurm's variables, its GPUs, its tokens."""
    return {key: value for key, value in env.items()
            if key in _KEPT_NAMES or not (key.startswith(_DROPPED_PREFIXES) or key in _DROPPED_NAMES)}


def walltime(default: str, session_end: float | None, now: float) -> str:
    """The workers' time limit: the site's ``default`` (H:MM:SS), but never past the session's end."""
    match = _WALLTIME.match(default)
    if not match:
        raise DaskSetupError(f"jobqueue.slurm.walltime {default!r} is not H:MM:SS")
    hours, minutes, seconds = (int(part) for part in match.groups())
    limit = hours * 3600 + minutes * 60 + seconds
    if session_end is not None:
        limit = min(limit, max(60, int(session_end - now) - MARGIN))
    return f"{limit // 3600}:{limit % 3600 // 60:02d}:{limit % 60:02d}"


def cluster_options(job: SessionJob, default_walltime: str, *, home: Path,
                    prefix: str = sys.prefix, now: float | None = None) -> dict[str, Any]:
    """Keyword arguments for ``SLURMCluster`` beyond ``jobqueue.yaml``: account, QOS, time, paths."""
    return {
        "account": job.account,
        "job_extra_directives": [f"--qos={job.qos}"],
        "walltime": walltime(default_walltime, job.end_time, time.time() if now is None else now),
        "python": f"{prefix}/bin/python",
        "log_directory": str(home / ".aifl" / "logs" / "dask"),
        # TLS with this cluster's own temporary certificate (Security.temporary(), encryption
        # required): only holders of it (the workers read it from the private folder) may connect.
        "security": True,
        "shared_temp_directory": str(private_folder(home)),
    }


def private_folder(home: Path) -> Path:
    """The user's private Dask folder (mode 700): the clusters' certificates and dashboard sockets."""
    return home / ".aifl" / "dask"


def dashboard_socket(cluster_id: str, folder: Path) -> Path:
    """The unix socket in ``folder`` of cluster ``cluster_id``'s dashboard (16 hex digits, else ValueError)."""
    if not _CLUSTER_ID.match(cluster_id):
        raise ValueError(f"not a cluster id: {cluster_id!r}")
    return folder / f"{cluster_id}.sock"


def dashboard_link(cluster_id: str, env: Mapping[str, str] = os.environ) -> str:
    """The dashboard's address for the browser, through the session's own server (behind its login)."""
    return f"{env.get('JUPYTERHUB_SERVICE_PREFIX', '/')}{DASHBOARD_ROUTE}/{cluster_id}/status"


# ---- cleaning up: no worker job outlives the kernel ----------------------------------------------
class _Jobs:
    """The worker jobs this process submitted and has not cancelled yet."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.RLock()  # re-entrant: a signal handler may run while the main thread holds it
        self._installed = False

    def add(self, job_id: str) -> None:
        with self._lock:
            self._ids.add(job_id)

    def discard(self, job_id: str) -> None:
        with self._lock:
            self._ids.discard(job_id)

    def cancel_all(self) -> None:
        """Cancel every job still known, synchronously (also from atexit or a signal handler)."""
        with self._lock:
            ids, self._ids = sorted(self._ids), set()
        if ids:
            scancel = shutil.which("scancel") or "scancel"
            subprocess.run([scancel, *ids], capture_output=True, timeout=30, check=False,
                           env=worker_environment(os.environ))

    def install(self) -> None:
        """Cancel the jobs at exit and on SIGTERM/SIGHUP (once per process; signals: main thread only)."""
        if self._installed:
            return
        self._installed = True
        atexit.register(self.cancel_all)
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; atexit still holds
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous = signal.getsignal(signum)
            signal.signal(signum, self._handler(previous))

    def _handler(self, previous: Any) -> Callable[[int, FrameType | None], None]:
        def handle(signum: int, frame: FrameType | None) -> None:
            self.cancel_all()
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        return handle


JOBS = _Jobs()


@cache
def cluster_class() -> type:
    """The lab's ``SLURMCluster``: its jobs get a clean environment and are cancelled with the kernel.

    Made on first use: dask is imported only once a cluster starts.
    """
    import dask.config
    from dask_jobqueue.slurm import SLURMCluster, SLURMJob
    from distributed import Scheduler
    from distributed.core import Status
    from distributed.http.routing import RoutingApplication
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_unix_socket

    class LabScheduler(Scheduler):
        """A scheduler whose dashboard listens on a unix socket (mode 600) and on no TCP port."""

        def __init__(self, *args: Any, dashboard_socket: str, **kwargs: Any) -> None:
            self.dashboard_socket = dashboard_socket
            super().__init__(*args, **kwargs)

        def start_http_server(self, routes: list, dashboard_address: Any, default_port: int = 0,
                              ssl_options: Any = None) -> None:
            """Serve the dashboard on ``dashboard_socket`` only; ``dashboard_address`` is not used."""
            self.http_application = RoutingApplication(routes)
            self.http_server = HTTPServer(self.http_application)
            self.http_server.add_socket(bind_unix_socket(self.dashboard_socket, mode=0o600))
            self.http_server.address, self.http_server.port = self.dashboard_socket, 0
            self.services["dashboard"] = self.http_server

        async def close(self, *args: Any, **kwargs: Any) -> Any:
            """Close the scheduler and remove its dashboard's socket."""
            try:
                return await super().close(*args, **kwargs)
            finally:
                Path(self.dashboard_socket).unlink(missing_ok=True)

    class LabSlurmJob(SLURMJob):
        """A worker job: submitted without the session's Slurm variables, remembered until cancelled."""

        @contextmanager
        def job_file(self) -> Iterator[str]:
            """The job script as a new file of mode 600 in the job's log folder, not a freed name in /tmp."""
            handle, name = tempfile.mkstemp(suffix=".sh", prefix=".job-", dir=self.log_directory)
            try:
                with os.fdopen(handle, "w") as script:
                    script.write(self.job_script())
                yield name
            finally:
                Path(name).unlink(missing_ok=True)

        @staticmethod
        async def _call(cmd: list[str], **kwargs: Any) -> str:
            return await SLURMJob._call(cmd, env=worker_environment(os.environ), **kwargs)

        async def start(self) -> None:
            try:
                await super().start()
            except RuntimeError as exc:  # sbatch refused the job: keep Slurm's words for the progress line
                self.refusal = slurm_refusal(str(exc))
                self.status = Status.failed  # (a job left "created" makes cluster.close() fail)
                raise

        def _job_id_from_submit_output(self, out: str) -> str:
            job_id = super()._job_id_from_submit_output(out)
            JOBS.add(job_id)
            return job_id

        async def close(self) -> None:
            await super().close()
            JOBS.discard(self.job_id)

    class LabSlurmCluster(SLURMCluster):
        """A ``SLURMCluster`` of the lab (see :func:`start_cluster`); its dashboard is at ``dashboard_link``.

        The dashboard's socket is in ``shared_temp_directory``, the private folder the session's server
        looks in (:func:`cluster_options`).
        """

        job_cls = LabSlurmJob

        def __init__(self, *args: Any, shared_temp_directory: str, scheduler_options: dict | None = None,
                     **kwargs: Any) -> None:
            self.dashboard_id = secrets.token_hex(8)
            if scheduler_options is None:
                scheduler_options = dask.config.get("jobqueue.slurm.scheduler-options", default={})
            socket = dashboard_socket(self.dashboard_id, Path(shared_temp_directory))
            super().__init__(*args, shared_temp_directory=shared_temp_directory, scheduler_cls=LabScheduler,
                             scheduler_options={**scheduler_options, "dashboard_socket": str(socket)}, **kwargs)

        @property
        def dashboard_link(self) -> str:
            """The dashboard through the session's server: :func:`dashboard_link`."""
            return dashboard_link(self.dashboard_id)

    return LabSlurmCluster


def start_cluster(size: str | None = None, minimum: int | None = None, maximum: int | None = None, *,
                  lang: str | None = None, **overrides: Any) -> Any:
    """Start Dask workers as Slurm jobs: one of the site's sizes, or adaptive from ``minimum`` to ``maximum``.

    Sizes are ``"small"``, ``"medium"``, ``"large"`` (``lab.yaml``); ``overrides`` go to ``SLURMCluster``.
    Checks the choice first (:class:`DaskChoiceError`, nothing submitted), then returns the cluster at
    once; its workers start as Slurm finds room (see :func:`cluster_progress`).
    """
    scaling = choose_scaling(size, minimum, maximum, settings=site_settings(), lang=lang)
    import dask.config

    options = cluster_options(session_job(), dask.config.get("jobqueue.slurm.walltime"), home=Path.home())
    for folder in (options["log_directory"], options["shared_temp_directory"]):
        Path(folder).mkdir(mode=0o700, parents=True, exist_ok=True)
        Path(folder).chmod(0o700)  # also a folder made earlier by someone or something else
    JOBS.install()
    cluster = cluster_class()(**{**options, **overrides})
    if scaling.adaptive:
        cluster.adapt(minimum=scaling.minimum, maximum=scaling.maximum)
    else:
        cluster.scale(scaling.maximum)
    return cluster


# ---- progress ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Progress:
    """Where the workers are: ``started`` of ``wanted`` connected, ``waiting`` jobs queued in Slurm.

    ``refused``: worker jobs that Slurm would not take (the message then says why).
    """

    started: int
    wanted: int
    waiting: int
    message: str
    refused: int = 0


def slurm_refusal(error: str) -> str:
    """Slurm's own reason from a failed ``sbatch`` (dask-jobqueue's error text), such as ``Invalid qos``."""
    reasons = [line.split("error:", 1)[1].removeprefix(" Batch job submission failed:").strip()
               for line in error.splitlines() if "error:" in line]
    return next((r for r in reversed(reasons) if r), "sbatch failed")


def refusal_message(refused: int, reason: str, lang: str | None = None) -> str:
    """"Slurm refused N worker jobs: <reason>", in plain words."""
    text = translations(language(lang))
    return text.ngettext("Slurm refused {count} worker job: {reason}",
                         "Slurm refused {count} worker jobs: {reason}", refused).format(count=refused, reason=reason)


def progress_message(started: int, wanted: int, waiting: int, lang: str | None = None) -> str:
    """The progress in plain words, such as: 2 of 4 workers started; the rest wait for a free node."""
    text = translations(language(lang))
    if wanted == 0:
        return text.gettext("No workers now: they start when there is work.")
    if started >= wanted:
        return text.ngettext("{count} worker started.", "All {count} workers started.", wanted).format(
            count=wanted)
    if waiting:
        return text.ngettext("{started} of {wanted} worker started; the rest wait for a free node.",
                             "{started} of {wanted} workers started; the rest wait for a free node.",
                             wanted).format(started=started, wanted=wanted)
    return text.ngettext("{started} of {wanted} worker started; the rest are starting.",
                         "{started} of {wanted} workers started; the rest are starting.",
                         wanted).format(started=started, wanted=wanted)


def pending_jobs(job_ids: list[str], squeue: str | None = None) -> int:
    """How many of ``job_ids`` wait in Slurm's queue (state PENDING)."""
    if not job_ids:
        return 0
    squeue = squeue or shutil.which("squeue") or "squeue"
    try:
        answer = subprocess.run([squeue, "-h", "-j", ",".join(job_ids), "-o", "%T"], capture_output=True,
                                text=True, timeout=30, check=False, env=worker_environment(os.environ)).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return answer.split().count("PENDING")


def cluster_progress(cluster: Any, lang: str | None = None) -> Progress:
    """The progress of a cluster from :func:`start_cluster`, with a message in ``lang``."""
    wanted = len(cluster.worker_spec)
    started = min(wanted, len(cluster.scheduler_info.get("workers", {})))
    jobs = list(cluster.workers.values())
    ids = [str(job.job_id) for job in jobs if getattr(job, "job_id", None)]
    waiting = pending_jobs(ids) if started < wanted else 0
    message = progress_message(started, wanted, waiting, lang)
    refusals = [job.refusal for job in jobs if getattr(job, "refusal", "")]
    if refusals:
        message = f"{message} {refusal_message(len(refusals), refusals[-1], lang)}"
    return Progress(started, wanted, waiting, message, len(refusals))
