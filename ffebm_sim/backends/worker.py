"""What a worker process runs (a :mod:`.pool` worker or a Dask worker): numpy, the session, the job protocol.

This module and what it imports (:mod:`.session`, :mod:`.jobs`,
:mod:`.deckedit`, :mod:`.faults`; the package ``__init__`` files load nothing
on import) are all a worker needs: no torch, no reference solver (about 1.3 s
and 220 MB per worker when they were imported; ``tests/test_pool.py`` checks).

* :func:`start_worker`, the pool's initializer: SIGINT ignored (Ctrl-C in a
  terminal reaches the whole process group; the parent decides), a thread that
  ends the worker within about :data:`PARENT_POLL_S` once the parent is gone
  (even after SIGKILL), one thread for numpy, and libngspice loaded before the
  first timed job.
* :func:`run_job_in_worker`, the task: the crash hook of :mod:`.faults` (tests
  only), then :func:`~.jobs.run_job`.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from .faults import kill_if_told
from .jobs import DeckJob, JobResult, run_job
from .session import session, session_stats

#: Seconds between a worker's checks that its parent is still there.
PARENT_POLL_S = 0.5


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent_pid:       # reparented: the parent died without shutting us down
            os._exit(0)


def start_worker(parent_pid: int | None = None) -> None:
    """Initializer of a pool worker (see the module docstring)."""
    # Ctrl-C goes to the whole process group: the parent handles it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_pid is not None:
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="ffebm-parent-watch", daemon=True).start()
    # one thread per worker for numpy: the cores belong to the ngspice instances
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    session()            # load libngspice now, not inside the first timed job


def run_job_in_worker(job: DeckJob) -> JobResult:
    """What a worker process runs: the fault hook (tests only), then :func:`~.jobs.run_job`."""
    kill_if_told(job.values.shape[0])
    return run_job(job)


def hold_pid(seconds: float) -> int:
    """This worker's pid after ``seconds`` of holding it (so the next such task goes to another worker)."""
    time.sleep(seconds)
    return os.getpid()


def held_stats(seconds: float) -> dict:
    """:func:`~.session.session_stats` after ``seconds`` of holding this worker (as :func:`hold_pid`)."""
    time.sleep(seconds)
    return session_stats()
