"""Batch runs of notebooks (:mod:`aifl_notebook.batch`): the checks, the script builder, the listing.

The unit tests run anywhere (Slurm's commands are small fakes on PATH); the integration tests submit
papermill runs on the local cluster as a real lab user, with the API running as that user.
"""

from __future__ import annotations

import json
import keyword
import math
import os
import pwd
import shlex
import stat
import string
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aifl_notebook import batch
from aifl_notebook.batch import (
    BatchError,
    BatchJob,
    BatchOptions,
    Resources,
    ScriptError,
    build_batch_script,
    check_begin,
    check_notebook,
    check_parameters,
    check_profile,
    describe_run,
    notebook_outcome,
    papermill_arguments,
    parse_parameters,
    parse_sacct,
    parse_squeue,
    run_name,
    run_state,
)
from aifl_notebook.i18n import translations
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PACKAGE = Path(batch.__file__).parent
CATALOG = PACKAGE / "locale" / "nl" / "LC_MESSAGES" / "batch.po"
ENV = Path("/opt/aifl/envs/default")

PROFILES = {
    "gpu_type": "h200",
    "profile_list": [
        {"slug": "cpu-small", "display_name": {"en": "Try it out", "nl": "Uitproberen"},
         "slurm_override": {"partition": "cpu", "gpus": 0, "cpus": 2, "memory_gb": 8, "hours": 2},
         "profile_options": {"hours": {"display_name": "Hours",
                                       "range": {"min": 1, "max": 2, "default": 2, "slurm_override": {"hours": "x"}}}}},
        {"slug": "gpu-1", "display_name": "One GPU",
         "slurm_override": {"partition": "gpu", "gpus": 1, "cpus": 16, "memory_gb": 120, "hours": 8},
         "profile_options": {"hours": {"range": {"min": 1, "max": 8, "default": 4, "slurm_override": {"hours": "x"}}},
                             "environment": {"choices": {"default": {"slurm_override": {"environment": "default"}}}}}},
        {"slug": "fixed", "display_name": "Fixed", "slurm_override": {"partition": "cpu", "cpus": 1, "memory_gb": 1,
                                                                       "hours": 3}},
        {"slug": "workshop-seat", "display_name": "Workshop", "allowed_groups": ["workshop"],
         "slurm_override": {"partition": "gpu", "gpus": 1, "cpus": 8, "memory_gb": 60, "hours": 4}},
    ],
}


# ---- notebook paths ----------------------------------------------------------------------------------------
@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home" / "alice"
    (home / "work").mkdir(parents=True)
    (home / "work" / "analyse één.ipynb").write_text("{}")
    (home / "top.ipynb").write_text("{}")
    (home / "folder.ipynb").mkdir()
    (tmp_path / "home" / "bob.ipynb").write_text("{}")
    (tmp_path / "outside.ipynb").write_text("{}")
    (home / "escape.ipynb").symlink_to(tmp_path / "outside.ipynb")
    (home / "linkdir").symlink_to(tmp_path)
    (home / "inside-link.ipynb").symlink_to(home / "top.ipynb")
    return home


@pytest.mark.parametrize(("given", "expected"), [
    ("top.ipynb", "top.ipynb"),
    ("work/analyse één.ipynb", "work/analyse één.ipynb"),
    ("./work/../top.ipynb", "top.ipynb"),
    ("~/top.ipynb", "top.ipynb"),
    ("inside-link.ipynb", "top.ipynb"),
])
def test_notebooks_inside_the_home_folder_are_accepted(home, given, expected):
    assert check_notebook(given, home) == (home / expected).resolve()
    assert check_notebook(home / given if not given.startswith("~") else given, home) == (home / expected).resolve()


@pytest.mark.parametrize("given", [
    "http://example.org/x.ipynb", "https://example.org/x.ipynb", "s3://bucket/x.ipynb", "gs://bucket/x.ipynb",
    "abfs://c@a.dfs.core.windows.net/x.ipynb", "abs://a/c/x.ipynb", "adl://store/x.ipynb", "hdfs://nn/x.ipynb",
    "file:///etc/x.ipynb", "file:top.ipynb", "github://org/repo/x.ipynb", "HTTP://EXAMPLE.ORG/x.ipynb",
    "work/http://x.ipynb",
])
def test_urls_are_refused(home, given):
    with pytest.raises(BatchError) as refused:
        check_notebook(given, home)
    assert refused.value.field == "notebook"
    assert "not addresses" in refused.value.message


@pytest.mark.parametrize(("given", "words"), [
    ("../bob.ipynb", "outside your home folder"),
    ("work/../../bob.ipynb", "outside your home folder"),
    ("/etc/passwd.ipynb", "outside your home folder"),
    ("~/../bob.ipynb", "outside your home folder"),
    ("escape.ipynb", "symbolic link"),
    ("linkdir/outside.ipynb", "symbolic link"),
    ("top.py", "not a notebook"),
    ("top.ipynb.txt", "not a notebook"),
    ("folder.ipynb", "not a notebook"),
    ("missing.ipynb", "There is no notebook"),
    ("top\n.ipynb", "control characters"),
    ("", "Give the path"),
    ("   ", "Give the path"),
])
def test_bad_notebook_paths_are_refused(home, given, words):
    with pytest.raises(BatchError) as refused:
        check_notebook(given, home)
    assert words in refused.value.message


def test_the_home_folder_itself_is_not_a_notebook(tmp_path):
    home = tmp_path / "h.ipynb"
    home.mkdir()
    with pytest.raises(BatchError):
        check_notebook(str(home), home)


