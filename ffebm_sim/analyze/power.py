"""Static power of an energy block by element kind and layer: a summary of :mod:`ffebm_sim.elements`.

Every element of the deck is memoryless, so its power at an instant is a
function of the node voltages alone; :func:`ffebm_sim.elements.branch_power_w`
gives it branch by branch (``p = v*i``, positive = absorbed), with crossbar
wires, mismatch and temperature already in the elements. Here the branches
are summed by kind and layer:

* dissipated: resistors (the trained devices), crossbar line segments, bias
  conductances, junctions and PWL elements per layer 1..m, the resistive
  nudge conductance;
* delivered (``-p``) by every source, by group: the input sources
  (``inputs``), the clamp rails (``clamp_rails``, ``VHI<k>``, ``VLO<k>`` per diode
  layer), the bias rails (``bias_rails``), the nudge current sources
  (``nudge``), the resistive-nudge targets (``targets``), and the amplifiers
  between layers (``amplifiers``, one column per amplifier: what its supply
  provides, ``v_out*i_out - v_in*i_in``, :func:`ffebm_sim.amplifier.supply_power_w`;
  an ideal controlled source, so a real amplifier's quiescent power comes on
  top, see docs/amplifier.md).

A source whose delivered power is negative is *sinking* power (a clamp rail at
``+v_off`` taking a diode's current, an input driver pulled against its
voltage); a real driver burns that power in its output stage, so the figure
we call **total** is

    total = dissipated in the network + sum of what sinking sources absorb
          = sum over sources of max(0, delivered power)

(the power the delivering supplies must provide; no energy recovery; the two
lines agree at an equilibrium, where the sources deliver what the network
dissipates). With every clamp at ``v_off = 0`` and all inputs pushing outward,
total and network dissipation coincide.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..circuit import BlockCircuit
from ..elements import Elements, branch_power_w, flatten, node_voltages, power_balance_rel_error

#: Largest number of float64 node-vector entries evaluated at once (rows x nodes).
_CHUNK_ENTRIES = 4_000_000

#: Source group kinds of :mod:`ffebm_sim.elements` -> the keys of ``PowerBreakdown.sources_w``.
SOURCE_KEYS = {"input": "inputs", "clamp_rail": "clamp_rails", "bias_rail": "bias_rails",
               "nudge_current": "nudge", "target": "targets"}
#: The three cards of an amplifier (E, its sense V, F): summed per amplifier into ``sources_w["amplifiers"]``.
AMPLIFIER_KINDS = ("amplifier_out", "amplifier_sense", "amplifier_in")
#: Dissipating group kinds -> the per-layer attribute of ``PowerBreakdown``.
LAYER_KEYS = {"resistor": "resistors_w", "wire": "wires_w", "bias": "bias_w", "junction": "nonlinear_w",
              "pwl": "nonlinear_w"}


@dataclass
class PowerBreakdown:
    """Powers of a batch of operating points (watts; arrays with a leading batch axis ``B``).

    Attributes:
        resistors_w: ``(B, m)`` dissipated in the resistors of layers 1..m.
        bias_w: ``(B, m)`` dissipated in the bias conductances of layers 1..m (zeros without bias).
        nonlinear_w: ``(B, m)`` dissipated in the junctions / PWL elements of layers 1..m.
        nudge_w: ``(B,)`` dissipated in the resistive-nudge conductances.
        sources_w: delivered power of every source by group (``inputs``: ``(B, 2*n0)``,
            ``clamp_rails``: ``(B, 2*k)``, ``bias_rails``: ``(B, 2)``, ``nudge``: ``(B, n_out)``,
            ``targets``: ``(B, n_out)``, ``amplifiers``: ``(B, n_amplifiers)``, the supplies);
            only the groups the circuit has.
        wires_w: ``(B, m)`` dissipated in the crossbar line segments of layers 1..m (zeros without wires).
        balance_rel: ``(B,)`` :func:`ffebm_sim.elements.power_balance_rel_error` of these powers.
    """

    resistors_w: np.ndarray
    bias_w: np.ndarray
    nonlinear_w: np.ndarray
    nudge_w: np.ndarray
    sources_w: dict[str, np.ndarray] = field(default_factory=dict)
    wires_w: np.ndarray | None = None
    balance_rel: np.ndarray | None = None

    @property
    def layers_w(self) -> np.ndarray:
        """``(B, m)``: everything dissipated at layer k (its resistors, wires, bias, nonlinear elements)."""
        out = self.resistors_w + self.bias_w + self.nonlinear_w
        return out if self.wires_w is None else out + self.wires_w

    @property
    def network_w(self) -> np.ndarray:
        """``(B,)``: dissipated in the network's passive elements."""
        return self.layers_w.sum(1) + self.nudge_w

    def _all_sources(self) -> np.ndarray:
        if not self.sources_w:
            return np.zeros((self.nudge_w.shape[0], 0))
        return np.concatenate(list(self.sources_w.values()), axis=1)

    @property
    def absorbed_w(self) -> np.ndarray:
        """``(B,)``: power sunk by sources whose delivered power is negative."""
        return np.clip(-self._all_sources(), 0.0, None).sum(1)

    @property
    def total_w(self) -> np.ndarray:
        """``(B,)``: network dissipation plus what sinking sources absorb (module docstring)."""
        return self.network_w + self.absorbed_w

    @property
    def supplied_w(self) -> np.ndarray:
        """``(B,)``: sum of the delivering sources' powers (equals :attr:`total_w` at an equilibrium)."""
        return np.clip(self._all_sources(), 0.0, None).sum(1)


