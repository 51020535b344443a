"""A kernel busy computing is activity: the hub's idle culler must not stop a session whose kernel still works.

Jupyter Server counts a kernel as active only when it sends messages, so a long silent cell (training
that prints nothing) looks idle. While any kernel is busy, this module marks the server active under a
settings key ending in ``_last_activity``, which Jupyter Server adds to ``web_app.last_activity()`` (the
time that jupyterhub-singleuser reports to the hub every ``JUPYTERHUB_ACTIVITY_INTERVAL`` seconds).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tornado.ioloop import PeriodicCallback

BUSY_KEY = "aifl_busy_kernels_last_activity"


def any_kernel_busy(kernel_manager: Any) -> bool:
    """Whether a kernel of ``kernel_manager`` is executing now (its last status message said ``busy``)."""
    return any(getattr(kernel_manager.get_kernel(kernel_id), "execution_state", "") == "busy"
               for kernel_id in list(kernel_manager.list_kernel_ids()))


def mark_if_busy(settings: dict[str, Any], kernel_manager: Any) -> bool:
    """Record now as activity in ``settings`` when a kernel is busy; return whether one was."""
    busy = any_kernel_busy(kernel_manager)
    if busy:
        settings[BUSY_KEY] = datetime.now(UTC)
    return busy


def watch_busy_kernels(serverapp: Any, idle_timeout: float) -> PeriodicCallback | None:
    """Check for busy kernels often enough for an ``idle_timeout`` (seconds; 0: nothing is culled, no check)."""
    if idle_timeout <= 0:
        return None
    every = min(60.0, max(1.0, idle_timeout / 4))
    callback = PeriodicCallback(lambda: mark_if_busy(serverapp.web_app.settings, serverapp.kernel_manager),
                                every * 1000)
    callback.start()
    return callback
