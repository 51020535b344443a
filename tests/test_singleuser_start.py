"""The session's server start: JupyterLab is imported without Node.js on PATH, the server keeps the job's PATH."""

import os
import shutil
from pathlib import Path

import pytest
from aifl_notebook.singleuser import node_hidden, without_node


def program(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_without_node_drops_only_the_folders_that_hold_node(tmp_path: Path) -> None:
    env, usr, local, other = (tmp_path / n for n in ("env/bin", "usr/bin", "local/bin", "other"))
    program(env, "python")
    program(usr, "node")
    program(usr, "python3")
    program(local, "nodejs")
    other.mkdir()
    path = os.pathsep.join(map(str, (env, usr, local, other)))
    assert without_node(path) == os.pathsep.join(map(str, (env, other)))
    assert without_node(f"{env}{os.pathsep}{os.pathsep}{other}") == os.pathsep.join(map(str, (env, other)))


def test_a_node_that_cannot_run_stays(tmp_path: Path) -> None:
    (tmp_path / "node").write_text("not a program")
    assert without_node(str(tmp_path)) == str(tmp_path)


def test_nothing_left_is_not_the_default_search_path(tmp_path: Path) -> None:
    program(tmp_path, "node")
    assert without_node(str(tmp_path)) == os.devnull
    assert shutil.which("node", path=without_node(str(tmp_path))) is None


def test_node_hidden_for_the_block_then_the_path_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env, usr = tmp_path / "env", tmp_path / "usr"
    program(env, "python")
    program(usr, "node")
    path = f"{env}{os.pathsep}{usr}"
    monkeypatch.setenv("PATH", path)
    with node_hidden():
        assert os.environ["PATH"] == str(env)
        assert shutil.which("node") is None
    assert os.environ["PATH"] == path
    with pytest.raises(RuntimeError), node_hidden():
        raise RuntimeError("an import failed")
    assert os.environ["PATH"] == path


def test_no_path_stays_no_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATH", raising=False)
    with node_hidden():
        assert "PATH" in os.environ
    assert "PATH" not in os.environ
