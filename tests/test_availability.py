"""Live availability per profile: parsing captured Slurm output, the free/wait/full decision, plain words."""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from aifl_hub.availability import (
    JOB_FORMAT,
    NODE_FORMAT,
    Availability,
    ClusterWatch,
    Job,
    Node,
    Snapshot,
    describe,
    estimate,
    expand_hostlist,
    gres_count,
    memory_mb,
    parse_jobs,
    parse_nodes,
    parse_time_limit,
    parse_tres,
    round_wait,
)
from aifl_hub.site import load_site
from aifl_hub.slurm import SlurmUnavailable
from conftest import REPO, slurm

DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Ask:
    partition: str
    gpus: int
    cpus: int
    memory_gb: int
    shards: int = 0


# The shipped site file's profiles.
CPU_SMALL = Ask("cpu", 0, 2, 8)
GPU_1 = Ask("gpu", 1, 16, 120)
GPU_4 = Ask("gpu", 4, 64, 480)


def captured(name: str, sinfo: str | None = None) -> Snapshot:
    """A snapshot from the captures in tests/data (``sinfo`` names another capture's node listing)."""
    taken_at = datetime.fromisoformat((DATA / f"{name}.time").read_text().strip())
    return Snapshot.parse((DATA / f"{sinfo or name}.sinfo").read_text(), (DATA / f"{name}.squeue").read_text(),
                          taken_at)


# --- parsing --------------------------------------------------------------------------------------------------


def test_nodes_from_sinfo():
    nodes, up = parse_nodes((DATA / "busy.sinfo").read_text())
    assert up == {"gpu", "cpu"}
    by_name = {n.name: n for n in nodes}
    assert sorted(by_name) == ["cpu01", "gpu01", "gpu02", "gpu03", "gpu04"]
    assert by_name["cpu01"] == Node("cpu01", frozenset({"cpu"}), True, 16, 12, 65536, 8192, 0, 0)
    assert by_name["gpu01"] == Node("gpu01", frozenset({"gpu"}), True, 64, 24, 524288, 348160, 4, 4)
    assert by_name["gpu04"].gpus_used == 3 and by_name["gpu04"].cpus_idle == 58


def test_a_drained_node_takes_no_jobs_and_its_offline_cpus_do_not_count():
    nodes, _ = parse_nodes((DATA / "draining.sinfo").read_text())
    gpu04 = next(n for n in nodes if n.name == "gpu04")  # allocated+drain, 6/0/58/64
    assert not gpu04.takes_jobs and gpu04.cpus == 6
    assert all(n.takes_jobs for n in nodes if n.name != "gpu04")


@pytest.mark.parametrize(("state", "takes_jobs"), [
    ("idle", True), ("mixed", True), ("allocated", True), ("idle+planned", True), ("mixed+completing", True),
    ("allocated+drain", False), ("idle+drain", False), ("mixed+not_responding", False), ("down+not_responding", False),
    ("down*", False), ("drained", False), ("idle+maint", False), ("idle+reserved", False), ("unknown", False),
])
def test_node_states(state, takes_jobs):
    line = f"gpu09|gpu|up|{state}|0/64/0/64|0|524288|gpu:h200:4|gpu:h200:0(IDX:N/A)|"
    assert parse_nodes(line)[0][0].takes_jobs is takes_jobs


def test_node_in_two_partitions_and_partitions_that_are_down():
    text = ("gpu01|gpu|up|idle|0/64/0/64|0|524288|gpu:h200:4(S:0-1)|gpu:h200:0(IDX:N/A)|\n"
            "gpu01|long|down|idle|0/64/0/64|0|524288|gpu:h200:4(S:0-1)|gpu:h200:0(IDX:N/A)|\n"
            "garbage line\n|gpu|up|idle|x/y|0|0|||\n")
    nodes, up = parse_nodes(text)
    assert [(n.name, n.partitions, n.gpus) for n in nodes] == [("gpu01", frozenset({"gpu", "long"}), 4)]
    assert up == {"gpu"}


