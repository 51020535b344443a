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
import random
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
    assert topics == {"getting-started", "smes", "healthcare", "agriculture", "scaling", "batch", "public-services",
                      "your-data"}
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
    "public-services/citizen-requests": {"requests": 2000},
    "your-data/your-own-csv": {},
}


def check(name: str, result: dict, output: str) -> None:
    """The result each notebook states, and its note of the device used and the time it took."""
    if "device" in result:
        assert result["device"] in ("cpu", "cuda")
        assert f"on {result['device'].upper()} in " in output or f"device: {result['device'].upper()}" in output
    match name:
        case "getting-started/welcome":
            # Gradual ripening, an unseen variety and 5 % disputed labels: about 0.85-0.90 is what it reaches.
            assert result["accuracy"] >= 0.78 and result["accuracy"] >= result["baseline"] + 0.35
        case "smes/demand-forecast":
            # Tested by time on 80+ weeks, the model beats "same week last year" with a real margin; the
            # random split with last week's sales looks better than the honest test (the pitfall shown).
            assert result["weeks_tested"] >= 80 and result["better_than_naive"]
            assert result["mae_model"] < 0.9 * result["mae_naive"]
            assert result["mae_leaky"] < 0.95 * result["mae_model"]
        case "smes/customer-messages":
            # Tested on groups of near-copies never seen: well above the keyword rule and the biggest queue,
            # and no queue forgotten; split by message, the near-copies make it look better (the pitfall).
            assert result["macro_f1"] >= 0.7 and result["macro_f1"] > result["f1_keywords"] + 0.1
            assert result["f1_biggest"] < 0.3 and result["lowest_recall"] >= 0.4
            assert result["f1_split_by_message"] > result["f1_split_by_group"] + 0.03
        case "healthcare/risk-model":
            # Unmeasured frailty and deprivation cap the AUC; the model still beats ranking by age alone.
            assert result["patients_in_both"] == 0
            assert result["auc"] >= 0.66 and result["auc"] >= result["auc_age"] + 0.03 and result["ece"] <= 0.05
            assert result["sex_auc_gap"] <= 0.1 and result["calibration_gap"] <= 0.08
            # The pitfall: split by admission, the forest looks better than on new patients, where the
            # logistic regression is about as good.
            assert result["auc_forest_by_admission"] > result["auc_forest_by_patient"]
            assert result["auc"] >= result["auc_forest_by_patient"] - 0.02
        case "healthcare/scan-classifier":
            # On a new hospital's scans the network finds lesions and leaves healthy scans alone.
            assert result["accuracy"] >= 0.85 and min(result["sensitivity"], result["specificity"]) >= 0.75
            assert result["accuracy"] >= result["baseline_accuracy"] + 0.3
            # The pitfall: the referral centre's brighter scanner is a shortcut, so raw intensity statistics look
            # better on scans kept apart from the same hospitals than at the new hospital ...
            assert result["intensity_internal_raw"] >= result["intensity_external_raw"] + 0.03
            # ... and measuring each scan against its own organ's level fixes much of it.
            assert result["intensity_external_normalised"] >= result["intensity_external_raw"] + 0.02
            assert result["accuracy"] >= result["intensity_external_normalised"] - 0.03
        case "agriculture/crop-yield":
            # Tested on unseen years; the linear model need not beat the soil rule (it cannot bend).
            assert result["mae_network"] < 0.9 * min(result["mae_soil"], result["mae_linear"])
            # The pitfall is visible: a random split (years seen on other fields) promises a smaller error.
            assert result["mae_random_split"] < 0.95 * result["mae_network"]
        case "agriculture/leaf-disease":
            # The pitfall is visible: the plain colour classifier misses many sick leaves; class weights fix that.
            assert result["colour_missed_disease"] >= 0.3
            assert result["colour_weighted_missed_disease"] <= result["colour_missed_disease"] - 0.1
            # Class weights cost some accuracy (false alarms), so "always healthy" can score about the same.
            assert result["accuracy"] >= 0.75 and result["missed_disease"] <= 0.3
            assert result["missed_disease"] <= result["colour_missed_disease"] - 0.2
        case "public-services/citizen-requests":
            # Tested on the last quarter of the period: well above "always the busiest department" and no
            # department forgotten; the random split (near-copies, the new waste pass seen) looks better.
            assert result["masked"] >= 0.15 * result["requests"]
            assert result["accuracy_time"] >= 0.7 and result["accuracy_time"] >= result["baseline"] + 0.25
            assert result["balanced_time"] >= 0.7
            assert result["accuracy_random"] > result["accuracy_time"] + 0.04
            assert result["near_copies_random"] > result["near_copies_time"]
        case "your-data/your-own-csv":
            # The example file: the return reason gives the answer away and is found; without it the model
            # still beats always "no", tested on the latest orders.
            assert result["task"] == "classification" and result["split"] == "by time"
            assert result["left_out"] == ["return_reason"] and result["with_all_columns"] >= 0.98
            assert result["better_than_baseline"] and result["model"] >= result["baseline"] + 0.05
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


# ---- the own-data notebook on a file the test writes ------------------------------------------------------
def run_own_csv(environment: Path, tmp_path: Path, lang: str, *arguments: str) -> subprocess.CompletedProcess:
    """Run ``your-data/your-own-csv`` in ``lang`` with papermill in ``tmp_path``, with ``-p`` ``arguments``."""
    env = {"PATH": f"{environment / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           **clock_environment()}
    return subprocess.run([str(PAPERMILL), "--no-progress-bar", "-k", "python3",
                           str(NOTEBOOKS / f"your-data/your-own-csv.{lang}.ipynb"), str(tmp_path / "out.ipynb"),
                           *arguments], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False)


def write_houses(path: Path, rows: int = 400) -> None:
    """A Dutch-style CSV (semicolons, decimal commas): asking prices of houses, with missing values, no date."""
    rng = random.Random(11)
    extra = {"Centrum": 900, "Paddepoel": 0, "Beijum": -300, "Haren": 600}
    lines = ["district;size_m2;garden;price"]
    for _ in range(rows):
        district, size = rng.choice(sorted(extra)), rng.uniform(50, 180)
        price = size * (3200 + extra[district]) + rng.gauss(0, 25000)
        garden = "" if rng.random() < 0.1 else rng.choice(["yes", "no"])
        lines.append(f"{district};{size:.1f};{garden};{price:.2f}".replace(".", ","))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_own_data_notebook_fits_a_regression_on_a_users_file(environment: Path, tmp_path: Path, lang: str) -> None:
    write_houses(tmp_path / "houses.csv")
    run = run_own_csv(environment, tmp_path, lang, "-p", "csv_path", "houses.csv", "-p", "target", "price")
    assert run.returncode == 0, run.stderr[-3000:]
    result = summary(json.loads((tmp_path / "out.ipynb").read_text()))
    assert result["rows"] == 400 and result["task"] == "regression" and result["split"] == "random"
    assert result["metric"] == "mean absolute error" and result["left_out"] == []
    assert result["better_than_baseline"] and result["model"] < 0.6 * result["baseline"]
    assert not (tmp_path / "example-orders.csv").exists()


def test_the_own_data_notebook_says_plainly_when_the_target_column_is_missing(environment: Path,
                                                                                 tmp_path: Path) -> None:
    write_houses(tmp_path / "houses.csv")
    run = run_own_csv(environment, tmp_path, "nl", "-p", "csv_path", "houses.csv", "-p", "target", "prijs")
    assert run.returncode != 0
    assert "De kolom 'prijs' staat niet in houses.csv; de kolommen zijn: district, size_m2, garden, price" in run.stderr