def test_refusals_are_in_dutch_when_asked(home):
    with pytest.raises(BatchError) as refused:
        check_notebook("s3://bucket/x.ipynb", home, lang="nl")
    assert "Alleen notebooks in je thuismap" in refused.value.message
    with pytest.raises(BatchError) as refused:
        check_notebook("../bob.ipynb", home, lang="nl")
    assert refused.value.message == "../bob.ipynb ligt buiten je thuismap."


# ---- profiles, hours, parameters, start time --------------------------------------------------------------
def _no_groups_asked():
    raise AssertionError("groups were asked for a profile without allowed_groups")


def test_profile_resources_and_hours():
    assert check_profile(PROFILES, "gpu-1", 3, _no_groups_asked) == Resources("gpu", 1, 16, 120, 3, "h200")
    assert check_profile(PROFILES, "gpu-1", None, _no_groups_asked).hours == 4
    assert check_profile(PROFILES, "cpu-small", None, _no_groups_asked) == Resources("cpu", 0, 2, 8, 2, "")
    assert check_profile(PROFILES, "fixed", None, _no_groups_asked).hours == 3
    assert check_profile(PROFILES, "fixed", 1, _no_groups_asked).hours == 1


@pytest.mark.parametrize(("slug", "hours", "field"), [
    ("gpu-9", 1, "profile"), ("", 1, "profile"), (None, 1, "profile"), (["gpu-1"], 1, "profile"),
    ("gpu-1", 9, "hours"), ("gpu-1", 0, "hours"), ("gpu-1", -1, "hours"), ("gpu-1", True, "hours"),
    ("gpu-1", "4", "hours"), ("gpu-1", 2.0, "hours"), ("cpu-small", 3, "hours"), ("fixed", 4, "hours"),
])
def test_unknown_profiles_and_hours_beyond_the_limit_are_refused(slug, hours, field):
    with pytest.raises(BatchError) as refused:
        check_profile(PROFILES, slug, hours, _no_groups_asked)
    assert refused.value.field == field


@pytest.mark.parametrize(("groups", "allowed"), [
    (None, False), ((), False), (("trainers",), False), (("workshop",), True), (("a", "workshop"), True),
])
def test_group_profiles_only_for_members_and_closed_when_groups_are_unknown(groups, allowed):
    if allowed:
        assert check_profile(PROFILES, "workshop-seat", 2, lambda: groups).gpus == 1
    else:
        with pytest.raises(BatchError, match="only for members"):
            check_profile(PROFILES, "workshop-seat", 2, lambda: groups)


def test_current_notebook_and_profiles_file(tmp_path, monkeypatch):
    assert batch.current_notebook({"JPY_SESSION_NAME": "/home/alice/work/a.ipynb"}) == Path("/home/alice/work/a.ipynb")
    assert batch.current_notebook({"JPY_SESSION_NAME": "/home/alice/console-1"}) is None
    assert batch.current_notebook({}) is None
    (tmp_path / "profiles.json").write_text(json.dumps(PROFILES))
    assert batch.load_profiles(tmp_path / "profiles.json") == PROFILES
    with pytest.raises(BatchError, match="profielen van het lab"):
        batch.load_profiles(tmp_path / "missing.json", lang="nl")


def test_hub_groups_fail_closed_without_a_reachable_hub():
    assert batch.hub_groups({}) is None
    assert batch.hub_groups({"JUPYTERHUB_API_URL": "file:///etc/passwd", "JUPYTERHUB_API_TOKEN": "x"}) is None
    assert batch.hub_groups({"JUPYTERHUB_API_URL": "http://127.0.0.1:9/hub/api", "JUPYTERHUB_API_TOKEN": "x"},
                            timeout=2) is None


def test_parameters():
    given = {"epochs": 5, "rate": 0.5, "name": "small model", "flag": False, "nothing": None, "_x1": -3}
    assert check_parameters(given) == given
    assert parse_parameters('{"epochs": 5, "model": "ëén"}') == {"epochs": 5, "model": "ëén"}
    assert parse_parameters("  ") == {}


@pytest.mark.parametrize("parameters", [
    {"1x": 1}, {"a-b": 1}, {"class": 1}, {"x y": 1}, {"": 1}, {"x": [1]}, {"x": {"a": 1}}, {"x": math.nan},
    {"x": math.inf}, {"x": "two\nlines"}, {"x": "a\rb"}, {"x": "x" * 2001}, {"x": b"bytes"}, [("x", 1)], "x=1",
])
def test_bad_parameters_are_refused(parameters):
    with pytest.raises(BatchError) as refused:
        check_parameters(parameters)
    assert refused.value.field == "parameters"


@pytest.mark.parametrize("text", ["[1, 2]", "epochs=5", '{"x": [1]}', "{", '"x"'])
def test_bad_parameter_text_is_refused(text):
    with pytest.raises(BatchError):
        parse_parameters(text)


def test_begin():
    assert check_begin(None) == ""
    assert check_begin("") == ""
    assert check_begin("2026-12-01 22:00") == "2026-12-01T22:00:00"
    assert check_begin(datetime(2026, 12, 1, 22, 0, 5)) == "2026-12-01T22:00:05"
    aware = datetime(2026, 12, 1, 21, 0, tzinfo=UTC)
    assert check_begin(aware) == aware.astimezone().strftime("%Y-%m-%dT%H:%M:%S")
    for bad in ("tomorrow", "now+1hour", "2026-13-01", 12):
        with pytest.raises(BatchError):
            check_begin(bad)


@pytest.mark.parametrize(("name", "safe"), [
    ("analyse één", "analyse-n"), ("../../etc", "etc"), ("", "notebook"), ("...", "notebook"),
    ("train_model-v2", "train_model-v2"), ("x" * 60, "x" * 40), ("a b\nc;d", "a-b-c-d"),
])
def test_run_names_are_safe(name, safe):
    assert run_name(name) == safe


