"""A busy kernel counts as activity (``aifl_notebook.activity``), through Jupyter Server's own last-activity hook."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from aifl_notebook.activity import BUSY_KEY, mark_if_busy, watch_busy_kernels
from jupyter_server.serverapp import ServerWebApplication

STARTED = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class FakeKernels:
    """Kernels with the execution states Jupyter Server's kernel manager records from their status messages."""

    def __init__(self, *states: str) -> None:
        self.kernels = {f"k{i}": SimpleNamespace(execution_state=state) for i, state in enumerate(states)}
        self.last_kernel_activity = STARTED

    def list_kernel_ids(self) -> list[str]:
        return list(self.kernels)

    def get_kernel(self, kernel_id: str) -> SimpleNamespace:
        return self.kernels[kernel_id]


def server_settings(kernels: FakeKernels) -> dict:
    return {"started": STARTED, "kernel_manager": kernels, "last_activity_times": {}}


def last_activity(settings: dict) -> datetime:
    """What Jupyter Server itself reports as the server's last activity for these settings."""
    return ServerWebApplication.last_activity(SimpleNamespace(settings=settings))


def test_idle_kernels_leave_the_last_activity_as_it_was() -> None:
    settings = server_settings(FakeKernels("idle", "starting"))
    assert mark_if_busy(settings, settings["kernel_manager"]) is False
    assert BUSY_KEY not in settings and last_activity(settings) == STARTED


def test_a_busy_kernel_makes_the_server_active_now() -> None:
    settings = server_settings(FakeKernels("idle", "busy"))
    before = datetime.now(UTC)
    assert mark_if_busy(settings, settings["kernel_manager"]) is True
    assert before <= last_activity(settings) <= datetime.now(UTC) + timedelta(seconds=1)


def test_no_check_runs_where_nothing_is_culled_and_one_runs_where_sessions_are() -> None:
    kernels = FakeKernels("busy")
    serverapp = SimpleNamespace(web_app=SimpleNamespace(settings=server_settings(kernels)), kernel_manager=kernels)
    assert watch_busy_kernels(serverapp, 0) is None

    async def watched() -> None:
        callback = watch_busy_kernels(serverapp, 4)  # checks every second
        assert callback is not None and callback.callback_time == 1000
        await asyncio.sleep(1.3)
        callback.stop()

    asyncio.run(watched())
    assert serverapp.web_app.settings[BUSY_KEY] > STARTED
