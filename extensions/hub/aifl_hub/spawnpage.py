"""Page handlers around starting a session: the spawn form knows the request, and Cancel really cancels.

* ``/hub/spawn`` is JupyterHub's own handler, except that the spawner also sees the request when the
  form is posted, so that a refused form is explained in the user's language, and that a GET never
  starts a session: a link such as ``/hub/spawn?profile=gpu-1`` (checked as before, a bad one is
  refused) only fills in the form, and the user starts it with the form's POST, which carries the
  XSRF token. A page elsewhere cannot make a visitor's browser take a GPU.
* ``POST /hub/aifl/cancel`` (a plain form with the XSRF token, so it works without JavaScript) stops
  a start that waits in the queue or is starting: the start is interrupted and the Slurm job cancelled.

:func:`install_page_handlers` swaps them into JupyterHub's page routes; call it from the hub config.
"""

from __future__ import annotations

import asyncio
from typing import Any

from jupyterhub import handlers
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.handlers.pages import SpawnHandler
from jupyterhub.utils import url_path_join
from tornado import web

from .options import form_field
from .spawnform import FormState

CANCEL_ROUTE = r"/aifl/cancel"


class LabSpawnHandler(SpawnHandler):
    """JupyterHub's spawn page; on POST the spawner gets the request like on GET."""

    def post(self, user_name: str | None = None, server_name: str = "", display_name: str = "") -> Any:
        """Hand the request to the spawner, then post as JupyterHub does."""
        user = self.current_user if user_name is None else self.find_user(user_name)
        if user is not None and not server_name:
            user.spawner.handler = self
        return super().post(user_name, server_name, display_name)

    async def _wrap_spawn_single_user(self, user: Any, server_name: str, display_name: str, spawner: Any,
                                      pending_url: str, options: dict[str, Any] | None = None) -> Any:
        """Start only from the posted form; on a GET show the form, filled in with the link's checked options."""
        if self.request.method == "POST":
            return await super()._wrap_spawn_single_user(user, server_name, display_name, spawner, pending_url,
                                                         options)
        slug = (options or {}).get("profile")
        if isinstance(slug, str) and hasattr(spawner, "form_state"):
            spawner.form_state = FormState(profile=slug, values={
                form_field(slug, key): str(value) for key, value in options.items() if key != "profile"})
        form = await spawner.get_options_form()
        self.finish(await self._render_form(for_user=user, spawner_options_form=form))
        return None


async def cancel_pending_start(handler: BaseHandler, user: Any) -> None:
    """Interrupt ``user``'s start that waits in the queue or is starting, and cancel its Slurm job."""
    spawner = user.spawner
    if spawner.pending != "spawn":
        return
    handler.log.info("%s cancels the start of %s", handler.current_user.name, spawner._log_name)
    if hasattr(spawner, "cancelled_by_user"):
        spawner.cancelled_by_user()
    if spawner._spawn_future and not spawner._spawn_future.done():
        spawner._spawn_future.cancel()
    # JupyterHub clears the pending flag once the interrupted start has unwound (as its API does).
    for _attempt in range(50):
        if spawner.pending != "spawn":
            break
        await asyncio.sleep(0.1)
    await handler.stop_single_user(user, spawner.name)


class CancelHandler(BaseHandler):
    """Cancel the user's own start that is still waiting or starting."""

    @web.authenticated
    async def post(self) -> None:
        """Interrupt the start, cancel its job, and go back to the home page."""
        await cancel_pending_start(self, self.current_user)
        self.redirect(url_path_join(self.hub.base_url, "home"))


def install_page_handlers() -> None:
    """Put our spawn and cancel handlers into JupyterHub's page routes."""
    routes = handlers.default_handlers
    routes[:] = [r for r in routes if r[0] != CANCEL_ROUTE]
    for i, route in enumerate(routes):
        if route[1] is SpawnHandler:
            routes[i] = (route[0], LabSpawnHandler, *route[2:])
    routes.append((CANCEL_ROUTE, CancelHandler))
