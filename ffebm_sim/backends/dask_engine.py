"""A Dask distributed cluster as the ngspice engine (``--scheduler tcp://HOST:PORT``).

The same jobs as the local pool (:class:`~.ngspice.DeckJob`, fixed-size chunks)
are submitted to an existing cluster; each Dask worker process keeps its own
libngspice (created on its first job, guarded by a lock, so a worker with
several threads still runs one ngspice command at a time) and its loaded
circuit between jobs. Results are gathered in order and are bit-identical to
the local pool's.

Start a cluster (every worker needs this package installed, with libngspice)::

    dask scheduler --host 0.0.0.0 --port 8786
    dask worker tcp://SCHEDULER:8786 --nworkers 2 --nthreads 1   # on each machine

``distributed`` is imported only here, only when a scheduler is given.

**Lost workers.** When a Dask worker process dies mid-task (segfault, SIGKILL,
OOM), the scheduler itself re-runs the tasks it held on the other workers (and
the nanny starts a new worker): no code here is needed, and since a job's answer
depends only on the job the results stay bit-identical (tested in
tests/test_faults.py). A task that has been on ``allowed-failures`` (Dask's
``distributed.scheduler.allowed-failures``, default 3) dying workers fails with
``KilledWorker``; :meth:`DaskEngine.map` turns that into
:class:`~.pool.WorkerCrashError` naming the job. ``retries`` (per job, passed to
``Client.map``) re-runs jobs that *raised* (not needed for ngspice's failures,
which are a status), and is off by default. Workers run the same fault-injection
hook as the local pool (``FFEBM_FAULT_DIR``, see :mod:`.pool`).
"""

from __future__ import annotations

import time

from .ngspice import DeckJob, JobResult, session_stats
from .pool import WorkerCrashError, describe_job, run_job_in_worker


class DaskEngine:
    """Submit jobs to a Dask scheduler (an address, or an existing ``distributed.Client``)."""

    def __init__(self, scheduler, timeout_s: float = 30.0, task_timeout_s: float | None = None, retries: int = 0):
        self.task_timeout_s = task_timeout_s
        self.retries = retries
        try:
            from distributed import Client
        except ImportError:  # pragma: no cover - depends on the environment
            from ..errors import SpecError
            raise SpecError("--scheduler: the Dask engine needs 'distributed' (pip install distributed)") from None
        if isinstance(scheduler, Client):
            self.client, self._own = scheduler, False
        else:
            self.client, self._own = Client(scheduler, timeout=timeout_s, set_as_default=False), True
        self.workers = max(1, len(self.client.scheduler_info().get("workers", {})))

    def map(self, jobs: list[DeckJob]) -> list[JobResult]:
        from distributed import KilledWorker
        futures = self.client.map(run_job_in_worker, jobs, pure=False, retries=self.retries or None)
        try:
            if self.task_timeout_s is None:
                return self.client.gather(futures)
            deadline = time.monotonic() + self.task_timeout_s    # a TimeoutError instead of a hang
            return [f.result(timeout=max(0.0, deadline - time.monotonic())) for f in futures]
        except KilledWorker as e:
            k = next((i for i, f in enumerate(futures) if f.status == "error"), 0)
            raise WorkerCrashError(f"Dask: {describe_job(jobs, k)} was on every worker that died "
                                   f"(allowed-failures reached: {e}); run it alone with workers=1 and inspect the deck "
                                   f"with 'ffebm netlist' and 'ngspice -b'") from None

    def stats(self) -> dict:
        return self.client.run(session_stats)

    def close(self) -> None:
        if self._own:
            self.client.close()
