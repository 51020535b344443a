"""SlurmLabSpawner: JupyterLab as a Slurm job, built on batchspawner's SlurmSpawner.

What differs from stock batchspawner 1.3.0 (see the project notes):

* user options are validated against the site's profile allowlist (:mod:`.options`) and only the
  validated :class:`~.options.SessionRequest` reaches the batch script, built by the pure
  :func:`~.script.build_script`; batchspawner's ``batch_script``/``req_*``/``exec_prefix`` traits
  are not used;
* Slurm commands run as argv lists (:mod:`.slurm`), as the user only through ``sudo -n -u``;
* nothing secret is logged (not the environment, which holds the API token);
* the job reports its port only once the server listens (:mod:`.api` accepts nothing but the port),
  so the hub's first readiness check succeeds;
* the job id is kept in the hub's state, so a restarted hub re-attaches to running sessions, and a
  job that ends outside the lab (``scancel``, node failure, time limit) is noticed and explained;
* waiting in the queue and starting are separate states with their own limits, and a waiting user
  sees the place in the queue, Slurm's reason in plain words and the expected start.
"""

from __future__ import annotations

import asyncio
import pwd
import time
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from batchspawner import SlurmSpawner
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy.orm import object_session
from tornado import web
from traitlets import Bool, Dict, Float, List, Unicode, default

from .i18n import gettext_for, pick_language
from .options import OptionsError, SessionRequest, profiles_by_slug, validate_options
from .queue import explain_reason, queue_place
from .script import JobSpec, build_script
from .site import Site, load_site
from .slurm import JobInfo, SlurmClient, SlurmError, SlurmUnavailable

LANG_COOKIE = "aifl-lang"
RESTARTED = "RESTARTED"  # last_end state of a start that a hub restart interrupted
_templates = Environment(loader=PackageLoader(__package__, "templates"), autoescape=select_autoescape())


