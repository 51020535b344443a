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
import os
import pwd
import time
from dataclasses import replace
from datetime import datetime
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from batchspawner import SlurmSpawner
from jinja2 import Environment, PackageLoader, select_autoescape
from jupyterhub import orm
from jupyterhub.utils import hash_token
from sqlalchemy.orm import object_session
from tornado import web
from traitlets import Bool, Dict, Float, List, Unicode, default

from .availability import ClusterWatch
from .availability import describe as describe_availability
from .energy import estimate_session, format_number
from .i18n import N_, gettext_for, pick_language
from .options import (
    FORM_PREFIX,
    OptionsError,
    SessionRequest,
    options_from_form,
    profile_list,
    profiles_by_slug,
    text,
    validate_options,
)
from .organisations import NotAllowed, batch_qos, charge, month_gpu_hours, organisation_of, shards_per_gpu
from .queue import explain_reason, queue_place
from .script import JobSpec, build_script
from .site import Site, load_site
from .slurm import JobInfo, SlurmClient, SlurmError, SlurmUnavailable, run_argv
from .spawnform import FormState, build_cards, last_used
from .workshops import Seat, seat_for

LANG_COOKIE = "aifl-lang"
RESTARTED = "RESTARTED"  # last_end state of a start that a hub restart interrupted
REQUEUED = "REQUEUED"  # last_end state of a session whose job went back to the queue after it ran
CANCELLED = "CANCELLED_BY_USER"  # last_end state of a start the user cancelled
PROGRESS = {"asking": 5, "queued": 20, "starting": 70}  # the spawn page's progress bar per phase
MKUSER = "/usr/local/sbin/aifl-mkuser"
NO_ORGANISATION = N_("GPU work needs an organisation, and your account is not linked to one yet. You can use "
                     "'Try it out' now; ask the lab's administrator to confirm your organisation.")
OVER_BUDGET_STOP = N_("Your organisation has used all its GPU hours for this month, so GPU work cannot start "
                      "until the 1st. You can still use 'Try it out'.")
