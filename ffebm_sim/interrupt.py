"""SIGINT, SIGTERM and SIGHUP end a command cleanly: every worker stops, one line is printed.

:func:`signals_raise` (used by :func:`ffebm_sim.cli.main`) turns each of these
signals into :class:`Interrupted` in the main thread. It is a ``BaseException``,
so no ``except Exception`` on the way swallows it, and ``finally`` blocks run as
for Ctrl-C: the training loop's ``finally`` closes the backend, and a worker pool
interrupted while it waits for jobs terminates its processes at once instead of
waiting for them (:meth:`ffebm_sim.backends.pool.PoolEngine.run`). The CLI then
stops multiprocessing's resource tracker and prints ``ffebm: interrupted
(SIGTERM)`` (exit code 128 + the signal number). A second signal during that
cleanup is ignored: the cleanup is bounded (a few seconds at most).

Workers never see the parent's interrupt: they ignore SIGINT (a terminal sends
Ctrl-C to the whole process group) and exit by themselves when their parent is
gone (:mod:`ffebm_sim.backends.worker`).
"""

from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)


class Interrupted(BaseException):
    """The process got SIGINT, SIGTERM or SIGHUP (raised in the main thread by :func:`signals_raise`)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def signals_raise():
    """While inside, SIGINT/SIGTERM/SIGHUP raise :class:`Interrupted` (once); the previous handlers
    are restored on the way out. A signal already ignored (``nohup``) stays ignored. Outside the main thread it does nothing (signals go to the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum, frame):
        if fired:            # already shutting down: let the (bounded) cleanup finish
            return
        fired.append(signum)
        raise Interrupted(signum)

    previous = {}
    try:
        for s in SIGNALS:
            if signal.getsignal(s) is signal.SIG_IGN:      # nohup, or a background job: stay deaf to it
                continue
            previous[s] = signal.signal(s, handler)
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def stop_resource_tracker() -> None:
    """Stop multiprocessing's resource tracker if this process started one (it outlived the
    parent before, reparented to init, while workers held its pipe). Call after the workers are gone."""
    try:
        import multiprocessing
        from multiprocessing import resource_tracker
        if multiprocessing.active_children():      # someone still holds its pipe: _stop() would wait
            return
        tracker = resource_tracker._resource_tracker
        if getattr(tracker, "_fd", None) is not None:
            tracker._stop()
    except Exception:  # noqa: BLE001 - best effort: a private API of the standard library
        pass
