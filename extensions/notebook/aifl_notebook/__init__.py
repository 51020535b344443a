"""AI Factory Lab, notebook side: code that runs inside a user's session job.

Also a Jupyter Server extension (the session API, :mod:`aifl_notebook.handlers`) and, built from
``src/``, a JupyterLab extension that warns before the session ends.
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "aifl_notebook"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from .handlers import load

    load(serverapp)
