"""``/hub/aifl/datasets``: the catalogue of the data sets on the shelf, for every logged-in user.

Each data set from the site file (:mod:`aifl_hub.datasets`) with its description, licence and access
(open to all users, or controlled: only members of the listed organisations), and whether the visitor
may read it, from their confirmed organisation (the hub group ``org-<name>``), with how to get access
when not. The page only tells; the file permissions decide who reads what.
"""

from __future__ import annotations

from jupyterhub import handlers
from jupyterhub.handlers.base import BaseHandler
from tornado import web

from .datasets import ACCESS_LABELS, catalogue
from .organisations import organisation_of
from .pages import request_language

ROUTE = r"/aifl/datasets"


class DatasetsHandler(BaseHandler):
    """The data sets' catalogue."""

    @web.authenticated
    async def get(self) -> None:
        """Show every data set and whether the visitor may read it."""
        site = getattr(self.authenticator, "site", None)
        if site is None:
            raise web.HTTPError(404)
        org = organisation_of(site, [group.name for group in self.current_user.groups])
        lang = request_language(self)
        html = await self.render_template("datasets.html", datasets=catalogue(site, org["name"] if org else None, lang),
                                          access_labels=ACCESS_LABELS)
        self.finish(html)


def install_datasets_page() -> None:
    """Put the page into JupyterHub's page routes (idempotent)."""
    routes = handlers.default_handlers
    routes[:] = [r for r in routes if r[0] != ROUTE]
    routes.append((ROUTE, DatasetsHandler))
