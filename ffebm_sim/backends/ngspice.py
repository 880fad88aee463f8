"""ngspice (libngspice, through PySpice's shared-library interface) as a backend.

This module is the only place that touches PySpice. The deck text from
:mod:`ffebm_sim.netlist` is the contract. A solve request becomes a list of
:class:`DeckJob` s: the deck, the names of the sources that change from sample
to sample, their values (one row per sample) and the vectors to read. A job
runs in whichever process holds a libngspice (this one, a worker of
:mod:`.pool`, or a Dask worker, :mod:`.dask_engine`) through :func:`run_job`,
with one of two methods:

* ``op``: the deck is loaded once (kept while the conductances stay the same)
  and every sample ``alter`` s the sources that changed, then runs ``op``:
  physical deck ``vxp<i>``/``vxm<i>`` get ``+-a*u_i``; reduced deck ``in1_<j>``
  the Norton currents ``sum_i G1[i,j]*V_i``; ``inudge<j>`` the nudge currents,
  ``vy<j>`` the resistive-nudge targets. Each ``op`` starts from ngspice's
  junction initialisation and reorders the matrix, so a sample's answer does
  not depend on what was solved before it.
* ``sweep``: the whole chunk is one DC sweep. Each changing source becomes a
  behavioural source ``pwl(v(ffebm_sweep), 0, x_0, 1, x_1, ...)`` of a sweep
  voltage stepped through the integers, so sweep point ``k`` *is* sample
  ``k``: one Newton solve per sample starting from the previous sample's
  solution, no reordering, no time-step control (a PWL *transient* would
  add about four time points per sample after each breakpoint; measured, see
  docs/speed.md). The deck is reloaded per chunk, so the answer
  depends only on the chunk (fixed boundaries: identical on 1 or N workers).
  A chunk whose sweep fails is solved again sample by sample with ``op``.

``method="auto"`` takes the sweep for chunks of several samples and ``op``
for single samples. After reading, plots are destroyed (every analysis
otherwise adds a plot to ngspice's memory); ``remcirc`` removes a circuit
before another is loaded; the command history is cleared periodically.
Every command stays far below ngspice's 1024-character limit.

Failures are a status, never a crash: ngspice's messages ("singular matrix",
"no convergence", "aborted", "timestep too small") and a missing or empty
vector mark the sample failed; an empty vector is never dereferenced.

**Non-convergence.** ngspice's own ``op`` already falls back from Newton to
gmin stepping and source stepping with its default ladders. A sample whose
``op`` still fails is retried in the worker with the homotopies of
:data:`HOMOTOPIES` (finer gmin ladder, then source stepping alone, with 10x
the Newton iteration budget), set with ngspice's ``option`` command on the
loaded circuit; the deck is reloaded afterwards so the next sample runs with
the deck's own options. A sample that still fails gets one last try from the
parent: the same deck plus ``.nodeset`` cards holding the reference solver's
answer (a warm start next to the solution; the homotopies again if needed).
What rescued each sample is counted (:attr:`NgspiceBackend.convergence`). A
sample that fails all of them keeps its failure message; the caller
(training) decides to stop or skip.
Fault injection for tests: with ``FFEBM_FAULT_DIR`` set, an ``op`` first
claims a file ``noconv-*`` there (atomic rename) and, if it got one, reports
"no convergence" without solving (a DC sweep likewise); while a file
``noconv-always`` is there, every ``op`` and DC sweep reports it.

One libngspice per process, used from one thread at a time (a lock guards it).
"""

from __future__ import annotations

import ctypes.util
import functools
import hashlib
import logging
import os
import threading
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..circuit import BlockCircuit, free_node_names, source_names
from ..errors import SpecError
from ..netlist import emit_deck, norton_currents_a, norton_source_name, nudge_source_name, target_source_name
from .base import (Backend, Equilibrium, Nudge, check_batch, delivered_from_branch_current,
                   delivered_through_input_layer, source_voltages)

FAILURE_MARKERS = ("singular matrix", "no convergence", "aborted", "timestep too small", "gmin stepping failed",
                   "source stepping failed", "error")
