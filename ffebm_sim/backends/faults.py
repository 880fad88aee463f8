"""Fault injection for tests and ``benchmarks/fault_injection.py`` (inert unless ``FFEBM_FAULT_DIR`` is set).

The environment variable :data:`FAULT_DIR_ENV` names a directory of token
files; a process claims a token by an atomic rename to ``fired-<label>-<pid>``
(:func:`claim_fault_token`), so exactly one process gets each.

* **Non-convergence** (:func:`injected_nonconvergence`, asked before every
  operating point and DC sweep of a job, :mod:`.jobs`): a file ``noconv-*``
  claimed makes that one analysis report "no convergence" without solving;
  while a file ``noconv-always`` is there, every analysis reports it.
* **Worker crashes** (:func:`kill_if_told`, run by a worker process before each
  job, :mod:`.worker`; never by the process that owns the engine): a file
  ``once-*`` claimed SIGKILLs the worker; a file ``at-<N>[-tag]`` is claimed the
  same way by a worker about to run its N-th job (a kill mid-run); a file
  ``always`` holding a number ``n`` kills every job of ``n`` samples.

Workers read the variable from the environment they were started with.
"""

from __future__ import annotations

import os
import signal

FAULT_DIR_ENV = "FFEBM_FAULT_DIR"


def claim_fault_token(where: str, name: str, label: str | None = None) -> bool:
    """Claim the fault-injection file ``name`` of directory ``where``: an atomic rename to
    ``fired-<label or name>-<pid>``, so exactly one process gets each token."""
    try:
        os.rename(os.path.join(where, name), os.path.join(where, f"fired-{label or name}-{os.getpid()}"))
        return True
    except OSError:                      # another process claimed it first
        return False


def injected_nonconvergence() -> bool:
    """A ``noconv-always`` file, or one ``noconv-*`` token claimed, in the fault directory."""
    where = os.environ.get(FAULT_DIR_ENV)
    if not where:
        return False
    try:
        names = sorted(n for n in os.listdir(where) if n.startswith("noconv-"))
    except OSError:
        return False
    return "noconv-always" in names or any(claim_fault_token(where, name) for name in names)


_JOBS_RUN = 0      # jobs this worker process has started (for at-<N> faults)


def kill_if_told(samples: int) -> None:
    """SIGKILL this process when a crash token says so, before a job of ``samples`` samples."""
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
        if samples == n:
            os.kill(os.getpid(), signal.SIGKILL)
