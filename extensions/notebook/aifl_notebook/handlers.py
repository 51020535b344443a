"""The Jupyter Server side of a session: ``GET {base_url}aifl/session`` and Slurm's save signal."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from .activity import watch_busy_kernels
from .session import SessionClock

SETTINGS_KEY = "aifl_session"


class SessionHandler(APIHandler):
    """Answer with :meth:`SessionClock.status`. Polling it is not activity: it keeps no session alive."""

    auth_resource = "api"
    _track_activity = False

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """The session's end, save signal, idleness and language as JSON."""
        clock: SessionClock = self.settings[SETTINGS_KEY]
        self.finish(json.dumps(await asyncio.to_thread(clock.status)))


def load(serverapp: Any) -> None:
    """Add the session API to ``serverapp`` and record Slurm's SIGUSR1 (the end is near)."""
    web_app = serverapp.web_app
    clock = SessionClock(os.environ, web_app.last_activity)
    web_app.settings[SETTINGS_KEY] = clock
    web_app.add_handlers(".*$", [(url_path_join(web_app.settings["base_url"], "aifl", "session"), SessionHandler)])
    watch_busy_kernels(serverapp, clock.idle_timeout)
    add_own_kernels(serverapp.kernel_spec_manager)

    def on_save_signal() -> None:
        clock.record_save_signal()
        serverapp.log.warning("aifl: Slurm's save signal arrived; the session ends in about %d s "
                              "(job %s)", clock.save_lead, clock.job_id or "?")

    # Replaces Jupyter Server's own SIGUSR1 handler (it prints the server's info).
    serverapp.io_loop.asyncio_loop.add_signal_handler(signal.SIGUSR1, on_save_signal)


def add_own_kernels(kernel_spec_manager: Any) -> None:
    """Offer the kernels the user registered (``ipykernel install --user``) besides the environment's own.

    JupyterHub's ``disable_user_config`` keeps configuration in the home folder from the server and, with
    it, the user's data folder, where those kernels live; only that ``kernels`` folder is added back.
    """
    own = str(Path(jupyter_data_dir()) / "kernels")
    if own not in kernel_spec_manager.kernel_dirs:
        kernel_spec_manager.kernel_dirs = [*kernel_spec_manager.kernel_dirs, own]