MAX_COMMAND_CHARS = 1000
METHODS = ("auto", "op", "sweep")
#: Samples per job. Fixed (not derived from the worker count) so a batch is cut
#: into the same chunks on 1 worker, N workers or a Dask cluster: identical results.
DEFAULT_CHUNK = 16
#: ``auto`` sweeps chunks of at least this many samples (below it, alter+op wins).
SWEEP_MIN_SAMPLES = 4
HISTORY_EVERY = 5000
#: Retries of a failed operating point, in order: (name, ngspice ``option`` command).
#: ``noopiter`` skips the plain Newton attempt, ``gminsteps=0`` the gmin ladder.
HOMOTOPIES = (("gmin stepping", "option itl1=1000 gminsteps=100"),
              ("source stepping", "option itl1=1000 gminsteps=0 srcsteps=100 noopiter"))
#: The parent's last retry: a warm start from the reference solver's answer.
WARM_START = "nodeset warm start"
FAULT_DIR_ENV = "FFEBM_FAULT_DIR"
SWEEP_SOURCE = "vffebm_sweep"
SWEEP_NODE = "ffebm_sweep"


class NgspiceUnavailable(RuntimeError):
    """libngspice cannot be loaded; the message says how to install it."""


class NgspiceDeckError(RuntimeError):
    """ngspice refused to parse a deck (a bug in the emitter, or a hand-edited deck)."""


def _library_path() -> str:
    if os.environ.get("NGSPICE_LIBRARY_PATH"):
        return os.environ["NGSPICE_LIBRARY_PATH"]
    found = ctypes.util.find_library("ngspice")
    if not found:
        raise NgspiceUnavailable("libngspice not found; install it with 'apt-get install ngspice libngspice0' "
                                 "(make test / make demo do) or set NGSPICE_LIBRARY_PATH")
    return found


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class NgspiceSession:
    """One libngspice instance: load a deck, alter sources, run analyses, read vectors."""

    def __init__(self):
        os.environ.setdefault("NGSPICE_LIBRARY_PATH", _library_path())
        # PySpice logs every ngspice message (and a version warning) at WARNING/ERROR;
        # we read them ourselves and turn them into a status.
        logging.getLogger("PySpice").setLevel(logging.CRITICAL)
        from PySpice.Spice.NgSpice.Shared import FFI, NgSpiceShared, ffi  # noqa: the one PySpice import
        self._ffi, self._null = ffi, FFI.NULL
        self._ng = NgSpiceShared.new_instance()
        self._lib = self._ng._ngspice_shared
        self.loaded_hash: str | None = None
        self.values: dict[str, float] = {}
        self.lock = threading.Lock()
        self.commands = 0
        self.solves = 0
        self.loads = 0
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
        return "\n".join(self._ng._stdout + self._ng._stderr)

    def _printed(self) -> str:
        return "\n".join(self._ng._stdout + self._ng._stderr)

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

    def load(self, deck: str, deck_digest: str | None = None, keep_stats: bool = False) -> None:
        """Load ``deck`` unless it is the one already loaded (``remcirc`` the old one first)."""
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

    # -- operating points -------------------------------------------------------------------
    def set_dc(self, element: str, value: float) -> None:
        """``alter`` an independent source's DC value, skipping unchanged ones."""
        value = float(value)
        if self.values.get(element) != value:
            self._send(f"alter {element} dc = {value!r}")
            self.values[element] = value

    def op(self) -> str:
        """Run an operating point; returns '' on success or the failure text."""
        self.solves += 1
        if _injected_nonconvergence():
            return "ngspice op failed (no convergence): injected fault (FFEBM_FAULT_DIR)"
        return _failure(self.command("op"), "op")

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

    def destroy_plots(self) -> None:
        self._send("destroy all")

    def dc_sweep(self, n: int) -> str:
        """Sweep ``vffebm_sweep`` through 0..n-1; '' on success or the failure text."""
        self.solves += n
        if _injected_nonconvergence():
            return "ngspice dc sweep failed (no convergence): injected fault (FFEBM_FAULT_DIR)"
        return _failure(self.command(f"dc {SWEEP_SOURCE} 0 {n - 1} 1"), "dc sweep")