# ---- the batch script --------------------------------------------------------------------------------------
def _job(**kw) -> BatchJob:
    values = {"run_dir": "/home/alice/batch-runs/train-20261201-220000", "python": "/opt/aifl/envs/default/bin/python",
              "workdir": "/home/alice/work", "resources": Resources("gpu", 1, 16, 120, 3, "h200"),
              "export_names": ["HOME", "LANG", "PATH"], "path_dirs": ["/opt/aifl/envs/default/bin", "/usr/bin"],
              "account": "lab", "qos": "interactive"}
    return BatchJob(**{**values, **kw})


def test_the_script_asks_slurm_for_the_profile_and_runs_papermill():
    script = build_batch_script(_job(parameters={"epochs": 5, "model": "small"}, begin="2026-12-01T22:00:00"))
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for expected in ("--job-name=aifl-batch", "--output=/home/alice/batch-runs/train-20261201-220000/run.log",
                     "--chdir=/home/alice/batch-runs/train-20261201-220000", "--export=HOME,LANG,PATH",
                     "--partition=gpu", "--time=3:00:00", "--cpus-per-task=16", "--mem=120G", "--account=lab",
                     "--qos=interactive", "--gres=gpu:h200:1", "--begin=2026-12-01T22:00:00"):
        assert f"#SBATCH {expected}" in lines
    assert shlex.split(lines[-1]) == [
        "exec", "/opt/aifl/envs/default/bin/python", "-m", "papermill", "--no-progress-bar", "--log-output",
        "--cwd", "/home/alice/work", "/home/alice/batch-runs/train-20261201-220000/input.ipynb",
        "/home/alice/batch-runs/train-20261201-220000/output.ipynb", "-p", "epochs", "5", "-r", "model", "small"]


def test_a_restarted_run_keeps_the_earlier_output_and_notes_when_it_restarted(tmp_path, argv_dumper):
    run_dir = tmp_path / "train-20261201-220000"
    run_dir.mkdir()
    script = build_batch_script(_job(run_dir=str(run_dir), python=str(argv_dumper)))
    assert "#SBATCH --requeue" in script.splitlines() and "#SBATCH --open-mode=append" in script.splitlines()
    body = script.split("\n", 1)[1]
    first = subprocess.run(["bash", "-c", body], capture_output=True, text=True, timeout=30, check=False,
                           env={"PATH": "/usr/bin:/bin"})
    assert first.returncode == 0, first.stderr
    assert batch.read_restarts(run_dir) == () and sorted(p.name for p in run_dir.iterdir()) == []
    (run_dir / "output.ipynb").write_text("the first attempt")
    for count in ("1", "2"):  # Slurm requeued the job: SLURM_RESTART_COUNT counts the restarts
        again = subprocess.run(["bash", "-c", body], capture_output=True, text=True, timeout=30, check=False,
                               env={"PATH": "/usr/bin:/bin", "SLURM_RESTART_COUNT": count})
        assert again.returncode == 0, again.stderr
        (run_dir / "output.ipynb").write_text(f"attempt after restart {count}")
    assert (run_dir / "output-before-restart-1.ipynb").read_text() == "the first attempt"
    assert (run_dir / "output-before-restart-2.ipynb").read_text() == "attempt after restart 1"
    restarts = batch.read_restarts(run_dir)
    assert len(restarts) == 2 and all(datetime.fromisoformat(r) for r in restarts)


def test_why_a_run_was_requeued_is_read_from_its_earlier_records():
    sacct = "7|PREEMPTED\n7|RUNNING\n8|NODE_FAIL\n8|PENDING\n9|REQUEUED\n9|RUNNING\n10|RUNNING\nx|FAILED\n"
    assert batch.requeue_causes(sacct) == {"7": "preempted", "8": "node", "9": "requeued"}


def test_a_requeued_run_says_so_in_its_state():
    queued = {"42": ("RUNNING", "2001-02-03T10:04:00")}
    run = describe_run(META, FOLDER, queued, {}, None, now=NOW, restarts=("2001-02-03T10:04:00",),
                       requeued_by="preempted")
    assert run.state_text("en") == ("running — requeued: regional work needed the GPU, restarted from the start "
                                    "at 2001-02-03 10:04; the earlier output is kept beside it")
    assert run.state_text("nl").startswith("loopt — opnieuw in de wachtrij: regionaal werk had de GPU nodig")
    node = describe_run(META, FOLDER, queued, {}, None, now=NOW, restarts=("2001-02-03T10:04:00",),
                        requeued_by="node")
    assert "requeued: its node failed" in node.state_text("en")
    assert describe_run(META, FOLDER, queued, {}, None, now=NOW, requeued_by="node").state_text("en") == "running"


def test_the_script_without_gpus_account_or_start_time():
    script = build_batch_script(_job(resources=Resources("cpu", 0, 2, 8, 1), account="", qos=""))
    assert "--gres" not in script and "--account" not in script and "--qos" not in script
    assert "--begin" not in script


def test_papermill_parameters_keep_their_types():
    assert papermill_arguments({"a": "5", "b": 5, "c": 2.0, "d": True, "e": None, "f": 1e300, "g": "-p"}) == [
        "-r", "a", "5", "-p", "b", "5", "-p", "c", "2.0", "-p", "d", "True", "-p", "e", "None",
        "-p", "f", "1e+300", "-r", "g", "-p"]


