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
process group; the parent decides) and each watches its parent: when the parent
is gone (killed, even with SIGKILL) the worker exits within about a second
instead of living on under init. When the parent is interrupted (SIGINT,
SIGTERM: :class:`~ffebm_sim.interrupt.Interrupted`, or ``KeyboardInterrupt``)
while the pool starts or runs jobs, the engine terminates its workers at once
(:meth:`PoolEngine.terminate`) rather than waiting for the jobs in flight, and
re-raises; the next :meth:`PoolEngine.map` starts a new pool.

**Fault injection** (tests, ``benchmarks/fault_injection.py``): when the
environment variable ``FFEBM_FAULT_DIR`` names a directory, a worker about to
run a job first claims one file ``once-*`` there (an atomic rename to
``fired-*``) and, if it got one, SIGKILLs itself; a file ``at-<N>[-tag]`` is
claimed the same way by a worker about to run its N-th job (a kill mid-run);
a file ``always`` holding a
number ``n`` kills every job of ``n`` samples. Workers read the variable from
the environment they were started with. Only worker processes ever run the
hook (never the process that owns the engine).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from .ngspice import FAULT_DIR_ENV, DeckJob, JobResult, claim_fault_token, run_job, session, session_stats

#: A job that took its worker down this many times is given up on (WorkerCrashError).
MAX_CRASHES = 3

log = logging.getLogger("ffebm_sim.pool")


class WorkerCrashError(RuntimeError):
    """A job killed its worker process ``max_crashes`` times; the message names the job."""


#: Seconds between a worker's checks that its parent is still there.
PARENT_POLL_S = 0.5


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent_pid:       # reparented: the parent died without shutting us down
            os._exit(0)


def _start_worker(parent_pid: int | None = None) -> None:
    # Ctrl-C goes to the whole process group: the parent handles it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_pid is not None:
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="ffebm-parent-watch", daemon=True).start()
    # one thread per worker for numpy/torch: the cores belong to the ngspice instances
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    session()            # load libngspice now, not inside the first timed job


_JOBS_RUN = 0      # jobs this worker process has started (for at-<N> faults)


def inject_fault(job: DeckJob) -> None:
    """The fault-injection hook (see the module docstring): SIGKILL this process when told to."""
    where = os.environ.get(FAULT_DIR_ENV)
    if not where or not os.path.isdir(where):
        return
    try:
        names = sorted(os.listdir(where))
    except OSError:
        return
    global _JOBS_RUN
    _JOBS_RUN += 1
    for name in names:
        if name.startswith("at-"):          # at-<N>[-tag]: this worker's N-th job
            try:
                if int(name.split("-")[1]) != _JOBS_RUN:
                    continue
            except ValueError:
                continue
            if claim_fault_token(where, name):
                os.kill(os.getpid(), signal.SIGKILL)
        if name.startswith("once-"):
            if claim_fault_token(where, name, label=name[5:]):
                os.kill(os.getpid(), signal.SIGKILL)
    always = os.path.join(where, "always")
    if os.path.isfile(always):
        try:
            n = int(open(always).read().strip() or -1)
        except (OSError, ValueError):
            return
        if job.values.shape[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)


def run_job_in_worker(job: DeckJob) -> JobResult:
    """What a worker process runs: the fault hook (tests only), then :func:`~.ngspice.run_job`."""
    inject_fault(job)
    return run_job(job)


def describe_job(jobs: list[DeckJob], k: int) -> str:
    start = sum(j.values.shape[0] for j in jobs[:k])
    job = jobs[k]
    return (f"job {k + 1} of {len(jobs)} (samples {start}..{start + job.values.shape[0] - 1} of the batch, "
            f"{job.method}, deck sha256 {job.deck_digest[:12]})")


class PoolEngine:
    """``workers`` processes, each with its own libngspice; restarted when one dies."""

    def __init__(self, workers: int, max_crashes: int = MAX_CRASHES):
        self.workers = workers
        self.max_crashes = max_crashes
        self.restarts = 0           # pools started after a worker died
        self.lost_jobs = 0          # jobs run again because of that
        self._executor = None
        self._start()

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(os.getpid(),))

    def _start(self) -> None:
        try:
            self._executor = self._new_executor()
            # start every worker now (spawn takes about a second) so timings see a warm pool
            try:
                list(self._executor.map(_warm, range(self.workers)))
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

    def map(self, jobs: list[DeckJob]) -> list[JobResult]:
        try:
            if self._executor is None:               # terminated by an earlier interrupt
                self._start()
            return self._map(jobs)
        except BaseException as e:
            if not isinstance(e, Exception):         # SIGINT/SIGTERM: stop now, do not wait for the jobs
                self.terminate()
            raise

    def _map(self, jobs: list[DeckJob]) -> list[JobResult]:
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
                return list(self._executor.map(_stats, range(self.workers)))
            except BrokenProcessPool:
                self._restart("while reading stats")
        return list(self._executor.map(_stats, range(self.workers)))

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


def _warm(_: int) -> int:
    import time
    time.sleep(0.05)        # hold the worker so the next warm-up task goes to another one
    return os.getpid()


def _stats(_: int) -> dict:
    import time
    time.sleep(0.1)         # as in _warm: spread the queries over the workers (no guarantee)
    return session_stats()
