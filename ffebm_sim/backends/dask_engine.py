"""A Dask distributed cluster as the ngspice engine (``--scheduler tcp://HOST:PORT``).

The same jobs as the local pool (:class:`~.jobs.DeckJob`, fixed-size chunks)
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
``KilledWorker``; :meth:`DaskEngine.run` turns that into
:class:`~.engines.WorkerCrashError` naming the job. ``retries`` (per job, passed to
``Client.map``) re-runs jobs that *raised* (not needed for ngspice's failures,
which are a status), and is off by default. Workers run the same fault-injection
hook as the local pool (``FFEBM_FAULT_DIR``, see :mod:`.faults`): they run
:func:`~.worker.run_job_in_worker`, which imports no torch.

**Failing fast.** An address is checked before anything else happens
(:func:`check_scheduler_address`: ``[SCHEME://]HOST:PORT``, a malformed one is
bad input). Connecting is bounded by :data:`CONNECT_TIMEOUT_S` (3 s; the
environment variable ``FFEBM_CONNECT_TIMEOUT`` overrides it): before the
``Client`` is made, a probe connects and asks the server who it is, in a
thread the caller stops waiting for at the deadline, because Dask's own
``timeout`` does not cover a server that accepts TCP but never answers (it
hung there for over a minute). Anything that does not answer as a Dask
scheduler in time is one :class:`SchedulerUnreachable` line naming
``--scheduler`` and the address.
"""

from __future__ import annotations

import os
import re
import threading
import time

from ..errors import SpecError
from .engines import WorkerCrashError, describe_job
from .jobs import DeckJob, JobResult
from .session import session_stats
from .worker import run_job_in_worker

#: Seconds to wait for a Dask scheduler to answer (env ``FFEBM_CONNECT_TIMEOUT`` overrides it).
CONNECT_TIMEOUT_S = 3.0
SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")
_ADDRESS = re.compile(r"^(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://)?"
                      r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):(?P<port>[0-9]{1,5})$")
_EXPECTED = (f"expected tcp://HOST:PORT (or {', '.join(s + '://' for s in SCHEMES[1:])}), "
             "e.g. tcp://127.0.0.1:8786")


class SchedulerUnreachable(SpecError):
    """No Dask scheduler answered at the address given (one line, exit 2 from the CLI)."""


def check_scheduler_address(address) -> str:
    """``address`` if it is a Dask scheduler address ``[SCHEME://]HOST:PORT``; else SpecError."""
    if not isinstance(address, str):
        raise SpecError(f"--scheduler: {address!r} is not an address; {_EXPECTED}")
    m = _ADDRESS.match(address.strip())
    if m is None:
        raise SpecError(f"--scheduler: {address!r} is not a Dask scheduler address; {_EXPECTED}")
    if m["scheme"] is not None and m["scheme"].lower() not in SCHEMES:
        raise SpecError(f"--scheduler: {address!r}: unknown scheme {m['scheme']!r}; {_EXPECTED}")
    if not 1 <= int(m["port"]) <= 65535:
        raise SpecError(f"--scheduler: {address!r}: port {m['port']} is not in 1..65535; {_EXPECTED}")
    return address.strip()


def connect_timeout_s() -> float:
    """:data:`CONNECT_TIMEOUT_S`, or ``FFEBM_CONNECT_TIMEOUT`` (seconds > 0) when set."""
    raw = os.environ.get("FFEBM_CONNECT_TIMEOUT")
    if not raw:
        return CONNECT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < 1e6):
        raise SpecError(f"FFEBM_CONNECT_TIMEOUT: {raw!r}; seconds, a number > 0")
    return value


def probe_scheduler(address: str, timeout_s: float) -> None:
    """Return once a Dask scheduler at ``address`` has answered; SchedulerUnreachable within about
    ``timeout_s`` otherwise (refused, unroutable, not resolvable, silent, or not a scheduler)."""
    import asyncio
    from distributed.comm import connect

    async def ask():
        comm = await connect(address, timeout=timeout_s)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            await comm.close()

    outcome: dict = {}

    def run():
        try:
            outcome["reply"] = asyncio.run(asyncio.wait_for(ask(), timeout_s))
        except BaseException as e:  # noqa: BLE001 - reported below as one line
            outcome["error"] = e

    # A daemon thread: a resolver or a socket stuck past the deadline must not hold the process.
    worker = threading.Thread(target=run, name="ffebm-scheduler-probe", daemon=True)
    worker.start()
    worker.join(timeout_s + 1.0)
    where = f"--scheduler: {address}"
    if worker.is_alive() or isinstance(outcome.get("error"), (TimeoutError, asyncio.TimeoutError)):
        raise SchedulerUnreachable(f"{where}: no Dask scheduler answered within {timeout_s:g} s; check the "
                                   f"address and that 'dask scheduler' runs there (FFEBM_CONNECT_TIMEOUT sets the wait)")
    if "error" in outcome:
        e = outcome["error"]
        reason = " ".join(str(e).split()) or e.__class__.__name__
        if "Timed out trying to connect" in reason:
            reason = f"nothing accepted the connection within {timeout_s:g} s"
        raise SchedulerUnreachable(f"{where}: cannot connect ({reason}); check the address and that "
                                   f"'dask scheduler' runs there")
    reply = outcome.get("reply")
    kind = reply.get("type") if isinstance(reply, dict) else None
    if kind != "Scheduler":
        raise SchedulerUnreachable(f"{where}: the server there is {'a Dask ' + kind if kind else 'not Dask'}, "
                                   f"not a Dask scheduler; give the scheduler's address")


class DaskEngine:
    """Submit jobs to a Dask scheduler (an address, or an existing ``distributed.Client``); an
    :class:`~.engines.Engine`."""

    def __init__(self, scheduler, timeout_s: float | None = None, task_timeout_s: float | None = None,
                 retries: int = 0):
        self.task_timeout_s = task_timeout_s
        self.retries = retries
        try:
            from distributed import Client
        except ImportError:  # pragma: no cover - depends on the environment
            raise SpecError("--scheduler: the Dask engine needs 'distributed' (pip install distributed)") from None
        if isinstance(scheduler, Client):
            self.client, self._own = scheduler, False
        else:
            address = check_scheduler_address(scheduler)
            timeout_s = connect_timeout_s() if timeout_s is None else timeout_s
            probe_scheduler(address, timeout_s)
            try:
                self.client = Client(address, timeout=timeout_s, set_as_default=False)
            except (OSError, TimeoutError) as e:
                raise SchedulerUnreachable(f"--scheduler: {address}: the scheduler answered, then connecting "
                                           f"failed ({' '.join(str(e).split())})") from None
            self._own = True
        self.workers = max(1, len(self.client.scheduler_info().get("workers", {})))

    def run(self, jobs: list[DeckJob]) -> list[JobResult]:
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

    def stats(self) -> list[dict]:
        return list(self.client.run(session_stats).values())

    def close(self) -> None:
        if self._own:
            self.client.close()
