"""Settling of an energy block: the emitted deck plus node capacitances, stepped, solved by ngspice ``tran``.

**Capacitance model** (per energy block, from the model spec's energy-block
entry or the command line):

* ``node_capacitance_f`` (default :data:`DEFAULT_NODE_CAPACITANCE_F` = 10 fF):
  from every free node (layers 1..m) to ground: the diode pair's junctions,
  the node's own wiring and the next stage's input. 10 fF is the order of a
  short crossbar line with a small clamp pair; settling times scale linearly
  with it, so rescale the reported figures for your process.
* ``wire_capacitance_f`` (default 0): per crossbar cell (per resistor, bias
  resistors included), split half to each end node. Ends on an input source
  or a rail are held by that ideal source and are not written (their charge
  comes from the driver, not through the network).

So node ``n`` gets ``C_n = node_capacitance_f + wire_capacitance_f/2 * (number
of resistors touching n)``, written as one ``C`` card per node. The diode
model has no junction capacitance (CJO = 0): it is in ``node_capacitance_f``.

**The step.** The transient starts at the previous equilibrium (``.ic`` on
every free node, ``tran ... uic``) and every source holds its new value from
``t = 0`` (an ideal step): free phase, inputs from the previous sample to the
next; nudged phase, nudge from 0 to its value at fixed inputs, starting from
the free equilibrium. ngspice integrates with its default trapezoidal rule;
the maximum time step is ``t_stop/1000`` so a 1% crossing is interpolated on
a fine grid (a single RC node comes out within 1e-5 relative of
``RC*ln(100)``, tested).

**Settled** at the last instant any watched node is outside its band around
its DC value (linear interpolation between time points):

* free phase, output node ``j``: ``1% * max(|V_dc,j|, |V_dc,j - V_start,j|)``
  (1% of its DC value, or of its own step when the step is larger: a node that
  settles near 0 V would otherwise get a band of microvolts);
* with an ADC after the block: also ``LSB/2`` in volts at the block's output
  (``(hi - lo)/(2**bits - 1)/output_gain / 2``), reported separately;
* nudged phase: ``1%`` of the largest output displacement the nudge causes
  (EP reads the difference of the nudged equilibria, which are ~``beta``
  away from the free one; 1% of the DC value would be reached at once).

The simulated window is ``10 * tau_max`` where ``tau_max`` is the slowest
time constant of the network linearised at both ends of the step (the
generalised eigenvalues of the conductance Jacobian and the capacitances); a
run that has not settled by 90% of its window is repeated with a 4x longer
window (up to 3 times) before being reported as not settled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..circuit import BlockCircuit, free_node_names
from ..elements import Elements, kron_couplings
from ..errors import SpecError
from ..interactions import network
from ..netlist import num
from .spice import transient

DEFAULT_NODE_CAPACITANCE_F = 10e-15
DEFAULT_WIRE_CAPACITANCE_F = 0.0
SETTLE_FRACTION = 0.01
WINDOW_TAUS = 10.0
POINTS_PER_WINDOW = 1000
#: Smallest band (V): below ngspice's own transient accuracy a band means nothing.
BAND_FLOOR_V = 1e-9


def check_capacitance(name: str, value, allow_zero: bool) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise SpecError(f"{name}: {value!r}; a capacitance in farads") from None
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise SpecError(f"{name}: {value!r}; a finite capacitance in farads, "
                        f"{'>= 0' if allow_zero else '> 0 (every free node needs one for a transient)'}")
    if value > 1e-3:
        raise SpecError(f"{name}: {value!r} F is implausible (> 1 mF); capacitances are in farads, e.g. 1e-14 for 10 fF")
    return value


def node_capacitances(circuit: BlockCircuit, node_capacitance_f: float = DEFAULT_NODE_CAPACITANCE_F,
                      wire_capacitance_f: float = DEFAULT_WIRE_CAPACITANCE_F) -> np.ndarray:
    """``(n_free,)`` capacitance to ground of every free node (F), see the module docstring."""
    count = np.zeros(circuit.n_free)
    count[circuit.layer_slice(1)] += (np.asarray(circuit.conductances[0]) > 0).sum(0)
    for k in range(2, circuit.depth + 1):
        g = np.asarray(circuit.conductances[k - 1]) > 0
        count[circuit.layer_slice(k - 1)] += g.sum(1)
        count[circuit.layer_slice(k)] += g.sum(0)
    if circuit.has_bias:
        for k in range(1, circuit.depth + 1):
            count[circuit.layer_slice(k)] += (np.asarray(circuit.bias_pos[k - 1]) > 0).astype(float)
            count[circuit.layer_slice(k)] += (np.asarray(circuit.bias_neg[k - 1]) > 0).astype(float)
    return node_capacitance_f + 0.5 * wire_capacitance_f * count


def add_capacitors(deck: str, circuit: BlockCircuit, capacitances_f: np.ndarray,
                   initial_v: np.ndarray | None = None) -> str:
    """The deck text with a ``C`` card per free node and, when given, ``.ic`` on every free node.

    ``deck`` is an emitted deck without ``.control`` (``emit_deck(..., control=False)``).
    """
    names = free_node_names(circuit)
    lines = deck.rstrip().splitlines()
    while lines and lines[-1].strip().lower() in ("", ".end"):
        lines.pop()
    lines += ["", "* ---- node capacitances to ground (F): node + per-cell wire share; added by ffebm analyze ----"]
    lines += [f"CN_{name} {name} 0 {num(c)}" for name, c in zip(names, capacitances_f)]
    if initial_v is not None:
        lines += ["", "* ---- initial condition: the previous equilibrium (tran ... uic) ----"]
        lines += [f".ic v({name})={num(v)}" for name, v in zip(names, initial_v)]
    return "\n".join(lines + ["", ".end", ""])


def kron_reduced_deck(deck: str, elements: Elements) -> str:
    """The deck with every crossbar replaced by its exact Kron equivalent, for transients.

    The crossbar's internal nodes hold no charge in this capacitance model (every
    capacitor is on a free node), so at every instant they are the linear function of
    the terminal voltages that :func:`ffebm_sim.elements.kron_couplings` eliminates:
    the free nodes' waveforms are the same, while ngspice factors a matrix of the
    terminals only (a 64 x 32 crossbar: 4261 equations, 0.1 s per factorisation, about
    1000 time points per step; reduced: about 100 dense equations).
    """
    internal = set(elements.node_names[elements.n_free:elements.n_internal_end])
    if not internal:
        return deck
    lines = [line for line in deck.rstrip().splitlines()
             if not (line[:1] in "rR" and any(w.lower() in internal for w in line.split()[1:3]))]
    while lines and lines[-1].strip().lower() in ("", ".end"):
        lines.pop()
    a, b, g = kron_couplings(elements)
    names = elements.node_names
    lines += ["", "* ---- crossbars, Kron-reduced (exact: their internal nodes hold no charge); added by ffebm analyze ----"]
    lines += [f"RK{n} {names[i]} {names[j]} {num(1.0 / gij)}" for n, (i, j, gij) in enumerate(zip(a, b, g))]
    return "\n".join(lines + ["", ".end", ""])


def slowest_time_constant(circuit: BlockCircuit, node_voltages: np.ndarray, capacitances_f: np.ndarray,
                          nudge_conductance_s: float = 0.0) -> float:
    """Largest ``1/lambda`` of ``J v = lambda C v`` at each operating point given (s).

    ``J`` is the conductance Jacobian of the emitted circuit (resistors, bias,
    junction small-signal conductances); ``C`` the diagonal node capacitances.
    With amplifiers ``J`` is not symmetric, but ``W J`` is (``W`` the domain
    weights, docs/amplifier.md), so ``J v = lambda C v`` is the symmetric problem
    ``W J v = lambda W C v``: real, positive eigenvalues, solved as such.
    """
    net = network(circuit, ideal_as_clip=False)
    x = torch.as_tensor(np.atleast_2d(node_voltages), dtype=torch.float64)
    _, df, _ = net.nonlinear(x)
    L = net.dense_laplacian()
    if nudge_conductance_s:
        idx = torch.arange(net.out_slice.start, net.out_slice.stop)
        L[idx, idx] += abs(nudge_conductance_s)
    w = torch.ones(L.shape[0], dtype=torch.float64) if net.node_weights is None else net.node_weights
    s = torch.as_tensor(1.0 / np.sqrt(capacitances_f), dtype=torch.float64) / torch.sqrt(w)
    J = w[:, None] * (L + torch.diag_embed(df)) * s[None, :, None] * s[None, None, :]
    lam = torch.linalg.eigvalsh(J)[:, 0]
    lam = torch.clamp(lam, min=1e-300)
    return float((1.0 / lam).max())


def settling_time(t: np.ndarray, v: np.ndarray, v_final: np.ndarray, band: np.ndarray) -> float:
    """Last instant any column of ``v`` ``(n, k)`` is outside ``v_final +- band`` (s); 0 if never.

    The crossing back into the band is interpolated linearly between the time points.
    """
    excess = np.abs(v - v_final[None, :]) - band[None, :]
    outside = (excess > 0).any(1)
    if not outside.any():
        return 0.0
    i = int(np.flatnonzero(outside)[-1])
    if i == len(t) - 1:
        return float("inf")
    # per column that is outside at i, where its excess crosses 0 between i and i+1
    crossing = t[i]
    for j in np.flatnonzero(excess[i] > 0):
        e0, e1 = excess[i, j], excess[i + 1, j]
        frac = e0 / (e0 - e1) if e0 != e1 else 1.0
        crossing = max(crossing, t[i] + frac * (t[i + 1] - t[i]))
    return float(crossing)


@dataclass
class Transient:
    """One simulated step: time points, every free node's waveform, and its settling."""

    time_s: np.ndarray            # (n,)
    node_voltages_v: np.ndarray   # (n, n_free)
    settling_s: float             # 1% criterion (inf if not settled in the window)
    settling_adc_s: float | None  # LSB/2 criterion, when an ADC is given
    window_s: float
    message: str = ""


