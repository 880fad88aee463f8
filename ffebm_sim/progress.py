"""Progress of long commands (train, verify, analyze, gradcheck, bench), on a terminal or in a log.

On a terminal, :class:`Progress` is a tqdm bar (as before). Anywhere else
(``ffebm train ... > log 2>&1``, a batch job, a pipe) it writes a plain line to
stderr every few seconds, from a background thread, so a line appears even
while one long solve holds the main thread::

    ffebm: train epoch 1/3: 320/1437 samples (22%), 2880 solves, 12 s elapsed

The first line comes after ``min(interval, FIRST_LINE_S)`` seconds (a command
that is done sooner prints none), then one every ``interval`` seconds
(:data:`DEFAULT_INTERVAL_S`; the environment variable
``FFEBM_PROGRESS_INTERVAL`` sets it, ``0`` turns the plain lines off). ``solves``
is a callable giving the solves so far (read from the background thread: it
must only read counters).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from typing import Callable

INTERVAL_ENV = "FFEBM_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 5.0
FIRST_LINE_S = 2.0


def interval_s() -> float:
    """Seconds between plain progress lines: ``FFEBM_PROGRESS_INTERVAL`` or the default (an
    unreadable value falls back to the default; 0 or less means no plain lines)."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value == value else DEFAULT_INTERVAL_S      # NaN: the default


def _fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    m, s = divmod(int(s), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


_ACTIVE: "weakref.WeakSet[Progress]" = weakref.WeakSet()
_ACTIVE_LOCK = threading.Lock()


def close_all() -> None:
    """Close every open :class:`Progress` (the CLI calls it before its last line, so no progress
    line follows an error or an interrupt)."""
    with _ACTIVE_LOCK:
        active = list(_ACTIVE)
    for p in active:
        p.close()


class Progress:
    """``total`` units of work named ``desc``; :meth:`update` as they finish, :meth:`close` at the end
    (or use it as a context manager)."""

    def __init__(self, total: int, desc: str, unit: str = "samples", solves: Callable[[], int] | None = None,
                 interval: float | None = None, stream=None, tty: bool | None = None):
        self.total, self.desc, self.unit, self.solves = int(total), desc, unit, solves
        self.done = 0
        self.postfix = ""
        self.lines = 0                      # plain lines written
        self.stream = stream if stream is not None else sys.stderr
        self._t0 = time.monotonic()
        self._bar = None
        self._thread = None
        self._stop = threading.Event()
        if tty is None:
            try:
                tty = bool(self.stream.isatty())
            except (AttributeError, ValueError):
                tty = False
        if tty:
            from tqdm import tqdm
            self._bar = tqdm(total=self.total, desc=desc, unit=unit[:-1] if unit.endswith("s") else unit,
                             leave=False, dynamic_ncols=True, file=self.stream)
            return
        self.interval = interval_s() if interval is None else float(interval)
        if self.interval > 0:
            with _ACTIVE_LOCK:
                _ACTIVE.add(self)
            # The thread holds the object weakly: a Progress dropped without close() (an exception
            # in a library caller) is collected and its thread ends.
            self._thread = threading.Thread(target=_lines, args=(weakref.ref(self), self._stop, self.interval),
                                            name="ffebm-progress", daemon=True)
            self._thread.start()

    # ---- the caller's side ----
    def update(self, n: int = 1) -> None:
        self.done += int(n)
        if self._bar is not None:
            self._bar.update(n)

    def set(self, done: int) -> None:
        """``done`` units are finished (absolute, where :meth:`update` adds)."""
        self.update(int(done) - self.done)

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._thread is not None:
            self._stop.set()
            if self._thread is not threading.current_thread():
                self._thread.join(1.0)
            self._thread = None
        with _ACTIVE_LOCK:
            _ACTIVE.discard(self)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the plain lines ----
    def line(self) -> str:
        parts = [f"{self.done}/{self.total} {self.unit}" + (f" ({100 * self.done // self.total}%)" if self.total else "")]
        if self.solves is not None:
            try:
                parts.append(f"{int(self.solves())} solves")
            except Exception:  # noqa: BLE001 - a counter read racing the main thread: leave it out
                pass
        parts.append(f"{_fmt_seconds(time.monotonic() - self._t0)} elapsed")
        if self.postfix:
            parts.append(self.postfix)
        return f"ffebm: {self.desc}: " + ", ".join(parts)


def _lines(ref, stop: threading.Event, interval: float) -> None:
    wait = min(interval, FIRST_LINE_S)
    while not stop.wait(wait):
        progress = ref()
        if progress is None:
            return
        try:
            text = progress.line() + "\n"
            if stop.is_set():
                return
            progress.stream.write(text)
            progress.stream.flush()
        except (OSError, ValueError):      # stderr closed: nothing to tell anyone
            return
        progress.lines += 1
        del progress
        wait = interval
