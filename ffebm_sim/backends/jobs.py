"""The job protocol: what travels to a process that holds a libngspice, and how it is run there.

A solve request becomes a list of :class:`DeckJob` s: the deck, the names of
the sources that change from sample to sample, their values (one row per
sample) and the vectors to read. A job runs in whichever process holds a
libngspice (the caller's, a worker of :mod:`.pool`, or a Dask worker,
:mod:`.dask_engine`) through :func:`run_job`, with one of three methods:

* ``op``: the deck is loaded once (kept while the conductances stay the same)
  and every sample ``alter`` s the sources that changed, then runs ``op``:
  physical deck ``vxp<i>``/``vxm<i>`` get ``+-a*u_i``; reduced deck ``in1_<j>``
  the Norton currents ``sum_i G1[i,j]*V_i``; ``inudge<j>`` the nudge currents,
  ``vy<j>`` the resistive-nudge targets. Each ``op`` starts from ngspice's
  junction initialisation and reorders the matrix, so a sample's answer does
  not depend on what was solved before it.
* ``sweep``: the whole chunk is one DC sweep (:mod:`.deckedit`): one Newton
  solve per sample starting from the previous sample's solution, no
  reordering, no time-step control (a PWL *transient* would add about four
  time points per sample after each breakpoint; measured, see docs/speed.md).
  The deck is reloaded per chunk, so the answer depends only on the chunk
  (fixed boundaries: identical on 1 or N workers). A chunk whose sweep fails
  is solved again sample by sample with ``op``.
* ``tran``: the resident deck (:func:`~.deckedit.resident_deck`: the changing
  sources as independent ``EXTERNAL`` sources) is loaded once, like ``op``'s; a
  chunk's values are handed to the C callback of :mod:`.extsrc` as one numpy
  array (:meth:`~.session.NgspiceSession.external_table`; no ngspice command),
  which ngspice asks for each source's value at every load. Where that
  extension cannot be built (no C compiler) or ``FFEBM_NGSPICE_EXTERNAL=0``,
  the sources are PWL sources instead and the values go in as one binary
  rawfile (:func:`~.deckedit.pwl_rawfile`, exact float64) and one short
  ``alter @SRC[pwl] = vector`` per source whose values changed
  (:meth:`~.session.NgspiceSession.set_pwls`; 25-45 us each). Either way
  sample ``k`` is the value at ``t = k`` and the chunk is one transient with one
  time point per sample (:meth:`~.session.NgspiceSession.tran_samples`). The
  circuit has no reactive element, so every accepted time point is a DC
  operating point, solved to the deck's tolerances. Sample 0 is the
  transient's initial operating point (junction initialisation, like ``op``);
  sample ``k`` starts Newton from sample ``k-1`` (extrapolated from ``k-2``:
  SPICE's predictor). Nothing carries over from one transient to the next
  (each starts with ``op``'s junction initialisation and matrix reordering; the
  values of every source are the chunk's), so the answer depends only on
  the chunk, as the sweep's does: identical on 1 or N workers, and whatever
  the worker solved before (``tests/test_pool.py``). It does depend on the
  chunk's other samples within the solver's tolerance: the same sample in
  another chunk agrees to about 1e-12 V, not bit for bit (``op`` is the method
  whose answers are bit-identical at any position). A chunk whose transient
  fails is solved again sample by sample with ``op``.

**Non-convergence.** ngspice's own ``op`` already falls back from Newton to
gmin stepping and source stepping with its default ladders. A sample whose
``op`` still fails is retried (:func:`op_with_retries`) with the homotopies of
:data:`HOMOTOPIES` (finer gmin ladder, then source stepping alone, with 10x the
Newton iteration budget), set with ngspice's ``option`` command on the loaded
circuit; the deck is reloaded afterwards so the next sample runs with the
deck's own options. The last retry, :data:`WARM_START`, needs the reference
solver and runs in the process that owns the backend
(:meth:`~.ngspice.NgspiceBackend.run_jobs`). :attr:`JobResult.rescued` says
what rescued each sample. Analyses consult :func:`~.faults.injected_nonconvergence`
first (tests only).

Only numpy, :mod:`.session` (with :mod:`.extsrc`), :mod:`.deckedit` and :mod:`.faults`: no torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .deckedit import (SWEEP_NODE, SWEEP_SOURCE, pwl_rawfile, pwl_vector, resident_deck, swept_vector_name,
                       sweep_deck)
from .faults import injected_nonconvergence
from .session import NgspiceDeckError, NgspiceSession, session

METHODS = ("auto", "op", "sweep", "tran")
#: Samples per job for requests of fewer than ``2 * LARGE_CHUNK`` samples (:func:`chunk_size`).
DEFAULT_CHUNK = 16
#: Samples per job for requests that still make two jobs of it (:func:`chunk_size`).
LARGE_CHUNK = 32
#: ``auto`` runs the resident transient for chunks of at least this many samples (one sample: alter+op).
TRAN_MIN_SAMPLES = 2
#: Retries of a failed operating point, in order: (name, ngspice ``option`` command).
#: ``noopiter`` skips the plain Newton attempt, ``gminsteps=0`` the gmin ladder.
HOMOTOPIES = (("gmin stepping", "option itl1=1000 gminsteps=100"),
              ("source stepping", "option itl1=1000 gminsteps=0 srcsteps=100 noopiter"))
#: The last retry (by the process that owns the backend): a warm start from the reference solver's answer.
WARM_START = "nodeset warm start"


@dataclass(frozen=True)
class DeckJob:
    """One chunk of samples of one deck.

    Attributes:
        deck: the deck text (without ``.control``); ``deck_digest`` its sha256.
        sources: element names (lower case) that change per sample.
        values: ``(n, len(sources))`` their DC values, one row per sample.
        vectors: names of the vectors to read after each analysis (op plot names;
            a swept voltage source ``v`` reads ``bsw_v#branch`` instead of ``v#branch``).
        method: ``op``, ``sweep`` or ``tran``.
        measure: also report ngspice's own analysis time for this job (its ``rusage``).
        inputs: the first ``inputs`` columns of ``values`` are set by the block's inputs (not
            the nudge): EP's three phases repeat them, so jobs sharing them are run one after
            another (:func:`cache_friendly_order`) and a resident circuit keeps their PWLs.
    """

    deck: str
    deck_digest: str
    sources: tuple[str, ...]
    values: np.ndarray
    vectors: tuple[str, ...]
    method: str = "op"
    measure: bool = False
    inputs: int = 0


@dataclass
class JobResult:
    values: np.ndarray                 # (n, len(vectors)), NaN where a sample failed
    messages: tuple[str, ...]          # '' per converged sample
    rescued: tuple[str, ...] = ()      # per sample, the retry that made it converge ('' none needed)
    analysis_s: float = float("nan")   # ngspice's analysis time for the job (when measured)
    pid: int = field(default_factory=os.getpid)


def _op(s: NgspiceSession) -> str:
    """One operating point on the loaded circuit: '' or the failure text (an injected fault first)."""
    if injected_nonconvergence():
        return "ngspice op failed (no convergence): injected fault (FFEBM_FAULT_DIR)"
    return s.op()


def sweep_samples(s: NgspiceSession, n: int) -> str:
    """The DC sweep of a loaded sweep deck through samples ``0..n-1``: '' or the failure text."""
    if injected_nonconvergence():
        return "ngspice dc sweep failed (no convergence): injected fault (FFEBM_FAULT_DIR)"
    return s.dc(SWEEP_SOURCE, 0, n - 1, 1)


def tran_samples(s: NgspiceSession, n: int) -> str:
    """The transient of a loaded resident deck through samples ``0..n-1``: '' or the failure text."""
    if injected_nonconvergence():
        return "ngspice tran failed (no convergence): injected fault (FFEBM_FAULT_DIR)"
    return s.tran_samples(n)


def _op_values(s: NgspiceSession, vectors: list[str]) -> tuple[np.ndarray | None, str]:
    """One ``op`` on the loaded circuit: (values, '') or (None, what failed)."""
    failure = _op(s)
    values = None if failure else s.read(vectors)
    s.destroy_plots()
    if values is None:
        return None, failure or ("ngspice op produced no vectors (analysis failed silently); "
                                 "inspect the deck with 'ffebm netlist' and 'ngspice -b'")
    return values, ""


def op_with_retries(s: NgspiceSession, vectors: list[str],
                    keep_stats: bool = False) -> tuple[np.ndarray | None, str, str]:
    """An operating point of the loaded circuit, its sources already set, with the retries of
    :data:`HOMOTOPIES`: ``(values, '', rescued)`` (``rescued`` the homotopy that converged, ''
    for none needed) or ``(None, message, '')``. After a retry the circuit is unloaded (its
    options changed): load it again before the next sample."""
    values, failure = _op_values(s, vectors)
    if values is not None:
        return values, "", ""
    for how, command in HOMOTOPIES:
        s.set_options(command)
        values, _ = _op_values(s, vectors)
        if values is not None:
            break
    # The retry options stay on the circuit: reload it so the next sample
    # (and the next job) runs with the deck's own options.
    s.unload(keep_stats=keep_stats)
    if values is None:
        return None, f"{failure} (also failed with {' and '.join(h for h, _ in HOMOTOPIES)})", ""
    return values, "", how


def _run_op(s: NgspiceSession, job: DeckJob) -> JobResult:
    n = job.values.shape[0]
    out = np.full((n, len(job.vectors)), np.nan)
    vectors = list(job.vectors)
    messages, rescued = [], []
    for b in range(n):
        s.load(job.deck, job.deck_digest, keep_stats=job.measure)     # no-op unless a retry unloaded it
        for name, v in zip(job.sources, job.values[b]):
            s.set_dc(name, v)
        values, message, how = op_with_retries(s, vectors, keep_stats=job.measure)
        messages.append(message)
        rescued.append(how)
        if values is not None:
            out[b] = values
    return JobResult(out, tuple(messages), tuple(rescued))


def _run_sweep(s: NgspiceSession, job: DeckJob) -> JobResult | None:
    n = job.values.shape[0]
    deck = sweep_deck(job.deck, job.sources, job.values, job.deck_digest)
    try:
        s.load(deck, keep_stats=job.measure)
    except NgspiceDeckError:
        s.unload()
        return None
    failure = sweep_samples(s, n)
    changing = (job.values != job.values[0]).any(0)
    swept = {name for name, c in zip(job.sources, changing.tolist()) if c}
    names = [swept_vector_name(v, swept) for v in job.vectors]
    values = None if failure else s.read_arrays(names, n)
    sweep = None if values is None else s.read_arrays([f"v({SWEEP_NODE})"], n)
    s.unload(keep_stats=job.measure)          # a sweep deck is used once
    if values is None or sweep is None or not np.array_equal(sweep[:, 0], np.arange(n, dtype=np.float64)):
        return None
    return JobResult(values, ("",) * n)


def sample_rows(time_s: np.ndarray, m: int) -> np.ndarray | None:
    """Rows of a transient's accepted time points that are the samples ``t = 0..m-1``
    (continuation points ngspice inserted after a failed step are skipped); None if one is missing."""
    want = np.arange(m, dtype=np.float64)
    rows = np.searchsorted(time_s, want)
    if len(time_s) == 0 or rows[-1] >= len(time_s) or not np.array_equal(time_s[rows], want):
        return None
    return rows


def _set_pwl_values(s: NgspiceSession, job: DeckJob) -> bool:
    """Give the loaded resident deck's PWL sources the job's values (one rawfile, one ``alter``
    per source whose values changed); False when ngspice refused them (the circuit is unloaded)."""
    columns = job.values.T.tolist()
    changed = [k for k, (name, column) in enumerate(zip(job.sources, columns))
               if s.pwl.get(name) != tuple(column)]       # the loaded circuit holds other values
    if changed:
        try:
            s.set_pwls([job.sources[k] for k in changed], pwl_rawfile(job.values[:, changed]),
                       [pwl_vector(j) for j in range(len(changed))], [tuple(columns[k]) for k in changed])
        except (OSError, NgspiceDeckError):       # no temporary file, or refused: solve with op
            s.unload()
            return False
    return True


def _run_tran(s: NgspiceSession, job: DeckJob) -> JobResult | None:
    """The chunk as one transient of the resident deck (see the module docstring); None when it
    fails. The sources are ``EXTERNAL`` ones served from memory when :mod:`.extsrc` is available,
    else PWL sources given their values with ``alter``."""
    n = job.values.shape[0]
    table = s.external_table()
    deck, deck_digest = resident_deck(job.deck, job.deck_digest, job.sources, external=table is not None)
    try:
        s.load(deck, deck_digest, keep_stats=job.measure)
    except NgspiceDeckError:
        s.unload()
        return None
    missed = 0
    if table is not None:
        if table.names != job.sources:
            table.set_names(job.sources)
        table.set_values(job.values)
    elif not _set_pwl_values(s, job):
        return None
    try:
        failure = tran_samples(s, n)
        length = 0 if failure else s.vector_length("time")
        data = s.read_arrays(["time"] + list(job.vectors), length) if length >= n else None
        s.destroy_plots()
    finally:
        if table is not None:
            missed = table.clear_values()
    if data is None or missed:             # a source the table could not answer: solve with op
        return None
    rows = sample_rows(data[:, 0], n)
    if rows is None:
        return None
    return JobResult(np.ascontiguousarray(data[rows, 1:]), ("",) * n)


def chunk_size(n: int) -> int:
    """Samples per job for a solve request of ``n`` samples: :data:`LARGE_CHUNK` when the request
    still makes at least two jobs of it, else :data:`DEFAULT_CHUNK`. A longer transient costs
    less per sample (one junction-initialised operating point per job; measured 3-28 % on the
    blocks of ``ffebm bench solvers``), and two jobs per request keep two workers busy: at
    batch 32, EP's free phase is two jobs of 16 and its nudged request (64 samples) two of 32.
    A function of ``n`` alone, never of the number of workers: the chunks decide the answers'
    last bits, so a batch is cut alike on 1 worker, N workers or a Dask cluster."""
    return LARGE_CHUNK if n >= 2 * LARGE_CHUNK else DEFAULT_CHUNK


def cache_friendly_order(jobs: list[DeckJob], first: bytes | None = None) -> list[int]:
    """An order to run ``jobs`` in: jobs whose input columns (:attr:`DeckJob.inputs`) are equal
    next to each other, the group equal to ``first`` (what the process last held) first, the
    groups otherwise in job order. Every job's answer depends on the job alone, so the order
    changes no answer, only how many ``alter`` s a resident circuit needs."""
    keys = [input_key(job) for job in jobs]
    rank: dict[bytes, int] = {}
    for k, key in enumerate(keys):
        rank.setdefault(key, -1 if key == first else k)
    return sorted(range(len(jobs)), key=lambda k: (rank[keys[k]], k))


def input_key(job: DeckJob) -> bytes:
    """The bytes of a job's input columns (the key :func:`cache_friendly_order` groups by)."""
    return np.ascontiguousarray(job.values[:, :job.inputs]).tobytes()


def run_job(job: DeckJob) -> JobResult:
    """Run ``job`` on this process's libngspice (the task a pool or Dask worker executes)."""
    s = session()
    with s.lock:
        start = s.analysis_seconds() if job.measure else 0.0
        try:
            result = None
            if job.method == "sweep" and job.values.shape[0] > 1:
                result = _run_sweep(s, job)
            elif job.method == "tran" and job.values.shape[0] > 1:
                result = _run_tran(s, job)
            if result is None:                 # op requested, one sample, or the sweep/transient failed
                result = _run_op(s, job)
        except NgspiceDeckError as e:
            n = job.values.shape[0]
            result = JobResult(np.full((n, len(job.vectors)), np.nan), (str(e),) * n)
        if job.measure:
            result.analysis_s = s.analysis_seconds() - start
    return result
