"""Waiting in plain words: Slurm's pending reasons and a job's place in the queue."""

from aifl_hub.queue import REASONS, QueuePlace, explain_reason, queue_place

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
