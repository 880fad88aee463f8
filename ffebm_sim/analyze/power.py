"""Static power of an energy block, element by element, from its node voltages.

Every element of the emitted deck is memoryless, so its power at an instant
is a function of the node voltages alone:

* resistor of conductance ``G`` between nodes at ``Va``, ``Vb``: ``G*(Va - Vb)**2``;
* bias conductance to a rail at ``Vr``: ``G*(V - Vr)**2``;
* junction (diode clamp), branch voltage ``vd``: ``vd * i(vd)`` with ngspice's
  junction law and GMIN (:mod:`ffebm_sim.devices`);
* PWL element from a node to ground: ``V * i_table(V)``;
* resistive nudge conductance ``g`` to a target ``y``: ``g*(V - y)**2``.

Sources (delivered power, positive when the source pushes energy into the
network, see :mod:`ffebm_sim.backends.base` for the sign convention):

* each input source ``V(+-i)``: ``V_s * sum_j G1[s,j]*(V_s - V_j)``;
* each clamp rail (``VHI<k>`` at ``+v_off``, ``VLO<k>`` at ``-v_off``): the rail
  voltage times the current its diodes draw out of it;
* the bias rails ``VBP``/``VBM``; every nudge current source ``V_out * I``;
  every resistive-nudge target source ``y * g*(y - V_out)``.

By Tellegen's theorem the network's dissipation (resistors + junctions +
nudge conductance) equals the sum of the sources' delivered powers. A source
whose delivered power is negative is *sinking* power (a clamp rail at
``+v_off`` taking a diode's current, an input driver pulled against its
voltage); a real driver burns that power in its output stage, so the figure
we call **total** is

    total = dissipated in the network + sum of what sinking sources absorb
          = sum over sources of max(0, delivered power)

(the power the delivering supplies must provide; no energy recovery).
With every clamp at ``v_off = 0`` and all inputs pushing outward, total and
network dissipation coincide.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..backends.base import delivered_through_input_layer
from ..circuit import BlockCircuit, clamp_diode_voltage, source_voltages
from ..devices import DiodeModel, diode_current, pwl_current_and_conductance

#: Largest number of float64 entries of one broadcast (batch x rows x columns) chunk.
_CHUNK_ENTRIES = 4_000_000


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
            ``targets``: ``(B, n_out)``); only the groups the circuit has.
    """

    resistors_w: np.ndarray
    bias_w: np.ndarray
    nonlinear_w: np.ndarray
    nudge_w: np.ndarray
    sources_w: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def layers_w(self) -> np.ndarray:
        """``(B, m)``: everything dissipated at layer k (its resistors, bias, nonlinear elements)."""
        return self.resistors_w + self.bias_w + self.nonlinear_w

    @property
    def network_w(self) -> np.ndarray:
        """``(B,)``: dissipated in the network's passive elements."""
        return self.layers_w.sum(1) + self.nudge_w

    def _all_sources(self) -> np.ndarray:
        if not self.sources_w:
            return np.zeros((self.nudge_w.shape[0], 0))
        return np.concatenate(list(self.sources_w.values()), axis=1)

    @property
    def delivered_w(self) -> np.ndarray:
        """``(B,)``: net power delivered by all sources (equals :attr:`network_w`, Tellegen)."""
        return self._all_sources().sum(1)

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


