"""Where jobs run: the one small contract every engine fulfils, and the in-process engine.

An :class:`Engine` takes :class:`~.jobs.DeckJob` s and returns their
:class:`~.jobs.JobResult` s in job order. Because a batch is cut into fixed
chunks and every job's answer depends only on the job, every engine gives the
same answers, bit for bit:

* :class:`LocalEngine`: one after another in this process;
* :class:`~.pool.PoolEngine`: local worker processes (``--workers N``);
* :class:`~.dask_engine.DaskEngine`: a Dask cluster (``--scheduler``).

The backend (:class:`~.ngspice.NgspiceBackend`) picks one; nothing else
depends on which.
"""

from __future__ import annotations

from typing import Protocol

from .jobs import DeckJob, JobResult, run_job
from .session import session_stats


class Engine(Protocol):
    """Runs ngspice jobs somewhere."""

    #: Processes that run jobs (for timings and messages).
    workers: int

    def run(self, jobs: list[DeckJob]) -> list[JobResult]:
        """The results of ``jobs``, in their order."""

    def close(self) -> None:
        """Release the processes or connections (idempotent)."""

    def stats(self) -> list[dict]:
        """Session counters (:func:`~.session.session_stats`) of each process that answers."""


class WorkerCrashError(RuntimeError):
    """A job killed its worker process ``max_crashes`` times; the message names the job."""


def describe_job(jobs: list[DeckJob], k: int) -> str:
    """Job ``k`` of ``jobs`` in words: its place, its samples in the batch, method and deck digest."""
    start = sum(j.values.shape[0] for j in jobs[:k])
    job = jobs[k]
    return (f"job {k + 1} of {len(jobs)} (samples {start}..{start + job.values.shape[0] - 1} of the batch, "
            f"{job.method}, deck sha256 {job.deck_digest[:12]})")


class LocalEngine:
    """Runs jobs one after another in this process."""

    workers = 1

    def run(self, jobs: list[DeckJob]) -> list[JobResult]:
        return [run_job(job) for job in jobs]

    def close(self) -> None:
        pass

    def stats(self) -> list[dict]:
        return [session_stats()]
