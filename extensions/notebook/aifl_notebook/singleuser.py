"""Start the single-user server inside the Slurm job and tell the hub its port once it listens.

The server binds to the address of the node Slurm gave the job (not 0.0.0.0) on a free port. A
background thread waits until that port accepts connections and only then posts
``{"port": N}`` to the hub, so the hub's first readiness check finds a running server.

JupyterLab's language follows the hub's (``AIFL_LANG``): see :func:`language_environment`. Before the
server starts, the lab's example notebooks are brought to ``~/examples`` (:mod:`aifl_notebook.examples`).
The server itself runs in this process (:func:`run_server`), started with less CPU than
``jupyterhub-singleuser`` needs on its own (see :func:`node_hidden`).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from .examples import install_at_start
from .session import session_language

LANGUAGE_CONFIG = Path(__file__).parent / "language"


def node_address() -> str:
    """The address the hub reaches this node at (the node name Slurm uses, resolved)."""
    name = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    return socket.gethostbyname(name)


def free_port(ip: str) -> int:
    """A port that is free on ``ip`` right now."""
    with socket.socket() as sock:
        sock.bind((ip, 0))
        return sock.getsockname()[1]


def serving(url: str) -> bool:
    """True when the server at ``url`` answers HTTP at all (any status: it is serving requests)."""
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - our own http:// URL
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def language_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``JUPYTER_CONFIG_PATH`` that makes the session's language JupyterLab's default language.

    The added directory holds ``labconfig/default_setting_overrides.json``, which changes only the
    *default* of JupyterLab's language setting for this server process: a language the user picked
    in JupyterLab (Settings → Language, kept in their user settings) still wins.
    """
    ours = str(LANGUAGE_CONFIG / session_language(env))
    existing = [p for p in env.get("JUPYTER_CONFIG_PATH", "").split(os.pathsep) if p and p != ours]
    return {"JUPYTER_CONFIG_PATH": os.pathsep.join([*existing, ours])}


def report_port_when_listening(ip: str, port: int, prefix: str, timeout: float = 300) -> None:
    """Wait until the server at ``ip:port`` answers HTTP, then post the port to the hub.

    An HTTP answer, not just an accepted connection: while starting, Jupyter Server briefly listens
    on the port to check that it is free.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if serving(f"http://{ip}:{port}{prefix}api"):
            break
        time.sleep(0.02)
    else:
        print(f"aifl-singleuser: the server did not listen on {ip}:{port}", file=sys.stderr)
        return
    url = os.environ["JUPYTERHUB_API_URL"].rstrip("/") + "/batchspawner"
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"JUPYTERHUB_API_URL is not an http(s) URL: {url}")
    request = urllib.request.Request(  # noqa: S310 - checked above
        url, data=json.dumps({"port": port}).encode(), method="POST",
        headers={"Authorization": f"token {os.environ['JUPYTERHUB_API_TOKEN']}",
                 "Content-Type": "application/json"})
    for attempt in range(5):
        try:
            with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - the hub's API URL
                return
        except OSError as exc:
            print(f"aifl-singleuser: reporting the port failed ({exc}); retrying", file=sys.stderr)
            time.sleep(0.5 * (attempt + 1))


def main() -> None:
    """Entry point ``aifl-singleuser [jupyterhub-singleuser arguments]``."""
    install_at_start()  # the example notebooks in ~/examples (new ones copied, edited ones kept)
    ip = node_address()
    port = free_port(ip)
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")
    scheme = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://x")).scheme or "http"
    os.environ["JUPYTERHUB_SERVICE_URL"] = f"{scheme}://{ip}:{port}{prefix}"
    os.environ.update(language_environment(os.environ))
    threading.Thread(target=report_port_when_listening, args=(ip, port, prefix), daemon=True).start()
    run_server(sys.argv[1:])


def without_node(path: str) -> str:
    """``path`` (a PATH value) without the directories that hold a ``node`` or ``nodejs`` program."""
    kept = [d for d in path.split(os.pathsep)
            if d and not any(os.access(os.path.join(d, name), os.X_OK) for name in ("node", "nodejs"))]
    # An empty PATH would mean the default search path (which has node on most systems).
    return os.pathsep.join(kept) or os.devnull


@contextmanager
def node_hidden() -> Iterator[None]:
    """PATH without Node.js for the ``with`` block, then the job's PATH again.

    Importing ``jupyterlab.labapp`` asks yarn, a Node.js program, for its package registry whenever
    ``node`` is on PATH: about 0.25 s of CPU, a quarter of a server start. The registry serves only to
    install extensions, which a session never does (its extension manager is read-only); without node
    JupyterLab takes its default registry, the same one yarn's answer leads to in this environment.
    Kernels, terminals and everything else the server starts keep the job's PATH.
    """
    saved = os.environ.get("PATH")
    os.environ["PATH"] = without_node(saved or os.defpath)
    try:
        yield
    finally:
        if saved is None:
            del os.environ["PATH"]
        else:
            os.environ["PATH"] = saved


def run_server(args: Sequence[str]) -> None:
    """Run ``jupyterhub-singleuser args`` in this process, JupyterLab imported without the yarn lookup."""
    with node_hidden():
        import jupyterlab.labapp  # noqa: F401 - the import that would start yarn
    from jupyterhub.singleuser import main as singleuser_main

    sys.argv = ["jupyterhub-singleuser", *args]
    singleuser_main()


if __name__ == "__main__":
    main()