def simulate_step(circuit: BlockCircuit, deck_at_new_values: str, start_v: np.ndarray, final_v: np.ndarray,
                  capacitances_f: np.ndarray, watch: slice, band_v: np.ndarray, adc_half_lsb_v: float | None = None,
                  nudge_conductance_s: float = 0.0, tau_s: float | None = None, retries: int = 3) -> Transient:
    """Step the block from the equilibrium ``start_v`` to the sources of ``deck_at_new_values``.

    ``final_v`` is the DC solution at the new values (ngspice op); ``watch`` the
    free-node columns whose settling counts (the outputs); ``band_v`` their bands.
    """
    if tau_s is None:
        tau_s = slowest_time_constant(circuit, np.stack([start_v, final_v]), capacitances_f, nudge_conductance_s)
    deck = add_capacitors(deck_at_new_values, circuit, capacitances_f, start_v)
    nodes = free_node_names(circuit)
    window = WINDOW_TAUS * tau_s
    message = ""
    for attempt in range(retries + 1):
        step = window / POINTS_PER_WINDOW
        data, message = transient(deck, step, window, nodes)
        if data is None:
            return Transient(np.zeros(0), np.zeros((0, len(nodes))), float("nan"), None, window, message)
        t, v = data[:, 0], data[:, 1:]
        if t[0] > 0:                       # ngspice does not store the uic point t = 0
            t = np.concatenate([[0.0], t])
            v = np.concatenate([start_v[None, :], v])
        settle = settling_time(t, v[:, watch], final_v[watch], band_v)
        adc = None
        if adc_half_lsb_v is not None:
            adc = settling_time(t, v[:, watch], final_v[watch], np.full(band_v.shape, adc_half_lsb_v))
        worst = max(settle, adc or 0.0)
        if worst <= 0.9 * window:
            return Transient(t, v, settle, adc, window)
        window *= 4.0
    return Transient(t, v, settle, adc, window / 4.0,
                     f"not settled within {window / 4.0:.3g} s ({WINDOW_TAUS:g} x 4^{retries} tau)")