_WATCHES: dict[str, ClusterWatch] = {}  # site file -> the cluster's cached availability snapshot
# Kept for the hub process, so that a start asks Slurm's accounting as little as possible:
USAGE_TTL = 60.0  # seconds an organisation's GPU hours of this month are reused
_USAGE: dict[str, tuple[float, float]] = {}  # organisation -> (when read, GPU hours this month)
_ASSOCIATED: set[tuple[str, str]] = set()  # (user, account) pairs known to have a Slurm association
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

    def environment_prefix(self, name: str | None = None) -> Path:
        """The notebook environment (built from images/<name>) that a session runs in."""
        spawner = self.site["spawner"]
        return Path(spawner["environments_dir"]) / (name or spawner["environment"])

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
    workshop_seat: Seat | None = None  # the workshop seat the current start uses
    form_state: FormState | None = None  # the last refused spawn form, shown again with its error

    @property
    def groups(self) -> list[str]:
        """The user's hub groups (they decide which profiles are open to the user)."""
        return [group.name for group in getattr(self.user, "groups", [])]

    def organisation(self) -> dict[str, Any] | None:
        """The user's organisation (hub group ``org-<name>``), or None before an administrator confirmed one."""
        return organisation_of(self.site, self.groups)

    async def organisation_usage(self) -> float | None:
        """GPU-hours the user's organisation used this month (None: no organisation, or Slurm did not answer)."""
        org = self.organisation()
        if org is None:
            return None
        cached = _USAGE.get(org["name"])
        if cached is not None and time.monotonic() - cached[0] < USAGE_TTL:
            return cached[1]
        try:
            used = await month_gpu_hours(self.site["cluster"]["slurm_bin"], org["name"])
        except SlurmError as exc:
            self.log.warning("Could not read the GPU hours of %s: %s", org["name"], exc)
            return None
        _USAGE[org["name"]] = (time.monotonic(), used)
        return used

    async def charged(self, request: SessionRequest) -> SessionRequest:
        """``request`` charged to the user's organisation (account and QOS); refused with a plain message.

        A seat in a workshop the user joined is charged to the workshop's organisation and runs in its
        reservation, with the course material copied into the home.
        """
        self.workshop_seat = seat_for(self.site, self.user.name, request.profile)
        if self.workshop_seat is not None:
            seat = self.workshop_seat
            await self._ensure_association(seat.account)
            return replace(request, account=seat.account, qos=seat.qos, reservation=seat.reservation)
        org = self.organisation()
        used = await self.organisation_usage() if org and org.get("gpu_hours_per_month") is not None else None
        profile = profiles_by_slug(self.site)[request.profile]
        try:
            where = charge(self.site, profile, request.gpus or request.shards, org, used)
        except NotAllowed as exc:
            message = NO_ORGANISATION if exc.reason == "no_organisation" else OVER_BUDGET_STOP
            raise SessionFailed(self._(message)) from None
        if org is not None and where.account == org["name"]:
            await self._ensure_association(org["name"])
        return replace(request, account=where.account, qos=where.qos)

    async def _ensure_association(self, account: str) -> None:
        """The user may submit under ``account``: add the Slurm association through the account helper if not."""
        if (self.user.name, account) in _ASSOCIATED:
            return
        sacctmgr = f"{self.site['cluster']['slurm_bin']}/sacctmgr"
        have = await run_argv([sacctmgr, "-nP", "show", "assoc", f"user={self.user.name}", f"account={account}",
                               "format=user"], timeout=30)
        if not have.strip():
            await run_argv([self.sudo, "-n", MKUSER, self.user.name, account], timeout=60)
        _ASSOCIATED.add((self.user.name, account))

    def check_user_options(self, options: Any, lang: str | None = None, handler: Any = None) -> SessionRequest:
        """Validate ``options``; raise HTTP 400 with a plain message (in the request's language) if not allowed."""
        if options is not None and not isinstance(options, dict):
            raise web.HTTPError(400, "user_options must be an object")
        lang = lang or self._request_language(handler)
        try:
            request = validate_options(self.site, options, lang, self.groups)
            if (request.gpus or request.shards) and "organisations" in self.site and self.organisation() is None \
                    and seat_for(self.site, self.user.name, request.profile) is None:
                raise OptionsError("profile", gettext_for(lang)(NO_ORGANISATION))
            return request
        except OptionsError as exc:
            error = web.HTTPError(400, exc.message)
            error.jupyterhub_message = exc.message  # shown as it is on JupyterHub's spawn page
            error.options_field = exc.field
            raise error from None

    @default("options_form")
    def _options_form_default(self):  # noqa: ANN202 - JupyterHub accepts a callable
        return self._render_options_form

    async def _render_options_form(self, spawner: SlurmLabSpawner) -> str:
        lang = self._request_language()
        state, self.form_state = self.form_state or last_used(self.user_options), None
        profiles = profile_list(self.site, self.groups)
        cards = build_cards(self.site, lang, self.groups, state=state,
                            availability=await self._availability(profiles, lang),
                            kwh_per_hour=self._kwh_per_hour)
        return _templates.get_template("options_form.html").render(
            cards=cards, form_error=state, lang=lang, _=gettext_for(lang), text=lambda value: text(value, lang),
            organisation=await self.organisation_line(lang))

    async def organisation_line(self, lang: str) -> tuple[str, str]:
        """What the spawn page and the home page say about the user's organisation: (kind, words)."""
        _ = gettext_for(lang)
        if "organisations" not in self.site:
            return ("", "")
        org = self.organisation()
        if org is None:
            return ("warning", _(NO_ORGANISATION))
        name = text(org["display_name"], lang)
        budget = org.get("gpu_hours_per_month")
        if budget is None:
            return ("info", _("You work for {organisation}.").format(organisation=name))
        used = await self.organisation_usage()
        if used is None:
            return ("info", _("You work for {organisation}; its GPU hours this month are not known right now.").format(
                organisation=name))
        words = _("You work for {organisation}, which used {used} of its {budget} GPU hours this month.").format(
            organisation=name, used=format_number(used, lang), budget=budget)
        if used < budget:
            return ("info", words)
        if self.site["organisations"]["over_budget"] == "stop":
            return ("danger", words + " " + _(OVER_BUDGET_STOP))
        return ("warning", words + " " + _("Its GPU sessions get a lower priority until the 1st."))

    async def _availability(self, profiles: list[dict[str, Any]], lang: str) -> dict[str, tuple[str, str]]:
        """Each profile's availability line from Slurm: slug -> (state, words). One snapshot serves all users."""
        watch = _WATCHES.get(self.site_file)
        if watch is None:
            watch = _WATCHES[self.site_file] = ClusterWatch.from_site(self.site)
        lines = {}
        for profile in profiles:
            found = await watch.availability(SimpleNamespace(**{"shards": 0, **profile["slurm_override"]}))
            lines[profile["slug"]] = (found.state, describe_availability(found, lang))
        return lines

    def _kwh_per_hour(self, profile: dict[str, Any]) -> float | None:
        """The profile's estimated energy per hour from the site's energy model (None without a model)."""
        energy = self.site.get("energy")
        if not energy:
            return None
        override = profile["slurm_override"]
        gpu_type = self.site["cluster"].get("gpu_nodes", {}).get("gpu_type")
        try:
            gpus = override["gpus"] + override.get("shards", 0) / max(shards_per_gpu(self.site), 1)
            return estimate_session(energy, gpu_type, gpus, override["cpus"], override["memory_gb"], 1).kwh
        except ValueError as exc:
            self.log.warning("No energy estimate for profile %s: %s", profile["slug"], exc)
            return None

    def options_from_form(self, form_data: dict[str, list[str]]) -> dict[str, Any]:  # type: ignore[override]
        """Keep only validated options from the spawn form; a refused form is shown again with the error."""
        options = options_from_form(form_data)
        try:
            request = self.check_user_options(options)
        except web.HTTPError as exc:
            slug = options.get("profile") if isinstance(options.get("profile"), str) else ""
            key = getattr(exc, "options_field", "")
            own = key != "profile" and key in options and f"{FORM_PREFIX}{slug}--{key}" in form_data
            self.form_state = FormState(
                profile=slug, field=f"{FORM_PREFIX}{slug}--{key}" if own else "profile" if key == "profile" else key,
                message=exc.jupyterhub_message,
                values={k: v[0] for k, v in form_data.items() if k.startswith(FORM_PREFIX) and len(v) == 1})
            raise
        return {"profile": request.profile, **request.choices}

    def options_from_query(self, query_data: dict[str, list[str]]) -> dict[str, Any]:
        """``/hub/spawn?profile=gpu-1&hours=4`` links: the REST keys, checked by the same allowlist."""
        request = self.check_user_options({k: v for k, v in query_data.items() if v not in ([""], "")})
        return {"profile": request.profile, **request.choices}

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

    def job_spec(self, env_names: list[str], environment: str | None = None) -> JobSpec:
        """The parts of the job that come from the site and the user's Unix account."""
        account = self._account()
        bin_dir = str(self.environment_prefix(environment) / "bin")
        log_dir = self.site["spawner"].get("job_log_dir", ".aifl/logs")
        return JobSpec(
            username=account.pw_name,
            home=account.pw_dir,
            log_path=f"{account.pw_dir}/{log_dir}/session-%j.log",
            command=[f"{bin_dir}/aifl-singleuser", *self.get_args()],
            export_names=sorted(env_names),
            path_dirs=[bin_dir, *self.extra_path],
            gpu_type=self.site["cluster"].get("gpu_nodes", {}).get("gpu_type", ""),
            save_lead=self.site["spawner"].get("save_before_end", 600),
            material=(seat.material, f"{account.pw_dir}/{seat.folder}")
            if (seat := self.workshop_seat) is not None and seat.material else None,
        )

    def get_env(self) -> dict[str, str]:
        """The job's environment: JupyterHub's variables plus a fixed PATH and locale."""
        env = super().get_env()
        environment = self.session_request.environment if self.session_request else None
        env["PATH"] = ":".join([str(self.environment_prefix(environment) / "bin"), *self.extra_path])
        env.setdefault("LANG", "C.UTF-8")
        env["AIFL_LANG"] = self.lang or self.site["site"].get("default_language", "en")
        # Dask reads the site's settings from the environment (jobqueue.yaml) and writes none into homes.
        env["DASK_CONFIG"] = str(self.environment_prefix(environment) / "etc" / "dask")
        # What the session's own warnings need: when Slurm asks it to save, and when an idle session is stopped.
        env["AIFL_SAVE_LEAD"] = str(self.site["spawner"].get("save_before_end", 600))
        idle = self.site["spawner"].get("idle_timeout", 0)
        env["AIFL_IDLE_TIMEOUT"] = str(idle)
        if idle:
            # The hub hears of activity (a busy kernel counts) several times within the idle limit.
            env["JUPYTERHUB_ACTIVITY_INTERVAL"] = str(min(300, max(5, idle // 4)))
        if self.session_request is not None:
            env["AIFL_PROFILE"] = self.session_request.profile
        # Batch work started from the session (notebook runs, Dask workers) is charged like this.
        org = self.organisation()
        if org is not None and "organisations" in self.site:
            env["AIFL_ACCOUNT"] = org["name"]
            env["AIFL_BATCH_QOS"] = batch_qos(self.site, org)
        return env

    def log_path(self) -> str:
        """Where the current job's log is, as the user sees it."""
        log_dir = self.site["spawner"].get("job_log_dir", ".aifl/logs")
        return f"~/{log_dir}/session-{self.job_id or '%j'}.log"

    port_ready: asyncio.Event | None = None

    def set_port(self, port: int) -> None:
        """Called by the hub API when the job reports that its server listens on ``port`` (saved at once)."""
        self.port = port
        self._save_state()
        if self.port_ready is not None:
            self.port_ready.set()

    def _save_state(self) -> None:
        """Commit the spawner's state now (JupyterHub itself saves it only when a start has finished)."""
        orm_spawner = getattr(self, "orm_spawner", None)
        if orm_spawner is None:
            return
        orm_spawner.state = self.get_state()
        session = object_session(orm_spawner)
        if session is not None:
            session.commit()

    @property
    def _starting_token_file(self) -> Path:
        """Where the token of a job that is still starting is kept (0600, the hub's own state folder).

        The job has its token from the moment it is submitted; a hub restarted before the job runs must
        give the job's server that same token back (see :meth:`_take_up_interrupted_start`). The file is
        removed once the start has finished, one way or another.
        """
        return Path(self.site["hub"]["state_dir"]) / "starting" / self.user.name

    def _keep_starting_token(self) -> None:
        folder = self._starting_token_file.parent
        folder.mkdir(mode=0o700, exist_ok=True)
        descriptor = os.open(self._starting_token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(self.api_token)

    def _forget_starting_token(self) -> None:
        self._starting_token_file.unlink(missing_ok=True)

    def _restore_token(self) -> bool:
        """Give this start the token the interrupted start's job holds; False when it is not known."""
        try:
            token = self._starting_token_file.read_text().strip()
        except OSError:
            return False
        if not token:
            return False
        db = self.orm_spawner and object_session(self.orm_spawner)
        if db is not None:
            fresh = orm.APIToken.find(db, self.api_token)  # made by JupyterHub for this start; not needed
            if fresh is not None:
                db.delete(fresh)
            # The job's server proves itself to the hub's OAuth with its token as the client secret.
            client = db.query(orm.OAuthClient).filter_by(identifier=self.oauth_client_id).one_or_none()
            if client is not None:
                client.secret = hash_token(token)
            db.commit()
        self.api_token = token
        return True

    async def _take_up_interrupted_start(self) -> bool:
        """Re-attach to the job of a start that a hub restart interrupted, if it still waits or runs.

        :mod:`.hubapp` saved that job under ``resume`` in the state (JupyterHub clears the spawner's
        own state before a start).
        """
        resume = self._saved_state().get("resume") or {}
        if not resume.get("job_id"):
            return False
        self.job_id = resume["job_id"]  # known at once, so that a stop during the check still cancels it
        try:
            job = await self.slurm.job(self.job_id)
        except SlurmError:
            job = None
        if job is None or not (job.pending or job.running) or not self._restore_token():
            if job is not None and (job.pending or job.running):
                self.log.warning("Job %s of %s cannot be taken up (its token is unknown): cancelling it",
                                 self.job_id, self.user.name)
                await self.slurm.cancel(self.user.name, self.job_id)
            self.job_id = ""
            return False
        self.submitted_at = float(resume.get("submitted_at", time.time()))
        self.port, self.starting = int(resume.get("port", 0)), True
        self._save_state()
        self.log.info("Taking up job %s of %s again after a hub restart", self.job_id, self.user.name)
        return True

    async def give_up_interrupted_start(self) -> None:
        """An interrupted start that cannot be taken up again: cancel its job and say so on the home page."""
        job_id = self.job_id or (self._saved_state().get("resume") or {}).get("job_id")
        if job_id:
            await self.slurm.cancel(self.user.name, job_id)
            self.last_end = {"job_id": job_id, "state": RESTARTED}
        self._forget_starting_token()
        self.clear_state()
        self._save_state()

    async def start(self) -> tuple[str, int]:
        """Submit the session job (or take up the one an interrupted start left) and return node and port."""
        self.port_ready = asyncio.Event()
        self.last_end = {}
        request = self.session_request = self.session_request or self.check_user_options(self.user_options)
        self._account()  # a clear message before anything else if the user has no account yet
        if not await self._take_up_interrupted_start():
            self.port = 0
            self.submitted_at = time.time()
            request = self.session_request = await self.charged(request)
            await self._submit(request)
        node = ""
        # The queue limit counts from the request, also across a hub restart.
        queued_at, running_at = time.monotonic() - max(0.0, time.time() - self.submitted_at), 0.0
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
        self._forget_starting_token()
        await self._record_session(request.profile)
        return node, self.port

    async def _submit(self, request: SessionRequest) -> None:
        """Submit the job for ``request`` as the user and save the state at once."""
        env = self.get_env()
        script = build_script(request, self.job_spec(list(env), request.environment))
        try:
            try:
                self.job_id = await self.slurm.submit(self.user.name, script, env)
            except SlurmError as exc:
                remembered = (self.user.name, request.account)
                if "Invalid account" not in (exc.stderr or "") or remembered not in _ASSOCIATED:
                    raise
                # The association was removed in Slurm since the hub remembered it: make it again, once.
                self.log.info("The Slurm association of %s with %s is gone: making it again", *remembered)
                _ASSOCIATED.discard(remembered)
                await self._ensure_association(request.account)
                self.job_id = await self.slurm.submit(self.user.name, script, env)
        except SlurmError as exc:
            self.log.error("Submitting a session for %s failed: %s", self.user.name, exc.stderr)
            reason = exc.stderr.splitlines()[-1] if exc.stderr else str(exc)
            for noise in ("sbatch: error: ", "Batch job submission failed: "):
                reason = reason.removeprefix(noise)
            raise SessionFailed(self._("The cluster did not accept the session: {reason}").format(
                reason=reason)) from None
        # Saved at once, so that a restarted hub knows the job and takes this start up again (see .hubapp).
        self.starting = True
        self._keep_starting_token()
        self._save_state()
        self.log.info("Submitted job %s for %s (profile %s)", self.job_id, self.user.name, request.profile)

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

    def session_card(self, lang: str | None = None) -> list[tuple[str, str]]:
        """The running session in plain words for the home page: (label, value) rows in ``lang``."""
        if not self.session or not self.job_id:
            return []
        profile = profiles_by_slug(self.site).get(self.session.get("profile", ""))
        lang = lang or self.lang or self.site["site"].get("default_language", "en")
        _ = gettext_for(lang)
        name = text(profile["display_name"], lang) if profile else self.session.get("profile", "")
        rows = [(_("Profile"), name),
                (_("Node"), self.session.get("node", "")),
                (_("GPU"), self.session.get("gpus") or _("none"))]
        if self.session.get("ends_at"):
            left = max(0, int((datetime.fromisoformat(self.session["ends_at"]) - datetime.now()).total_seconds()))
            rows.append((_("Time left"), _("{hours} h {minutes} min").format(
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
        node = self.session.get("node", "")
        if job is not None and job.pending and self.session:
            # It ran and is queued again (requeued by hand or by a site that allows it): this session is over,
            # and a JupyterLab started later would serve nobody.
            self.log.info("Job %s of %s went back to the queue (%s): ending the session", self.job_id,
                          self.user.name, job.reason)
            await self.slurm.cancel(self.user.name, self.job_id)
            state = REQUEUED
        elif job is not None and (job.pending or job.running):
            self.job_status = f"{job.state} {job.node}".strip()
            return None
        else:
            state = job.state if job else "GONE"
        self.log.info("Job %s of %s ended outside the hub (%s)", self.job_id, self.user.name, state)
        self.last_end = {"job_id": self.job_id, "state": state, "node": node}
        self.clear_state()
        return 1

    async def stop(self, now: bool = False) -> None:
        """Cancel the job; unless ``now``, wait (up to 5 s) until Slurm shows it gone."""
        self._forget_starting_token()
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
        """Progress events for the spawn page: queued (with reason and place), then starting on a node.

        Besides JupyterHub's ``progress`` and ``message``, each event names the phase (``aifl_phase``), so
        the page can say whether the session waits in the queue or is starting.
        """
        last = ""
        while True:
            phase = self.phase()
            if phase == "asking":
                message = self._("Asking the cluster for a place…")
            elif phase == "queued":
                message = await self.waiting_message()
            else:
                message = self._("JupyterLab is starting on {node}.").format(node=self.job_status.partition(" ")[2])
            if message != last:
                yield {"progress": PROGRESS[phase], "message": message, "aifl_phase": phase}
                last = message
            await asyncio.sleep(2 if phase == "queued" else 0.5)

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

    def cancelled_by_user(self) -> None:
        """The user cancels this start (the hub then stops it): remember it for the home page."""
        self.last_end = {"job_id": self.job_id or "", "state": CANCELLED}

    def end_message(self, lang: str | None = None) -> str:
        """Why the last session ended outside the lab, in ``lang`` (default: the user's language), or ''."""
        if not self.last_end:
            return ""
        _ = gettext_for(lang) if lang else self._
        if self.last_end.get("state") == CANCELLED:
            return _("You cancelled the start. Nothing runs for you now; start again whenever you like.")
        if self.last_end.get("state") == RESTARTED:
            return _("Your last session (job {job}) was still starting when the lab restarted, so it was "
                     "stopped and its place given back. Please start it again.").format(
                job=self.last_end.get("job_id", "?"))
        job, state = self.last_end.get("job_id", "?"), self.last_end.get("state", "?")
        log = f"~/{self.site['spawner'].get('job_log_dir', '.aifl/logs')}/session-{job}.log"
        node = self.last_end.get("node") or _("its node")
        why = {
            "NODE_FAIL": _("Your last session (job {job}) ended because the computer it ran on ({node}) stopped "
                           "working."),
            REQUEUED: _("Your last session (job {job}) ended because the computer it ran on ({node}) stopped "
                        "working."),
            "PREEMPTED": _("Your last session (job {job}) was stopped to make room for work with priority on "
                           "{node}."),
            "TIMEOUT": _("Your last session (job {job}) reached the end of the time you asked for."),
            "OUT_OF_MEMORY": _("Your last session (job {job}) needed more memory than its profile gives, so it "
                               "was stopped. Choose a profile with more memory next time."),
        }.get(state)
        if why is None:
            return _("Your last session (job {job}) was ended outside the lab: Slurm reports {state}. "
                     "Your files are kept; the job log is in {log}.").format(job=job, state=state, log=log)
        return why.format(job=job, node=node) + " " + _(
            "Your files in your home folder are safe; changes in open notebooks since they were last saved "
            "are lost. The job log is in {log}. Start a new session whenever you like.").format(log=log)

    starting = Bool(False, help="True from the job's submission until its server answers (kept in hub state).")

    session = Dict(help="The running session's profile, node, GPU indices and end time (kept in hub state).")

    submitted_at = Float(0.0, help="When the current start was asked for (epoch seconds; kept in hub state).")

    def phase(self) -> str:
        """Where a start is: ``asking`` (not yet submitted), ``queued`` or ``starting`` (its job runs)."""
        state, _, node = self.job_status.partition(" ")
        if not self.job_id:
            return "asking"
        return "starting" if node and state not in ("PENDING", "CONFIGURING", "REQUEUED") else "queued"

    def clear_state(self) -> None:
        """Forget the job (batchspawner), that it was starting and the session; keep why the last one ended."""
        super().clear_state()
        self.starting = False
        self.session = {}
        self.submitted_at = 0.0

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore the job id (batchspawner), the language and why the last session ended."""
        super().load_state(state)
        self.starting = bool(state.get("starting", False))
        self.session = dict(state.get("session", {}))
        self.submitted_at = float(state.get("submitted_at", 0.0))
        if self.starting:
            self.port = int(state.get("port", 0))
        self.lang = state.get("lang", "")
        self.last_end = dict(state.get("last_end", {}))

    def get_state(self) -> dict[str, Any]:
        """Save what :meth:`load_state` restores."""
        state = super().get_state()
        if self.lang:
            state["lang"] = self.lang
        if self.starting:
            state["starting"] = True
            state["submitted_at"] = self.submitted_at
            if self.port:
                state["port"] = self.port
        if self.session:
            state["session"] = self.session
        if self.last_end:
            state["last_end"] = self.last_end
        return state
