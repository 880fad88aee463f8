"""One libngspice per process: load a deck, alter sources, run analyses, read vectors.

This module is the only place the ngspice backend touches PySpice (its
shared-library interface; :mod:`.naive_pyspice`, the benchmark's naive baseline,
uses PySpice's netlist objects on purpose). It imports numpy and nothing of
torch, so a worker process that only runs ngspice jobs stays small (see
:mod:`.worker`).

Every analysis returns ``''`` on success or a failure text: ngspice's messages
(:data:`FAILURE_MARKERS`: "singular matrix", "no convergence", "aborted",
"timestep too small", ...) become a status, never a crash. Vectors are read with
:meth:`NgspiceSession.read` / :meth:`NgspiceSession.read_arrays`, which return
``None`` rather than dereference a missing or empty vector. After reading,
plots are destroyed (every analysis otherwise adds a plot to ngspice's memory);
``remcirc`` removes a circuit before another is loaded; the command history is
cleared every :data:`HISTORY_EVERY` commands. Every command stays below
ngspice's 1024-character limit (:data:`MAX_COMMAND_CHARS`).

**A transient on a grid of samples** (:meth:`NgspiceSession.tran_samples`):
``tran 1 n-1`` of a resident deck whose sources are PWLs with a corner per
sample at ``t = 0, 1, ..., n-1``. Left to itself ngspice cuts the step to a
tenth of the gap after every breakpoint (every PWL corner), about four time
points per sample. The shared library's synchronisation callback
(``GetSyncData`` of ``ngSpice_Init_Sync``, asked before every time step) sets
the next step to end on the next integer, so the accepted time points are the
samples and nothing else. When a point does not converge, ngspice backs off
(step / 8) and the callback lets it: the extra points are a continuation from
the previous sample, and the step after them again ends on the integer. The
callback acts only while :meth:`~NgspiceSession.tran_samples` runs; other
transients keep ngspice's own step control. The same ``ngSpice_Init_Sync`` call
registers the source callbacks: once :meth:`~NgspiceSession.external_table` is
used, the C callback of :mod:`.extsrc` that serves ``EXTERNAL`` sources their
values from memory (else PySpice's own).

One libngspice per process (:func:`session`), used from one thread at a time:
callers hold :attr:`NgspiceSession.lock`.
"""

from __future__ import annotations

import atexit
import ctypes.util
import hashlib
import logging
import math
import os
import shutil
import tempfile
import threading

import numpy as np

from . import extsrc

FAILURE_MARKERS = ("singular matrix", "no convergence", "aborted", "timestep too small", "gmin stepping failed",
                   "source stepping failed", "error")
MAX_COMMAND_CHARS = 1000
HISTORY_EVERY = 5000


class NgspiceUnavailable(RuntimeError):
    """libngspice cannot be loaded; the message says how to install it."""


class NgspiceDeckError(RuntimeError):
    """ngspice refused to parse a deck (a bug in the emitter, or a hand-edited deck)."""


def library_path() -> str:
    """libngspice's path: ``NGSPICE_LIBRARY_PATH``, else the system's ``libngspice``."""
    if os.environ.get("NGSPICE_LIBRARY_PATH"):
        return os.environ["NGSPICE_LIBRARY_PATH"]
    found = ctypes.util.find_library("ngspice")
    if not found:
        raise NgspiceUnavailable("libngspice not found; install it with 'apt-get install ngspice libngspice0' "
                                 "(make test / make demo do) or set NGSPICE_LIBRARY_PATH")
    return found


def digest(text: str) -> str:
    """sha256 of a deck's text: the key a session knows its loaded circuit by."""
    return hashlib.sha256(text.encode()).hexdigest()


def failure(printed: str, what: str) -> str:
    """``''`` when ngspice's output ``printed`` holds none of :data:`FAILURE_MARKERS`, else one
    line ``ngspice <what> failed (<marker>): <output>``."""
    lower = printed.lower()
    bad = [m for m in FAILURE_MARKERS if m in lower]
    return "" if not bad else f"ngspice {what} failed ({bad[0]}): " + " ".join(printed.split())[:300]