def _injected_nonconvergence() -> bool:
    """A ``noconv-always`` file, or one ``noconv-*`` token claimed, in the fault directory (tests only)."""
    where = os.environ.get(FAULT_DIR_ENV)
    if not where:
        return False
    try:
        names = sorted(n for n in os.listdir(where) if n.startswith("noconv-"))
    except OSError:
        return False
    return "noconv-always" in names or any(claim_fault_token(where, name) for name in names)


def claim_fault_token(where: str, name: str, label: str | None = None) -> bool:
    """Claim the fault-injection file ``name`` of directory ``where``: an atomic rename to
    ``fired-<label or name>-<pid>``, so exactly one process gets each token."""
    try:
        os.rename(os.path.join(where, name), os.path.join(where, f"fired-{label or name}-{os.getpid()}"))
        return True
    except OSError:                      # another process claimed it first
        return False


def _failure(printed: str, what: str) -> str:
    lower = printed.lower()
    bad = [m for m in FAILURE_MARKERS if m in lower]
    return "" if not bad else f"ngspice {what} failed ({bad[0]}): " + " ".join(printed.split())[:300]


_SESSION: NgspiceSession | None = None
_SESSION_LOCK = threading.Lock()


def session() -> NgspiceSession:
    """This process's libngspice (created on first use)."""
    global _SESSION
    with _SESSION_LOCK:
        if _SESSION is None:
            _SESSION = NgspiceSession()
    return _SESSION


# ---- jobs: what travels to a worker -----------------------------------------------------------

@dataclass(frozen=True)
class DeckJob:
    """One chunk of samples of one deck.

    Attributes:
        deck: the deck text (without ``.control``); ``deck_digest`` its sha256.
        sources: element names (lower case) that change per sample.
        values: ``(n, len(sources))`` their DC values, one row per sample.
        vectors: names of the vectors to read after each analysis (op plot names;
            a swept voltage source ``v`` reads ``bsw_v#branch`` instead of ``v#branch``).
        method: ``op`` or ``sweep``.
        measure: also report ngspice's own analysis time for this job (its ``rusage``).
    """

    deck: str
    deck_digest: str
    sources: tuple[str, ...]
    values: np.ndarray
    vectors: tuple[str, ...]
    method: str = "op"
    measure: bool = False


@dataclass
class JobResult:
    values: np.ndarray                 # (n, len(vectors)), NaN where a sample failed
    messages: tuple[str, ...]          # '' per converged sample
    rescued: tuple[str, ...] = ()      # per sample, the homotopy that made it converge ('' none needed)
    analysis_s: float = float("nan")   # ngspice's analysis time for the job (when measured)
    pid: int = field(default_factory=os.getpid)


def _op_values(s: NgspiceSession, vectors: list[str]) -> tuple[np.ndarray | None, str]:
    """One ``op`` on the loaded circuit: (values, '') or (None, what failed)."""
    failure = s.op()
    values = None if failure else s.read(vectors)
    s.destroy_plots()
    if values is None:
        return None, failure or ("ngspice op produced no vectors (analysis failed silently); "
                                 "inspect the deck with 'ffebm netlist' and 'ngspice -b'")
    return values, ""


def _run_op(s: NgspiceSession, job: DeckJob) -> JobResult:
    n = job.values.shape[0]
    out = np.full((n, len(job.vectors)), np.nan)
    vectors = list(job.vectors)
    messages, rescued = [], []
    for b in range(n):
        s.load(job.deck, job.deck_digest, keep_stats=job.measure)     # no-op unless a retry unloaded it
        for name, v in zip(job.sources, job.values[b]):
            s.set_dc(name, v)
        values, failure = _op_values(s, vectors)
        how = ""
        if values is None:
            for how, command in HOMOTOPIES:
                s.command(command)
                values, _ = _op_values(s, vectors)
                if values is not None:
                    break
            # The retry options stay on the circuit: reload it so the next sample
            # (and the next job) runs with the deck's own options.
            s.unload(keep_stats=job.measure)
        if values is None:
            messages.append(f"{failure} (also failed with {' and '.join(h for h, _ in HOMOTOPIES)})")
            rescued.append("")
            continue
        messages.append("")
        rescued.append(how)
        out[b] = values
    return JobResult(out, tuple(messages), tuple(rescued))