def test_jobs_from_squeue():
    jobs = {j.job_id: j for j in parse_jobs((DATA / "busy.squeue").read_text())}
    assert sorted(jobs, key=int) == [str(i) for i in range(87, 97)]
    two_nodes = jobs["92"]
    assert (two_nodes.state, two_nodes.nodes, two_nodes.num_nodes) == ("R", ("gpu03", "gpu04"), 2)
    assert two_nodes.ends_at == datetime(2026, 11, 25, 16, 3, 54)
    assert two_nodes.per_node == (1, 2, 4096, 0)
    pending = jobs["93"]
    assert (pending.state, pending.reason, pending.priority, pending.nodes) == ("PD", "Resources", 10000, ())
    assert (pending.gpus, pending.cpus, pending.memory_mb, pending.time_limit) == (4, 4, 20480, timedelta(hours=2))
    assert jobs["96"].reason == "JobHeldUser" and jobs["96"].ends_at is None
    assert jobs["90"].partitions == ("cpu",) and jobs["90"].gpus == 0
    assert parse_jobs("junk\n\n12|gpu|R\n") == ()


@pytest.mark.parametrize(("text", "names"), [
    ("gpu01", ("gpu01",)),
    ("gpu[03-04]", ("gpu03", "gpu04")),
    ("gpu[01,03-04],cpu01", ("gpu01", "gpu03", "gpu04", "cpu01")),
    ("n[8-10]", ("n8", "n9", "n10")),
    ("n[098-100]", ("n098", "n099", "n100")),
    ("r[1-2]n[1-2]", ("r1n1", "r1n2", "r2n1", "r2n2")),
    ("", ()),
])
def test_host_lists(text, names):
    assert expand_hostlist(text) == names


@pytest.mark.parametrize(("text", "count"), [
    ("gpu:h200:4", 4), ("gpu:h200:4(S:0-1)", 4), ("gpu:h200:3(IDX:0-2)", 3), ("gpu:h200:0(IDX:N/A)", 0),
    ("gpu:0", 0), ("(null)", 0), ("gpu:h200:2(IDX:0,2),gpu:a100:1(IDX:0)", 3), ("gpu:h200:4,shard:h200:16", 4),
    ("gpu", 1), ("", 0),
])
def test_gres_counts(text, count):
    assert gres_count(text) == count


def test_tres_memory_and_time_limits():
    assert parse_tres("cpu=16,mem=120G,node=1,billing=16,gres/gpu=1") == (16, 122880, 1)
    assert parse_tres("cpu=4,mem=8G,node=1,billing=4") == (4, 8192, 0)
    assert parse_tres("cpu=2,mem=1.5T,gres/gpu:h200=2") == (2, 1572864, 2)
    assert parse_tres("") == (0, 0, 0)
    assert [memory_mb(t) for t in ("8192", "512M", "2G", "1024K", "lots")] == [8192, 512, 2048, 1, None]
    assert parse_time_limit("30:00") == timedelta(minutes=30)
    assert parse_time_limit("8:00:00") == timedelta(hours=8)
    assert parse_time_limit("2-12:00:00") == timedelta(days=2, hours=12)
    assert parse_time_limit("45") == timedelta(minutes=45)
    assert [parse_time_limit(t) for t in ("UNLIMITED", "INVALID", "N/A", "x-1:00", "1:2:3:4")] == [None] * 5


# --- the decision on captured clusters --------------------------------------------------------------------------


