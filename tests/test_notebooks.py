"""The example notebooks (``notebooks/``): the committed files are their sources' output, Dutch and English
have the same code and no outputs, and every notebook runs top to bottom in both languages, on the CPU at
small parameters, in the notebook environment, and reaches the result it states.

The Dask and batch notebooks run where a user runs them: inside a real session of a fresh user on the
local cluster (papermill started from the session's kernel), from the copies the session start put in
``~/examples``; their workers and batch jobs are that user's Slurm jobs.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import pwd
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, clock_environment, slurm
from test_notebook_dask import Kernel, start_session, wait_no_workers

NOTEBOOKS = REPO / "notebooks"
ENV = Path("/opt/aifl/envs/default")
PAPERMILL = ENV / "bin" / "papermill"
LANGUAGES = ("en", "nl")

spec = importlib.util.spec_from_file_location("notebook_build", NOTEBOOKS / "build.py")
assert spec and spec.loader
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)


def pairs() -> list[str]:
    """Every example as ``topic/name`` (without the language and ``.ipynb``)."""
    return sorted({str(p.relative_to(NOTEBOOKS)).removesuffix(".en.ipynb") for p in NOTEBOOKS.rglob("*.en.ipynb")})


def load(name: str, lang: str) -> dict:
    return json.loads((NOTEBOOKS / f"{name}.{lang}.ipynb").read_text(encoding="utf-8"))


# ---- the committed files ------------------------------------------------------------------------------
def test_the_committed_notebooks_are_what_their_sources_give() -> None:
    rendered = build.all_notebooks()
    committed = {p for p in NOTEBOOKS.rglob("*.ipynb") if "_source" not in p.parts}
    assert committed == set(rendered), "a notebook without a source, or a source not built"
    stale = [str(p.relative_to(NOTEBOOKS)) for p, text in rendered.items() if p.read_text(encoding="utf-8") != text]
    assert stale == [], f"run python3 notebooks/build.py: {stale}"


def test_every_topic_of_the_issue_is_there_in_both_languages() -> None:
    topics = {name.split("/")[0] for name in pairs()}
    assert topics == {"getting-started", "smes", "healthcare", "agriculture", "scaling", "batch"}
    for name in pairs():
        assert (NOTEBOOKS / f"{name}.nl.ipynb").exists()


@pytest.mark.parametrize("name", pairs())
def test_dutch_and_english_have_the_same_code_cells_and_no_outputs(name: str) -> None:
    english, dutch = load(name, "en"), load(name, "nl")
    code = [[(c["source"], c["metadata"]) for c in nb["cells"] if c["cell_type"] == "code"] for nb in (english, dutch)]
    assert code[0] == code[1]
    assert [c["cell_type"] for c in english["cells"]] == [c["cell_type"] for c in dutch["cells"]]
    text = [["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"] for nb in (english, dutch)]
    assert all(en != nl for en, nl in zip(*text, strict=True)), "a Dutch text cell is still in English"
    for nb in (english, dutch):
        for cell in nb["cells"]:
            assert cell.get("outputs", []) == [] and cell.get("execution_count") is None
        tagged = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
        assert len(tagged) == 1, "one cell tagged 'parameters' (papermill)"
        assert "what next" in text[0][-1].lower() and "en nu?" in text[1][-1].lower()


def test_a_broken_source_is_refused_with_the_place_named() -> None:
    with pytest.raises(build.SourceError, match=r"x\.txt: a markdown cell needs both"):
        build.parse("=== markdown\n--- en\nonly English\n", "x.txt")
    with pytest.raises(build.SourceError, match="unknown cell header"):
        build.parse("=== raw\nsomething\n", "x.txt")
    cells = build.parse("=== code parameters\na = 1\n=== markdown\n--- en\nHi\n--- nl\nHoi\n", "x.txt")
    assert cells == [{"kind": "code", "code": "a = 1", "tags": ["parameters"]},
                     {"kind": "markdown", "en": "Hi", "nl": "Hoi"}]


# ---- running them --------------------------------------------------------------------------------------
def summary(executed: dict) -> dict:
    """The notebook's stated result: the ``summary`` dict its last code cell shows."""
    results = [o for c in executed["cells"] for o in c.get("outputs", []) if o["output_type"] == "execute_result"]
    assert results, "the notebook showed no result"
    return ast.literal_eval("".join(results[-1]["data"]["text/plain"]))


def printed(executed: dict) -> str:
    return "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", [])
                   if o["output_type"] == "stream")


# Small sizes for CI (each notebook's defaults are the "try it" size; a GPU node runs larger ones).
SMALL: dict[str, dict[str, int]] = {
    "getting-started/welcome": {"samples": 1500, "epochs": 40},
    "smes/demand-forecast": {},
    "smes/customer-messages": {"messages": 1200, "epochs": 15},
    "healthcare/risk-model": {"patients": 3000},
    "healthcare/scan-classifier": {"images": 1200, "epochs": 6},
    "agriculture/crop-yield": {"fields": 150},
    "agriculture/leaf-disease": {"images": 900, "epochs": 4, "size": 24},
}


