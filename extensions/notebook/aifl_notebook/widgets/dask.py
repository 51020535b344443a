"""Dask workers on the cluster as an ipywidgets view over :mod:`aifl_notebook.dask` (which does the work).

``DaskPanel()`` in a notebook: choose a size (or a minimum and maximum for adaptive scaling), start,
follow the workers as Slurm starts them, open the dashboard, close. The cluster is ``panel.cluster``
(``client = panel.cluster.get_client()``). Progress is read every ``refresh`` seconds in a background
thread while a cluster is open, so the kernel stays free.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ..dask import (
    DaskChoiceError,
    DaskSetupError,
    Progress,
    cluster_progress,
    site_settings,
    size_label,
    start_cluster,
)
from ..i18n import gettext_for, language

ADAPTIVE = "adaptive"


class DaskPanel(widgets.VBox):
    """Start, follow and close a Dask cluster whose workers are Slurm jobs.

    ``state`` is ``idle`` (nothing started), ``starting`` (workers wait or start), ``running`` (all
    wanted workers are there) or ``closed``. ``start`` and ``progress`` are injectable for tests.
    """

    def __init__(self, lang: str | None = None, *, refresh: float = 2.0,
                 start: Callable[..., Any] = start_cluster,
                 progress: Callable[[Any, str], Progress] = cluster_progress,
                 settings: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.lang = language(lang)
        _ = gettext_for(self.lang)
        self.refresh = refresh
        self._start, self._progress = start, progress
        self.cluster: Any = None
        self.state = "idle"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.status = widgets.HTML()
        self.dashboard = widgets.HTML()
        try:
            self.settings = settings or site_settings()
        except DaskSetupError as error:
            super().__init__([self.status], **kwargs)
            self._show(str(error), error=True)
            return
        sizes = self.settings["sizes"]
        default = self.settings.get("default-size", next(iter(sizes)))
        choices = [(size_label(name, count, self.lang), name) for name, count in sizes.items()]
        self.size = widgets.Dropdown(options=[*choices, (_("adaptive: between a minimum and a maximum"), ADAPTIVE)],
                                     value=default, description=_("Size"), layout=widgets.Layout(width="420px"))
        self.minimum = widgets.IntText(value=0, description=_("Minimum"), layout=widgets.Layout(width="200px"))
        self.maximum = widgets.IntText(value=sizes[default], description=_("Maximum"),
                                       layout=widgets.Layout(width="200px"))
        self.limits = widgets.HBox([self.minimum, self.maximum], layout=widgets.Layout(display="none"))
        self.start_button = widgets.Button(description=_("Start workers"), button_style="primary")
        self.close_button = widgets.Button(description=_("Close the cluster"), disabled=True)
        self.size.observe(self._show_limits, names="value")
        self.start_button.on_click(lambda _button: self.start())
        self.close_button.on_click(lambda _button: self.close())
        super().__init__([self.size, self.limits, widgets.HBox([self.start_button, self.close_button]),
                          self.status, self.dashboard], **kwargs)

    def _show_limits(self, _change: Any = None) -> None:
        self.limits.layout.display = "flex" if self.size.value == ADAPTIVE else "none"

    def _show(self, text: str, error: bool = False) -> None:
        color = "var(--jp-error-color1, #c00)" if error else "inherit"
        self.status.value = f'<span style="color: {color}">{html.escape(text)}</span>'

    def start(self) -> None:
        """Start a cluster of the chosen size; a wrong choice is shown and nothing is submitted."""
        _ = gettext_for(self.lang)
        if self.cluster is not None:
            return
        if self.size.value == ADAPTIVE:
            choice: dict[str, Any] = {"minimum": self.minimum.value, "maximum": self.maximum.value}
        else:
            choice = {"size": self.size.value}
        try:
            self.cluster = self._start(**choice, lang=self.lang)
        except (DaskChoiceError, DaskSetupError) as error:
            self._show(str(error), error=True)
            return
        except (OSError, RuntimeError, ValueError) as error:
            self._show(_("The workers could not be started: {error}").format(error=error), error=True)
            return
        self.state = "starting"
        self.start_button.disabled, self.close_button.disabled = True, False
        link = self.cluster.dashboard_link
        if link:
            text = html.escape(_("Dashboard"))
            self.dashboard.value = f'<a href="{html.escape(link)}" target="_blank">{text}</a>'
        self.update()
        self._stop.clear()
        self._thread = threading.Thread(target=self._follow, name="aifl-dask-progress", daemon=True)
        self._thread.start()

    def update(self) -> Progress | None:
        """Read the workers' progress now and show it (None when no cluster is open)."""
        if self.cluster is None:
            return None
        progress = self._progress(self.cluster, self.lang)
        self.state = "running" if progress.started >= progress.wanted else "starting"
        self._show(progress.message)
        return progress

    def _follow(self) -> None:
        while not self._stop.wait(self.refresh):
            try:
                self.update()
            except (OSError, RuntimeError, KeyError, AttributeError):
                continue  # the cluster is closing, or squeue did not answer this time

    def close(self) -> None:
        """Close the cluster: its workers' jobs are cancelled."""
        _ = gettext_for(self.lang)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.refresh + 5)
            self._thread = None
        if self.cluster is None:
            return
        cluster, self.cluster = self.cluster, None
        cluster.close()
        self.state = "closed"
        self.start_button.disabled, self.close_button.disabled = False, True
        self.dashboard.value = ""
        self._show(_("The cluster is closed; its workers are stopped."))
