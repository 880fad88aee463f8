"""The operating points of one phase of one block, by ngspice, and their power balance.

Per sample, the emitted deck at that sample's inputs and nudge is solved by
ngspice (a one-point DC analysis, :func:`.spice.dc_sweep`, so every vector can
be read): the voltage of *every* node the deck solves for (free nodes and,
with wires, the crossbar's internal nodes ``r<k>_<i>_<j>``, ``c<k>_<i>_<j>``) and
the branch current ``i(V)`` of every voltage source. The power of every
branch then follows from :mod:`ffebm_sim.elements` at ngspice's node voltages,
with ngspice's own source currents for the sources, and energy conservation
is checked: what the sources deliver (ngspice's currents) equals what the
branches absorb (the element laws), ``power_balance_rel_error`` per sample
(:func:`ffebm_sim.elements.power_balance_rel_error`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..circuit import BlockCircuit
from ..elements import Elements, flatten
from ..netlist import emit_deck, nudge_source_name
from .power import PowerBreakdown, element_powers
from .spice import dc_sweep

NO_SOLUTION = "ngspice found no DC operating point (dc analysis failed or produced no vectors)"


@dataclass
class Phase:
    """The samples of one phase of one block: ngspice operating points, their powers, the nudge that made them.

    Attributes:
        name: ``free``, ``nudged +beta`` or ``nudged -beta``.
        x: ``(B, n_free)`` free-node voltages (V), NaN where a sample failed.
        unknown_v: ``(B, n_unknown)`` every node ngspice solved for (free, then crossbar internal).
        power: :class:`PowerBreakdown` at those voltages (zeros where a sample failed).
        messages: '' per converged sample, else why not.
        vsource_currents_a: ``(B, n_vs)`` ngspice's ``i(V)`` of every voltage source
            (``elements.vsource_names`` order).
        elements: the flattened circuit of this phase.
        currents, g_nudge, targets: the nudge (``(B, n_out)`` A; S; ``(B, n_out)`` V).
    """

    name: str
    x: np.ndarray
    unknown_v: np.ndarray
    power: PowerBreakdown
    messages: tuple[str, ...]
    vsource_currents_a: np.ndarray
    elements: Elements
    currents: np.ndarray | None = None
    g_nudge: float = 0.0
    targets: np.ndarray | None = None

    @property
    def good(self) -> np.ndarray:
        return np.array([m == "" for m in self.messages])

    @property
    def balance(self) -> np.ndarray:
        """Power balance relative error of the converged samples."""
        return self.power.balance_rel[self.good]

    def nudge_kwargs(self, b=None) -> dict:
        """The nudge as :func:`ffebm_sim.netlist.emit_deck` keywords (of sample ``b``, or all)."""
        sel = (lambda a: a) if b is None else (lambda a: a[b])
        kw = {}
        if self.currents is not None:
            kw["nudge_currents_a"] = sel(self.currents)
        if self.g_nudge:
            kw["nudge_conductance_s"] = self.g_nudge
            kw["nudge_target_v"] = sel(self.targets)
        return kw


def spice_operating_points(circuit: BlockCircuit, elements: Elements, inputs: np.ndarray, currents=None,
                           g_nudge: float = 0.0, targets=None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """ngspice per sample: ``(unknown node voltages (B, n_unknown), i(V) of every voltage source
    (B, n_vs), messages)``; NaN rows where a sample failed."""
    u = np.atleast_2d(np.asarray(inputs, dtype=np.float64))
    B, n_out = u.shape[0], circuit.n_outputs
    nodes, vsources = elements.unknown_names, elements.vsource_names
    vectors = nodes + [f"{name}#branch" for name in vsources]
    volts = np.full((B, len(nodes)), np.nan)
    branch = np.full((B, len(vsources)), np.nan)
    messages = []
    for b in range(B):
        i_n = np.zeros(n_out) if currents is None else np.asarray(currents[b], dtype=np.float64)
        kw = {"nudge_conductance_s": g_nudge, "nudge_target_v": targets[b]} if g_nudge else {}
        deck = emit_deck(circuit, u[b], control=False, nudge_currents_a=i_n, **kw)
        # a one-point DC sweep of the first nudge source at its own value: an operating point
        data = dc_sweep(deck, nudge_source_name(0), float(i_n[0]), float(i_n[0]), 1.0, vectors)
        if data is None or data.shape[0] < 1 or not np.isfinite(data[0]).all():
            messages.append(NO_SOLUTION)
            continue
        volts[b], branch[b] = data[0, :len(nodes)], data[0, len(nodes):]
        messages.append("")
    return volts, branch, tuple(messages)


def solve_phase(name: str, circuit: BlockCircuit, u: np.ndarray, currents=None, g_nudge: float = 0.0,
                targets=None) -> Phase:
    """One phase: ngspice's operating points, every branch's power, the power balance."""
    elements = flatten(circuit, g_nudge)
    volts, branch, messages = spice_operating_points(circuit, elements, u, currents, g_nudge, targets)
    good = np.array([m == "" for m in messages])
    power = element_powers(circuit, u, np.where(good[:, None], volts, 0.0), nudge_currents_a=currents,
                           nudge_conductance_s=g_nudge, nudge_target_v=targets,
                           vsource_currents_a=np.where(good[:, None], branch, 0.0), elements=elements)
    return Phase(name, volts[:, :elements.n_free], volts, power, messages, branch, elements, currents, g_nudge, targets)