@pytest.mark.parametrize("change", [
    {"run_dir": "/home/alice/runs x"}, {"run_dir": "/home/alice/run\n#SBATCH --uid=0"}, {"run_dir": "relative"},
    {"run_dir": "/home/alice/%j"}, {"python": "/usr/bin/python3 -c"}, {"workdir": "relative/dir"},
    {"workdir": "/home/a\nb"}, {"account": "lab\n#SBATCH --qos=high"}, {"qos": "a b"}, {"job_name": "a;b"},
    {"begin": "now+1hour"}, {"begin": "2026-12-01T22:00:00\n"}, {"export_names": ["PATH,LD_PRELOAD=x"]},
    {"path_dirs": ["/usr/bin:/tmp"]}, {"parameters": {"a b": 1}}, {"parameters": {"x": "a\nb"}},
    {"parameters": {"import": 1}}, {"parameters": {"x": [1]}}, {"parameters": {"x": math.nan}},
    {"resources": Resources("gpu\n", 1, 1, 1, 1)}, {"resources": Resources("gpu", 1, 1, 1, 0)},
    {"resources": Resources("gpu", True, 1, 1, 1)}, {"resources": Resources("gpu", 1, 1, 1, 1, "h200 x")},
])
def test_unsafe_values_never_reach_the_script(change):
    with pytest.raises(ScriptError):
        build_batch_script(_job(**change))


def _assert_shape(script: str) -> None:
    """Only #SBATCH lines of one word each, then the fixed commands (the restart line; with GPUs and a home the
    energy meter's line before exec): nothing was added by a value."""
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash" and script.endswith("\n")
    head = [line for line in lines[1:] if line.startswith("#")]
    assert all(line.startswith("#SBATCH --") and " " not in line.removeprefix("#SBATCH ") for line in head)
    assert len(head) <= 18
    assert [line.split(" ", 1)[0].split("=", 1)[0] for line in lines[1 + len(head):]] in (
        ["set", "umask", "export", "if", "exec"], ["set", "umask", "export", "if", "if", "exec"])


def test_a_gpu_run_starts_the_energy_meter_and_a_cpu_run_does_not():
    script = build_batch_script(_job(home="/home/alice"))
    meter = next(line for line in script.splitlines() if line.startswith("if ") and "energy" in line)
    assert meter == ("if [ -x /opt/aifl/envs/default/bin/aifl-energy-agent ]; then /opt/aifl/envs/default/bin/"
                     'aifl-energy-agent --output /home/alice/.aifl/energy/job-"$SLURM_JOB_ID".json & fi')
    _assert_shape(script)
    assert "aifl-energy-agent" not in build_batch_script(_job(home="/home/alice",
                                                              resources=Resources("cpu", 0, 2, 8, 1)))
    with pytest.raises(ScriptError):
        build_batch_script(_job(home="/home/alice; rm -rf /"))


