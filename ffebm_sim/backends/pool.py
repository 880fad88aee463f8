"""Local worker processes, one libngspice each (``--workers N``).

A job (:class:`~.ngspice.DeckJob`, a fixed-size chunk of samples of one deck)
runs in one worker; a worker keeps its loaded circuit between jobs and reloads
only when the deck (the conductances, or the nudge structure) changes.
Results come back in job order, and since the chunks do not depend on the
number of workers, the answers are bit-identical to a one-worker run.

Workers are started with ``spawn`` (never ``fork``: the parent may hold a
libngspice and torch's thread pools) and stay up until :meth:`PoolEngine.close`
or interpreter exit. Each worker is single-threaded, so its libngspice is
never used from two threads.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from .ngspice import DeckJob, JobResult, run_job, session, session_stats


def _start_worker() -> None:
    # one thread per worker for numpy/torch: the cores belong to the ngspice instances
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    session()            # load libngspice now, not inside the first timed job


class PoolEngine:
    """``workers`` processes, each with its own libngspice."""

    def __init__(self, workers: int):
        self.workers = workers
        self._executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start_worker)
        # start every worker now (spawn takes about a second) so timings see a warm pool
        list(self._executor.map(_warm, range(workers)))

    def map(self, jobs: list[DeckJob]) -> list[JobResult]:
        if len(jobs) == 1:
            return [self._executor.submit(run_job, jobs[0]).result()]
        return list(self._executor.map(run_job, jobs))

    def stats(self) -> list[dict]:
        """Session counters of the workers that answer (for benchmarks)."""
        return list(self._executor.map(_stats, range(self.workers)))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _warm(_: int) -> int:
    import time
    time.sleep(0.05)        # hold the worker so the next warm-up task goes to another one
    return os.getpid()


def _stats(_: int) -> dict:
    import time
    time.sleep(0.1)         # as in _warm: spread the queries over the workers (no guarantee)
    return session_stats()
