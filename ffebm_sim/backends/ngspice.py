"""ngspice (libngspice) as a backend: a solve request becomes jobs, the jobs run on an engine.

The deck text from :mod:`ffebm_sim.netlist` is the contract. The pieces:

* :mod:`.session`: the one libngspice of a process (the only PySpice user);
* :mod:`.jobs`: the job protocol (:class:`~.jobs.DeckJob`, ``op`` and ``sweep``
  methods, the homotopy retries), with :mod:`.deckedit` (sweep decks,
  ``.nodeset`` warm starts) and :mod:`.faults` (fault injection for tests);
* :mod:`.engines`: where jobs run (:class:`~.engines.LocalEngine`, the worker
  pool of :mod:`.pool`, a Dask cluster with :mod:`.dask_engine`) behind one
  :class:`~.engines.Engine` contract;
* this module: :class:`NgspiceBackend`, which turns a solve request into jobs,
  runs them on its engine with every retry, and assembles the
  :class:`~.base.Equilibrium`.

``method="auto"`` takes the resident transient (``tran``) for chunks of at least
:data:`~.jobs.TRAN_MIN_SAMPLES` samples and ``op`` for one sample: measured
fastest on every block size from ``[16, 10]`` to the ``[784, 100, 10]`` DRN
(``ffebm bench solvers``, table "methods"). Samples per job: ``chunk`` when given,
else :func:`~.jobs.chunk_size` of the request (32 when the request still makes
two jobs of 32, else 16): a function of the request alone, never of the number
of workers.

**Non-convergence.** A sample that fails ngspice's ``op`` and the homotopies of
:data:`~.jobs.HOMOTOPIES` (retried where the job runs) gets one last try from
here: the same deck plus ``.nodeset`` cards holding the reference solver's
answer (:data:`~.jobs.WARM_START`; the homotopies again if needed). What
rescued each sample is counted (:meth:`NgspiceBackend.convergence_stats`). A
sample that fails all of them keeps its failure message; the caller (training)
decides to stop or skip. :meth:`NgspiceBackend.run_jobs` is that whole path for
any jobs, so ``ffebm analyze`` uses the same retries as training.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import torch

from ..circuit import BlockCircuit, free_node_names, source_names
from ..errors import SpecError
from ..netlist import emit_deck, norton_currents_a, norton_source_name, nudge_source_name, target_source_name
from ..interactions import network
from ..recent import RecentByIdentity
from .base import Backend, Equilibrium, Nudge, check_batch, delivered_from_branch_current, source_voltages
from .dask_engine import DaskEngine, check_scheduler_address
from .deckedit import with_nodeset
from .engines import Engine, LocalEngine
from .jobs import (METHODS, TRAN_MIN_SAMPLES, WARM_START, DeckJob, JobResult, cache_friendly_order,
                   chunk_size, input_key)
from .pool import PoolEngine
from .reference import ReferenceBackend
from .session import digest


class _CircuitFacts(NamedTuple):
    """Per circuit: whether its deck is the reduced one, its first-layer conductances (S, mismatch
    included), its floating nodes, and the names a job reads and sets."""
    reduced: bool
    g1: np.ndarray
    floating: tuple[str, ...]
    input_names: tuple[str, ...]
    vectors: tuple[str, ...]


class NgspiceBackend(Backend):
    """Solve with ngspice, in this process, in ``workers`` local processes, or on a Dask cluster.

    Args:
        reduced: use the Norton-reduced deck (source currents are then computed
            from the node voltages and ``G_1``, exactly as the reference does).
            Ignored for circuits with wire resistance: their physical crossbar deck is solved.
        method: ``auto`` (resident transient for chunks of >= 2 samples, else alter+op),
            ``op``, ``sweep`` or ``tran`` (see :mod:`.jobs`).
        workers: number of local worker processes (1: solve in this process).
        scheduler: address of a Dask distributed scheduler (``tcp://host:port``),
            or a ``distributed.Client``; jobs then run on its workers.
        chunk: samples per job; None: :func:`~.jobs.chunk_size` of each request. Never
            derived from ``workers``, so results do not depend on it.
        measure: record ngspice's own analysis time (``self.analysis_s``).
    """

    name = "ngspice"

    def __init__(self, reduced: bool = False, method: str = "auto", workers: int = 1, scheduler=None,
                 chunk: int | None = None, measure: bool = False):
        if method not in METHODS:
            raise SpecError(f"ngspice method: unknown {method!r}; valid methods are {', '.join(METHODS)}")
        if not (isinstance(workers, int) and workers >= 1):
            raise SpecError(f"--workers: {workers!r}; an integer >= 1")
        if chunk is not None and not (isinstance(chunk, int) and chunk >= 1):
            raise SpecError(f"chunk: {chunk!r}; an integer >= 1 (samples per ngspice job), or None")
        if scheduler is not None and workers > 1:
            raise SpecError(f"--scheduler and --workers {workers}: give one of them; the Dask cluster's "
                            f"workers do the solves with --scheduler, --workers N starts N local processes")
        if isinstance(scheduler, str):
            scheduler = check_scheduler_address(scheduler)          # a malformed address is bad input, now
        self.reduced, self.method, self.workers, self.scheduler = reduced, method, workers, scheduler
        self.chunk, self.measure = chunk, measure
        self.analysis_s = 0.0
        # Samples rescued by each retry (see the module docstring) and samples that failed them all.
        self._convergence: Counter = Counter()
        self._engine = None
        self._decks = RecentByIdentity(6)                 # (deck, digest) per circuit and nudge conductance
        self._circuit_facts = RecentByIdentity(4)         # _CircuitFacts per circuit
        self._norton: tuple[BlockCircuit | None, dict[bytes, np.ndarray]] = (None, {})
        self._last_inputs: bytes | None = None       # input columns of the last job run (cache_friendly_order)

    # engines are created on first use and kept (a pool keeps its workers and their circuits)
    @property
    def engine(self) -> Engine:
        if self._engine is None:
            if self.scheduler is not None:
                self._engine = DaskEngine(self.scheduler)
            elif self.workers > 1:
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

    def convergence_stats(self) -> dict:
        """Samples rescued by each retry so far (``gmin stepping``, ``source stepping``,
        ``nodeset warm start``) and ``failed``: samples that failed them all."""
        return dict(self._convergence)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_engine"], state["_norton"] = None, (None, {})
        return state

    def deck_for(self, circuit: BlockCircuit, nudge: Nudge | None) -> str:
        return self._deck(circuit, nudge)[0]

    def _deck(self, circuit: BlockCircuit, nudge: Nudge | None) -> tuple[str, str]:
        """(deck, digest), cached for the last few circuits (EP solves one circuit three times)."""
        g = nudge.conductance_s if nudge is not None else 0.0

        def build() -> tuple[str, str]:
            deck = emit_deck(circuit.as_emitted(), reduced=self._reduced(circuit), control=False,
                             nudge_conductance_s=g, nudge_target_v=np.zeros(circuit.n_outputs) if g != 0 else None)
            return deck, digest(deck)
        return self._decks.get(circuit, g, build)

    def _reduced(self, circuit: BlockCircuit) -> bool:
        """Whether ``circuit`` is solved on the Norton-reduced deck: only when asked for and exact.
        With wire resistance (crossbars) the per-node Norton reduction is not exact, so the
        physical deck is solved (``reduced=True`` is then ignored for that circuit)."""
        return self.reduced and not circuit.has_wires

    def _facts(self, circuit: BlockCircuit) -> _CircuitFacts:
        """What every request on ``circuit`` needs, worked out once per circuit (EP makes two
        requests of each, training a forward pass and two more)."""
        def build() -> _CircuitFacts:
            reduced = self._reduced(circuit)
            n0 = circuit.n_inputs
            nodes = free_node_names(circuit)
            inputs = ([norton_source_name(j) for j in range(circuit.layer_sizes[1])] if reduced
                      else source_names(n0))
            vectors = tuple(nodes + ([] if reduced else [f"{name}#branch" for name in source_names(n0)]))
            return _CircuitFacts(reduced, circuit.actual_conductances()[0], tuple(circuit.floating_nodes()),
                                 tuple(inputs), vectors)
        return self._circuit_facts.get(circuit, None, build)

    def jobs(self, circuit: BlockCircuit, u: torch.Tensor, nudge: Nudge | None) -> tuple[list[DeckJob], dict]:
        """The jobs of one solve request, and what :meth:`assemble` needs."""
        B = u.shape[0]
        v_src = source_voltages(circuit, u).numpy()
        facts = self._facts(circuit)
        reduced, g1 = facts.reduced, facts.g1          # the deck's conductances (mismatch included)
        names = list(facts.input_names)
        columns = [self._norton_currents(circuit, g1, v_src) if reduced else v_src]
        inputs = len(names)
        names += [nudge_source_name(j) for j in range(circuit.n_outputs)]
        if nudge is not None and nudge.currents_a is not None:
            columns.append(nudge.currents_a.detach().to(torch.float64).numpy())
        else:
            columns.append(np.zeros((B, circuit.n_outputs)))
        if nudge is not None and nudge.conductance_s != 0:
            names += [target_source_name(j) for j in range(circuit.n_outputs)]
            columns.append(nudge.target_v.detach().to(torch.float64).numpy())
        values = np.ascontiguousarray(np.concatenate(columns, axis=1), dtype=np.float64)
        vectors = facts.vectors
        deck, dg = self._deck(circuit, nudge)
        jobs = []
        size = self.chunk or chunk_size(B)
        for start in range(0, B, size):
            part = values[start:start + size]
            method = self.method
            if method == "auto":
                method = "tran" if part.shape[0] >= TRAN_MIN_SAMPLES else "op"
            jobs.append(DeckJob(deck, dg, tuple(names), part, vectors, method, self.measure, inputs))
        return jobs, {"v_src": v_src, "n_nodes": circuit.n_free, "reduced": reduced}

    def _norton_currents(self, circuit: BlockCircuit, g1: np.ndarray, v_src: np.ndarray) -> np.ndarray:
        """:func:`~ffebm_sim.netlist.norton_currents_a` of each row of ``v_src``, remembered per row
        for the last circuit: EP's nudged request repeats the free phase's inputs twice, and each
        row's currents depend only on the row (a fixed summation order), so a remembered row is
        the same bits as a computed one."""
        last, rows = self._norton
        if last is not circuit:
            rows = {}
            self._norton = (circuit, rows)
        keys = [row.tobytes() for row in v_src]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in rows}.values())
        if todo:
            for i, currents in zip(todo, norton_currents_a(g1, v_src[todo])):
                rows[keys[i]] = currents
        if len(rows) > 4096:                       # a batch's worth is what is reused
            self._norton = (circuit, {k: rows[k] for k in keys})
        return np.stack([rows[k] for k in keys]) if keys else np.empty((0, g1.shape[1]))

    def solve(self, circuit: BlockCircuit, inputs, nudge: Nudge | None = None,
              start: torch.Tensor | None = None) -> Equilibrium:
        # ``start`` is ignored: every op starts from ngspice's junction initialisation and a
        # sweep from the previous sample, which keeps answers independent of the caller.
        u = check_batch(circuit, inputs, nudge)
        B, n0 = u.shape[0], circuit.n_inputs
        floating = self._facts(circuit).floating
        if floating:
            message = (f"ngspice: node {floating[0]} floats (no conductance connects it; "
                       f"{len(floating)} such nodes); give it a non-zero conductance")
            return Equilibrium(torch.full((B, circuit.n_free), torch.nan, dtype=torch.float64),
                               torch.full((B, 2 * n0), torch.nan, dtype=torch.float64),
                               torch.zeros(B, dtype=torch.bool), (message,) * B, 0)
        jobs, extra = self.jobs(circuit, u, nudge)
        return self.assemble(circuit, self.run_jobs(circuit, u, nudge, jobs), extra, B)

    def run_jobs(self, circuit: BlockCircuit, u: torch.Tensor, nudge: Nudge | None,
                 jobs: list[DeckJob]) -> list[JobResult]:
        """Run ``jobs`` (chunks of the batch ``u``, in order, on decks of ``circuit`` with ``nudge``)
        on the engine with every retry: the homotopies where each job runs, then a warm start
        from the reference solver's answer here; counts what rescued each sample. The jobs'
        vectors may be any (e.g. every source's branch current); the warm start only needs
        the free nodes to be the deck's."""
        results = self._run_in_cache_order(jobs)
        results = self._warm_start_failed(circuit, u, nudge, jobs, results, free_node_names(circuit))
        for r in results:
            self._convergence.update(how for how in r.rescued if how)
            self._convergence["failed"] += sum(1 for m in r.messages if m)
        return results

    def _run_in_cache_order(self, jobs: list[DeckJob]) -> list[JobResult]:
        """The engine's results of ``jobs`` in job order, the jobs run in
        :func:`~.jobs.cache_friendly_order` (EP's phases repeat a chunk's inputs: a resident
        circuit that just solved them keeps their PWLs). The answers do not depend on the order."""
        if not jobs:
            return []
        order = cache_friendly_order(jobs, self._last_inputs)
        ran = self.engine.run([jobs[k] for k in order])
        self._last_inputs = input_key(jobs[order[-1]])
        results: list = [None] * len(jobs)
        for k, r in zip(order, ran):
            results[k] = r
        return results

    def _warm_start_failed(self, circuit: BlockCircuit, u: torch.Tensor, nudge: Nudge | None,
                           jobs: list[DeckJob], results: list[JobResult], nodes: list[str]) -> list[JobResult]:
        """Solve the samples that failed every homotopy once more from the reference solver's
        answer (``.nodeset`` cards); the results with those samples replaced where it worked."""
        failed = [(j, k) for j, r in enumerate(results) for k, m in enumerate(r.messages) if m]
        if not failed:
            return results
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
        for (j, k), again in zip(where, self.engine.run(retry)):
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
            # the reduced deck has no source branches: crossbar 1's row currents at the solved voltages
            currents = network(circuit).source_currents(torch.from_numpy(np.asarray(extra["v_src"])),
                                                        torch.from_numpy(volts)).numpy()
        converged = torch.tensor([m == "" for m in messages], dtype=torch.bool)
        return Equilibrium(torch.from_numpy(volts), torch.from_numpy(np.ascontiguousarray(currents)),
                           converged, messages, B)
