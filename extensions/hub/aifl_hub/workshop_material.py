"""A trainer's own course material for a workshop: uploaded notebooks (or one zip of a folder), checked and stored.

:func:`check_upload` checks an upload completely, before anything is created, and refuses it with a
:class:`~.workshops.WorkshopError` (field ``material``) that names the file and the problem, in the
trainer's language. Accepted are notebooks (``.ipynb``, JSON in Jupyter's format version 4) and small
data files (:data:`DATA_SUFFIXES`), either uploaded one by one or as one ``.zip`` of a folder. Names are
checked against an allowlist (no paths, no ``..``, no hidden files); zip members may not be links,
absolute paths or encrypted. The metadata that macOS and JupyterLab put into a zip (``__MACOSX/``,
``.DS_Store``, ``.ipynb_checkpoints/``) is left out, and a zip whose files all sit in one folder gives
that folder's contents.

:func:`store_material` writes the checked files to ``<environments_dir>/.workshops/<id>/material/``
(:func:`~.workshops.own_material_folder`): written by the hub, readable by everyone (files 0644, folders
0755), put in place atomically, so a session job copies either all of it or none.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .i18n import gettext_for
from .workshops import WorkshopError

MB = 1024 * 1024
MAX_FILE_BYTES = 20 * MB
MAX_TOTAL_BYTES = 50 * MB
MAX_FILES = 200
MAX_DEPTH = 5  # folders and file name together, inside the material
NOTEBOOK_SUFFIX = ".ipynb"
DATA_SUFFIXES = (".csv", ".txt", ".md", ".json", ".png", ".jpg")
# What operating systems and JupyterLab add to a zip of a folder: left out, not refused.
IGNORED_IN_ZIP = frozenset({"__MACOSX", ".DS_Store", ".ipynb_checkpoints"})
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9 _.()-]{0,99}$")


@dataclass(frozen=True)
class Material:
    """Checked course material: relative POSIX paths and their contents."""

    files: tuple[tuple[str, bytes], ...]

    @property
    def notebooks(self) -> int:
        """How many notebooks it has."""
        return sum(path.endswith(NOTEBOOK_SUFFIX) for path, _data in self.files)


def _refuse(message: str) -> WorkshopError:
    return WorkshopError("material", message)


def _name_ok(name: str) -> bool:
    return bool(_NAME.fullmatch(name)) and ".." not in name and not name.endswith((" ", "."))


def _cell_ok(cell: Any) -> bool:
    if not isinstance(cell, dict) or not isinstance(cell.get("metadata"), dict):
        return False
    source = cell.get("source")
    if not (isinstance(source, str) or (isinstance(source, list) and all(isinstance(s, str) for s in source))):
        return False
    kind = cell.get("cell_type")
    if kind == "code":
        count = cell.get("execution_count")
        return isinstance(cell.get("outputs"), list) and (count is None or isinstance(count, int))
    return kind in ("markdown", "raw")


def _notebook_ok(data: bytes) -> bool | None:
    """True for a notebook in format version 4, False for other JSON, None when it is not JSON at all."""
    try:
        notebook: Any = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return (isinstance(notebook, dict) and notebook.get("nbformat") == 4
            and isinstance(notebook.get("nbformat_minor"), int) and isinstance(notebook.get("metadata"), dict)
            and isinstance(notebook.get("cells"), list) and all(_cell_ok(cell) for cell in notebook["cells"]))


def _check_file(path: str, data: bytes, lang: str) -> None:
    """Refuse a file whose suffix is not allowed, that is too big, or that is a broken notebook."""
    _ = gettext_for(lang)
    suffix = PurePosixPath(path).suffix.lower()
    if suffix != NOTEBOOK_SUFFIX and suffix not in DATA_SUFFIXES:
        raise _refuse(_("{name}: only notebooks (.ipynb) and data files ({suffixes}) can be uploaded.").format(
            name=path, suffixes=", ".join(DATA_SUFFIXES)))
    if len(data) > MAX_FILE_BYTES:
        raise _refuse(_("{name} is larger than {mb} MB.").format(name=path, mb=MAX_FILE_BYTES // MB))
    if suffix == NOTEBOOK_SUFFIX:
        verdict = _notebook_ok(data)
        if verdict is None:
            raise _refuse(_("{name} is not a notebook: it is not valid JSON.").format(name=path))
        if not verdict:
            raise _refuse(_("{name} is not a notebook in Jupyter's format (version 4).").format(name=path))


def _bad_name(name: str, lang: str) -> WorkshopError:
    _ = gettext_for(lang)
    return _refuse(_("{name} is not allowed: names may have letters, digits, spaces and - _ . ( ), at most 100 "
                     "characters and {depth} levels of folders; they may not begin with a dot or contain "
                     "'..'.").format(name=name, depth=MAX_DEPTH - 1))


def _from_zip(name: str, data: bytes, lang: str) -> list[tuple[str, bytes]]:
    """The files of the zip ``data`` (checked members only; the metadata of :data:`IGNORED_IN_ZIP` left out)."""
    _ = gettext_for(lang)
    unreadable = _refuse(_("{name} is not a zip file that can be read.").format(name=name))
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError):
        raise unreadable from None
    with archive:
        members = [m for m in archive.infolist() if not IGNORED_IN_ZIP & set(m.filename.split("/"))]
        if sum(not m.is_dir() for m in members) > MAX_FILES:
            raise _refuse(_("At most {n} files can be uploaded.").format(n=MAX_FILES))
        found = []
        for member in members:
            path = member.filename
            parts = path.rstrip("/").split("/") if not path.startswith("/") and "\\" not in path else []
            if not parts or len(parts) > MAX_DEPTH + 1 or not all(_name_ok(p) for p in parts):
                raise _bad_name(path, lang)
            kind = stat.S_IFMT(member.external_attr >> 16)
            if kind == stat.S_IFLNK or kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise _refuse(_("{name} in the zip is a link or a special file; only plain files and folders can be "
                                "uploaded.").format(name=path))
            if member.flag_bits & 0x1:
                raise _refuse(_("{name} is protected with a password; upload a zip without one.").format(name=name))
            if member.is_dir():
                continue
            if member.file_size > MAX_FILE_BYTES:
                raise _refuse(_("{name} is larger than {mb} MB.").format(name=path, mb=MAX_FILE_BYTES // MB))
            try:
                found.append(("/".join(parts), archive.read(member)))  # reads at most file_size, checks the CRC
            except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError, OSError, ValueError):
                raise unreadable from None
            _check_file(*found[-1], lang)
            if sum(len(d) for _p, d in found) > MAX_TOTAL_BYTES:
                raise _refuse(_("Together the files are larger than {mb} MB.").format(mb=MAX_TOTAL_BYTES // MB))
    tops = {path.split("/")[0] for path, _d in found}
    if len(tops) == 1 and all("/" in path for path, _d in found):  # a zip of one folder: its contents
        found = [(path.split("/", 1)[1], d) for path, d in found]
    for path, _d in found:
        if len(path.split("/")) > MAX_DEPTH:
            raise _bad_name(path, lang)
    return found


def check_upload(uploads: Sequence[tuple[str, bytes]], lang: str) -> Material:
    """Check uploaded ``(file name, content)`` pairs: notebooks and data files, or one zip of a folder."""
    _ = gettext_for(lang)
    if len(uploads) > MAX_FILES:
        raise _refuse(_("At most {n} files can be uploaded.").format(n=MAX_FILES))
    for name, _data in uploads:
        if not _name_ok(name):
            raise _bad_name(name, lang)
    zips = [(n, d) for n, d in uploads if n.lower().endswith(".zip")]
    if zips and len(uploads) > 1:
        raise _refuse(_("Upload notebooks (.ipynb) with their data files, or one .zip of a folder; not both, and "
                        "not more than one zip."))
    if sum(len(d) for _n, d in uploads) > MAX_TOTAL_BYTES:
        raise _refuse(_("Together the files are larger than {mb} MB.").format(mb=MAX_TOTAL_BYTES // MB))
    if not zips:
        for name, data in uploads:
            _check_file(name, data, lang)
    files = _from_zip(*zips[0], lang) if zips else list(uploads)
    seen: dict[str, str] = {}
    folders = {"/".join(p.split("/")[:i]).lower() for p, _d in files for i in range(1, p.count("/") + 1)}
    for path, _data in files:
        if path.lower() in seen or path.lower() in folders:
            raise _refuse(_("{name} is there twice.").format(name=path))
        seen[path.lower()] = path
    if not any(path.endswith(NOTEBOOK_SUFFIX) for path in seen.values()):
        raise _refuse(_("There is no notebook (.ipynb) in what you uploaded."))
    return Material(tuple(sorted(files)))


def decode_api_upload(value: Any, lang: str) -> list[tuple[str, bytes]]:
    """The REST API's ``upload``: a list of ``{"name": …, "content": <base64>}`` objects, decoded."""
    _ = gettext_for(lang)
    unreadable = _refuse(_("The upload cannot be read: give a list of files, each with a \"name\" and its "
                           "\"content\" in base64."))
    if not isinstance(value, list) or len(value) > MAX_FILES:
        raise unreadable
    files = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or \
                not isinstance(item.get("content"), str) or len(item["content"]) > (MAX_TOTAL_BYTES // 3 + 1) * 4:
            raise unreadable
        try:
            files.append((item["name"], base64.b64decode(item["content"], validate=True)))
        except (binascii.Error, ValueError):
            raise unreadable from None
    return files


def store_material(folder: Path, material: Material) -> None:
    """Write ``material`` to the new ``folder``: files 0644, folders 0755, all at once (staged beside it)."""
    parent = folder.parent
    parent.mkdir(exist_ok=True)
    os.chmod(parent, 0o755)  # noqa: S103 - session jobs of every participant read the material
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=".upload-"))
    try:
        for path, data in material.files:
            target = staging / path
            target.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(descriptor, "wb") as out:
                os.fchmod(out.fileno(), 0o644)
                out.write(data)
        for directory, _dirs, _files in os.walk(staging):
            os.chmod(directory, 0o755)  # noqa: S103 - as above
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def discard_material(folder: Path) -> None:
    """Remove a workshop's stored material (the folder and the workshop's folder around it); none is fine."""
    shutil.rmtree(folder.parent, ignore_errors=True)