@pytest.fixture(scope="module")
def argv_dumper(tmp_path_factory) -> Path:
    """An executable that prints its argv as JSON: it stands in for python to see what bash passes."""
    folder = tmp_path_factory.mktemp("dumper")
    dumper = folder / "python"
    dumper.write_text("#!/usr/bin/python3\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    dumper.chmod(0o755)
    return dumper


NAMES = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,20}\Z").filter(lambda n: not keyword.iskeyword(n))
TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\u2028\u2029"), max_size=60)
SCALARS = st.one_of(TEXT, st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(workdir=TEXT, parameters=st.dictionaries(NAMES, SCALARS, max_size=5))
def test_no_generated_path_or_parameter_breaks_out_of_the_command(argv_dumper, workdir, parameters):
    workdir = "/" + workdir
    script = build_batch_script(_job(python=str(argv_dumper), workdir=workdir, parameters=parameters))
    _assert_shape(script)
    run = subprocess.run(["bash", "-c", script.split("\n", 1)[1]], capture_output=True, text=True, timeout=30,
                         check=False, env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [
        "-m", "papermill", "--no-progress-bar", "--log-output", "--cwd", workdir,
        "/home/alice/batch-runs/train-20261201-220000/input.ipynb",
        "/home/alice/batch-runs/train-20261201-220000/output.ipynb", *papermill_arguments(parameters)]


@settings(max_examples=300, deadline=None)
@given(value=st.text(max_size=30), where=st.sampled_from(["run_dir", "python", "account", "qos", "job_name",
                                                          "begin", "partition", "gpu_type", "workdir"]))
def test_any_text_is_either_safe_or_refused(value, where):
    if where in ("partition", "gpu_type"):
        fields = {"partition": "gpu", "gpu_type": "h200", where: value}
        job = _job(resources=Resources(fields["partition"], 1, 1, 1, 1, fields["gpu_type"]))
    else:
        job = _job(**{where: value})
    try:
        script = build_batch_script(job)
    except ScriptError:
        return
    assert "\n" not in value and "\r" not in value
    if where != "workdir":  # the working folder is only an argument of the quoted command
        assert all(c in string.ascii_letters + string.digits + "_.:/-" for c in value)
    _assert_shape(script)


# ---- Slurm states and the listing ---------------------------------------------------------------------------
@pytest.mark.parametrize(("slurm", "state"), [
    ("PENDING", "waiting"), ("RUNNING", "running"), ("COMPLETING", "running"), ("CONFIGURING", "running"),
    ("COMPLETED", "completed"), ("FAILED", "failed"), ("OUT_OF_MEMORY", "failed"), ("NODE_FAIL", "failed"),
    ("CANCELLED", "cancelled"), ("CANCELLED by 1000", "cancelled"), ("CANCELLED+", "cancelled"),
    ("TIMEOUT", "timeout"), ("DEADLINE", "timeout"), ("REQUEUED", "waiting"), ("", "unknown"), ("WEIRD", "unknown"),
])
def test_slurm_states(slurm, state):
    assert run_state(slurm) == state


def test_parse_squeue_and_sacct():
    assert parse_squeue("12|RUNNING|2026-12-01T10:00:00\n13|PENDING|N/A\nbad line\n") == {
        "12": ("RUNNING", "2026-12-01T10:00:00"), "13": ("PENDING", "N/A")}
    assert parse_sacct("12|COMPLETED|65\n13|CANCELLED by 0|0\n14|FAILED|\n") == {
        "12": ("COMPLETED", 65.0), "13": ("CANCELLED by 0", 0.0), "14": ("FAILED", None)}


def _output(exception: bool | None, error: tuple[str, str] | None = None) -> dict:
    cells = [{"cell_type": "code", "outputs": [{"output_type": "stream", "text": "hi"}]}]
    if error:
        cells.append({"cell_type": "code", "outputs": [{"output_type": "error", "ename": error[0],
                                                        "evalue": error[1], "traceback": []}]})
    return {"cells": cells, "metadata": {"papermill": {"exception": exception, "duration": 12.5}}}


META = {"job_id": "42", "name": "train", "notebook": "work/train.ipynb", "profile": "gpu-1",
        "submitted": "2026-12-01T10:00:00", "parameters": {"epochs": 5}}
FOLDER = Path("/home/alice/batch-runs/train-20261201-100000")
NOW = datetime(2026, 12, 1, 10, 5, 0)


def test_a_running_run():
    run = describe_run(META, FOLDER, {"42": ("RUNNING", "2026-12-01T10:01:00")}, {}, None, prefix="/user/alice/",
                       now=NOW)
    assert (run.state, run.duration, run.active, run.error) == ("running", 240.0, True, "")
    assert run.url == "/user/alice/lab/tree/batch-runs/train-20261201-100000/output.ipynb"
    assert run.state_text("nl") == "loopt" and run.state_text("en") == "running"


def test_a_waiting_run_has_no_duration():
    run = describe_run(META, FOLDER, {"42": ("PENDING", "2026-12-01T22:00:00")}, {}, None, now=NOW)
    assert (run.state, run.duration, run.active) == ("waiting", None, True)


def test_a_failed_run_shows_the_error_cell():
    run = describe_run(META, FOLDER, {}, {"42": ("FAILED", 30.0)},
                       _output(True, ("ValueError", "boom")), log_tail="papermill failed", now=NOW)
    assert (run.state, run.duration, run.error, run.active) == ("failed", 30.0, "ValueError: boom", False)


def test_a_failed_run_without_an_error_cell_shows_the_log():
    run = describe_run(META, FOLDER, {}, {"42": ("OUT_OF_MEMORY", 3.0)}, None, log_tail="oom-kill event", now=NOW)
    assert (run.state, run.error) == ("failed", "oom-kill event")


def test_completed_but_the_notebook_raised_is_failed():
    run = describe_run(META, FOLDER, {}, {"42": ("COMPLETED", 5.0)}, _output(True, ("KeyError", "'x'")), now=NOW)
    assert (run.state, run.error) == ("failed", "KeyError: 'x'")


def test_without_slurm_the_output_notebook_tells():
    done = describe_run(META, FOLDER, {}, {}, _output(False), log_tail="last line", now=NOW)
    assert (done.state, done.duration, done.error) == ("completed", 12.5, "")
    failed = describe_run(META, FOLDER, {}, {}, _output(True, ("ZeroDivisionError", "division by zero")), now=NOW)
    assert (failed.state, failed.error) == ("failed", "ZeroDivisionError: division by zero")
    assert describe_run(META, FOLDER, {}, {}, None, now=NOW).state == "unknown"


def test_cancelled_and_timeout():
    assert describe_run(META, FOLDER, {}, {"42": ("CANCELLED by 1000", 2.0)}, None, "x", now=NOW).error == ""
    timeout = describe_run(META, FOLDER, {}, {"42": ("TIMEOUT", 3600.0)}, None, "DUE TO TIME LIMIT", now=NOW)
    assert (timeout.state, timeout.error) == ("timeout", "DUE TO TIME LIMIT")


def test_notebook_outcome_of_odd_files():
    assert notebook_outcome({}) == (None, None, "")
    assert notebook_outcome({"cells": "x", "metadata": {"papermill": {"exception": "yes"}}}) == (None, None, "")


def test_duration_format():
    assert batch.format_duration(None) == ""
    assert batch.format_duration(5.4) == "0:00:05"
    assert batch.format_duration(3725) == "1:02:05"


# ---- the session around it, with fake Slurm commands -------------------------------------------------------
def _fake(folder: Path, name: str, body: str) -> None:
    script = folder / name
    script.write_text("#!/bin/bash\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """Fake sbatch/squeue/sacct/scancel on PATH: each records its argv and environment, prints ``<name>.out``."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("sbatch", "squeue", "sacct", "scancel"):
        _fake(folder, name, f"""printf '%s\\0' "$@" > {folder}/{name}.args
env -0 > {folder}/{name}.env
cat {folder}/{name}.out 2>/dev/null
exit 0
""")
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    return folder


def _calls(fake: Path, name: str) -> tuple[list[str], dict[str, str]]:
    args = (fake / f"{name}.args").read_text().split("\0")[:-1]
    env = dict(item.split("=", 1) for item in (fake / f"{name}.env").read_text().split("\0") if "=" in item)
    return args, env


SESSION_ENV = {
    "JUPYTERHUB_API_TOKEN": "secret-token", "JUPYTERHUB_SERVICE_PREFIX": "/user/alice/", "AIFL_LANG": "nl",
    "SLURM_JOB_ID": "7", "SLURM_JOB_ACCOUNT": "lab", "SLURM_JOB_QOS": "interactive", "SLURM_CPUS_PER_TASK": "2",
    "SLURM_MEM_PER_NODE": "8192", "SBATCH_PARTITION": "nosuch", "LD_PRELOAD": "/tmp/x.so", "LANG": "C.UTF-8",
}


@pytest.fixture
def user_home(tmp_path, monkeypatch) -> Path:
    """A home folder standing in for the account's, with a notebook in it."""
    home = tmp_path / "alice"
    (home / "work").mkdir(parents=True)
    (home / "work" / "train.ipynb").write_text('{"cells": []}')
    real = pwd.getpwuid(os.getuid())
    fake = pwd.struct_passwd((real.pw_name, "x", real.pw_uid, real.pw_gid, "", str(home), "/bin/bash"))
    monkeypatch.setattr(batch.pwd, "getpwuid", lambda uid: fake)
    return home


def test_submit_uses_a_clean_environment_and_the_session_account(user_home, fake_slurm):
    (fake_slurm / "sbatch.out").write_text("1234;aifl\n")
    run = batch.submit(BatchOptions("work/train.ipynb", "gpu-1", hours=2, parameters={"epochs": 3},
                                    begin="2026-12-01 22:00"), env=SESSION_ENV, profiles=PROFILES)
    assert (run.job_id, run.state, run.name) == ("1234", "waiting", "train")
    assert run.folder.parent == user_home / "batch-runs" and run.folder.name.startswith("train-")
    assert run.url.startswith("/user/alice/lab/tree/batch-runs/train-")
    assert (run.folder / "input.ipynb").read_text() == '{"cells": []}'
    meta = json.loads((run.folder / "run.json").read_text())
    assert meta["job_id"] == "1234" and meta["notebook"] == "work/train.ipynb" and meta["parameters"] == {"epochs": 3}
    args, env = _calls(fake_slurm, "sbatch")
    assert args == ["--parsable", str(run.folder / "job.sh")]
    assert not [k for k in env if k.startswith(("SLURM_", "SBATCH_", "JUPYTERHUB_"))]
    assert "LD_PRELOAD" not in env and env["AIFL_LANG"] == "nl" and env["HOME"] == str(user_home)
    script = (run.folder / "job.sh").read_text()
    assert "#SBATCH --account=lab" in script and "#SBATCH --qos=interactive" in script
    assert "#SBATCH --begin=2026-12-01T22:00:00" in script and "#SBATCH --time=2:00:00" in script
    exported = next(line for line in script.splitlines() if line.startswith("#SBATCH --export="))
    assert set(exported.split("=", 1)[1].split(",")) == set(env) - {"PWD", "SHLVL", "_"}


def test_account_and_qos_from_squeue_when_the_environment_lacks_them(fake_slurm):
    (fake_slurm / "squeue.out").write_text("lab|interactive\n")
    assert batch.session_account({"SLURM_JOB_ID": "77"}) == ("lab", "interactive")
    assert _calls(fake_slurm, "squeue")[0] == ["-h", "-j", "77", "-o", "%a|%q"]
    assert batch.session_account({"SLURM_JOB_ACCOUNT": "lab;x", "SLURM_JOB_QOS": "q"}) == ("", "q")
    assert batch.session_account({}) == ("", "")
    hub_choice = {"AIFL_ACCOUNT": "umcg", "AIFL_BATCH_QOS": "regional", "SLURM_JOB_ACCOUNT": "lab",
                  "SLURM_JOB_QOS": "interactive", "SLURM_JOB_ID": "77"}
    assert batch.session_account(hub_choice) == ("umcg", "regional")


@pytest.mark.parametrize("options", [
    BatchOptions("s3://bucket/train.ipynb", "gpu-1"), BatchOptions("../x.ipynb", "gpu-1"),
    BatchOptions("work/train.ipynb", "gpu-9"), BatchOptions("work/train.ipynb", "gpu-1", hours=99),
    BatchOptions("work/train.ipynb", "workshop-seat"), BatchOptions("work/train.ipynb", "gpu-1", parameters={"a b": 1}),
    BatchOptions("work/train.ipynb", "gpu-1", begin="soon"),
])
def test_nothing_is_submitted_or_created_on_bad_input(user_home, fake_slurm, options):
    with pytest.raises(BatchError):
        batch.submit(options, env={**SESSION_ENV, "JUPYTERHUB_API_URL": "http://127.0.0.1:9/hub/api"},
                     profiles=PROFILES)
    assert not (fake_slurm / "sbatch.args").exists()
    assert not (user_home / "batch-runs").exists() or not list((user_home / "batch-runs").iterdir())


def test_a_refused_job_leaves_no_run_folder(user_home, fake_slurm):
    _fake(fake_slurm, "sbatch", 'echo "sbatch: error: Batch job submission failed: Invalid qos" >&2; exit 1\n')
    with pytest.raises(BatchError, match="Invalid qos"):
        batch.submit(BatchOptions("work/train.ipynb", "cpu-small"), env=SESSION_ENV, profiles=PROFILES, lang="en")
    assert list((user_home / "batch-runs").iterdir()) == []


def test_listing_and_cancel(user_home, fake_slurm):
    (fake_slurm / "sbatch.out").write_text("101\n")
    first = batch.submit(BatchOptions("work/train.ipynb", "cpu-small", name="first"), env={}, profiles=PROFILES)
    (fake_slurm / "sbatch.out").write_text("102\n")
    second = batch.submit(BatchOptions("work/train.ipynb", "cpu-small", name="second"), env={}, profiles=PROFILES)
    (user_home / "batch-runs" / "junk").mkdir()
    (fake_slurm / "squeue.out").write_text("102|RUNNING|2026-12-01T10:00:00\n")
    (fake_slurm / "sacct.out").write_text("101|FAILED|7\n")
    (first.folder / "output.ipynb").write_text(json.dumps(_output(True, ("ValueError", "bad input"))))
    runs = batch.list_runs(env={"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/"})
    assert [(r.name, r.state) for r in runs] == [("second", "running"), ("first", "failed")]
    assert runs[1].error == "ValueError: bad input" and runs[1].duration == 7.0
    assert _calls(fake_slurm, "sacct")[0] == ["-X", "-n", "-P", "-j", "101", "-o", "JobIDRaw,State,ElapsedRaw"]
    batch.cancel(second.run_id)
    assert _calls(fake_slurm, "scancel")[0] == ["102"]
    for bad in ("nope", "../x", "junk", ""):
        with pytest.raises(BatchError):
            batch.cancel(bad)


# ---- messages ----------------------------------------------------------------------------------------------
def _messages() -> set[str]:
    files = [PACKAGE / "batch.py", PACKAGE / "widgets" / "batch.py"]
    return {m[1] for f in files for m in extract_from_file("python", str(f), keywords={"_": None, "N_": None})}


def test_every_message_has_a_dutch_translation_with_the_same_fields():
    with CATALOG.open("rb") as fh:
        catalog = {m.id: m.string for m in read_po(fh) if m.id}
    messages = _messages()
    assert len(messages) >= 30
    assert sorted(messages - set(catalog)) == []
    assert sorted(set(catalog) - messages) == []  # no unused entries
    for message in messages:
        dutch = translations("nl").gettext(message)
        assert catalog[message] and dutch == catalog[message]
        fields = {f[1] for f in string.Formatter().parse(message) if f[1]}
        assert {f[1] for f in string.Formatter().parse(dutch) if f[1]} == fields, message


@pytest.mark.cluster
def test_the_widget_in_the_notebook_environment(lab_system):
    """The ipywidgets view (ipywidgets is only in the notebook environment): profiles, hours, a refusal in Dutch."""
    code = """
import json
from aifl_notebook.widgets.batch import BatchPanel
p = BatchPanel(notebook="/nowhere/x.ipynb", lang="nl")
before = [p.profile.value, p.hours.min, p.hours.max]
p.profile.value = "gpu-1"
p.notebook.value = "s3://bucket/x.ipynb"
p.submit_button.click()
print(json.dumps([[v for _, v in p.profile.options], before, p.hours.max, p.message.value]))
"""
    result = subprocess.run([str(ENV / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=120,
                            check=False, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PACKAGE.parent)})
    assert result.returncode == 0, result.stderr[-2000:]
    slugs, before, hours_max, message = json.loads(result.stdout)
    assert "workshop-seat" not in slugs and "gpu-1" in slugs  # no hub to ask: group profiles stay hidden
    assert before == ["cpu-small", 1, 2] and hours_max == 8
    assert "Alleen notebooks in je thuismap" in message


# ---- on the local cluster, as a real lab user --------------------------------------------------------------
PYTHON = ENV / "bin" / "python"
API = """
import dataclasses, json, sys
from aifl_notebook import batch
what, arg = sys.argv[1], json.loads(sys.argv[2])
def show(run):
    return {**dataclasses.asdict(run), "folder": str(run.folder)}
try:
    if what == "submit":
        print(json.dumps(show(batch.submit(batch.BatchOptions(**arg)))))
    elif what == "list":
        print(json.dumps([show(r) for r in batch.list_runs()]))
    else:
        batch.cancel(arg)
        print("{}")
except batch.BatchError as error:
    print(json.dumps({"error": error.message, "field": error.field}))
"""


def _notebook(*sources: str, parameters: str = "") -> str:
    cells = [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": parameters, "outputs": [],
              "execution_count": None}] if parameters else []
    cells += [{"cell_type": "code", "metadata": {}, "source": s, "outputs": [], "execution_count": None}
              for s in sources]
    return json.dumps({"cells": cells, "nbformat": 4, "nbformat_minor": 5, "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}})


class LabUser:
    """The batch API run as ``name`` through runuser, with a minimal session-like environment (plus ``env``)."""

    def __init__(self, name: str, token: str, env: dict[str, str] | None = None) -> None:
        self.name, self.token, self.env = name, token, env or {}
        self.home = Path(pwd.getpwnam(name).pw_dir)

    def write(self, relative: str, text: str) -> None:
        subprocess.run(["runuser", "-u", self.name, "--", "mkdir", "-p", str((self.home / relative).parent)],
                       check=True, timeout=30)
        subprocess.run(["runuser", "-u", self.name, "--", "tee", str(self.home / relative)], input=text, text=True,
                       stdout=subprocess.DEVNULL, check=True, timeout=30)

    def api(self, what: str, arg: object) -> dict | list:
        env = {"PATH": f"{ENV}/bin:/usr/bin:/bin", "HOME": str(self.home), "USER": self.name, "LANG": "C.UTF-8",
               "JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api", "JUPYTERHUB_API_TOKEN": self.token,
               "JUPYTERHUB_SERVICE_PREFIX": f"/user/{self.name}/", "AIFL_LANG": "en",
               "SLURM_JOB_ID": "999999", "SLURM_JOB_ACCOUNT": "lab", "SLURM_JOB_QOS": "interactive",
               # a session job's own settings, which must not reach (or break) the batch job
               "SLURM_CPUS_PER_TASK": "64", "SLURM_MEM_PER_NODE": "1", "SBATCH_PARTITION": "nosuch", **self.env}
        result = subprocess.run(["runuser", "-u", self.name, "--", "env", "-i",
                                 *(f"{k}={v}" for k, v in env.items()), str(PYTHON), "-c", API, what, json.dumps(arg)],
                                capture_output=True, text=True, timeout=120, check=False, cwd="/")
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout)

    def wait_done(self, run_id: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = next(r for r in self.api("list", None) if r["run_id"] == run_id)
            if run["state"] not in ("waiting", "running"):
                return run
            time.sleep(1)
        raise AssertionError(f"batch run {run_id} did not end within {timeout} s: {run}")


@pytest.fixture
def lab_user(users) -> LabUser:
    if not (PYTHON.exists() and subprocess.run([str(PYTHON), "-c", "import papermill"], check=False).returncode == 0):
        pytest.fail("the notebook environment has no papermill: run ./lab up")
    return LabUser(*users("b"))


@pytest.mark.cluster
def test_a_batch_run_with_parameters_completes_and_keeps_its_result(lab_user):
    tricky = "it's \"quoted\" $(touch /tmp/pwned) `x` ; -- -p x 1"
    lab_user.write("work/double.ipynb", _notebook(
        "import os\nresult = x * 2\nprint(f'RESULT={result}|{label}|{type(rate).__name__}')",
        "print('ENV', sorted(k for k in os.environ if k.startswith(('JUPYTERHUB', 'SBATCH'))),"
        " os.environ['SLURM_CPUS_PER_TASK'])",
        parameters="x = 1\nlabel = 'a'\nrate = 1"))
    run = lab_user.api("submit", {"notebook": "work/double.ipynb", "profile": "cpu-small", "hours": 1,
                                  "parameters": {"x": 21, "label": tricky, "rate": 0.5}})
    assert "field" not in run, run
    assert run["state"] == "waiting"
    assert run["url"] == f"/user/{lab_user.name}/lab/tree/batch-runs/{run['run_id']}/output.ipynb"
    lab_user.write("work/double.ipynb", _notebook("raise SystemExit('edited later')"))  # the run has its own copy
    done = lab_user.wait_done(run["run_id"])
    assert done["state"] == "completed", done
    assert done["duration"] is not None and done["error"] == ""
    folder = Path(run["folder"])
    assert folder.parent == lab_user.home / "batch-runs"
    output = json.loads((folder / "output.ipynb").read_text())
    injected = next(c for c in output["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
    assert "x = 21" in "".join(injected["source"]) and "rate = 0.5" in "".join(injected["source"])
    printed = "".join("".join(o.get("text", "")) for c in output["cells"] for o in c.get("outputs", []))
    assert f"RESULT=42|{tricky}|float" in printed
    assert "ENV [] 2" in printed  # no hub token, no SBATCH_* of the session, its own SLURM_* values
    assert not Path("/tmp/pwned").exists()
    assert (folder / "run.log").exists() and folder.stat().st_uid == pwd.getpwnam(lab_user.name).pw_uid
    script = (folder / "job.sh").read_text()
    assert "#SBATCH --account=lab\n" in script and "#SBATCH --qos=interactive\n" in script
    deadline = time.monotonic() + 20  # slurmdbd may complete the job's record a moment later
    while True:
        accounting = subprocess.run(["sacct", "-X", "-n", "-P", "-j", done["job_id"], "-o", "Account,QOS,Partition"],
                                    capture_output=True, text=True, check=True, timeout=60).stdout.split()
        if accounting == ["lab|interactive|cpu"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert accounting == ["lab|interactive|cpu"]


@pytest.mark.cluster
def test_a_failing_notebook_shows_as_failed_with_the_error(lab_user):
    lab_user.write("fail.ipynb", _notebook("print('before')", "raise ValueError('boom 17')", "print('after')"))
    run = lab_user.api("submit", {"notebook": "fail.ipynb", "profile": "cpu-small"})
    done = lab_user.wait_done(run["run_id"])
    assert done["state"] == "failed", done
    assert done["error"] == "ValueError: boom 17"


@pytest.mark.cluster
def test_cancel_removes_the_job_and_refusals_submit_nothing(lab_user, hub):
    lab_user.write("later.ipynb", _notebook("print(1)"))
    for bad, words in ((("https://example.org/x.ipynb", "cpu-small"), "not addresses"),
                       (("/etc/x.ipynb", "cpu-small"), "outside your home folder"),
                       (("later.ipynb", "workshop-seat"), "only for members"),
                       (("later.ipynb", "cpu-small", 3), "from 1 to 2")):
        answer = lab_user.api("submit", dict(zip(("notebook", "profile", "hours"), bad, strict=False)))
        assert words in answer["error"]
    assert not (lab_user.home / "batch-runs").exists() or not list((lab_user.home / "batch-runs").iterdir())
    assert subprocess.run(["squeue", "-h", "-u", lab_user.name], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip() == ""

    # A member of the workshop group may use its profile (groups come from the hub with the session's token).
    assert hub.api("POST", "/groups/workshop", json={}).status_code in (201, 409)
    assert hub.api("POST", "/groups/workshop/users", json={"users": [lab_user.name]}).status_code == 200
    try:
        begin = (datetime.now() + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")
        run = lab_user.api("submit", {"notebook": "later.ipynb", "profile": "workshop-seat", "begin": begin})
    finally:
        hub.api("DELETE", "/groups/workshop/users", json={"users": [lab_user.name]})
    assert "field" not in run, run
    listed = next(r for r in lab_user.api("list", None) if r["run_id"] == run["run_id"])
    assert listed["state"] == "waiting"
    assert lab_user.api("cancel", run["run_id"]) == {}
    deadline = time.monotonic() + 30
    while subprocess.run(["squeue", "-h", "-j", run["job_id"]], capture_output=True, text=True,
                         check=False, timeout=60).stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert subprocess.run(["squeue", "-h", "-u", lab_user.name], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip() == ""
    assert lab_user.wait_done(run["run_id"], timeout=60)["state"] == "cancelled"
