"""What `ffebm analyze` asks ngspice: operating points with every source current, transients, I-V sweeps.

All of it goes through :func:`ffebm_sim.backends.ngspice.session` (the one
libngspice of this process, behind its lock); nothing here imports PySpice.
Vectors are read with the session's ``read`` / ``read_arrays``, which return
``None`` rather than dereference a missing or empty vector; a missing vector
is a failed sample, never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends.base import delivered_from_branch_current
from ..backends.ngspice import NgspiceDeckError, _failure, session
from ..circuit import BlockCircuit, free_node_names, source_names, source_voltages
from ..netlist import emit_deck, nudge_source_name, target_source_name


@dataclass
class OpResult:
    """Operating points of a batch, read from ngspice.

    Attributes:
        node_voltages_v: ``(B, n_free)``, NaN where a sample failed.
        source_power_w: ``(B,)`` net power delivered by every voltage source
            (from ngspice's branch currents) and the nudge current sources.
        messages: '' per converged sample, else ngspice's complaint.
    """

    node_voltages_v: np.ndarray
    source_power_w: np.ndarray
    messages: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return all(m == "" for m in self.messages)


def voltage_sources(circuit: BlockCircuit, resistive: bool) -> list[tuple[str, float | None]]:
    """Every V source of the emitted deck: (name, fixed voltage or None when it depends on the sample)."""
    out: list[tuple[str, float | None]] = [(name, None) for name in source_names(circuit.n_inputs)]
    for k in range(1, circuit.depth + 1):
        nl = circuit.layer_nonlinearity(k)
        if nl is not None and nl.kind != "pwl":
            out += [(f"vhi{k}", nl.v_off_v), (f"vlo{k}", -nl.v_off_v)]
    if circuit.has_bias:
        out += [("vbp", circuit.bias_voltage_v), ("vbm", -circuit.bias_voltage_v)]
    if resistive:
        out += [(target_source_name(j), None) for j in range(circuit.n_outputs)]
    return out


def operating_points(circuit: BlockCircuit, inputs: np.ndarray, nudge_currents_a: np.ndarray | None = None,
                     nudge_conductance_s: float = 0.0, nudge_target_v: np.ndarray | None = None) -> OpResult:
    """ngspice ``op`` per sample on the physical deck of ``circuit`` (already ``as_emitted``).

    The deck is loaded once; every sample ``alter`` s the input sources, the nudge
    currents and the resistive-nudge targets.
    """
    u = np.atleast_2d(np.asarray(inputs, dtype=np.float64))
    B, n0, n_out = u.shape[0], circuit.n_inputs, circuit.n_outputs
    resistive = nudge_conductance_s != 0
    deck = emit_deck(circuit, control=False, nudge_conductance_s=nudge_conductance_s,
                     nudge_target_v=np.zeros(n_out) if resistive else None)
    nodes = free_node_names(circuit)
    vsrc = voltage_sources(circuit, resistive)
    vectors = nodes + [f"{name}#branch" for name, _ in vsrc]
    volts = np.full((B, len(nodes)), np.nan)
    power = np.full(B, np.nan)
    messages = []
    s = session()
    with s.lock:
        try:
            s.load(deck)
        except NgspiceDeckError as e:
            return OpResult(volts, power, (str(e),) * B)
        try:
            for b in range(B):
                values = {name: v for name, v in zip(source_names(n0), source_voltages(circuit, u[b]))}
                i_n = np.zeros(n_out) if nudge_currents_a is None else np.asarray(nudge_currents_a[b], dtype=np.float64)
                for j in range(n_out):
                    values[nudge_source_name(j)] = i_n[j]
                if resistive:
                    for j in range(n_out):
                        values[target_source_name(j)] = float(nudge_target_v[b, j])
                for name, v in values.items():
                    s.set_dc(name, v)
                failure = s.op()
                read = None if failure else s.read(vectors)
                s.destroy_plots()
                if read is None:
                    messages.append(failure or "ngspice op produced no vectors")
                    continue
                messages.append("")
                x = read[:len(nodes)]
                volts[b] = x
                delivered = delivered_from_branch_current(np.asarray(read[len(nodes):]))
                v_of = np.array([values[name] if fixed is None else fixed for name, fixed in vsrc])
                out = x[circuit.layer_slice(circuit.depth)]
                power[b] = float((v_of * delivered).sum() + (out * i_n).sum())
        finally:
            s.unload()
    return OpResult(volts, power, tuple(messages))


def _vector_length(s, name: str) -> int:
    printed = s.command(f"print length({name})")
    for line in printed.splitlines():
        if line.strip().startswith(f"length({name})") and "=" in line:
            try:
                return int(round(float(line.split("=")[1])))
            except ValueError:
                return 0
    return 0


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
            s.solves += 1
            failure = _failure(s.command(f"tran {t_step_s!r} {t_stop_s!r} 0 {t_step_s!r} uic"), "tran")
            if failure:
                return None, failure
            n = _vector_length(s, "time")
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
            if _failure(s.command(f"dc {source} {start!r} {stop!r} {step!r}"), "dc"):
                return None
            n = _vector_length(s, vectors[0])
            return s.read_arrays(vectors, n) if n >= 1 else None
        finally:
            s.unload()