class SessionFailed(RuntimeError):
    """A session could not start; the message is meant for the user (JupyterHub shows it as it is)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.jupyterhub_message = message


class SlurmLabSpawner(SlurmSpawner):
    """Start each user's JupyterLab as a Slurm job under their own Unix account."""

    site_file = Unicode(
        "/etc/aifl/site.yaml",
        help="Path of the validated site file (profiles, accounts, environments, Slurm location).",
    ).tag(config=True)

    sudo = Unicode(
        "/usr/bin/sudo",
        help="sudo used to run sbatch and scancel as the user; its sudoers rule allows only those.",
    ).tag(config=True)

    job_check_interval = Float(
        1.0,
        help="Seconds between Slurm queries while a session starts (the job's report wakes it at once).",
    ).tag(config=True)

    extra_path = List(
        Unicode(),
        ["/usr/local/bin", "/usr/bin", "/bin"],
        help="Directories after the environment's own bin directory on the job's PATH.",
    ).tag(config=True)

    # ---- configuration from the site file -------------------------------------------------
    @cached_property
    def site(self) -> Site:
        """The validated site file."""
        return load_site(self.site_file)

    @cached_property
    def slurm(self) -> SlurmClient:
        """The Slurm client commands of this site."""
        return SlurmClient(bin_dir=self.site["cluster"]["slurm_bin"], sudo=self.sudo)

    @property
    def environment_prefix(self) -> Path:
        """The notebook environment (built from images/) that sessions run in."""
        spawner = self.site["spawner"]
        return Path(spawner["environments_dir"]) / spawner["environment"]

    @default("poll_interval")
    def _poll_interval_default(self) -> int:
        return self.site["spawner"].get("poll_interval", 5)

    @property
    def queue_timeout(self) -> int:
        """Seconds a session may wait in the queue (site file ``spawner.queue_timeout``)."""
        return self.site["spawner"].get("queue_timeout", 86400)

    @property
    def startup_timeout(self) -> int:
        """Seconds JupyterLab may take to answer once its job runs (site file ``spawner.startup_timeout``)."""
        return self.site["spawner"].get("startup_timeout", 300)

    @default("start_timeout")
    def _start_timeout_default(self) -> int:
        # JupyterHub's single limit must never cut a wait short: start() enforces the two limits itself.
        return self.queue_timeout + self.startup_timeout + 60

    @default("http_timeout")
    def _http_timeout_default(self) -> int:
        return self.site["spawner"].get("http_timeout", 120)

    # ---- language ---------------------------------------------------------------------------
    lang = Unicode("", help="Language of the user's last spawn request (nl or en); set by the hub.")

    def _request_language(self, handler: Any = None) -> str:
        handler = handler or getattr(self, "handler", None)
        default_lang = self.site["site"].get("default_language", "en")
        if handler is None:
            return self.lang or default_lang
        return pick_language(handler.request.headers.get("Accept-Language"),
                             handler.get_cookie(LANG_COOKIE), default=default_lang)

    def _(self, text: str) -> str:
        """``text`` in the user's language."""
        return gettext_for(self.lang or self.site["site"].get("default_language", "en"))(text)

    # ---- user options -------------------------------------------------------------------------
    session_request: SessionRequest | None = None

    def check_user_options(self, options: Any, lang: str | None = None, handler: Any = None) -> SessionRequest:
        """Validate ``options``; raise HTTP 400 with a plain message (in the request's language) if not allowed."""
        if options is not None and not isinstance(options, dict):
            raise web.HTTPError(400, "user_options must be an object")
        try:
            return validate_options(self.site, options, lang or self._request_language(handler))
        except OptionsError as exc:
            error = web.HTTPError(400, exc.message)
            error.jupyterhub_message = exc.message  # shown as it is on JupyterHub's spawn page
            raise error from None

    @default("options_form")
    def _options_form_default(self):  # noqa: ANN202 - JupyterHub accepts a callable
        return self._render_options_form

    def _render_options_form(self, spawner: SlurmLabSpawner) -> str:
        lang = self._request_language()
        return _templates.get_template("options_form.html").render(
            profiles=list(profiles_by_slug(self.site).values()), lang=lang, _=gettext_for(lang),
            default_profile=self.site["spawner"]["default_profile"])

    def options_from_form(self, form_data: dict[str, list[str]]) -> dict[str, Any]:  # type: ignore[override]
        """Keep only validated options from the spawn form (or a ``/hub/spawn?...`` link)."""
        options = {k: v for k, v in form_data.items() if k != "_xsrf" and v not in ([""], "")}
        request = self.check_user_options(options)
        return {"profile": request.profile, "hours": request.hours}

    def options_from_query(self, query_data: dict[str, list[str]]) -> dict[str, Any]:
        """``/hub/spawn?profile=...`` links get exactly the form's validation."""
        return self.options_from_form(query_data)

    @default("apply_user_options")
    def _apply_user_options_default(self):  # noqa: ANN202 - JupyterHub's hook is a callable
        def apply(spawner: SlurmLabSpawner, user_options: dict[str, Any]) -> None:
            spawner.lang = spawner._request_language()
            spawner.session_request = spawner.check_user_options(user_options, spawner.lang)
        return apply

    # ---- the job ------------------------------------------------------------------------------
    def _account(self) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(self.user.name)
        except KeyError:
            raise SessionFailed(self._("Your account on the cluster is not ready yet. "
                                       "Ask the lab's administrator to approve it.")) from None

    def job_spec(self, env_names: list[str]) -> JobSpec:
        """The parts of the job that come from the site and the user's Unix account."""
        account = self._account()
        bin_dir = str(self.environment_prefix / "bin")
        log_dir = self.site["spawner"].get("job_log_dir", ".aifl/logs")
        return JobSpec(
            username=account.pw_name,
            home=account.pw_dir,
            log_path=f"{account.pw_dir}/{log_dir}/session-%j.log",
            command=[f"{bin_dir}/aifl-singleuser", *self.get_args()],
            export_names=sorted(env_names),
            path_dirs=[bin_dir, *self.extra_path],
            gpu_type=self.site["cluster"].get("gpu_nodes", {}).get("gpu_type", ""),
        )

    def get_env(self) -> dict[str, str]:
        """The job's environment: JupyterHub's variables plus a fixed PATH and locale."""
        env = super().get_env()
        env["PATH"] = ":".join([str(self.environment_prefix / "bin"), *self.extra_path])
        env.setdefault("LANG", "C.UTF-8")
        env["AIFL_LANG"] = self.lang or self.site["site"].get("default_language", "en")
        return env

    def log_path(self) -> str:
        """Where the current job's log is, as the user sees it."""
        log_dir = self.site["spawner"].get("job_log_dir", ".aifl/logs")
        return f"~/{log_dir}/session-{self.job_id or '%j'}.log"

    port_ready: asyncio.Event | None = None

    def set_port(self, port: int) -> None:
        """Called by the hub API when the job reports that its server listens on ``port``."""
        self.port = port
        if self.port_ready is not None:
            self.port_ready.set()

    async def start(self) -> tuple[str, int]:
        """Submit the session job and return its node and port once the server listens."""
        self.port = 0
        self.port_ready = asyncio.Event()
        self.last_end = {}
        request = self.session_request or self.check_user_options(self.user_options)
        self._account()  # a clear message before anything else if the user has no account yet
        env = self.get_env()
        script = build_script(request, self.job_spec(list(env)))
        try:
            self.job_id = await self.slurm.submit(self.user.name, script, env)
        except SlurmError as exc:
            self.log.error("Submitting a session for %s failed: %s", self.user.name, exc.stderr)
            reason = exc.stderr.splitlines()[-1] if exc.stderr else str(exc)
            for noise in ("sbatch: error: ", "Batch job submission failed: "):
                reason = reason.removeprefix(noise)
            raise SessionFailed(self._("The cluster did not accept the session: {reason}").format(
                reason=reason)) from None
        # Saved at once: a hub restarted before this start finishes still knows the job, and poll() then
        # cancels it instead of leaving it to hold a place nobody can reach. JupyterHub itself saves the
        # state only when the start has finished.
        self.starting = True
        self.orm_spawner.state = self.get_state()
        session = object_session(self.orm_spawner)
        if session is not None:
            session.commit()
        self.log.info("Submitted job %s for %s (profile %s)", self.job_id, self.user.name, request.profile)
        node = ""
        queued_at, running_at = time.monotonic(), 0.0
        while not (self.port and node):
            try:
                job = await self.slurm.job(self.job_id)
            except SlurmUnavailable:
                job = JobInfo(self.job_id, "UNKNOWN", "", "")
            if job is None:
                raise SessionFailed(self._ended_message(None))
            if job.state != "UNKNOWN" and not (job.pending or job.running):
                raise SessionFailed(self._ended_message(job.state))
            self.job_status = f"{job.state} {job.node}".strip()
            node = job.node if job.running else ""
            if node and self.port:
                break
            running_at = running_at or (time.monotonic() if job.running else 0.0)
            await self._check_limits(queued_at, running_at, node)
            # Once the job runs, the job's own report wakes us; Slurm is asked only now and then.
            interval = self.job_check_interval * (5 if job.running else 1)
            try:
                await asyncio.wait_for(self.port_ready.wait(), timeout=interval)
            except TimeoutError:
                pass
        self.log.info("Job %s of %s serves on %s:%s", self.job_id, self.user.name, node, self.port)
        self.starting = False
        await self._record_session(request.profile)
        return node, self.port

    async def _record_session(self, profile: str) -> None:
        """Keep what the home page shows about the running session: profile, node, GPUs, end time."""
        try:
            allocation = await self.slurm.allocation(self.job_id)
        except SlurmError as exc:
            self.log.warning("Could not read the allocation of job %s: %s", self.job_id, exc)
            allocation = None
        self.session = {"profile": profile} if allocation is None else {
            "profile": profile, "node": allocation.node, "gpus": allocation.gpus,
            "ends_at": allocation.ends_at.isoformat() if allocation.ends_at else ""}

    def session_card(self) -> list[tuple[str, str]]:
        """The running session in plain words for the home page: (label, value) rows in the user's language."""
        if not self.session or not self.job_id:
            return []
        profile = profiles_by_slug(self.site).get(self.session.get("profile", ""))
        lang = self.lang or self.site["site"].get("default_language", "en")
        rows = [(self._("Profile"), profile["display_name"][lang] if profile else self.session.get("profile", "")),
                (self._("Node"), self.session.get("node", "")),
                (self._("GPU"), self.session.get("gpus") or self._("none"))]
        if self.session.get("ends_at"):
            left = max(0, int((datetime.fromisoformat(self.session["ends_at"]) - datetime.now()).total_seconds()))
            rows.append((self._("Time left"), self._("{hours} h {minutes} min").format(
                hours=left // 3600, minutes=left % 3600 // 60)))
        return rows

    def _duration(self, seconds: int) -> str:
        """``seconds`` in words, in the user's language (seconds, minutes or hours)."""
        if seconds < 120:
            return self._("{n} seconds").format(n=seconds)
        if seconds < 7200:
            return self._("{n} minutes").format(n=round(seconds / 60))
        return self._("{n} hours").format(n=round(seconds / 3600))

    async def _check_limits(self, queued_at: float, running_at: float, node: str) -> None:
        """Give up, cancelling the job, when it waited too long in the queue or its server too long to answer."""
        now = time.monotonic()
        if not running_at and now - queued_at > self.queue_timeout:
            message = self._("No place came free within {duration}, so the request was withdrawn. "
                             "Try again later or choose a smaller profile.").format(
                duration=self._duration(self.queue_timeout))
        elif running_at and now - running_at > self.startup_timeout:
            message = self._("JupyterLab did not answer within {seconds} seconds after the job started on {node}, "
                             "so it was stopped. Its log is in your home folder: {log}").format(
                seconds=self.startup_timeout, node=node, log=self.log_path())
        else:
            return
        self.log.info("Job %s of %s passed its limit: cancelling it", self.job_id, self.user.name)
        await self.slurm.cancel(self.user.name, self.job_id)
        raise SessionFailed(message)

    def _ended_message(self, state: str | None) -> str:
        return self._("Your session's job ended before JupyterLab started (Slurm state: {state}). "
                      "Its log is in your home folder: {log}").format(
            state=state or self._("gone"), log=self.log_path())

    async def poll(self) -> int | None:
        """``None`` while the job is queued or running; otherwise record why it ended and return 1."""
        if not self.job_id:
            return 0
        try:
            job = await self.slurm.job(self.job_id)
        except SlurmError as exc:
            self.log.warning("Could not query job %s: %s", self.job_id, exc)
            return None
        if job is not None and (job.pending or job.running) and self.starting and not self._spawn_pending:
            # A start the hub lost in a restart: JupyterHub cannot resume it, so give the place back.
            self.log.info("Cancelling job %s of %s: its start was interrupted by a hub restart", self.job_id,
                          self.user.name)
            await self.slurm.cancel(self.user.name, self.job_id)
            self.last_end = {"job_id": self.job_id, "state": RESTARTED}
            self.clear_state()
            return 1
        if job is not None and (job.pending or job.running):
            self.job_status = f"{job.state} {job.node}".strip()
            return None
        state = job.state if job else "GONE"
        self.log.info("Job %s of %s ended outside the hub (%s)", self.job_id, self.user.name, state)
        self.last_end = {"job_id": self.job_id, "state": state}
        self.clear_state()
        return 1

    async def stop(self, now: bool = False) -> None:
        """Cancel the job; unless ``now``, wait (up to 5 s) until Slurm shows it gone."""
        if not self.job_id:
            return
        self.log.info("Stopping job %s of %s", self.job_id, self.user.name)
        await self.slurm.cancel(self.user.name, self.job_id)
        if now:
            return
        for _attempt in range(20):
            job = await self.slurm.job(self.job_id)
            if job is None or not (job.pending or job.running) or job.state == "COMPLETING":
                return
            await asyncio.sleep(0.25)

    async def waiting_message(self) -> str:
        """Why the job waits, its place in the queue and Slurm's expected start, in plain words."""
        message = self._("Waiting in the queue (job {job}).").format(job=self.job_id)
        try:
            job = await self.slurm.job(self.job_id)
            if job is None or not job.pending:
                return message
            reason = explain_reason(job.reason, self.lang or "en")
            place = None
            if self.session_request is not None:
                place = queue_place(self.job_id, await self.slurm.pending_in_partition(self.session_request.partition))
            start = await self.slurm.expected_start(self.job_id)
        except SlurmError as exc:
            self.log.warning("Could not read the queue for job %s: %s", self.job_id, exc)
            return message
        if place is not None:
            message = self._("Waiting in the queue: place {position} of {waiting}.").format(
                position=place.position, waiting=place.waiting)
        message += " " + self._("Reason: {reason}.").format(reason=reason)
        if start is not None:
            message += " " + self._("Expected to start around {time}.").format(time=start.strftime("%H:%M"))
        return message

    async def progress(self):  # noqa: ANN201 - an async generator of JupyterHub progress events
        """Progress events for the spawn page: queued (with reason and place), starting on a node."""
        last = ""
        while True:
            state, _, node = self.job_status.partition(" ")
            if not self.job_id:
                message = self._("Asking the cluster for a place…")
            elif state in ("PENDING", "CONFIGURING", "REQUEUED"):
                message = await self.waiting_message()
            elif node:
                message = self._("JupyterLab is starting on {node}.").format(node=node)
            else:
                message = self._("Checking the job…")
            if message != last:
                yield {"message": message}
                last = message
            await asyncio.sleep(2 if state == "PENDING" else 0.5)

    # ---- state kept in the hub database ------------------------------------------------------
    last_end = Dict(help="Why the last session ended outside the lab: job id and Slurm state (kept in hub state).")

    def _saved_state(self) -> dict[str, Any]:
        orm = getattr(self, "orm_spawner", None)
        return (orm.state if orm is not None else None) or {}

    # JupyterHub makes a fresh spawner object after a server stops, without load_state: read the saved state.
    @default("last_end")
    def _last_end_default(self) -> dict[str, str]:
        return dict(self._saved_state().get("last_end", {}))

    @default("lang")
    def _lang_default(self) -> str:
        return self._saved_state().get("lang", "")

    def end_message(self) -> str:
        """Why the last session ended outside the lab, in the user's language, or ''."""
        if not self.last_end:
            return ""
        if self.last_end.get("state") == RESTARTED:
            return self._("Your last session (job {job}) was still starting when the lab restarted, so it was "
                          "stopped and its place given back. Please start it again.").format(
                job=self.last_end.get("job_id", "?"))
        return self._("Your last session (job {job}) was ended outside the lab: Slurm reports {state}. "
                      "Your files are kept; the job log is in {log}.").format(
            job=self.last_end.get("job_id", "?"), state=self.last_end.get("state", "?"),
            log=f"~/{self.site['spawner'].get('job_log_dir', '.aifl/logs')}/session-{self.last_end.get('job_id')}.log")

    starting = Bool(False, help="True from the job's submission until its server answers (kept in hub state).")

    session = Dict(help="The running session's profile, node, GPU indices and end time (kept in hub state).")

    def clear_state(self) -> None:
        """Forget the job (batchspawner), that it was starting and the session; keep why the last one ended."""
        super().clear_state()
        self.starting = False
        self.session = {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore the job id (batchspawner), the language and why the last session ended."""
        super().load_state(state)
        self.starting = bool(state.get("starting", False))
        self.session = dict(state.get("session", {}))
        self.lang = state.get("lang", "")
        self.last_end = dict(state.get("last_end", {}))

    def get_state(self) -> dict[str, Any]:
        """Save what :meth:`load_state` restores."""
        state = super().get_state()
        if self.lang:
            state["lang"] = self.lang
        if self.starting:
            state["starting"] = True
        if self.session:
            state["session"] = self.session
        if self.last_end:
            state["last_end"] = self.last_end
        return state
