"""What `ffebm analyze` asks ngspice: operating points with every source current, transients, I-V sweeps.

Operating points are jobs of the ngspice backend's protocol (:mod:`ffebm_sim.backends.jobs`)
run by :meth:`~ffebm_sim.backends.ngspice.NgspiceBackend.run_jobs`: the same
homotopy retries and reference warm start as training. Transients and I-V
sweeps use the session's public analyses (:mod:`ffebm_sim.backends.session`,
the one libngspice of this process, behind its lock); nothing here imports
PySpice or sends raw ngspice commands. Vectors are read with the session's
``read_arrays``, which returns ``None`` rather than dereference a missing or
empty vector; a missing vector is a failed sample, never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import torch

from ..backends.base import Nudge, delivered_from_branch_current
from ..backends.jobs import DeckJob
from ..backends.ngspice import NgspiceBackend
from ..backends.session import NgspiceDeckError, digest, session
from ..circuit import BlockCircuit, free_node_names, rail_potentials, source_names, source_voltages
from ..netlist import emit_deck, nudge_source_name, target_source_name

@dataclass
class OpResult:
    """Operating points of a batch, read from ngspice.

    Attributes:
        node_voltages_v: ``(B, n_free)``, NaN where a sample failed.
        source_power_w: ``(B,)`` net power delivered by every voltage source
            (from ngspice's branch currents) and the nudge current sources.
        messages: '' per converged sample, else ngspice's complaint.
        rescued: per sample, the retry that made it converge ('' none needed).
    """

    node_voltages_v: np.ndarray
    source_power_w: np.ndarray
    messages: tuple[str, ...]
    rescued: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(m == "" for m in self.messages)


def voltage_sources(circuit: BlockCircuit, resistive: bool) -> list[tuple[str, float | None]]:
    """Every V source of the emitted deck: (name, fixed voltage or None when it depends on the sample)."""
    out: list[tuple[str, float | None]] = [(name, None) for name in source_names(circuit.n_inputs)]
    out += list(rail_potentials(circuit).items())
    if resistive:
        out += [(target_source_name(j), None) for j in range(circuit.n_outputs)]
    return out


def operating_points(circuit: BlockCircuit, inputs: np.ndarray, nudge_currents_a: np.ndarray | None = None,
                     nudge_conductance_s: float = 0.0, nudge_target_v: np.ndarray | None = None) -> OpResult:
    """ngspice ``op`` per sample on the physical deck of ``circuit`` (already ``as_emitted``).

    One job of the backend's protocol: the deck is loaded once; every sample
    ``alter`` s the input sources, the nudge currents and the resistive-nudge
    targets; a sample that fails gets training's retries. The power the sources
    deliver is ``sum_V v * i_delivered + sum_out v_out * i_nudge`` (W).
    """
    u = np.atleast_2d(np.asarray(inputs, dtype=np.float64))
    B, n0, n_out = u.shape[0], circuit.n_inputs, circuit.n_outputs
    resistive = nudge_conductance_s != 0
    deck = emit_deck(circuit, control=False, nudge_conductance_s=nudge_conductance_s,
                     nudge_target_v=np.zeros(n_out) if resistive else None)
    nodes = free_node_names(circuit)
    vsrc = voltage_sources(circuit, resistive)
    i_n = np.zeros((B, n_out)) if nudge_currents_a is None else np.asarray(nudge_currents_a, dtype=np.float64)
    names = source_names(n0) + [nudge_source_name(j) for j in range(n_out)]
    columns = [source_voltages(circuit, u), i_n]
    if resistive:
        names += [target_source_name(j) for j in range(n_out)]
        columns.append(np.asarray(nudge_target_v, dtype=np.float64))
    values = np.ascontiguousarray(np.concatenate(columns, axis=1))
    job = DeckJob(deck, digest(deck), tuple(names), values, tuple(nodes + [f"{name}#branch" for name, _ in vsrc]), "op")
    nudge = None
    if nudge_currents_a is not None or resistive:
        nudge = Nudge(None if nudge_currents_a is None else torch.from_numpy(i_n), nudge_conductance_s,
                      torch.from_numpy(columns[-1]) if resistive else None)
    result, = NgspiceBackend(method="op").run_jobs(circuit, torch.from_numpy(u), nudge, [job])
    volts = result.values[:, :len(nodes)].copy()
    delivered = delivered_from_branch_current(result.values[:, len(nodes):])
    sample_v = dict(zip(names, values.T))
    v_of = np.stack([sample_v[name] if fixed is None else np.full(B, fixed) for name, fixed in vsrc], axis=1)
    out = volts[:, circuit.layer_slice(circuit.depth)]
    power = (v_of * delivered).sum(1) + (out * i_n).sum(1)        # NaN where a sample failed
    return OpResult(volts, power, tuple(result.messages), tuple(result.rescued or ("",) * B))


def transient(deck: str, t_step_s: float, t_stop_s: float, vectors: list[str]) -> tuple[np.ndarray | None, str]:
    """Run ``tran t_step t_stop 0 t_step uic`` on ``deck``; returns ``((n, 1 + len(vectors)), '')``
    with time in column 0, or ``(None, failure)``."""
    s = session()
    with s.lock:
        try:
            s.load(deck)
        except NgspiceDeckError as e:
            return None, str(e)
        try:
            failure = s.tran(t_step_s, t_stop_s)
            if failure:
                return None, failure
            n = s.vector_length("time")
            data = s.read_arrays(["time"] + list(vectors), n) if n >= 2 else None
            if data is None:
                return None, "ngspice tran produced no (or short) vectors"
            return data, ""
        finally:
            s.unload()


def dc_sweep(deck: str, source: str, start: float, stop: float, step: float, vectors: list[str]):
    """``dc source start stop step`` on ``deck``; ``(n, len(vectors))`` or None."""
    s = session()
    with s.lock:
        try:
            s.load(deck)
        except NgspiceDeckError:
            return None
        try:
            if s.dc(source, start, stop, step):
                return None
            n = s.vector_length(vectors[0])
            return s.read_arrays(vectors, n) if n >= 1 else None
        finally:
            s.unload()
