"""Process helpers for `lab`: argv-only commands, detached daemons, health waits and step progress.

Nothing here builds a shell string: every command is an argv list. Files written as root are never opened
through a link or a second (hard) link, and never wait on a FIFO: a service account may own the folder.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


class LabError(RuntimeError):
    """A step of `lab` failed; the message says what and where to look."""


def log_tail(path: Path | str, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file, or a note that it does not exist."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = text.rstrip().splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) or "    (log is empty)"


def run(argv: Sequence[str], *, check: bool = True, input: str | None = None,
        env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (never through a shell) and return the completed process.

    With ``check`` a non-zero exit raises :class:`LabError` with the command's stderr.
    """
    try:
        proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, env=env,
                              timeout=timeout, check=False)
    except FileNotFoundError:
        raise LabError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(argv)} did not finish within {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise LabError(f"{' '.join(argv)} failed (exit {proc.returncode}): {detail}")
    return proc


def ok(argv: Sequence[str], timeout: float = 30) -> bool:
    """True when ``argv`` exits 0."""
    try:
        return subprocess.run(list(argv), capture_output=True, timeout=timeout, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# Open without following a link at the last step and without waiting on a FIFO; checked with fstat after.
SAFE_OPEN = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _own_regular_file(descriptor: int) -> bool:
    """True when ``descriptor`` is a regular file with a single name (no hard link elsewhere)."""
    info = os.fstat(descriptor)
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1


def read_own_file(path: Path) -> str | None:
    """The text of ``path`` if it is a regular file with a single name (read without following a link), else None."""
    try:
        descriptor = os.open(path, os.O_RDONLY | SAFE_OPEN)
    except OSError:
        return None
    with os.fdopen(descriptor, "rb") as current:
        return current.read().decode() if _own_regular_file(descriptor) else None


def open_log(log: Path, user: str | None = None) -> int:
    """Open a daemon's ``log`` for appending and make it root:<user's group> 0640 (root's group without ``user``).

    Logs hold user names and request details, so other lab users may not read them; the daemon's own account
    may. Opened without following a link, and refused unless it is a regular file with a single name.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    problem = f"{log} is not a plain log file (a link or a FIFO?); remove it and start again"
    try:
        descriptor = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | SAFE_OPEN, 0o640)
    except OSError as exc:
        raise LabError(f"{problem} ({exc.strerror})") from None
    if not _own_regular_file(descriptor):
        os.close(descriptor)
        raise LabError(problem)
    os.fchown(descriptor, 0, pwd.getpwnam(user).pw_gid if user else 0)
    os.fchmod(descriptor, 0o640)
    return descriptor


def protect_log(log: Path, user: str | None = None) -> None:
    """Give ``log`` the owner and mode :func:`open_log` gives, also while its daemon runs and keeps writing it."""
    os.close(open_log(log, user))


def start_daemon(argv: Sequence[str], log: Path, *, user: str | None = None,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
    """Start ``argv`` detached in its own session, output appended to ``log`` (:func:`open_log`); return its pid.

    With ``user`` it runs as that account (setpriv execs, so the pid is the daemon's own).
    """
    cmd = list(argv)
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *cmd]
    with os.fdopen(open_log(log, user), "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, start_new_session=True)
    return proc.pid


def pid_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists (and is not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_for(check: Callable[[], bool], *, what: str, timeout: float = 60, interval: float = 0.2,
             log: Path | None = None) -> None:
    """Poll ``check`` until it is true; on timeout raise :class:`LabError` with the log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    hint = f"\n  last lines of {log}:\n{log_tail(log)}" if log else ""
    raise LabError(f"{what} did not become ready within {timeout:.0f} s{hint}")


def wait_ready(check: Callable[[], bool], *, what: str, alive: Callable[[], bool], log: Path,
               timeout: float) -> None:
    """Wait for ``check``; fail at once with the log's tail when the daemon stops being ``alive`` first."""
    wait_for(lambda: check() or not alive(), what=what, timeout=timeout, log=log)
    if not check():
        raise LabError(f"{what} stopped while starting\n  last lines of {log}:\n{log_tail(log)}")


def write_file(path: Path, content: str, *, mode: int, owner: str = "root", group: str | None = None) -> bool:
    """Write ``content`` atomically when it differs; always set owner, group and mode. True when it changed.

    ``group`` defaults to the owner's primary group. Owner and mode are set through the file's descriptor, and
    anything at ``path`` that is not a regular file with a single name (a link, a FIFO) is replaced, never
    followed.
    """
    entry = pwd.getpwnam(owner)
    uid, gid = entry.pw_uid, grp.getgrnam(group).gr_gid if group else entry.pw_gid
    try:
        descriptor = os.open(path, os.O_RDONLY | SAFE_OPEN)
    except OSError:
        descriptor = -1
    if descriptor >= 0:
        with os.fdopen(descriptor, "rb") as current:
            if _own_regular_file(descriptor) and current.read() == content.encode():
                os.fchown(descriptor, uid, gid)
                os.fchmod(descriptor, mode)
                return False
    descriptor, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            os.fchown(descriptor, uid, gid)
            os.fchmod(descriptor, mode)
            out.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


class Progress:
    """Numbered steps with timing, printed as plain lines so they read well in a log and a terminal."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total, self.done = total, 0
        self.stream = stream or sys.stdout

    def note(self, text: str) -> None:
        """Print an indented line under the current step."""
        print(f"        {text}", file=self.stream, flush=True)

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Print ``title`` numbered, run the block, then print how it ended and how long it took."""
        self.done += 1
        start = time.monotonic()
        print(f"[{self.done}/{self.total}] {title} …", file=self.stream, flush=True)
        try:
            yield
        except BaseException:
            print(f"        failed after {time.monotonic() - start:.1f} s", file=self.stream, flush=True)
            raise
        print(f"        done in {time.monotonic() - start:.1f} s", file=self.stream, flush=True)


def require_root() -> None:
    """Stop with a clear message unless running as root."""
    if os.geteuid() != 0:
        raise LabError("this command sets up system services: run it as root")