@pytest.mark.parametrize(("capture", "sinfo", "ask", "expected"), [
    ("idle", None, CPU_SMALL, Availability("free")),
    ("idle", None, GPU_4, Availability("free")),
    # one GPU left on gpu04; the pending 4-GPU job does not fit there, so it does not take it
    ("busy", None, GPU_1, Availability("free")),
    # gpu02 empties at 15:58:48 but the pending 4-GPU job takes it; gpu04 empties at 16:08:56
    ("busy", None, GPU_4, Availability("wait", 30, datetime(2026, 11, 25, 16, 8, 56))),
    ("busy", None, CPU_SMALL, Availability("free")),
    # gpu04 drained: the first GPU after the pending job's is the two-node job's on gpu03, at 16:03:54
    ("busy", "draining", GPU_1, Availability("wait", 25, datetime(2026, 11, 25, 16, 3, 54))),
    ("busy", "draining", GPU_4, Availability("wait", 60, datetime(2026, 11, 25, 16, 38, 54))),
    # the last GPU is free, but a 1-GPU job pending ahead takes it (backfill has not started it yet)
    ("backlog", None, GPU_1, Availability("wait", 25, datetime(2026, 11, 25, 16, 3, 54))),
    ("full", None, GPU_1, Availability("wait", 25, datetime(2026, 11, 25, 16, 3, 54))),
    ("full", None, GPU_4, Availability("wait", 90, datetime(2026, 11, 25, 17, 10, 49))),
    ("full", None, CPU_SMALL, Availability("free")),
])
def test_decisions_on_captured_clusters(capture, sinfo, ask, expected):
    snapshot = captured(capture, sinfo)
    assert estimate(snapshot, ask, snapshot.taken_at) == expected


def test_beyond_the_horizon_it_is_full_until_a_time():
    snapshot = captured("full")
    assert estimate(snapshot, GPU_4, snapshot.taken_at, horizon=timedelta(hours=1)) == Availability(
        "full", until=datetime(2026, 11, 25, 17, 10, 49))


def test_the_wait_shrinks_as_the_clock_moves_on():
    snapshot = captured("full")
    later = snapshot.taken_at + timedelta(minutes=20)
    assert estimate(snapshot, GPU_1, later).minutes == 5
    assert estimate(snapshot, GPU_1, datetime(2026, 11, 25, 16, 5)) == Availability("free")


@pytest.mark.parametrize(("ask", "why"), [
    (Ask("gpu", 8, 16, 120), "more GPUs than a node has"),
    (Ask("gpu", 1, 128, 120), "more cores than a node has"),
    (Ask("gpu", 1, 16, 1024), "more memory than a node has"),
    (Ask("cpu", 1, 2, 8), "a GPU on the CPU partition"),
    (Ask("long", 0, 1, 1), "a partition Slurm does not list"),
])
def test_nothing_could_ever_run_it(ask, why):
    snapshot = captured("idle")
    assert estimate(snapshot, ask, snapshot.taken_at) == Availability("unavailable", reason="no_node"), why


# --- the decision on controlled clusters ------------------------------------------------------------------------

NOW = datetime(2026, 11, 25, 12, 0)


def node(name: str = "gpu01", gpus_used: int = 0, cpus_idle: int = 64, **kw) -> Node:
    fields = dict(name=name, partitions=frozenset({"gpu"}), takes_jobs=True, cpus=64, cpus_idle=cpus_idle,
                  memory_mb=524288, memory_alloc_mb=0, gpus=4, gpus_used=gpus_used)
    return Node(**{**fields, **kw})


def job(job_id: str, state: str = "R", *, minutes: float | None = 30, gpus: int = 4,
        nodes: tuple[str, ...] = ("gpu01",), reason: str = "None", priority: int = 100,
        limit: timedelta | None = timedelta(hours=1)) -> Job:
    ends_at = NOW + timedelta(minutes=minutes) if minutes is not None and state == "R" else None
    return Job(job_id, ("gpu",), state, reason, priority, "2026-11-25T11:00:00", ends_at, limit, 1, 1, 1024, gpus,
               nodes if state != "PD" else ())


def cluster(nodes: list[Node], jobs: list[Job], up: frozenset[str] = frozenset({"gpu"})) -> Snapshot:
    return Snapshot(tuple(nodes), up, tuple(jobs), NOW)