class NgspiceSession:
    """One libngspice instance: load a deck, alter sources, run analyses, read vectors."""

    def __init__(self):
        os.environ.setdefault("NGSPICE_LIBRARY_PATH", library_path())
        # PySpice logs every ngspice message (and a version warning) at WARNING/ERROR;
        # we read them ourselves and turn them into a status.
        logging.getLogger("PySpice").setLevel(logging.CRITICAL)
        from PySpice.Spice.NgSpice.Shared import FFI, NgSpiceShared, ffi  # noqa: the one PySpice import
        self._ffi, self._null = ffi, FFI.NULL
        self._ng = NgSpiceShared.new_instance()
        self._lib = self._ng._ngspice_shared
        self.loaded_hash: str | None = None
        self.values: dict[str, float] = {}
        self.pwl: dict[str, tuple[float, ...]] = {}
        self._grid = False                # tran_samples running: the sync callback puts steps on integers
        self._sync_c = None
        self._sources_c = None            # the source callbacks ngSpice_Init_Sync was last given
        self._external: extsrc.Table | None = None
        self._scratch_dir: str | None = None
        self.lock = threading.Lock()
        self.commands = 0
        self.solves = 0
        self.loads = 0
        self.pwl_sets = 0                 # sources given new PWL values (set_pwls)
        self.analysis_closed_s = 0.0      # ngspice analysis time of circuits already removed

    # -- commands ---------------------------------------------------------------------------
    def _send(self, text: str) -> None:
        if len(text) >= MAX_COMMAND_CHARS:
            raise ValueError(f"ngspice command of {len(text)} characters; ngspice misparses >= 1024")
        self.commands += 1
        if self.commands % HISTORY_EVERY == 0:
            self._lib.ngSpice_Command(self._null)      # frees ngspice's command history
        self._lib.ngSpice_Command(text.encode("ascii"))

    def command(self, text: str) -> str:
        """Run one ngspice command; returns what it printed (stdout and stderr)."""
        self._ng.clear_output()
        self._send(text)
        return self._printed()

    def _printed(self) -> str:
        return "\n".join(self._ng._stdout + self._ng._stderr)

    def version(self) -> str:
        """ngspice's version word (``ngspice-39``), or the start of what ``version -s`` printed."""
        printed = self.command("version -s")
        for word in printed.replace("*", " ").split():
            if word.lower().startswith("ngspice-"):
                return word
        return " ".join(printed.split())[:60]

    # -- circuits ---------------------------------------------------------------------------
    def analysis_seconds(self) -> float:
        """ngspice's own analysis time (its ``rusage time``), summed over every circuit this session ran."""
        return self.analysis_closed_s + self._current_analysis_s()

    def _current_analysis_s(self) -> float:
        if self.loaded_hash is None:
            return 0.0
        printed = self.command("rusage time")
        for line in printed.splitlines():
            if "analysis time" in line and "=" in line:
                try:
                    return float(line.split("=")[1])
                except ValueError:
                    return 0.0
        return 0.0

    def unload(self, keep_stats: bool = False) -> None:
        """Destroy plots and remove the loaded circuit (``remcirc``)."""
        if self.loaded_hash is None:
            return
        if keep_stats:
            self.analysis_closed_s += self._current_analysis_s()
        self._send("destroy all")
        self._send("remcirc")
        self.loaded_hash = None
        self.values = {}
        self.pwl = {}
        if self._external is not None:
            self._external.forget_names()

    def load(self, deck: str, deck_digest: str | None = None, keep_stats: bool = False) -> None:
        """Load ``deck`` unless it is the one already loaded (``remcirc`` the old one first);
        :class:`NgspiceDeckError` when ngspice rejects it."""
        deck_digest = deck_digest or digest(deck)
        if deck_digest == self.loaded_hash:
            return
        self.unload(keep_stats)
        self._ng.clear_output()
        self._circ(deck)
        self.loads += 1
        messages = self._printed().lower()
        if "error" in messages:
            raise NgspiceDeckError("ngspice rejected the deck: " + " | ".join(
                " ".join(m.split()) for m in self._ng._stdout + self._ng._stderr if "rror" in m)[:500])
        self.loaded_hash = deck_digest

    def _circ(self, deck: str) -> None:
        """``ngSpice_Circ`` on the deck's lines: one buffer, pointers computed with numpy (no per-line cffi calls)."""
        data = deck.encode("utf-8")
        if b"\r" in data:
            data = data.replace(b"\r", b"")
        lines = [line for line in data.split(b"\n") if line.strip()] + [b""]
        buf = self._ffi.new("char[]", b"\0".join(lines) + b"\0")
        lengths = np.fromiter((len(line) + 1 for line in lines), dtype=np.int64, count=len(lines))
        starts = np.zeros(len(lines) + 1, dtype=np.uint64)
        starts[1:len(lines)] = np.cumsum(lengths[:-1], dtype=np.int64).astype(np.uint64)
        starts[:len(lines)] += np.uint64(int(self._ffi.cast("uintptr_t", buf)))
        pointers = self._ffi.cast("char **", self._ffi.from_buffer(starts))
        self._lib.ngSpice_Circ(pointers)     # ngspice copies the lines; buf and starts live until it returns

    # -- analyses ---------------------------------------------------------------------------
    def set_dc(self, element: str, value: float) -> None:
        """``alter`` an independent source's DC value, skipping unchanged ones."""
        value = float(value)
        if self.values.get(element) != value:
            self._send(f"alter {element} dc = {value!r}")
            self.values[element] = value

    def set_pwls(self, elements: list[str], rawfile: bytes, vectors: list[str],
                 keys: list[tuple[float, ...]]) -> None:
        """Give each source of ``elements`` the PWL held by vector ``vectors[k]`` of ``rawfile``
        (a binary rawfile, :func:`~.deckedit.pwl_rawfile`): the file is written to this
        session's own temporary directory, ``load`` ed (a new plot), deleted, and each source
        gets ``alter @element[pwl] = vector``. Remembers that ``elements[k]`` holds ``keys[k]``
        (:attr:`pwl`, so callers skip repeats); :class:`NgspiceDeckError` when ngspice refuses."""
        for element in elements:
            self.pwl.pop(element, None)
        path = os.path.join(self._scratch(), "pwl.raw")
        with open(path, "wb") as f:
            f.write(rawfile)
        self._ng.clear_output()
        try:
            self._send(f'load "{path}"')
        finally:
            os.unlink(path)
        for element, vector in zip(elements, vectors):
            self._send(f"alter @{element}[pwl] = {vector}")
        printed = self._printed()
        if "rror" in printed:
            raise NgspiceDeckError(f"ngspice refused the PWL values of {elements[0]}...: "
                                   + " ".join(printed.split())[:200])
        self.pwl.update(zip(elements, keys))
        self.pwl_sets += len(elements)

    def _scratch(self) -> str:
        """This session's temporary directory (created on first use, removed at exit; it holds
        a file only between writing and loading it)."""
        if self._scratch_dir is None:
            self._scratch_dir = tempfile.mkdtemp(prefix="ffebm-ngspice-")
            atexit.register(shutil.rmtree, self._scratch_dir, True)
        return self._scratch_dir

    def set_options(self, command: str) -> None:
        """An ngspice ``option ...`` command on the loaded circuit (it stays until the circuit is reloaded)."""
        if not command.startswith("option "):
            raise ValueError(f"not an ngspice option command: {command!r}")
        self.command(command)

    def op(self) -> str:
        """Run an operating point; returns '' on success or the failure text."""
        self.solves += 1
        return failure(self.command("op"), "op")

    def dc(self, source: str, start: float, stop: float, step: float) -> str:
        """``dc source start stop step``; '' on success or the failure text."""
        self.solves += max(1, int(round((stop - start) / step)) + 1) if step else 1
        return failure(self.command(f"dc {source} {start!r} {stop!r} {step!r}"), "dc sweep")

    def tran(self, t_step_s: float, t_stop_s: float) -> str:
        """``tran t_step t_stop 0 t_step uic`` (from the ``.ic`` state); '' on success or the failure text."""
        self.solves += 1
        return failure(self.command(f"tran {t_step_s!r} {t_stop_s!r} 0 {t_step_s!r} uic"), "tran")

    def tran_samples(self, n: int) -> str:
        """``tran 1 n-1 0 1`` with accepted time points exactly on ``0, 1, ..., n-1`` (see the
        module docstring) plus any continuation points ngspice inserts where a step failed;
        '' on success or the failure text. ``n >= 2``."""
        if n < 2:
            raise ValueError("tran_samples: at least 2 samples (one sample is an op)")
        self._install_sync()
        self.solves += n
        self._grid = True
        try:
            return failure(self.command(f"tran 1 {n - 1} 0 1"), "tran")
        finally:
            self._grid = False

    def external_table(self) -> extsrc.Table | None:
        """The value table of this process's ``EXTERNAL`` sources (:mod:`.extsrc`), with ngspice's
        source callbacks pointed at it; None when the C extension is unavailable or turned off
        (``FFEBM_NGSPICE_EXTERNAL=0``, read on every call)."""
        if not extsrc.enabled():
            return None
        if self._external is None:
            lib = extsrc.library()
            if lib is None:
                return None
            self._external = extsrc.Table(lib)
        self._install_sync()
        return self._external

    def _install_sync(self) -> None:
        """Register the synchronisation callback and the source callbacks: the C table of
        :meth:`external_table` once it exists, else PySpice's own (re-registered only on a change)."""
        if self._sync_c is None:
            self._sync_c = self._ffi.callback("int (double, double *, double, int, int, int, void *)", self._on_sync)
        ng = self._ng
        if self._external is not None:
            vsrc = isrc = self._ffi.cast(extsrc.CALLBACK_TYPE, extsrc.callback_address(self._external.lib))
        else:
            vsrc = getattr(ng, "_get_vsrc_data_c", self._null)
            isrc = getattr(ng, "_get_isrc_data_c", self._null)
        key = (int(self._ffi.cast("uintptr_t", vsrc)), int(self._ffi.cast("uintptr_t", isrc)))
        if key == self._sources_c:
            return
        rc = self._lib.ngSpice_Init_Sync(vsrc, isrc, self._sync_c,
                                         getattr(ng, "_ngspice_id", self._null), getattr(ng, "_self_c", self._null))
        if rc:
            raise NgspiceUnavailable(f"ngSpice_Init_Sync returned {rc}")
        self._sources_c = key

    def _on_sync(self, time_s, delta, old_delta, redo, ident, location, user) -> int:
        """ngspice's ``GetSyncData``: before a step from ``time_s`` (an accepted point), make the
        step end on the next integer; after a failed step (``redo``) keep ngspice's smaller step."""
        if self._grid and not redo:
            delta[0] = (math.floor(time_s) + 1.0) - time_s
        return 0

    # -- vectors ----------------------------------------------------------------------------
    def read(self, names: list[str]) -> np.ndarray | None:
        """Values of real vectors in the current plot, or None if any is missing or empty."""
        out = np.empty(len(names))
        for k, name in enumerate(names):
            info = self._lib.ngGet_Vec_Info(name.encode("ascii"))
            if info == self._null or info.v_length < 1 or info.v_realdata == self._null:
                return None
            out[k] = info.v_realdata[0]
        return out

    def read_arrays(self, names: list[str], n: int) -> np.ndarray | None:
        """``(n, len(names))``: the first ``n`` points of real vectors, or None if any is short or missing."""
        out = np.empty((n, len(names)))
        for k, name in enumerate(names):
            info = self._lib.ngGet_Vec_Info(name.encode("ascii"))
            if info == self._null or info.v_length < n or info.v_realdata == self._null:
                return None
            out[:, k] = np.frombuffer(self._ffi.buffer(info.v_realdata, 8 * n), dtype=np.float64)
        return out

    def vector_length(self, name: str) -> int:
        """Points of vector ``name`` in the current plot (0 when it is missing)."""
        info = self._lib.ngGet_Vec_Info(name.encode("ascii"))
        if info == self._null or info.v_realdata == self._null:
            return 0
        return int(info.v_length)

    def destroy_plots(self) -> None:
        self._send("destroy all")


_SESSION: NgspiceSession | None = None
_SESSION_LOCK = threading.Lock()


def session() -> NgspiceSession:
    """This process's libngspice (created on first use)."""
    global _SESSION
    with _SESSION_LOCK:
        if _SESSION is None:
            _SESSION = NgspiceSession()
    return _SESSION


def session_stats() -> dict:
    """Counters of this process's session (for benchmarks): pid, loads, the loaded deck's digest,
    solves, commands, analysis s."""
    s = session()
    with s.lock:
        return {"pid": os.getpid(), "loads": s.loads, "deck": s.loaded_hash, "solves": s.solves,
                "commands": s.commands, "analysis_s": s.analysis_seconds()}
