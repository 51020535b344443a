"""The batch-script builder: what reaches the script is exactly the validated request."""

import re
from pathlib import Path

import pytest
from aifl_hub.options import SessionRequest, validate_options
from aifl_hub.script import JobSpec, ScriptError, build_script
from aifl_hub.site import load_site
from hypothesis import given, settings
from hypothesis import strategies as st

SITE = load_site(Path(__file__).resolve().parents[1] / "hub_config" / "site.yaml")
JOB = JobSpec(username="alice", home="/home/alice", log_path="/home/alice/.aifl/logs/session-%j.log",
              command=["/opt/aifl/envs/default/bin/aifl-singleuser", "--debug"],
              export_names=["HOME", "JUPYTERHUB_API_TOKEN", "PATH"],
              path_dirs=["/opt/aifl/envs/default/bin", "/usr/bin", "/bin"], gpu_type="h200")


def test_gpu_session_script():
    script = build_script(validate_options(SITE, {"profile": "gpu-1", "hours": "3"}), JOB)
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert directives == [
        "#SBATCH --job-name=aifl-lab",
        "#SBATCH --output=/home/alice/.aifl/logs/session-%j.log",
        "#SBATCH --chdir=/home/alice",
        "#SBATCH --export=HOME,JUPYTERHUB_API_TOKEN,PATH",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --qos=interactive",
        "#SBATCH --time=3:00:00",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        "#SBATCH --no-requeue",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --mem=120G",
        "#SBATCH --gres=gpu:h200:1",
    ]
    assert script.splitlines()[-1] == "exec /opt/aifl/envs/default/bin/aifl-singleuser --debug"
    assert "--get-user-env" not in script


def test_cpu_session_asks_for_no_gpu():
    script = build_script(validate_options(SITE, {"profile": "cpu-small"}), JOB)
    assert "--gres" not in script
    assert "#SBATCH --partition=cpu" in script


def test_a_share_of_a_gpu_asks_for_a_shard_and_never_for_whole_gpus():
    request = validate_options(SITE, {"profile": "workshop-gpu-share"})
    script = build_script(request, JOB)
    assert [line for line in script.splitlines() if "--gres" in line] == ["#SBATCH --gres=shard:1"]
    assert "#SBATCH --partition=gpu\n" in script
    with pytest.raises(ScriptError, match="whole GPUs or a share"):
        build_script(SessionRequest(**{**request.__dict__, "gpus": 1}), JOB)


def test_command_arguments_are_quoted():
    job = JobSpec(**{**JOB.__dict__, "command": ["/opt/x/bin/run", "--name=a b; id", "$(id)"]})
    last = build_script(validate_options(SITE, {}), job).splitlines()[-1]
    assert last == "exec /opt/x/bin/run '--name=a b; id' '$(id)'"


def test_reservation_and_save_signal():
    request = validate_options(SITE, {"profile": "gpu-1", "reservation--unlisted-choice": "course-12"})
    script = build_script(request, JobSpec(**{**JOB.__dict__, "save_lead": 600}))
    assert "#SBATCH --reservation=course-12\n" in script
    assert "#SBATCH --signal=B:USR1@600\n" in script
    assert "--reservation" not in build_script(validate_options(SITE, {"profile": "gpu-1"}), JOB)


@pytest.mark.parametrize("field", ["partition", "account", "qos", "reservation"])
@pytest.mark.parametrize("value", ["x\n#SBATCH --uid=0", "lab\n", "a b"])
def test_unsafe_request_values_never_reach_the_script(field, value):
    request = validate_options(SITE, {})
    bad = SessionRequest(**{**request.__dict__, field: value})
    with pytest.raises(ScriptError):
        build_script(bad, JOB)


@pytest.mark.parametrize(("field", "value"), [("username", "root; id"), ("home", "/home/a b"),
                                               ("log_path", "/tmp/x\n#SBATCH -p all"), ("gpu_type", "h200 x"),
                                               ("export_names", ["PATH", "A=B"]), ("command", [])])
def test_unsafe_job_values_never_reach_the_script(field, value):
    with pytest.raises(ScriptError):
        build_script(validate_options(SITE, {"profile": "gpu-1"}), JobSpec(**{**JOB.__dict__, field: value}))


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=20))
def test_no_generated_partition_breaks_out_of_its_line(value):
    request = SessionRequest(**{**validate_options(SITE, {}).__dict__, "partition": value})
    try:
        script = build_script(request, JOB)
    except ScriptError:
        return
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value)
    assert f"#SBATCH --partition={value}\n" in script