def test_free_needs_gpus_cores_and_memory_on_one_node():
    assert estimate(cluster([node(gpus_used=3)], []), GPU_1, NOW).state == "free"
    assert estimate(cluster([node(gpus_used=3, cpus_idle=15)], []), GPU_1, NOW).state == "full"
    short_of_memory = node(gpus_used=3, memory_alloc_mb=524288 - 120 * 1024 + 1)
    assert estimate(cluster([short_of_memory], []), GPU_1, NOW).state == "full"
    # three free GPUs spread over three nodes are no place for four GPUs on one node
    spread = [node(f"gpu0{i}", gpus_used=3) for i in range(1, 4)]
    assert estimate(cluster(spread, []), GPU_4, NOW).state == "full"


@pytest.mark.parametrize(("minutes", "expected"), [
    (0.5, Availability("wait", 5, NOW + timedelta(seconds=30))),
    (11, Availability("wait", 15, NOW + timedelta(minutes=11))),
    (120, Availability("wait", 120, NOW + timedelta(minutes=120))),
    (121, Availability("full", until=NOW + timedelta(minutes=121))),
])
def test_wait_until_a_running_job_ends(minutes, expected):
    assert estimate(cluster([node(gpus_used=4)], [job("1", minutes=minutes)]), GPU_1, NOW) == expected


def test_overdue_and_completing_jobs_free_their_room_now():
    assert estimate(cluster([node(gpus_used=4)], [job("1", minutes=-3)]), GPU_1, NOW).state == "free"
    configuring = replace(job("1", minutes=15), state="CF")
    assert estimate(cluster([node(gpus_used=4)], [configuring]), GPU_1, NOW).minutes == 15
    assert estimate(cluster([node(gpus_used=4)], [job("1", "CG", minutes=None)]), GPU_1, NOW).state == "free"


def test_without_a_known_end_it_is_full_without_a_time():
    assert estimate(cluster([node(gpus_used=4)], [job("1", minutes=None)]), GPU_1, NOW) == Availability("full")
    assert estimate(cluster([node(gpus_used=4)], []), GPU_1, NOW) == Availability("full")


def test_pending_jobs_ahead_take_room_first_but_held_ones_do_not():
    running = job("1", minutes=10)
    ahead = job("2", "PD", gpus=4, reason="Resources", limit=timedelta(minutes=50))
    assert estimate(cluster([node(gpus_used=4)], [running, ahead]), GPU_1, NOW) == Availability(
        "wait", 60, NOW + timedelta(minutes=60))
    for reason in ("JobHeldUser", "QOSMaxGRESPerUser", "Dependency", "BeginTime"):
        waiting = replace(ahead, reason=reason)
        assert estimate(cluster([node(gpus_used=4)], [running, waiting]), GPU_1, NOW).minutes == 10, reason
    other_partition = replace(ahead, partitions=("cpu",))
    assert estimate(cluster([node(gpus_used=4)], [running, other_partition]), GPU_1, NOW).minutes == 10


def test_pending_jobs_go_by_priority_and_a_blocked_big_one_lets_small_ones_pass():
    nodes = [node("gpu01", gpus_used=4), node("gpu02", gpus_used=3)]
    big = job("2", "PD", gpus=4, reason="Resources", priority=500)
    small = job("3", "PD", gpus=1, reason="Priority", priority=100, limit=timedelta(minutes=40))
    running = job("1", minutes=10, nodes=("gpu01",))
    # the small job takes gpu02's free GPU now; gpu01 empties at 10 min and the big job takes it;
    # the small job's GPU is back at 40 min
    assert estimate(cluster(nodes, [running, big, small]), GPU_1, NOW) == Availability(
        "wait", 40, NOW + timedelta(minutes=40))


def test_drained_nodes_and_closed_partitions():
    drained = node(takes_jobs=False)
    assert estimate(cluster([drained], []), GPU_1, NOW) == Availability("unavailable", reason="no_node")
    assert estimate(cluster([node()], [], up=frozenset()), GPU_1, NOW) == Availability("unavailable", reason="no_node")
    assert estimate(cluster([drained, node("gpu02")], []), GPU_1, NOW).state == "free"