_TEMPLATES: dict[tuple, tuple[list[str], dict[int, tuple[str, str, str]]]] = {}


def _sweep_template(deck: str, deck_digest: str, sources: tuple[str, ...]):
    """The deck split once into its fixed text and the cards of ``sources`` (name, node+, node-)."""
    key = (deck_digest, sources)
    if key not in _TEMPLATES:
        index = {name: k for k, name in enumerate(sources)}
        fixed, cards = [], {}
        for line in deck.splitlines():
            words = line.split()
            if not words or words[0].lower() == ".end":
                continue
            k = index.get(words[0].lower())
            if k is None:
                fixed.append(line)
            else:
                cards[k] = (words[0], words[1], words[2])
        if len(_TEMPLATES) > 8:
            _TEMPLATES.clear()
        _TEMPLATES[key] = ("\n".join(fixed), cards)
    return _TEMPLATES[key]


def sweep_deck(deck: str, sources: tuple[str, ...], values: np.ndarray, deck_digest: str | None = None) -> str:
    """``deck`` with every source of ``sources`` that changes across ``values`` rows as a
    behavioural ``pwl`` of the sweep voltage (sample ``k`` at ``v(ffebm_sweep) = k``);
    sources constant across the chunk keep a DC card with that value."""
    n = values.shape[0]
    fixed, cards = _sweep_template(deck, deck_digest or digest(deck), tuple(sources))
    out = [fixed]
    card = _pwl_card(n)
    changing = (values != values[0]).any(0)
    for k, (name, plus, minus) in sorted(cards.items()):
        col = values[:, k].tolist()
        if not changing[k]:
            out.append(f"{name} {plus} {minus} DC {col[0]!r}")
            continue
        kind = "V" if name[0] in "vV" else "I"
        out.append(card.format(name, plus, minus, kind, *map(repr, col)))
    out += [f"{SWEEP_SOURCE.upper()} {SWEEP_NODE} 0 DC 0", ".end", ""]
    return "\n".join(out)


@functools.lru_cache(maxsize=8)
def _pwl_card(n: int) -> str:
    """The text of a behavioural source ``pwl`` over ``n`` samples, with ``str.format`` fields
    for name, nodes, kind (V/I) and the ``n`` values. Points 0..n-1 and a repeat of the last
    value at n, so every sample sits at the start of a segment and ngspice's pwl returns the
    value itself, not an interpolation."""
    points = [f"{i}, {{{4 + i}}}" for i in range(n)] + [f"{n}, {{{4 + n - 1}}}"]
    rows = [", ".join(points[i:i + 4]) for i in range(0, len(points), 4)]
    return "BSW_{0} {1} {2} {3} = pwl(v(" + SWEEP_NODE + "),\n+ " + ",\n+ ".join(rows) + ")"


def with_nodeset(deck: str, nodes: list[str], volts: np.ndarray) -> str:
    """``deck`` with ``.nodeset`` cards (initial Newton guesses, released once
    converged) putting ``nodes`` at ``volts``: a warm start that does not change the answer."""
    cards = [f"v({name})={float(v)!r}" for name, v in zip(nodes, volts)]
    rows = [" ".join(cards[i:i + 4]) for i in range(0, len(cards), 4)]
    body = deck.rstrip().splitlines()
    if body and body[-1].strip().lower() == ".end":
        body.pop()
    return "\n".join(body + [".nodeset " + "\n+ ".join(rows), ".end", ""])


def swept_vector_name(name: str, sources: set[str]) -> str:
    """A branch vector of a swept voltage source is read from its behavioural stand-in."""
    if name.endswith("#branch") and name[:-7] in sources:
        return f"bsw_{name}"
    return name


