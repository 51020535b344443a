"""Every benchmark run keeps its raw output: ``benchmarks/results/<name>-<date>-<commit>.txt``.

:func:`recorded` copies everything the run prints (stdout and stderr) into that file, after a header
that says what ran, when, on which machine and from which commit, and which tracked files under the
measured parts of the repository differed from that commit. The README quotes figures together with
the file they come from.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# What a benchmark's figures depend on: a change here that is not committed is named in the header.
MEASURED = ("benchmarks", "extensions", "hub_config", "images", "lab")
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def result_file(folder: Path, name: str, when: datetime, commit: str) -> Path:
    """``folder/<name>-<YYYY-MM-DD>-<commit>.txt`` (the date in UTC), or ``…-2.txt``, ``…-3.txt`` if taken."""
    if not NAME.fullmatch(name) or not re.fullmatch(r"[0-9a-f]{4,40}|unknown", commit):
        raise ValueError(f"not a result file name: {name!r}, {commit!r}")
    stem = f"{name}-{when.astimezone(UTC):%Y-%m-%d}-{commit}"
    path, n = folder / f"{stem}.txt", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.txt"
    return path


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def commit_of(repo: Path) -> tuple[str, list[str]]:
    """Short hash of ``repo``'s HEAD ('unknown' outside git) and the tracked files under MEASURED it differs in."""
    commit = _git(repo, "rev-parse", "--short", "HEAD") or "unknown"
    changed = _git(repo, "diff", "--name-only", "HEAD", "--", *MEASURED).splitlines()
    return commit, changed


class Tee:
    """A text stream that writes to the terminal's stream and to the results file."""

    def __init__(self, stream: TextIO, copy: TextIO, lock: threading.Lock) -> None:
        self.stream, self.copy, self.lock = stream, copy, lock

    def write(self, text: str) -> int:
        with self.lock:
            self.stream.write(text)
            self.copy.write(text)
        return len(text)

    def flush(self) -> None:
        with self.lock:
            self.stream.flush()
            self.copy.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()


def header(name: str, argv: Sequence[str], when: datetime, commit: str, changed: Sequence[str]) -> str:
    """The lines that open a results file (each starts with '# ')."""
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    lines = [f"{name}: {' '.join(argv)}",
             f"started {when.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ} on {socket.gethostname()}, "
             f"{os.cpu_count()} CPUs, load average {load}",
             f"commit {commit}" + (f"; not committed: {', '.join(changed)}" if changed else "")]
    return "".join(f"# {line}\n" for line in lines) + "\n"


@contextlib.contextmanager
def recorded(name: str, argv: Sequence[str] | None = None, folder: Path = RESULTS) -> Iterator[Path]:
    """Copy this process's stdout and stderr into a new results file for the ``with`` block."""
    when = datetime.now(UTC)
    commit, changed = commit_of(REPO)
    folder.mkdir(parents=True, exist_ok=True)
    path = result_file(folder, name, when, commit)
    argv = list(sys.argv if argv is None else argv)
    with path.open("w", encoding="utf-8") as copy:
        copy.write(header(name, argv, when, commit, changed))
        lock = threading.Lock()
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Tee(out, copy, lock), Tee(err, copy, lock)  # type: ignore[assignment]
        try:
            yield path
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = out, err
    print(f"raw output: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}", flush=True)