def test_a_multi_node_job_gives_room_back_on_each_node():
    nodes = [node("gpu01", gpus_used=4), node("gpu02", gpus_used=4)]
    wide = replace(job("1", minutes=20, gpus=8, nodes=("gpu01", "gpu02")), num_nodes=2)
    assert estimate(cluster(nodes, [wide]), GPU_4, NOW) == Availability("wait", 20, NOW + timedelta(minutes=20))


def test_waits_are_rounded_up_to_five_minutes():
    assert [round_wait(timedelta(minutes=m)) for m in (0.1, 5, 5.1, 23, 89.5, 120)] == [5, 5, 10, 25, 90, 120]


# --- plain words ------------------------------------------------------------------------------------------------

WORDS = [
    (Availability("free"), "Free now", "Nu vrij"),
    (Availability("wait", 25, NOW + timedelta(minutes=23)), "About 25 minutes wait", "Ongeveer 25 minuten wachten"),
    (Availability("full", until=datetime(2026, 11, 25, 14, 29, 1)), "Full until 14:30", "Vol tot 14:30"),
    (Availability("full", until=datetime(2026, 11, 25, 14, 30)), "Full until 14:30", "Vol tot 14:30"),
    (Availability("full", until=datetime(2026, 11, 26, 9, 5)), "Full until Thursday 26 November 09:05",
     "Vol tot donderdag 26 november 09:05"),
    (Availability("full"), "Full for now; no end time is known", "Voorlopig vol; wanneer er plek komt is niet bekend"),
    (Availability("unavailable", reason="no_node"), "No node can run this right now",
     "Geen enkele node kan dit nu draaien"),
    (Availability("unavailable", reason="no_answer"), "Availability unknown: the cluster does not answer right now",
     "Beschikbaarheid onbekend: het cluster antwoordt nu niet"),
]


@pytest.mark.parametrize(("availability", "english", "dutch"), WORDS)
def test_plain_words_in_both_languages(availability, english, dutch):
    assert describe(availability, "en", NOW) == english
    assert describe(availability, "nl", NOW) == dutch


# --- the cached watch -------------------------------------------------------------------------------------------


class FakeSlurm:
    """Answers ``sinfo``/``squeue`` with a capture, counting calls; ``fail`` makes it unreachable."""

    def __init__(self, capture: str) -> None:
        self.capture, self.calls, self.fail = capture, [], False

    async def __call__(self, argv):
        self.calls.append(list(argv))
        await asyncio.sleep(0.01)
        if self.fail:
            raise SlurmUnavailable(argv, 1, "Unable to contact slurm controller (connect failure)")
        return (DATA / f"{self.capture}.{Path(argv[0]).name}").read_text()


class Clock:
    def __init__(self) -> None:
        self.now = datetime.fromisoformat((DATA / "full.time").read_text().strip())

    def __call__(self) -> datetime:
        return self.now


def test_one_snapshot_serves_every_profile_for_a_few_seconds():
    fake, clock = FakeSlurm("full"), Clock()
    watch = ClusterWatch("/opt/slurm/bin", ["gpu", "cpu"], ttl=5, clock=clock, runner=fake)

    async def cards():
        return await asyncio.gather(*(watch.availability(a) for a in (CPU_SMALL, GPU_1, GPU_4) * 3))

    async def pages():
        first = await cards()
        assert [a.state for a in first[:3]] == ["free", "wait", "wait"]
        assert fake.calls == [
            ["/opt/slurm/bin/sinfo", "-N", "-h", "-p", "gpu,cpu", "-O", NODE_FORMAT],
            ["/opt/slurm/bin/squeue", "-h", "-t", "PD,CF,R,CG", "-p", "gpu,cpu", "-O", JOB_FORMAT],
        ]
        clock.now += timedelta(seconds=4)
        await cards()
        assert len(fake.calls) == 2
        clock.now += timedelta(seconds=1)
        await cards()
        assert len(fake.calls) == 4

    asyncio.run(pages())


