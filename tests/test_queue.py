"""Waiting in plain words: Slurm's pending reasons and a job's place in the queue."""

from datetime import datetime

from aifl_hub.queue import REASONS, QueuePlace, explain_reason, queue_place
from aifl_hub.slurm import Allocation, parse_allocation

# Lines as `squeue -h -t PENDING -p gpu -o "%i|%Q|%V|%r"` prints them on the local cluster.
SQUEUE = """\
412|10512|2026-11-25T14:02:11|Resources
415|10512|2026-11-25T14:02:40|Priority
409|20512|2026-11-25T14:05:01|Priority
417|10400|2026-11-25T14:01:00|Priority
"""


def test_place_follows_priority_then_submit_time():
    assert queue_place("409", SQUEUE) == QueuePlace(position=1, waiting=4)
    assert queue_place("412", SQUEUE) == QueuePlace(position=2, waiting=4)
    assert queue_place("415", SQUEUE) == QueuePlace(position=3, waiting=4)
    assert queue_place("417", SQUEUE) == QueuePlace(position=4, waiting=4)


def test_unknown_job_and_junk_lines():
    assert queue_place("999", SQUEUE) is None
    assert queue_place("5", "garbage\n5|x|t|None\n") is None
    assert queue_place("5", "5|1|2026-11-25T14:00:00|None\n") == QueuePlace(1, 1)


def test_reasons_in_plain_words_in_both_languages():
    assert explain_reason("Resources", "en") == REASONS["Resources"]
    assert explain_reason("Resources", "nl").startswith("alle plekken die bij dit profiel passen")
    assert explain_reason("QOSMaxNodePerUserLimit", "en") == "a usage limit is reached (QOSMaxNodePerUserLimit)"
    assert explain_reason("BadConstraints", "nl") == "Slurm meldt: BadConstraints"


# `scontrol show job -d` of a running 2-GPU job on the local cluster (abridged).
SCONTROL = """\
JobId=22 JobName=wrap
   JobState=RUNNING Reason=None Dependency=(null)
   StartTime=2026-11-25T15:02:42 EndTime=2026-11-25T15:32:42 Deadline=N/A
   Partition=gpu AllocNode:Sid=localhost:990
   ReqNodeList=(null) ExcNodeList=(null)
   NodeList=gpu01
   BatchHost=gpu01
   JOB_GRES=gpu:h200:2
     Nodes=gpu01 CPU_IDs=0-1 Mem=1024 GRES=gpu:h200:2(IDX:0-1)
"""


def test_allocation_of_a_running_job():
    allocation = parse_allocation(SCONTROL)
    assert allocation == Allocation("gpu01", "0, 1", datetime(2026, 11, 25, 15, 32, 42))


def test_allocation_without_gpus_or_node():
    cpu_job = SCONTROL.replace("   JOB_GRES=gpu:h200:2\n", "").replace(" GRES=gpu:h200:2(IDX:0-1)", "")
    assert parse_allocation(cpu_job) == Allocation("gpu01", "", datetime(2026, 11, 25, 15, 32, 42))
    assert parse_allocation("JobId=5 JobState=PENDING NodeList=(null)") is None
    assert parse_allocation(SCONTROL.replace("GRES=gpu:h200:2(IDX:0-1)", "GRES=gpu:h200:3(IDX:0,2-3)")).gpus == \
        "0, 2, 3"