def summarize(elements: Elements, powers: list[np.ndarray], with_nudge_sources: bool = True) -> PowerBreakdown:
    """Sum :func:`~ffebm_sim.elements.branch_power_w`'s per-branch powers by kind and layer."""
    B, m = powers[0].shape[0], elements.circuit.depth
    layer = {key: np.zeros((B, m)) for key in set(LAYER_KEYS.values())}
    nudge = np.zeros(B)
    sources: dict[str, list[np.ndarray]] = {}
    amplifiers: dict[int, np.ndarray] = {}
    for g, p in zip(elements.groups, powers):
        if g.kind in LAYER_KEYS:
            layer[LAYER_KEYS[g.kind]][:, g.layer - 1] += p.sum(1)
        elif g.kind == "nudge_conductance":
            nudge += p.sum(1)
        elif g.kind in AMPLIFIER_KINDS:           # per amplifier: minus what its three cards absorb
            amplifiers[g.layer] = amplifiers.get(g.layer, 0.0) - p
        elif g.kind in SOURCE_KEYS and (g.kind != "nudge_current" or with_nudge_sources):
            sources.setdefault(SOURCE_KEYS[g.kind], []).append(-p)
        elif g.kind not in SOURCE_KEYS:           # pragma: no cover - a new kind must be summed somewhere
            raise ValueError(f"branch kind {g.kind!r} has no place in the power breakdown")
    if amplifiers:
        sources["amplifiers"] = [amplifiers[k] for k in sorted(amplifiers)]
    return PowerBreakdown(layer["resistors_w"], layer["bias_w"], layer["nonlinear_w"], nudge,
                          {k: np.concatenate(v, axis=1) for k, v in sources.items()},
                          layer["wires_w"] if elements.circuit.has_wires else None,
                          power_balance_rel_error(elements, powers))


def element_powers(circuit: BlockCircuit, inputs, node_voltages_v, nudge_currents_a=None,
                   nudge_conductance_s: float = 0.0, nudge_target_v=None, vsource_currents_a=None,
                   elements: Elements | None = None) -> PowerBreakdown:
    """Element and source powers of ``circuit`` at the given node voltages (see the module docstring).

    Args:
        circuit: the circuit the deck describes.
        inputs: ``(B, n_0)`` (or ``(n_0,)``) input features; the sources hold ``+-a*u``.
        node_voltages_v: ``(B, n_free)`` voltages of layers 1..m, or ``(B, n_unknown)`` with the
            crossbar internal nodes too (:func:`ffebm_sim.elements.node_voltages`); any
            operating point, or the node voltages of the instants of a transient.
        nudge_currents_a: ``(B, n_out)`` currents injected into the output nodes, or None.
        nudge_conductance_s, nudge_target_v: the resistive nudge (S; ``(B, n_out)`` V).
        vsource_currents_a: ``(B, n_vs)`` measured ``i(V)`` of every voltage source
            (``Elements.vsource_names`` order), e.g. ngspice's; default: from KCL.
        elements: ``flatten(circuit, nudge_conductance_s)`` when the caller has it.
    """
    elements = elements or flatten(circuit, nudge_conductance_s)
    x = np.atleast_2d(np.asarray(node_voltages_v, dtype=np.float64))
    B = x.shape[0]

    def rows(a, s):
        if a is None:
            return None
        a = np.atleast_2d(np.asarray(a, dtype=np.float64))
        return a[s] if a.shape[0] == B else a

    step = max(1, _CHUNK_ENTRIES // max(1, elements.n_nodes))
    parts = []
    for s0 in range(0, B, step):
        s = slice(s0, s0 + step)
        V = node_voltages(elements, x[s], rows(inputs, s) if np.ndim(inputs) == 2 else inputs,
                          rows(nudge_target_v, s))
        powers = branch_power_w(elements, V, rows(nudge_currents_a, s), rows(vsource_currents_a, s))
        parts.append(summarize(elements, powers, nudge_currents_a is not None))
    if len(parts) == 1:
        return parts[0]
    cat = lambda name: None if getattr(parts[0], name) is None else np.concatenate([getattr(p, name) for p in parts])
    return PowerBreakdown(cat("resistors_w"), cat("bias_w"), cat("nonlinear_w"), cat("nudge_w"),
                          {k: np.concatenate([p.sources_w[k] for p in parts]) for k in parts[0].sources_w},
                          cat("wires_w"), cat("balance_rel"))