def test_when_slurm_does_not_answer_the_page_gets_a_plain_line_not_an_error():
    fake, clock = FakeSlurm("full"), Clock()
    watch = ClusterWatch("/usr/bin", ["gpu"], ttl=5, clock=clock, runner=fake)
    fake.fail = True

    async def pages():
        assert await watch.availability(GPU_1) == Availability("unavailable", reason="no_answer")
        assert await watch.availability(GPU_4) == Availability("unavailable", reason="no_answer")
        assert len(fake.calls) == 1  # the failure is cached too: a dead controller is not asked per card
        fake.fail = False
        clock.now += timedelta(seconds=5)
        assert (await watch.availability(GPU_1)).state == "wait"

    asyncio.run(pages())


def test_an_empty_or_nonsense_answer_counts_as_no_answer():
    async def nonsense(argv):
        return "slurm_load_partitions: Unable to contact slurm controller\n"

    watch = ClusterWatch("/usr/bin", ["gpu"], runner=nonsense)
    assert asyncio.run(watch.availability(GPU_1)) == Availability("unavailable", reason="no_answer")


def test_a_missing_slurm_tool_is_no_answer():
    watch = ClusterWatch("/nonexistent/bin", ["gpu"])
    assert asyncio.run(watch.availability(GPU_1)) == Availability("unavailable", reason="no_answer")


def test_partition_names_are_checked():
    with pytest.raises(ValueError, match="partition"):
        ClusterWatch("/usr/bin", ["gpu; rm -rf /"])
    with pytest.raises(ValueError, match="partition"):
        ClusterWatch("/usr/bin", [])
    watch = ClusterWatch.from_site(load_site(REPO / "hub_config" / "site.yaml"))
    assert (watch.bin_dir, watch.partitions) == ("/usr/bin", ("gpu", "cpu"))


# --- on the running cluster -------------------------------------------------------------------------------------


@pytest.mark.cluster
def test_full_gpus_name_a_time_and_free_again_after_cancelling(lab_system):
    site = load_site(REPO / "hub_config" / "site.yaml")
    watch = ClusterWatch.from_site(site, ttl=0)
    assert describe(asyncio.run(watch.availability(CPU_SMALL)), "en") == "Free now"
    sbatch = ["sbatch", "--parsable", "-p", "gpu", "--gres=gpu:4", "-c", "1", "--mem=1G", "-t", "10",
              "-o", "/dev/null", "--chdir=/tmp", "--wrap", "sleep 600"]
    fillers = [slurm(*sbatch).strip() for _ in range(4)]
    try:
        deadline = time.monotonic() + 30
        while slurm("squeue", "-h", "-t", "RUNNING", "-j", ",".join(fillers), "-o", "%i").split() != sorted(
                fillers, key=int) and time.monotonic() < deadline:
            time.sleep(0.3)
        running = slurm("squeue", "-h", "-t", "RUNNING", "-j", ",".join(fillers), "-o", "%i").split()
        assert len(running) == 4, f"other work holds GPUs: not all fillers run ({running} of {fillers})"
        availability = asyncio.run(watch.availability(GPU_1))
        assert availability.state in ("wait", "full"), availability
        assert availability.until is not None
        assert availability.until <= datetime.now() + timedelta(minutes=10, seconds=5)
        if availability.state == "wait":
            assert describe(availability, "en") == f"About {availability.minutes} minutes wait"
            assert availability.minutes in (5, 10)
    finally:
        subprocess.run(["scancel", *fillers], check=True, timeout=60)
    deadline = time.monotonic() + 60
    while (availability := asyncio.run(watch.availability(GPU_1))).state != "free" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert describe(availability, "en") == "Free now"
