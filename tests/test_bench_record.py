"""benchmarks/record.py: every benchmark run leaves its raw output in benchmarks/results/<name>-<date>-<commit>.txt."""

import re
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from record import commit_of, header, recorded, result_file

FILE = re.compile(r"^spawn-latency-\d{4}-\d\d-\d\d-([0-9a-f]{4,40}|unknown)(-\d+)?\.txt$")


def test_name_has_the_utc_date_and_the_commit(tmp_path: Path) -> None:
    late_in_amsterdam = datetime(2027, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    assert result_file(tmp_path, "spawn-latency", late_in_amsterdam, "51d623d").name == \
        "spawn-latency-2026-12-31-51d623d.txt"


def test_a_second_run_gets_its_own_file(tmp_path: Path) -> None:
    when = datetime(2026, 12, 3, 13, 10, tzinfo=UTC)
    first = result_file(tmp_path, "dask-scaling", when, "abc1234")
    first.write_text("earlier run\n")
    second = result_file(tmp_path, "dask-scaling", when, "abc1234")
    assert second.name == "dask-scaling-2026-12-03-abc1234-2.txt"
    second.write_text("")
    assert result_file(tmp_path, "dask-scaling", when, "abc1234").name.endswith("-3.txt")
    assert first.read_text() == "earlier run\n"


@pytest.mark.parametrize(("name", "commit"), [("../x", "abc1234"), ("Spawn", "abc1234"), ("x", "HEAD"),
                                              ("x", "abc1234/../y"), ("", "abc1234")])
def test_refuses_names_that_are_not_a_plain_file_name(tmp_path: Path, name: str, commit: str) -> None:
    with pytest.raises(ValueError, match="not a result file name"):
        result_file(tmp_path, name, datetime(2026, 12, 3, tzinfo=UTC), commit)


def test_header_names_the_command_the_moment_and_uncommitted_changes() -> None:
    text = header("spawn-latency", ["benchmarks/spawn_latency.py", "--repeats", "9"],
                  datetime(2026, 12, 3, 13, 10, 5, tzinfo=UTC), "abc1234", ["benchmarks/spawn_latency.py"])
    lines = text.splitlines()
    assert lines[0] == "# spawn-latency: benchmarks/spawn_latency.py --repeats 9"
    assert lines[1].startswith("# started 2026-12-03T13:10:05Z on ")
    assert lines[2] == "# commit abc1234; not committed: benchmarks/spawn_latency.py"
    assert text.endswith("\n\n")
    assert header("x", ["x.py"], datetime(2026, 12, 3, tzinfo=UTC), "abc1234", []).splitlines()[2] == "# commit abc1234"


def test_recorded_copies_stdout_and_stderr_into_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with recorded("spawn-latency", ["spawn_latency.py", "--repeats", "3"], folder=tmp_path) as path:
        print("ours / floor 1.10")
        print("a warning", file=sys.stderr)
    assert FILE.fullmatch(path.name) and path.parent == tmp_path
    text = path.read_text()
    assert text.startswith("# spawn-latency: spawn_latency.py --repeats 3\n")
    assert "ours / floor 1.10\n" in text and "a warning\n" in text
    out, err = capsys.readouterr()
    assert "ours / floor 1.10" in out and "a warning" in err
    assert f"raw output: {path}" in out


def test_commit_of_the_repository_is_its_head() -> None:
    commit, changed = commit_of(Path(__file__).resolve().parents[1])
    assert re.fullmatch(r"[0-9a-f]{4,40}", commit)
    assert all(not path.startswith(("tests/", "docs/", "notebooks/")) for path in changed)