def check(name: str, result: dict, output: str) -> None:
    """The result each notebook states, and its note of the device used and the time it took."""
    if "device" in result:
        assert result["device"] in ("cpu", "cuda")
        assert f"on {result['device'].upper()} in " in output or f"device: {result['device'].upper()}" in output
    match name:
        case "getting-started/welcome":
            assert result["accuracy"] >= 0.85 and result["accuracy"] > result["baseline"] + 0.4
        case "smes/demand-forecast":
            assert result["better_than_naive"] and result["mae_model"] < 0.8 * result["mae_naive"]
        case "smes/customer-messages":
            assert result["accuracy"] >= 0.8
        case "healthcare/risk-model":
            assert result["patients_in_both"] == 0
            assert result["auc"] >= 0.68 and result["ece"] <= 0.05
            assert result["sex_auc_gap"] <= 0.1 and result["calibration_gap"] <= 0.06
        case "healthcare/scan-classifier":
            assert result["accuracy"] >= 0.85 and min(result["sensitivity"], result["specificity"]) >= 0.75
        case "agriculture/crop-yield":
            assert result["mae_network"] < result["mae_linear"] < result["mae_soil"]
        case "agriculture/leaf-disease":
            assert result["accuracy"] >= 0.85 and result["missed_disease"] <= 0.15
        case "scaling/dask-large-data":
            assert result["cluster"] == "slurm" and result["workers"] == 2
            assert 17 <= result["peak_hour"] <= 20 and result["readings"] == 4000 * 28 * 96
        case "batch/batch-job":
            assert result["state"] == "completed"
            assert ast.literal_eval(result["result"])["products"] == 5
        case _:
            raise AssertionError(f"no check for {name}")


def test_every_notebook_has_a_check() -> None:
    assert set(pairs()) == {*SMALL, "scaling/dask-large-data", "batch/batch-job"}


@pytest.fixture(scope="module")
def environment(request: pytest.FixtureRequest) -> Path:
    """The notebook environment as ``lab up`` built it (with PyTorch and papermill); built first if missing.

    These runs need the environment only, not the cluster or the hub.
    """
    if not PAPERMILL.exists():
        request.getfixturevalue("lab_system")
    assert PAPERMILL.exists(), f"{PAPERMILL} is missing: the notebook environment was not built"
    return ENV


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_notebook_runs_and_reaches_its_result(environment: Path, tmp_path: Path, name: str, lang: str) -> None:
    out = tmp_path / "out.ipynb"
    arguments = [a for key, value in SMALL[name].items() for a in ("-p", key, str(value))]
    env = {"PATH": f"{environment / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           **clock_environment()}
    run = subprocess.run([str(PAPERMILL), "--no-progress-bar", "-k", "python3",
                          str(NOTEBOOKS / f"{name}.{lang}.ipynb"), str(out), *arguments],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    executed = json.loads(out.read_text())
    check(name, summary(executed), printed(executed))


@pytest.mark.cluster
def test_the_dask_and_batch_notebooks_run_in_a_users_session_from_the_copies_in_examples(hub, users) -> None:
    name, _token, url = start_session(hub, users, lang="nl")
    home = Path(pwd.getpwnam(name).pw_dir)
    examples = home / "examples"
    # The session's start copied every example into ~/examples, exactly as shipped.
    copied = {str(p.relative_to(examples)) for p in examples.rglob("*.ipynb")}
    assert copied == {f"{n}.{lang}.ipynb" for n in pairs() for lang in LANGUAGES}
    assert (examples / "smes" / "demand-forecast.nl.ipynb").read_bytes() == \
        (NOTEBOOKS / "smes" / "demand-forecast.nl.ipynb").read_bytes()
    assert json.loads((home / ".aifl" / "examples.json").read_text())

    kernel = Kernel(url, _token)
    runs = [("scaling/dask-large-data", lang, []) for lang in LANGUAGES]
    runs += [("batch/batch-job", lang, ["-p", "products", "5", "-p", "wait_minutes", "5"]) for lang in LANGUAGES]
    for notebook, lang, arguments in runs:
        source = examples / f"{notebook}.{lang}.ipynb"
        out = home / "notebook-test" / f"{notebook.replace('/', '-')}.{lang}.ipynb"
        code = f"""
            import json, subprocess, sys, os
            os.makedirs({str(out.parent)!r}, exist_ok=True)
            run = subprocess.run([sys.prefix + "/bin/papermill", "--no-progress-bar", "-k", "python3",
                                  {str(source)!r}, {str(out)!r}, *{arguments!r}],
                                 capture_output=True, text=True, timeout=400, cwd={str(source.parent)!r})
            print("RUN", json.dumps({{"code": run.returncode, "stderr": run.stderr[-3000:]}}))
        """
        result = kernel.run(code, timeout=450)["RUN"]
        assert result["code"] == 0, result["stderr"]
        executed = json.loads(out.read_text())
        assert pwd.getpwuid(out.stat().st_uid).pw_name == name
        check(notebook, summary(executed), printed(executed))
    assert wait_no_workers(name, timeout=60) < 60
    # The batch runs were jobs of the user, charged like the session, and they completed. (Slurm's
    # accounting hears of a job's end a moment after the job itself: wait for it.)
    expected, deadline = [f"{name}|COMPLETED"] * 2, time.monotonic() + 60
    while (jobs := slurm("sacct", "-n", "-X", "-P", "-u", name, "--name", "aifl-batch", "-o", "User,State")
           .split()) != expected and time.monotonic() < deadline:
        time.sleep(1)
    assert jobs == expected, jobs
