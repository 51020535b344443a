"""A user's own software: a kernel they register for their own environment appears in JupyterLab and runs there.

On the real local cluster, as the user would do it in a terminal of their session:
``python -m venv ~/envs/mine`` and ``~/envs/mine/bin/python -m ipykernel install --user --name mine``.
"""

from __future__ import annotations

import pwd
import subprocess
from pathlib import Path

import pytest
import requests
from conftest import BASE
from test_notebook_dask import Kernel
from test_spawn import spawn

pytestmark = pytest.mark.cluster

ENV = Path("/opt/aifl/envs/default")


def test_a_kernel_the_user_registered_appears_and_runs_in_their_own_environment(hub, users):
    name, token = users()
    home = Path(pwd.getpwnam(name).pw_dir)

    def as_user(*argv: str, stdin: str | None = None) -> None:
        subprocess.run(["runuser", "-u", name, "--", "env", "-i", "PATH=/usr/bin:/bin", f"HOME={home}", *argv],
                       input=stdin, check=True, capture_output=True, text=True, timeout=180, cwd="/")

    # Their own environment. Where a user would `pip install ipykernel` into it, the test lets it see the
    # lab's packages (a .pth file), so that nothing is downloaded here.
    as_user(str(ENV / "bin" / "python"), "-m", "venv", "--without-pip", f"{home}/envs/mine")
    site_packages = next((ENV / "lib").glob("python3.*/site-packages"))
    as_user("tee", f"{home}/envs/mine/lib/{site_packages.parent.name}/site-packages/lab.pth",
            stdin=f"{site_packages}\n")
    as_user(f"{home}/envs/mine/bin/python", "-m", "ipykernel", "install", "--user", "--name", "mine",
            "--display-name", "My own environment")
    url = BASE + spawn(hub, name, token, {"profile": "cpu-small"})["url"]
    specs = requests.get(f"{url}api/kernelspecs", headers={"Authorization": f"token {token}"},
                         timeout=30).json()["kernelspecs"]
    assert "python3" in specs and specs["mine"]["spec"]["display_name"] == "My own environment"
    kernel = Kernel(url, token, name="mine")
    assert kernel.run("import json, sys\nprint('PREFIX', json.dumps(sys.prefix))") == {"PREFIX": f"{home}/envs/mine"}
