"""Sign conventions of ffebm_sim/backends/base.py, checked once against hand calculations and the energy.

* ``source_currents_a`` is the current a source delivers into the network,
  which is ``dE/dV_src`` at the equilibrium (so EP's input gradient is a
  difference of these);
* a positive nudge current is injected *into* the output node (raises it).
"""

import numpy as np
import pytest
import torch

from ffebm_sim.backends import Nudge, ReferenceBackend, get_backend
from ffebm_sim.backends.base import delivered_from_branch_current
from ffebm_sim.circuit import BlockCircuit

BACKENDS = ["reference", "ngspice"]


def _divider(g_plus=3e-4, g_minus=1e-4, gain=2.0):
    """One input, one linear output node: V(+) --g_plus-- out --g_minus-- V(-)."""
    return BlockCircuit((1, 1), (np.array([[g_plus], [g_minus]]),), input_gain_v=gain)


@pytest.mark.parametrize("backend", BACKENDS)
def test_source_currents_by_hand(backend):
    c = _divider()
    u = 0.5
    vp, vm = 2.0 * u, -2.0 * u
    x = (3e-4 * vp + 1e-4 * vm) / 4e-4
    eq = get_backend(backend).solve(c, torch.tensor([[u]]))
    assert eq.ok
    assert float(eq.node_voltages_v[0, 0]) == pytest.approx(x, abs=1e-12)
    # The + source pushes current into the network, the - source takes it back.
    expected = [3e-4 * (vp - x), 1e-4 * (vm - x)]
    assert expected[0] > 0 > expected[1]
    np.testing.assert_allclose(eq.source_currents_a[0].numpy(), expected, rtol=1e-9, atol=1e-18)


def test_spice_branch_current_is_the_opposite_sign():
    """Raw ngspice: i(vxp0) of a source that delivers current is negative."""
    from ffebm_sim.backends.session import session
    from ffebm_sim.netlist import emit_deck
    s = session()
    with s.lock:
        s.load(emit_deck(_divider(), [0.5], control=False))
        assert s.op() == ""
        branch = s.read(["vxp0#branch", "vxm0#branch"])
        s.destroy_plots()
    x = (3e-4 * 1.0 - 1e-4 * 1.0) / 4e-4
    assert branch[0] == pytest.approx(-3e-4 * (1.0 - x), rel=1e-9)
    np.testing.assert_array_equal(delivered_from_branch_current(torch.from_numpy(branch)).numpy(), -branch)


@pytest.mark.parametrize("backend", BACKENDS)
def test_source_current_is_energy_gradient(backend):
    """dE*/dV_src (finite differences of the minimum energy) equals the delivered current."""
    from conftest import make_block
    from ffebm_sim.interactions import network
    c = make_block((4, 3, 2), kind="double", seed=2)
    u = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (1, 4)))
    ref = ReferenceBackend()
    eq = get_backend(backend).solve(c, u)
    a = c.input_gain_v
    g_in = torch.tensor(np.array(c.conductances[0]))

    def min_energy(u_vec):
        """Energy at the equilibrium, as a function of the input (through the source voltages)."""
        e = ref.solve(c, u_vec)
        net = network(c)
        v_src = torch.cat([a * u_vec, -a * u_vec], 1)
        x = e.node_voltages_v
        # the energy of the sources' own resistors to layer 1: sum G (v_s)^2 / 2 is part of E
        const = 0.5 * (g_in * v_src[0, :, None] ** 2).sum()
        return float(net.energy(x, net.linear_currents(x, v_src), net.fixed_currents(v_src))[0] + const)

    h = 1e-6
    # Perturb u_0: V(+0) moves by +a*h and V(-0) by -a*h, so dE/du_0 = a*(I(+0) - I(-0)).
    up, dn = u.clone(), u.clone()
    up[0, 0] += h
    dn[0, 0] -= h
    de_du = (min_energy(up) - min_energy(dn)) / (2 * h)
    i_plus, i_minus = float(eq.source_currents_a[0, 0]), float(eq.source_currents_a[0, 4])
    assert de_du == pytest.approx(a * (i_plus - i_minus), rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_positive_nudge_current_raises_the_output(backend):
    c = _divider()
    u = torch.tensor([[0.25]])
    free = get_backend(backend).solve(c, u)
    pushed = get_backend(backend).solve(c, u, Nudge(currents_a=torch.tensor([[4e-6]], dtype=torch.float64)))
    dv = float(pushed.node_voltages_v[0, 0] - free.node_voltages_v[0, 0])
    assert dv == pytest.approx(4e-6 / 4e-4, rel=1e-9)     # I / (total conductance at the node)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resistive_nudge_pulls_toward_the_target(backend):
    c = _divider()
    u = torch.tensor([[0.25]])
    x0 = float(get_backend(backend).solve(c, u).node_voltages_v[0, 0])
    beta, y = 1e-4, 0.9
    eq = get_backend(backend).solve(c, u, Nudge(conductance_s=beta, target_v=torch.tensor([[y]], dtype=torch.float64)))
    expected = (4e-4 * x0 + beta * y) / (4e-4 + beta)
    assert float(eq.node_voltages_v[0, 0]) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bias_rails_by_hand(backend):
    """``bias_pos`` ties a node to the positive rail ``+V_b``, ``bias_neg`` to ``-V_b``
    (:func:`~ffebm_sim.circuit.bias_rails_v`, the one place the rails' signs are written)."""
    from ffebm_sim.circuit import bias_rails_v, rail_potentials
    c = BlockCircuit((1, 1), (np.array([[1e-4], [1e-4]]),), input_gain_v=1.0,
                     bias_pos=(np.array([3e-4]),), bias_neg=(np.array([1e-4]),), bias_voltage_v=0.7)
    assert bias_rails_v(c) == (0.7, -0.7)
    assert (rail_potentials(c)["vbp"], rail_potentials(c)["vbm"]) == bias_rails_v(c)
    # u = 0: the two sources sit at 0 V; only the rails pull: x = (3e-4 * 0.7 - 1e-4 * 0.7) / 6e-4
    eq = get_backend(backend).solve(c, torch.tensor([[0.0]]))
    assert eq.ok
    assert float(eq.node_voltages_v[0, 0]) == pytest.approx(0.7 * 2e-4 / 6e-4, abs=1e-12)
