"""The dashboards of the session's Dask clusters, for the session's logged-in user only.

A cluster of :mod:`aifl_notebook.dask` serves its dashboard on a unix socket in the user's private
folder (``~/.aifl/dask/<id>.sock``: mode 600 in a 700 folder), not on a TCP port, so other people on
the node cannot read it. This Jupyter Server extension passes ``{base_url}aifl/dask/<id>/…`` (pages
and websockets) to that socket with jupyter-server-proxy's handler, which first checks the hub's login.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jupyter_server.utils import url_path_join
from jupyter_server_proxy.handlers import LocalProxyHandler, ProxyHandler
from tornado import web

from .dask import DASHBOARD_ROUTE, dashboard_socket, private_folder
from .i18n import gettext_for


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "aifl_notebook.dask_dashboard"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    web_app = serverapp.web_app
    route = url_path_join(web_app.settings["base_url"], DASHBOARD_ROUTE, r"([0-9a-f]{16})(/.*|)")
    web_app.add_handlers(".*$", [(route, DashboardHandler, {"absolute_url": False})])


class ClusterClosed(web.HTTPError):
    """No dashboard socket for this id: the cluster is closed (or never was)."""

    def __init__(self) -> None:
        super().__init__(404, "no Dask dashboard socket")


class DashboardHandler(LocalProxyHandler):
    """Proxy to the dashboard socket of the cluster named in the address (its id) in the user's folder."""

    def _aim(self, cluster_id: str) -> None:
        socket = dashboard_socket(cluster_id, private_folder(Path.home()))
        if not socket.is_socket():
            raise ClusterClosed
        self.unix_socket = str(socket)
        self.proxy_base = url_path_join(DASHBOARD_ROUTE, cluster_id)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """A closed cluster is said in plain words, in the session's language; other errors as usual."""
        if isinstance(kwargs.get("exc_info", (None, None, None))[1], ClusterClosed):
            _ = gettext_for()
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(_("There is no open Dask dashboard here: its cluster is closed.") + "\n")
        else:
            super().write_error(status_code, **kwargs)

    async def open(self, cluster_id: str, proxied_path: str) -> None:
        """A websocket of the dashboard (Bokeh's updates)."""
        self._aim(cluster_id)
        await self.proxy_open("localhost", 0, proxied_path)

    async def proxy(self, cluster_id: str, proxied_path: str) -> None:
        """A request for the dashboard (every HTTP method)."""
        self._aim(cluster_id)
        await ProxyHandler.proxy(self, "localhost", 0, proxied_path)
