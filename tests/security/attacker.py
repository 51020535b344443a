"""Acting as a real lab user in the attack tests: run a command with that user's uid, gid and groups."""

from __future__ import annotations

import pwd
import subprocess
from collections.abc import Sequence


def as_user(name: str, argv: Sequence[str], *, timeout: float = 60, check: bool = False,
            env: dict[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as lab user ``name`` (``setpriv``: their uid, gid and groups; no root left), in their home."""
    entry = pwd.getpwnam(name)
    base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": entry.pw_dir, "USER": name, "LANG": "C.UTF-8"}
    return subprocess.run(["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups",
                           "--", *argv], cwd=entry.pw_dir, env={**base_env, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, check=check, input=input)


def shell_as(name: str, script: str, **kw) -> subprocess.CompletedProcess[str]:
    """Run the fixed test ``script`` with ``bash -c`` as ``name`` (the test's own text, never user input)."""
    return as_user(name, ["bash", "-c", script], **kw)