def _run_sweep(s: NgspiceSession, job: DeckJob) -> JobResult | None:
    n = job.values.shape[0]
    deck = sweep_deck(job.deck, job.sources, job.values, job.deck_digest)
    try:
        s.load(deck, keep_stats=job.measure)
    except NgspiceDeckError:
        s.unload()
        return None
    failure = s.dc_sweep(n)
    changing = (job.values != job.values[0]).any(0)
    swept = {name for name, c in zip(job.sources, changing.tolist()) if c}
    names = [swept_vector_name(v, swept) for v in job.vectors]
    values = None if failure else s.read_arrays(names, n)
    sweep = None if values is None else s.read_arrays([f"v({SWEEP_NODE})"], n)
    s.unload(keep_stats=job.measure)          # a sweep deck is used once
    if values is None or sweep is None or not np.array_equal(sweep[:, 0], np.arange(n, dtype=np.float64)):
        return None
    return JobResult(values, ("",) * n)


def run_job(job: DeckJob) -> JobResult:
    """Run ``job`` on this process's libngspice (the task a pool or Dask worker executes)."""
    s = session()
    with s.lock:
        start = s.analysis_seconds() if job.measure else 0.0
        try:
            result = None
            if job.method == "sweep" and job.values.shape[0] > 1:
                result = _run_sweep(s, job)
            if result is None:                 # op requested, one sample, or the sweep failed
                result = _run_op(s, job)
        except NgspiceDeckError as e:
            n = job.values.shape[0]
            result = JobResult(np.full((n, len(job.vectors)), np.nan), (str(e),) * n)
        if job.measure:
            result.analysis_s = s.analysis_seconds() - start
    return result


def session_stats() -> dict:
    """Counters of this process's session (for benchmarks): pid, loads, the loaded deck's digest,
    solves, commands, analysis s."""
    s = session()
    with s.lock:
        return {"pid": os.getpid(), "loads": s.loads, "deck": s.loaded_hash, "solves": s.solves,
                "commands": s.commands, "analysis_s": s.analysis_seconds()}


class LocalEngine:
    """Runs jobs one after another in this process."""

    workers = 1

    def map(self, jobs: list[DeckJob]) -> list[JobResult]:
        return [run_job(job) for job in jobs]

    def close(self) -> None:
        pass


# ---- the backend ----------------------------------------------------------------------------------