def _pairwise_power(a: np.ndarray, b: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``sum_ij g[i,j]*(a[:, i] - b[:, j])**2`` per batch row, by direct differences (no cancellation)."""
    B = a.shape[0]
    out = np.empty(B)
    step = max(1, _CHUNK_ENTRIES // max(1, g.size))
    for s in range(0, B, step):
        d = a[s:s + step, :, None] - b[s:s + step, None, :]
        out[s:s + step] = np.einsum("bij,ij->b", d * d, g)
    return out


def _diode(model: DiodeModel, gmin: float, vd: np.ndarray) -> np.ndarray:
    m = DiodeModel(model.saturation_current_a, model.emission_coefficient, gmin)
    return diode_current(torch.from_numpy(np.ascontiguousarray(vd)), m).numpy()


def element_powers(circuit: BlockCircuit, inputs, node_voltages, nudge_currents_a=None,
                   nudge_conductance_s: float = 0.0, nudge_target_v=None) -> PowerBreakdown:
    """Element and source powers of ``circuit`` at the given node voltages (see the module docstring).

    Args:
        circuit: the circuit the deck describes (pass ``circuit.as_emitted()`` for ``ideal`` layers).
        inputs: ``(B, n_0)`` input features; the sources hold ``+-a*u``.
        node_voltages: ``(B, n_free)`` voltages of layers 1..m (any operating point, or
            the node voltages of one instant of a transient).
        nudge_currents_a: ``(B, n_out)`` currents injected into the output nodes, or None.
        nudge_conductance_s, nudge_target_v: the resistive nudge (S; ``(B, n_out)`` V).
    """
    u = np.atleast_2d(np.asarray(inputs, dtype=np.float64))
    x = np.atleast_2d(np.asarray(node_voltages, dtype=np.float64))
    B, m = x.shape[0], circuit.depth
    if u.shape[0] == 1 and B > 1:
        u = np.broadcast_to(u, (B, u.shape[1]))
    v_src = source_voltages(circuit, u)
    layers = [v_src] + [x[:, circuit.layer_slice(k)] for k in range(1, m + 1)]
    resistors = np.zeros((B, m))
    bias = np.zeros((B, m))
    nonlinear = np.zeros((B, m))
    sources: dict[str, np.ndarray] = {}
    for k in range(1, m + 1):
        g = np.asarray(circuit.conductances[k - 1])
        resistors[:, k - 1] = _pairwise_power(layers[k - 1], layers[k], g)
    g1 = np.asarray(circuit.conductances[0])
    i_src = delivered_through_input_layer(g1, v_src, layers[1])
    sources["inputs"] = v_src * i_src
    if circuit.has_bias:
        vb = circuit.bias_voltage_v
        p_pos = np.zeros(B)
        p_neg = np.zeros(B)
        for k in range(1, m + 1):
            gp, gn = np.asarray(circuit.bias_pos[k - 1]), np.asarray(circuit.bias_neg[k - 1])
            xk = layers[k]
            bias[:, k - 1] = ((xk - vb) ** 2 * gp).sum(1) + ((xk + vb) ** 2 * gn).sum(1)
            p_pos += vb * ((vb - xk) * gp).sum(1)
            p_neg += -vb * ((-vb - xk) * gn).sum(1)
        sources["bias_rails"] = np.stack([p_pos, p_neg], axis=1)
    rails = []
    for k in range(1, m + 1):
        nl = circuit.layer_nonlinearity(k)
        if nl is None:
            continue
        xk = layers[k]
        n = circuit.layer_sizes[k]
        if nl.kind == "pwl":
            i, _ = pwl_current_and_conductance(torch.from_numpy(np.ascontiguousarray(xk)), nl.table)
            nonlinear[:, k - 1] = (xk * i.numpy()).sum(1)
            continue
        model = nl.emitted_diode
        up, down = nl.clamps_up(n), nl.clamps_down(n)
        vd_up = clamp_diode_voltage(xk[:, up], nl.clamp_rail_v(True), True)
        vd_down = clamp_diode_voltage(xk[:, down], nl.clamp_rail_v(False), False)
        i_up = _diode(model, circuit.gmin_s, vd_up)
        i_down = _diode(model, circuit.gmin_s, vd_down)
        nonlinear[:, k - 1] = (vd_up * i_up).sum(1) + (vd_down * i_down).sum(1)
        # VHI delivers -sum(i_up) (the diodes push current into it); VLO delivers sum(i_down).
        rails.append(nl.v_off_v * -i_up.sum(1))
        rails.append(-nl.v_off_v * i_down.sum(1))
    if rails:
        sources["clamp_rails"] = np.stack(rails, axis=1)
    out = layers[m]
    nudge = np.zeros(B)
    if nudge_currents_a is not None:
        i_n = np.atleast_2d(np.asarray(nudge_currents_a, dtype=np.float64))
        sources["nudge"] = out * i_n
    if nudge_conductance_s != 0:
        y = np.atleast_2d(np.asarray(nudge_target_v, dtype=np.float64))
        nudge = nudge_conductance_s * ((out - y) ** 2).sum(1)
        sources["targets"] = y * nudge_conductance_s * (y - out)
    return PowerBreakdown(resistors, bias, nonlinear, nudge, sources)
