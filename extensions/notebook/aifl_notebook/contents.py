"""Saving into a full home folder: a plain message in the user's language, and the saved version is kept.

Jupyter Server writes a file atomically (a temporary copy, then a rename), so a save that fails because
the disk or the user's quota is full leaves the version saved before as it was. Its own answer is a 500
"Unexpected error while saving file"; this contents manager answers 507 (Insufficient Storage) with
what happened, what is kept, how full the home folder is and what to do. JupyterLab shows that message
in its "File Save Error" dialog. Configured as ``ServerApp.contents_manager_class`` in the environment.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from typing import Any

from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
from tornado import web

from .i18n import gettext_for

FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(error: BaseException | None) -> bool:
    """Whether ``error`` says the disk or quota is full.

    A write (``ENOSPC``, ``EDQUOT``), or the notebook signatures' SQLite database in the home folder
    (``SQLITE_FULL``), which a notebook save writes first.
    """
    if isinstance(error, OSError):
        return error.errno in FULL
    return isinstance(error, sqlite3.OperationalError) and \
        getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def _size(count: float) -> str:
    """``count`` bytes in MB or GB, one decimal."""
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.1f} MB"


def full_message(path: str, root: str, lang: str | None = None) -> str:
    """Why ``path`` was not saved when the file system under ``root`` is full, in plain words."""
    _ = gettext_for(lang)
    message = _("Your home folder is full, so {path} was not saved. The version you saved before is kept. "
                "Delete or move files you no longer need, then save again.").format(path=path)
    try:
        usage = shutil.disk_usage(root)
    except OSError:
        return message
    return message + " " + _("In use: {used} of {total}.").format(used=_size(usage.used), total=_size(usage.total))


class LabContentsManager(AsyncLargeFileManager):
    """Jupyter Server's own contents manager, with a clear answer when a save finds the disk full."""

    async def save(self, model: dict[str, Any], path: str = "") -> dict[str, Any]:
        """Save as Jupyter Server does; a full disk or quota becomes a 507 with :func:`full_message`."""
        try:
            return await super().save(model, path)
        except web.HTTPError as exc:
            if disk_full(exc.__cause__):
                self.log.warning("Saving %s failed: the home folder is full (%s)", path, exc.__cause__)
                raise web.HTTPError(507, full_message(path.lstrip("/"), self.root_dir)) from exc.__cause__
            raise
