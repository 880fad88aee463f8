"""Local worker processes, one libngspice each (``--workers N``).

A job (:class:`~.jobs.DeckJob`, a fixed-size chunk of samples of one deck)
runs in one worker (:func:`~.worker.run_job_in_worker`); a worker keeps its
loaded circuit between jobs and reloads only when the deck (the conductances,
or the nudge structure) changes.
Results come back in job order, and since the chunks do not depend on the
number of workers, the answers are bit-identical to a one-worker run.

Workers are started with ``spawn`` (never ``fork``: the parent may hold a
libngspice and torch's thread pools) and stay up until :meth:`PoolEngine.close`
or interpreter exit. A worker imports :mod:`.worker` and what it needs (numpy,
the session, the job protocol), not torch. Each worker is single-threaded, so
its libngspice is never used from two threads.

**Worker crashes.** A worker that dies mid-batch (a segfault in libngspice,
SIGKILL, the OOM killer) breaks a ``ProcessPoolExecutor``: every job in flight
or still queued fails with ``BrokenProcessPool``. The engine then starts a new
pool and runs the lost jobs again (jobs that had finished keep their results).
A job's answer depends only on the job (the new worker loads the deck afresh,
and every solve is history-free), so the batch's results are bit-identical to
a crash-free run. ``restarts`` counts new pools, ``lost_jobs`` the jobs run
again. A job lost in two crashes is then run alone, so a job that kills its
worker ``max_crashes`` (3) times is identified for certain, and
:class:`WorkerCrashError` names it (its samples and deck) instead of looping.

**Interrupts.** Workers ignore SIGINT (Ctrl-C in a terminal reaches the whole
process group; the parent decides) and each watches its parent
(:func:`~.worker.start_worker`): when the parent is gone (killed, even with
SIGKILL) the worker exits within about a second instead of living on under
init. When the parent is interrupted (SIGINT, SIGTERM:
:class:`~ffebm_sim.interrupt.Interrupted`, or ``KeyboardInterrupt``) while the
pool starts or runs jobs, the engine terminates its workers at once
(:meth:`PoolEngine.terminate`) rather than waiting for the jobs in flight, and
re-raises; the next :meth:`PoolEngine.run` starts a new pool.

**Fault injection** (tests, ``benchmarks/fault_injection.py``): with
``FFEBM_FAULT_DIR`` set, a worker about to run a job may SIGKILL itself when a
token file says so (:func:`~.faults.kill_if_told`). Only worker processes ever
run the hook (never the process that owns the engine).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from .engines import WorkerCrashError, describe_job
from .jobs import DeckJob, JobResult
from .worker import held_stats, hold_pid, run_job_in_worker, start_worker

#: A job that took its worker down this many times is given up on (WorkerCrashError).
MAX_CRASHES = 3

log = logging.getLogger("ffebm_sim.pool")


class PoolEngine:
    """``workers`` processes, each with its own libngspice; restarted when one dies (an :class:`~.engines.Engine`)."""

    def __init__(self, workers: int, max_crashes: int = MAX_CRASHES):
        self.workers = workers
        self.max_crashes = max_crashes
        self.restarts = 0           # pools started after a worker died
        self.lost_jobs = 0          # jobs run again because of that
        self._executor = None
        self._start()

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=start_worker, initargs=(os.getpid(),))

    def _start(self) -> None:
        try:
            self._executor = self._new_executor()
            # start every worker now (spawn takes about a second) so timings see a warm pool
            try:
                list(self._executor.map(hold_pid, [0.05] * self.workers))
            except BrokenProcessPool:      # a worker died while starting: try once more
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = self._new_executor()
        except BaseException as e:
            if not isinstance(e, Exception):         # interrupted: no worker may outlive us
                self.terminate()
            raise

    def _restart(self, why: str) -> None:
        self.restarts += 1
        log.warning("ngspice worker died (%s); starting a new pool (restart %d)", why, self.restarts)
        try:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
        except Exception:  # noqa: BLE001 - a broken pool may complain while shutting down
            pass
        self._start()

    def run(self, jobs: list[DeckJob]) -> list[JobResult]:
        try:
            if self._executor is None:               # terminated by an earlier interrupt
                self._start()
            return self._run(jobs)
        except BaseException as e:
            if not isinstance(e, Exception):         # SIGINT/SIGTERM: stop now, do not wait for the jobs
                self.terminate()
            raise

    def _run(self, jobs: list[DeckJob]) -> list[JobResult]:
        results: list[JobResult | None] = [None] * len(jobs)
        crashes = [0] * len(jobs)
        pending = list(range(len(jobs)))
        idle = 0
        while pending:
            # Jobs already lost twice run alone (one at a time), so the job that kills its worker is known.
            suspects = [k for k in pending if crashes[k] >= 2]
            batch = suspects[:1] if suspects else pending
            try:
                futures = {k: self._executor.submit(run_job_in_worker, jobs[k]) for k in batch}
            except BrokenProcessPool:      # a worker died between batches (idle): restart, lose nothing
                idle += 1
                if idle > self.max_crashes:
                    raise WorkerCrashError(f"ngspice worker: the pool broke {idle} times before running a job; "
                                           f"check memory and the libngspice install") from None
                self._restart("between jobs")
                continue
            lost = []
            for k, fut in futures.items():
                try:
                    results[k] = fut.result()
                except BrokenProcessPool:
                    lost.append(k)
            if not lost:
                pending = [k for k in pending if results[k] is None]
                continue
            for k in lost:
                crashes[k] += 1
            dead = [k for k in lost if crashes[k] >= self.max_crashes]
            self.lost_jobs += len(lost)
            self._restart(f"{len(lost)} job(s) lost")
            if dead:
                raise WorkerCrashError(
                    f"ngspice worker: {describe_job(jobs, dead[0])} killed its worker process {crashes[dead[0]]} "
                    f"times (segfault, SIGKILL or out of memory); run it alone with workers=1 and inspect the deck "
                    f"with 'ffebm netlist' and 'ngspice -b'")
            pending = [k for k in pending if results[k] is None]
        return results

    def stats(self) -> list[dict]:
        """Session counters of the workers that answer (for benchmarks)."""
        for _ in range(self.max_crashes):
            try:
                return list(self._executor.map(held_stats, [0.1] * self.workers))
            except BrokenProcessPool:
                self._restart("while reading stats")
        return list(self._executor.map(held_stats, [0.1] * self.workers))

    def fault_stats(self) -> dict:
        """Restarts of the pool and jobs run again because a worker died."""
        return {"restarts": self.restarts, "lost_jobs": self.lost_jobs}

    def terminate(self, grace_s: float = 2.0) -> None:
        """Stop every worker now (SIGTERM, SIGKILL after ``grace_s``), jobs in flight or not."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        processes = list((getattr(executor, "_processes", None) or {}).values())
        for p in processes:
            try:
                p.terminate()
            except (OSError, ValueError, AttributeError):
                pass
        deadline = time.monotonic() + grace_s
        for p in processes:
            try:
                p.join(max(0.0, deadline - time.monotonic()))
                if p.is_alive():
                    p.kill()
                    p.join(1.0)
            except (OSError, ValueError, AssertionError, AttributeError):
                pass
        try:
            executor.shutdown(wait=True, cancel_futures=True)
        except Exception:  # noqa: BLE001 - the pool is broken on purpose
            pass

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

