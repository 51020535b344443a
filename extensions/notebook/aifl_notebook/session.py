"""What a session knows about its own end: the Slurm job's end time, Slurm's save signal, idleness.

Plain Python, no Jupyter imports: the server extension (:mod:`aifl_notebook.handlers`) serves
:meth:`SessionClock.status` at ``GET {base_url}aifl/session``, and other parts (a session panel)
can use the same object.

The job's environment, all optional:

``SLURM_JOB_ID``
    The session's job; its end time comes from ``squeue -h -j <id> -o %e`` (so a changed time
    limit shows), or from ``SLURM_JOB_END_TIME`` (Slurm 23.02+) when squeue cannot answer.
``AIFL_SAVE_LEAD``
    Seconds before the time limit at which Slurm sends SIGUSR1 (``#SBATCH --signal=B:USR1@<lead>``).
``AIFL_IDLE_TIMEOUT``
    Seconds without activity after which the hub's idle culler stops the session (0: never).
``AIFL_LANG``
    The language the user chose in the hub: ``nl`` or ``en``.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

LANGUAGES = ("en", "nl")
DEFAULT_SAVE_LEAD = 600
END_TIME_REFRESH = 120.0  # seconds between squeue calls (a time limit rarely changes)


def session_language(env: Mapping[str, str]) -> str:
    """The session's language from ``AIFL_LANG`` (``nl`` or ``en``; anything else is English)."""
    lang = env.get("AIFL_LANG", "").strip().lower()
    return lang if lang in LANGUAGES else "en"


def _seconds(env: Mapping[str, str], name: str, default: int) -> int:
    """A non-negative whole number of seconds from ``env[name]``, or ``default``."""
    try:
        return max(0, int(env.get(name, "")))
    except ValueError:
        return default


def parse_squeue_end(text: str) -> float | None:
    """The end time squeue prints with ``-o %e`` (local time, ``2026-11-25T15:43:35``) as a timestamp."""
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:  # "N/A", "Unknown", an empty answer
        return None


def squeue_end_time(job_id: str, squeue: str | None = None) -> float | None:
    """Ask Slurm for the job's current end time; None when it cannot tell."""
    squeue = squeue or shutil.which("squeue")
    if not squeue or not job_id.isdigit():
        return None
    try:
        result = subprocess.run([squeue, "-h", "-j", job_id, "-o", "%e"],
                                capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_squeue_end(result.stdout) if result.returncode == 0 else None


class SessionClock:
    """The session's end and idleness, as the job's environment and Slurm describe them.

    ``last_activity`` returns when the server last did something (Jupyter Server's own
    ``web_app.last_activity()``); ``end_time`` returns the job's end as a timestamp or None
    (by default :func:`squeue_end_time`). Both are injectable for tests.
    """

    def __init__(self, env: Mapping[str, str], last_activity: Callable[[], datetime],
                 end_time: Callable[[str], float | None] = squeue_end_time,
                 clock: Callable[[], float] = time.time) -> None:
        self.job_id = env.get("SLURM_JOB_ID", "")
        self.language = session_language(env)
        self.save_lead = _seconds(env, "AIFL_SAVE_LEAD", DEFAULT_SAVE_LEAD)
        self.idle_timeout = _seconds(env, "AIFL_IDLE_TIMEOUT", 0)
        self._env_end = _seconds(env, "SLURM_JOB_END_TIME", 0) or None
        self._last_activity = last_activity
        self._end_time = end_time
        self._clock = clock
        self._lock = threading.Lock()
        self._cached_end: float | None = None
        self._cached_at = float("-inf")
        self.save_signal_time: float | None = None

    def record_save_signal(self) -> None:
        """Slurm's SIGUSR1 arrived: the job ends in about ``save_lead`` seconds."""
        self.save_signal_time = self._clock()

    def end_time(self) -> float | None:
        """The job's end as a timestamp (squeue at most every ``END_TIME_REFRESH`` s), or None."""
        with self._lock:
            now = self._clock()
            if self.job_id and now - self._cached_at >= END_TIME_REFRESH:
                self._cached_end = self._end_time(self.job_id)
                self._cached_at = now
            end = self._cached_end or self._env_end
        if end is None and self.save_signal_time is not None:
            end = self.save_signal_time + self.save_lead
        return end

    def status(self) -> dict[str, Any]:
        """The session's state as a JSON-ready dict (the ``GET aifl/session`` answer).

        ``seconds_left`` and ``end_time`` are null when the end is unknown; ``idle_seconds`` counts
        from the server's last activity; ``save_signal`` says whether Slurm's warning arrived.
        """
        now = self._clock()
        end = self.end_time()
        idle = max(0.0, now - self._last_activity().timestamp())
        return {
            "job_id": self.job_id or None,
            "end_time": datetime.fromtimestamp(end).astimezone().isoformat() if end else None,
            "seconds_left": max(0, round(end - now)) if end else None,
            "save_signal": self.save_signal_time is not None,
            "save_signal_time": (datetime.fromtimestamp(self.save_signal_time).astimezone().isoformat()
                                 if self.save_signal_time is not None else None),
            "save_lead": self.save_lead,
            "idle_timeout": self.idle_timeout,
            "idle_seconds": round(idle),
            "language": self.language,
        }
