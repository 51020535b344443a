"""The session panel as an ipywidgets view over :mod:`aifl_notebook.panel` (which does all the work).

The panel reads the session once when it is made and then every ``refresh`` seconds in a background
thread, so the kernel stays free; :meth:`SessionPanel.stop` (or closing it) ends the updates.
"""

from __future__ import annotations

import threading
from typing import Any

import ipywidgets as widgets

from ..i18n import gettext_for
from ..panel import SessionInfo, SessionProbe, energy_row, format_gpu_use, session_rows, session_title


class SessionPanel(widgets.VBox):
    """The session's profile, node, GPUs, time left, GPU use and energy, kept up to date."""

    def __init__(self, probe: SessionProbe | None = None, refresh: float = 30.0, *, start: bool = True,
                 **kwargs: Any) -> None:
        self.probe = probe or SessionProbe()
        self.refresh = refresh
        self.info: SessionInfo | None = None
        self.title = widgets.Label(style={"font_weight": "bold"})
        self.labels: dict[str, widgets.Label] = {}
        self.values: dict[str, widgets.Label] = {}
        self.gpu_label = widgets.Label()
        self.gpu_rows = widgets.VBox()
        self.energy_label = widgets.Label()
        self.energy = widgets.Label()
        self.updated = widgets.Label(style={"font_size": "smaller", "text_color": "gray"})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        super().__init__(**kwargs)
        self.update()
        if start:
            self.start()

    def _grid(self, rows: list[tuple[str, str, str]]) -> widgets.GridBox:
        for key, _label, _value in rows:
            self.labels[key] = widgets.Label()
            self.values[key] = widgets.Label()
        cells = [w for key, _label, _value in rows for w in (self.labels[key], self.values[key])]
        cells += [self.gpu_label, self.gpu_rows, self.energy_label, self.energy]
        return widgets.GridBox(cells, layout=widgets.Layout(grid_template_columns="max-content auto",
                                                            grid_gap="2px 16px"))

    def update(self, info: SessionInfo | None = None) -> SessionInfo:
        """Show ``info`` (default: read the session now) and return it."""
        info = info or self.probe.info()
        rows = session_rows(info)
        if not self.children:
            self.children = [self.title, self._grid(rows), self.updated]
        _ = gettext_for(info.language)
        self.title.value = session_title(info)
        for key, label, value in rows:
            self.labels[key].value = label
            self.values[key].value = value
        self.gpu_label.value = _("GPU use")
        self._show_gpus(info)
        self.energy_label.value, self.energy.value = energy_row(info)
        self.updated.value = _("Updated at {time}").format(time=info.checked_at.strftime("%H:%M:%S"))
        self.info = info
        return info

    def _show_gpus(self, info: SessionInfo) -> None:
        """One line with a bar per GPU, or the note why there are no figures."""
        if not info.gpu_use:
            lines = [widgets.Label(info.gpu_note or "")]
        elif len(self.gpu_rows.children) == len(info.gpu_use) and all(
                isinstance(row, widgets.HBox) for row in self.gpu_rows.children):
            for row, gpu in zip(self.gpu_rows.children, info.gpu_use, strict=True):
                bar, text = row.children
                bar.value, text.value = gpu.utilization_percent, format_gpu_use(gpu, info.language)
            return
        else:
            lines = [widgets.HBox([widgets.IntProgress(value=gpu.utilization_percent, min=0, max=100,
                                                       layout=widgets.Layout(width="120px")),
                                   widgets.Label(format_gpu_use(gpu, info.language))])
                     for gpu in info.gpu_use]
        old, self.gpu_rows.children = self.gpu_rows.children, lines
        for row in old:
            row.close()

    def text(self) -> str:
        """What the panel shows, as plain text (one line per row)."""
        lines = [self.title.value]
        lines += [f"{self.labels[key].value}: {self.values[key].value}" for key in self.labels]
        for row in self.gpu_rows.children:
            label = row.children[-1] if isinstance(row, widgets.HBox) else row
            lines.append(f"{self.gpu_label.value}: {label.value}")
        lines.append(f"{self.energy_label.value}: {self.energy.value}")
        lines.append(self.updated.value)
        return "\n".join(lines)

    def start(self) -> None:
        """Update every ``refresh`` seconds in a background thread (until :meth:`stop`)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="aifl-session-panel", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh):
            self.update()

    def stop(self) -> None:
        """End the updates."""
        self._stop.set()

    @property
    def running(self) -> bool:
        """Whether the panel still updates itself."""
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def close(self) -> None:
        """Stop updating and close the panel with all its widgets."""
        self.stop()
        for child in self.children:
            _close_tree(child)
        super().close()


def _close_tree(widget: widgets.Widget) -> None:
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widget.close()