class NgspiceBackend(Backend):
    """Solve with ngspice, in this process, in ``workers`` local processes, or on a Dask cluster.

    Args:
        reduced: use the Norton-reduced deck (source currents are then computed
            from the node voltages and ``G_1``, exactly as the reference does).
            Ignored for circuits with wire resistance: their physical crossbar deck is solved.
        method: ``auto`` (DC sweep for chunks of >= 4 samples, else alter+op),
            ``op`` or ``sweep`` (see the module docstring).
        workers: number of local worker processes (1: solve in this process).
        scheduler: address of a Dask distributed scheduler (``tcp://host:port``),
            or a ``distributed.Client``; jobs then run on its workers.
        chunk: samples per job (fixed, so results do not depend on ``workers``).
        measure: record ngspice's own analysis time (``self.analysis_s``).
    """

    name = "ngspice"

    def __init__(self, reduced: bool = False, method: str = "auto", workers: int = 1, scheduler=None,
                 chunk: int = DEFAULT_CHUNK, measure: bool = False):
        if method not in METHODS:
            raise SpecError(f"ngspice method: unknown {method!r}; valid methods are {', '.join(METHODS)}")
        if not (isinstance(workers, int) and workers >= 1):
            raise SpecError(f"--workers: {workers!r}; an integer >= 1")
        if not (isinstance(chunk, int) and chunk >= 1):
            raise SpecError(f"chunk: {chunk!r}; an integer >= 1 (samples per ngspice job)")
        if scheduler is not None and workers > 1:
            raise SpecError(f"--scheduler and --workers {workers}: give one of them; the Dask cluster's "
                            f"workers do the solves with --scheduler, --workers N starts N local processes")
        if isinstance(scheduler, str):
            from .dask_engine import check_scheduler_address
            scheduler = check_scheduler_address(scheduler)          # a malformed address is bad input, now
        self.reduced, self.method, self.workers, self.scheduler = reduced, method, workers, scheduler
        self.chunk, self.measure = chunk, measure
        self.analysis_s = 0.0
        #: Samples rescued by each retry (see the module docstring) and samples that failed them all.
        self.convergence: Counter = Counter()
        self._engine = None
        self._decks: list[tuple[BlockCircuit, float, str, str]] = []

    # engines are created on first use and kept (a pool keeps its workers and their circuits)
    @property
    def engine(self):
        if self._engine is None:
            if self.scheduler is not None:
                from .dask_engine import DaskEngine
                self._engine = DaskEngine(self.scheduler)
            elif self.workers > 1:
                from .pool import PoolEngine
                self._engine = PoolEngine(self.workers)
            else:
                self._engine = LocalEngine()
        return self._engine

    def start(self) -> "NgspiceBackend":
        """Start the engine now (connect to the scheduler, start the workers) instead of on the first
        solve, so an unreachable scheduler is reported before a run writes anything."""
        self.engine
        return self

    def close(self) -> None:
        """Stop worker processes (a pool) or disconnect from the cluster."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_engine"], state["_decks"] = None, []
        return state

    def deck_for(self, circuit: BlockCircuit, nudge: Nudge | None) -> str:
        return self._deck(circuit, nudge)[0]

    def _deck(self, circuit: BlockCircuit, nudge: Nudge | None) -> tuple[str, str]:
        """(deck, digest), cached for the last few circuits (EP solves one circuit three times)."""
        g = nudge.conductance_s if nudge is not None else 0.0
        for c, gc, deck, dg in self._decks:
            if c is circuit and gc == g:
                return deck, dg
        deck = emit_deck(circuit.as_emitted(), reduced=self._reduced(circuit), control=False, nudge_conductance_s=g,
                         nudge_target_v=np.zeros(circuit.n_outputs) if g != 0 else None)
        dg = digest(deck)
        self._decks = [(circuit, g, deck, dg)] + self._decks[:5]
        return deck, dg

    def _reduced(self, circuit: BlockCircuit) -> bool:
        """Whether ``circuit`` is solved on the Norton-reduced deck: only when asked for and exact.
        With wire resistance (crossbars) the per-node Norton reduction is not exact, so the
        physical deck is solved (``reduced=True`` is then ignored for that circuit)."""
        return self.reduced and not circuit.has_wires

    def jobs(self, circuit: BlockCircuit, u: torch.Tensor, nudge: Nudge | None) -> tuple[list[DeckJob], dict]:
        """The jobs of one solve request, and what :meth:`assemble` needs."""
        B, n0 = u.shape[0], circuit.n_inputs
        v_src = source_voltages(circuit, u).numpy()
        g1 = circuit.actual_conductances()[0]          # the deck's conductances (mismatch included)
        nodes = free_node_names(circuit)
        names, columns = [], []
        reduced = self._reduced(circuit)
        if reduced:
            names += [norton_source_name(j) for j in range(circuit.layer_sizes[1])]
            columns.append(norton_currents_a(g1, v_src))
        else:
            names += source_names(n0)
            columns.append(v_src)
        names += [nudge_source_name(j) for j in range(circuit.n_outputs)]
        if nudge is not None and nudge.currents_a is not None:
            columns.append(nudge.currents_a.detach().to(torch.float64).numpy())
        else:
            columns.append(np.zeros((B, circuit.n_outputs)))
        if nudge is not None and nudge.conductance_s != 0:
            names += [target_source_name(j) for j in range(circuit.n_outputs)]
            columns.append(nudge.target_v.detach().to(torch.float64).numpy())
        values = np.ascontiguousarray(np.concatenate(columns, axis=1), dtype=np.float64)
        vectors = tuple(nodes + ([] if reduced else [f"{name}#branch" for name in source_names(n0)]))
        deck, dg = self._deck(circuit, nudge)
        jobs = []
        for start in range(0, B, self.chunk):
            part = values[start:start + self.chunk]
            method = self.method
            if method == "auto":
                method = "sweep" if part.shape[0] >= SWEEP_MIN_SAMPLES else "op"
            jobs.append(DeckJob(deck, dg, tuple(names), part, vectors, method, self.measure))
        return jobs, {"v_src": v_src, "g1": g1, "n_nodes": len(nodes), "reduced": reduced, "nodes": nodes}

    def solve(self, circuit: BlockCircuit, inputs, nudge: Nudge | None = None,
              start: torch.Tensor | None = None) -> Equilibrium:
        # ``start`` is ignored: every op starts from ngspice's junction initialisation and a
        # sweep from the previous sample, which keeps answers independent of the caller.
        u = check_batch(circuit, inputs, nudge)
        B, n0 = u.shape[0], circuit.n_inputs
        floating = circuit.floating_nodes()
        if floating:
            message = (f"ngspice: node {floating[0]} floats (no conductance connects it; "
                       f"{len(floating)} such nodes); give it a non-zero conductance")
            return Equilibrium(torch.full((B, circuit.n_free), torch.nan, dtype=torch.float64),
                               torch.full((B, 2 * n0), torch.nan, dtype=torch.float64),
                               torch.zeros(B, dtype=torch.bool), (message,) * B, 0)
        jobs, extra = self.jobs(circuit, u, nudge)
        results = self.engine.map(jobs) if jobs else []
        results = self._warm_start_failed(circuit, u, nudge, jobs, results, extra["nodes"])
        for r in results:
            self.convergence.update(how for how in r.rescued if how)
            self.convergence["failed"] += sum(1 for m in r.messages if m)
        return self.assemble(circuit, results, extra, B)

    def _warm_start_failed(self, circuit: BlockCircuit, u: torch.Tensor, nudge: Nudge | None,
                           jobs: list[DeckJob], results: list[JobResult], nodes: list[str]) -> list[JobResult]:
        """Solve the samples that failed every homotopy once more from the reference solver's
        answer (``.nodeset`` cards); the results with those samples replaced where it worked."""
        failed = [(j, k) for j, r in enumerate(results) for k, m in enumerate(r.messages) if m]
        if not failed:
            return results
        from .reference import ReferenceBackend
        starts = np.cumsum([0] + [job.values.shape[0] for job in jobs])      # each job's first batch row
        rows = [int(starts[j]) + k for j, k in failed]
        ref = ReferenceBackend().solve(circuit, u[rows], None if nudge is None else nudge.rows(rows))
        retry, where = [], []
        for (j, k), x, ok in zip(failed, ref.node_voltages_v.numpy(), ref.converged.tolist()):
            if ok:
                deck = with_nodeset(jobs[j].deck, nodes, x)
                retry.append(replace(jobs[j], deck=deck, deck_digest=digest(deck), method="op",
                                     values=jobs[j].values[k:k + 1]))
                where.append((j, k))
        if not retry:
            return results
        results = [replace(r, values=r.values.copy(), messages=list(r.messages),
                           rescued=list(r.rescued or ("",) * len(r.messages))) for r in results]
        for (j, k), again in zip(where, self.engine.map(retry)):
            if not again.messages[0]:
                results[j].values[k] = again.values[0]
                results[j].messages[k], results[j].rescued[k] = "", WARM_START
            else:
                results[j].messages[k] += f"; also failed from the reference solver's answer ({WARM_START})"
        return [replace(r, messages=tuple(r.messages), rescued=tuple(r.rescued)) for r in results]

    def assemble(self, circuit: BlockCircuit, results: list[JobResult], extra: dict, B: int) -> Equilibrium:
        n0, n_nodes = circuit.n_inputs, extra["n_nodes"]
        values = np.concatenate([r.values for r in results], axis=0) if results else np.empty((0, n_nodes))
        messages = tuple(m for r in results for m in r.messages)
        if self.measure:
            self.analysis_s += sum(r.analysis_s for r in results)
        volts = values[:, :n_nodes].copy()
        if not extra.get("reduced", self.reduced):
            currents = delivered_from_branch_current(torch.from_numpy(values[:, n_nodes:].copy())).numpy()
        else:
            g1, v_src = extra["g1"], extra["v_src"]
            currents = delivered_through_input_layer(g1, v_src, volts[:, circuit.layer_slice(1)])
        converged = torch.tensor([m == "" for m in messages], dtype=torch.bool)
        return Equilibrium(torch.from_numpy(volts), torch.from_numpy(np.ascontiguousarray(currents)),
                           converged, messages, B)
