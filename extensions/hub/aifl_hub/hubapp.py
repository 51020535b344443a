"""The hub program: JupyterHub, plus taking up again the starts that a hub restart interrupted.

JupyterHub cannot resume a start that was in progress when it stopped: at start-up it checks such a
server like a running one and gives up on it after ``http_timeout``, while its Slurm job may still
wait in the queue. :class:`LabHub` sets those starts aside before JupyterHub checks its servers and,
once the hub answers, asks for them again through the hub's own REST API (with the ``lab`` service's
token), so they pass the same checks as any start. :class:`~.spawner.SlurmLabSpawner` then finds
the job it had submitted in its saved state and waits for it instead of submitting a new one: the
user keeps their place in the queue.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jupyterhub import orm
from jupyterhub.app import JupyterHub
from jupyterhub.utils import url_path_join
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

RESUME_SERVICE = "lab"
KEPT = ("lang", "last_end")  # state that stays with the user
RESUMED = ("job_id", "submitted_at", "port")  # state of the interrupted start, taken up by the spawner


class LabHub(JupyterHub):
    """JupyterHub that resumes interrupted session starts."""

    interrupted_starts: list[tuple[str, dict[str, Any] | None, str]]
    resuming: list[asyncio.Future[None]]

    async def init_spawners(self) -> int | None:
        """Set interrupted starts aside (their job is kept), then let JupyterHub check the running servers."""
        self.interrupted_starts = []
        for orm_spawner in self.db.query(orm.Spawner).filter(orm.Spawner.server != None):  # noqa: E711
            state = orm_spawner.state or {}
            if orm_spawner.name == "" and state.get("starting") and state.get("job_id"):
                self.log.info("The start of job %s for %s was interrupted by a restart; it is taken up again",
                              state["job_id"], orm_spawner.user.name)
                self.interrupted_starts.append((orm_spawner.user.name, orm_spawner.user_options,
                                                state.get("lang", "")))
                kept = {k: v for k, v in state.items() if k in KEPT}
                orm_spawner.state = {**kept, "resume": {k: state[k] for k in RESUMED if k in state}}
                server, orm_spawner.server = orm_spawner.server, None
                self.db.delete(server)
        self.db.commit()
        return await super().init_spawners()

    async def start(self) -> None:
        """Start JupyterHub, then ask again for each interrupted start."""
        await super().start()
        self.resuming = [asyncio.ensure_future(self._resume(*start)) for start in self.interrupted_starts]

    def _service_token(self) -> str | None:
        return next((s.get("api_token") for s in self.services if s.get("name") == RESUME_SERVICE), None)

    async def _resume(self, name: str, options: dict[str, Any] | None, lang: str) -> None:
        token = self._service_token()
        url = url_path_join(self.hub.url, "api/users", name, "server")
        try:
            if not token:
                raise OSError(f"there is no {RESUME_SERVICE!r} service token")
            headers = {"Authorization": f"token {token}"} | ({"Accept-Language": lang} if lang else {})
            request = HTTPRequest(url, method="POST", headers=headers, body=json.dumps({"user_options": options or {}}))
            await AsyncHTTPClient().fetch(request)
        except (HTTPClientError, OSError) as exc:
            # Give the place back rather than leave a job nobody can reach.
            self.log.error("Resuming the start of %s failed (%s): its job is cancelled", name, exc)
            spawner = self.users[name].spawner
            if hasattr(spawner, "give_up_interrupted_start"):
                await spawner.give_up_interrupted_start()


main = LabHub.launch_instance
