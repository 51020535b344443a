"""Batch runs as an ipywidgets view over :mod:`aifl_notebook.batch` (which does all the checking).

``BatchPanel()`` in a notebook shows a form (notebook, profile, hours, parameters as JSON, optional
start time; "run when the power grid is quiet, finished by …") and the user's runs with their state,
duration, a link to the output and Cancel (and *Start now* for a run that waits for a quiet grid).
"""

from __future__ import annotations

import html
from collections.abc import Collection
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from ..batch import (
    BatchError,
    BatchOptions,
    BatchRun,
    cancel,
    current_notebook,
    format_duration,
    grid_line,
    grid_status,
    home_folder,
    hub_groups,
    list_runs,
    load_profiles,
    parse_parameters,
    profile_hours,
    start_now,
    submit,
)
from ..i18n import gettext_for, language


def _text(value: Any, lang: str) -> str:
    """A profiles.json text (one string or ``{en, nl}``) in ``lang``."""
    return value if isinstance(value, str) else str(value.get(lang) or value.get("en", ""))


class BatchPanel(widgets.VBox):
    """Submit a notebook as a batch job and follow the runs."""

    def __init__(self, notebook: str | Path | None = None, lang: str | None = None, **kwargs: Any) -> None:
        self.lang = language(lang)
        _ = gettext_for(self.lang)
        self.message = widgets.HTML()
        self.runs = widgets.VBox()
        try:
            self.profiles = load_profiles(lang=self.lang)
        except BatchError as error:
            super().__init__([widgets.HTML(html.escape(error.message))], **kwargs)
            return
        groups: Collection[str] | None = None
        if any(p.get("allowed_groups") for p in self.profiles["profile_list"]):
            groups = hub_groups() or ()
        visible = [p for p in self.profiles["profile_list"]
                   if not p.get("allowed_groups") or set(p["allowed_groups"]) & set(groups or ())]
        self.by_slug = {p["slug"]: p for p in visible}
        self.notebook = widgets.Text(value=self._default_notebook(notebook), description=_("Notebook"),
                                     layout=widgets.Layout(width="60%"))
        self.profile = widgets.Dropdown(options=[(_text(p["display_name"], self.lang), p["slug"]) for p in visible],
                                        description=_("Profile"), layout=widgets.Layout(width="60%"))
        self.hours = widgets.BoundedIntText(description=_("Hours"), layout=widgets.Layout(width="200px"))
        self.parameters = widgets.Textarea(placeholder='{"epochs": 5, "model": "small"}',
                                           description=_("Parameters"), layout=widgets.Layout(width="60%"))
        self.begin = widgets.Text(placeholder="2026-12-01 22:00", description=_("Start at"),
                                  layout=widgets.Layout(width="320px"))
        self.grid_quiet = widgets.Checkbox(description=_("Run when the power grid is quiet"), indent=False)
        self.deadline = widgets.Text(placeholder="2026-12-01 08:00", description=_("Finished by"),
                                     layout=widgets.Layout(width="320px"))
        self.submit_button = widgets.Button(description=_("Run as a batch job"), button_style="primary")
        self.refresh_button = widgets.Button(description=_("Refresh"))
        self.profile.observe(self._set_hours, names="value")
        self._set_hours()
        self.submit_button.on_click(self._submit)
        self.refresh_button.on_click(lambda _button: self.refresh())
        form = [self.notebook, self.profile, self.hours, self.parameters, self.begin,
                widgets.HBox([self.grid_quiet, self.deadline]),
                widgets.HTML(html.escape(grid_line(grid_status(), self.lang))),
                widgets.HBox([self.submit_button, self.refresh_button]), self.message]
        title = _("Your batch runs")
        super().__init__([*form, widgets.HTML(f"<b>{html.escape(title)}</b>"), self.runs], **kwargs)
        self.refresh()

    @staticmethod
    def _default_notebook(notebook: str | Path | None) -> str:
        path = Path(notebook) if notebook else current_notebook()
        if path is None:
            return ""
        try:
            return str(path.relative_to(home_folder()))
        except ValueError:
            return str(path)

    def _set_hours(self, _change: Any = None) -> None:
        profile = self.by_slug.get(self.profile.value)
        if profile:
            low, high, default = profile_hours(profile)
            self.hours.min, self.hours.max, self.hours.value = low, high, default

    def _show(self, text: str, error: bool = False) -> None:
        color = "var(--jp-error-color1, #c00)" if error else "inherit"
        self.message.value = f'<span style="color: {color}">{html.escape(text)}</span>'

    def _submit(self, _button: Any) -> None:
        _ = gettext_for(self.lang)
        try:
            options = BatchOptions(notebook=self.notebook.value, profile=self.profile.value, hours=self.hours.value,
                                   parameters=parse_parameters(self.parameters.value, self.lang),
                                   begin=self.begin.value or None, grid_quiet=self.grid_quiet.value,
                                   deadline=self.deadline.value or None)
            run = submit(options, lang=self.lang)
        except BatchError as error:
            self._show(error.message, error=True)
            return
        self._show(_("Submitted as job {job}; the result will be in {folder}.").format(
            job=run.job_id, folder=f"~/{run.folder.parent.name}/{run.folder.name}"))
        self.refresh()

    def _cancel(self, run: BatchRun) -> None:
        _ = gettext_for(self.lang)
        try:
            cancel(run.run_id, lang=self.lang)
        except BatchError as error:
            self._show(error.message, error=True)
            return
        self._show(_("Job {job} is cancelled.").format(job=run.job_id))
        self.refresh()

    def _start_now(self, run: BatchRun) -> None:
        _ = gettext_for(self.lang)
        try:
            start_now(run.run_id, lang=self.lang)
        except BatchError as error:
            self._show(error.message, error=True)
            return
        self._show(_("Job {job} no longer waits for a quiet grid.").format(job=run.job_id))
        self.refresh()

    def refresh(self) -> list[BatchRun]:
        """Read the runs again and show them; return them."""
        _ = gettext_for(self.lang)
        runs = list_runs()
        self.runs.children = [self._row(run) for run in runs] or [widgets.HTML(html.escape(_("No batch runs yet.")))]
        return runs

    def _row(self, run: BatchRun) -> widgets.HBox:
        _ = gettext_for(self.lang)
        result = _("result")
        parts = [f"<b>{html.escape(run.name)}</b>", html.escape(run.state_text(self.lang)),
                 html.escape(format_duration(run.duration)),
                 f'<a href="{html.escape(run.url)}" target="_blank">{html.escape(result)}</a>']
        if run.error:
            parts.append(f'<span style="color: var(--jp-error-color1, #c00)">{html.escape(run.error)}</span>')
        row: list[widgets.Widget] = [widgets.HTML(" · ".join(p for p in parts if p))]
        if run.grid_wait:
            start = widgets.Button(description=_("Start now"), layout=widgets.Layout(width="auto"))
            start.on_click(lambda _button, run=run: self._start_now(run))
            row.append(start)
        if run.active:
            button = widgets.Button(description=_("Cancel"), button_style="warning",
                                    layout=widgets.Layout(width="auto"))
            button.on_click(lambda _button, run=run: self._cancel(run))
            row.append(button)
        return widgets.HBox(row)
