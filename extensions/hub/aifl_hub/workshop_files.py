"""A participant's workshop folder as the hub reads it: through ``aifl-work``, run as that participant.

The hub never reads a home folder itself (homes are 0700): ``sudo -n -u <participant> aifl-work …`` can read
only what the participant can. Here: the notebooks in the folder (the trainer's live view), one notebook made
into plain cells for the read-only page, and the zip a participant downloads.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

WORK_HELPER = "/usr/local/sbin/aifl-work"
SUDO = "/usr/bin/sudo"
ACCOUNT = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
REFUSED, MISSING = 2, 3
CHUNK = 1 << 16
TEXT_MAX = 100_000  # characters of one cell's source or output shown; the rest is cut with a note
IMAGE_MAX = 5 * 1024 * 1024
# At most this many helpers at once (a live view of a large class asks for every seat's list).
_running = asyncio.Semaphore(8)


class WorkError(Exception):
    """``aifl-work`` did not do it: ``missing`` (no such notebook or folder) or refused / failed."""

    def __init__(self, code: int, stderr: str) -> None:
        super().__init__(stderr)
        self.missing = code == MISSING
        self.stderr = stderr


def work_argv(account: str, *args: str) -> list[str]:
    """``sudo`` running ``aifl-work args`` as ``account`` (a name that is not a plain account is refused)."""
    if not ACCOUNT.fullmatch(account):
        raise WorkError(REFUSED, f"not an account name: {account!r}")
    return [SUDO, "-n", "-u", account, WORK_HELPER, *args]


async def run_work(account: str, *args: str, timeout: float = 60) -> bytes:
    """Run ``aifl-work args`` as ``account``; its stdout, or :class:`WorkError`."""
    argv = work_argv(account, *args)
    async with _running:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                    cwd="/")
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise WorkError(1, f"no answer within {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise WorkError(proc.returncode or 1, err.decode(errors="replace").strip())
    return out


async def folder_notebooks(account: str, folder: str) -> list[dict[str, Any]]:
    """The notebooks in ``account``'s ``~/folder``: ``[{"path", "size", "modified"}]`` (paths from the home)."""
    found = json.loads(await run_work(account, "list", folder, timeout=30))
    return [n for n in found if isinstance(n, dict) and isinstance(n.get("path"), str)]


async def read_notebook(account: str, path: str) -> dict[str, Any]:
    """The notebook ``path`` (``FOLDER/…/NAME.ipynb``) of ``account``, parsed; ValueError when it is not JSON."""
    notebook = json.loads(await run_work(account, "show", path, timeout=60))
    if not isinstance(notebook, dict):
        raise ValueError("not a notebook")
    return notebook


async def zip_chunks(account: str, folder: str) -> AsyncIterator[bytes]:
    """The zip of ``account``'s ``~/folder``, in chunks; :class:`WorkError` before the first when refused."""
    proc = await asyncio.create_subprocess_exec(*work_argv(account, "zip", folder), stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                cwd="/")
    try:
        first = await proc.stdout.read(CHUNK)
        if not first:
            err = await proc.stderr.read()
            await proc.wait()
            raise WorkError(proc.returncode or 1, err.decode(errors="replace").strip())
        yield first
        while chunk := await proc.stdout.read(CHUNK):
            yield chunk
        if await proc.wait() != 0:
            raise WorkError(proc.returncode, (await proc.stderr.read()).decode(errors="replace").strip())
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# ---------------------------------------------------------------- a notebook as plain cells

@dataclass
class Output:
    """One output of a code cell: ``text`` (shown as text) or ``image`` (a checked base64 PNG)."""

    kind: str
    text: str = ""
    png: str = ""


@dataclass
class Cell:
    """One cell: its kind (``markdown``, ``code``, ``raw``), source as text, and a code cell's outputs."""

    kind: str
    source: str
    outputs: list[Output] = field(default_factory=list)
    count: int | None = None


def _text(value: Any) -> str:
    """A notebook's multi-line string (a string or a list of them), cut at :data:`TEXT_MAX`."""
    joined = "".join(v for v in value if isinstance(v, str)) if isinstance(value, list) else (
        value if isinstance(value, str) else "")
    return joined if len(joined) <= TEXT_MAX else joined[:TEXT_MAX] + "\n…"


def _png(value: Any) -> str:
    """``value`` when it is base64 of a PNG image within :data:`IMAGE_MAX`, else ""."""
    data = "".join(_text(value).split())
    if len(data) > IMAGE_MAX * 4 // 3 + 4:
        return ""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return ""
    return data if raw.startswith(b"\x89PNG\r\n\x1a\n") else ""


def _outputs(outputs: Any) -> list[Output]:
    shown: list[Output] = []
    for out in outputs if isinstance(outputs, list) else []:
        if not isinstance(out, Mapping):
            continue
        kind = out.get("output_type")
        if kind == "stream":
            shown.append(Output("text", _text(out.get("text"))))
        elif kind == "error":
            shown.append(Output("error", f"{_text(out.get('ename'))}: {_text(out.get('evalue'))}"))
        elif kind in ("execute_result", "display_data") and isinstance(out.get("data"), Mapping):
            data = out["data"]
            png = _png(data.get("image/png"))
            if png:
                shown.append(Output("image", png=png))
            elif "text/plain" in data:
                shown.append(Output("text", _text(data["text/plain"])))
    return shown


def notebook_cells(notebook: Mapping[str, Any]) -> list[Cell]:
    """The cells of a notebook (nbformat 4) as plain text and checked images: nothing in it is HTML."""
    cells = []
    for cell in notebook.get("cells") if isinstance(notebook.get("cells"), list) else []:
        if not isinstance(cell, Mapping) or cell.get("cell_type") not in ("markdown", "code", "raw"):
            continue
        count = cell.get("execution_count")
        cells.append(Cell(cell["cell_type"], _text(cell.get("source")),
                          _outputs(cell.get("outputs")) if cell["cell_type"] == "code" else [],
                          count if isinstance(count, int) and not isinstance(count, bool) else None))
    return cells
