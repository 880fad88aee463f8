"""Equilibrium propagation through one block, against the exact gradient and finite differences."""

import numpy as np
import pytest
import torch

from ffebm_sim.backends import ReferenceBackend, get_backend
from ffebm_sim.blocks import EnergyBlock, Quantizer, resistive_mse
from ffebm_sim.circuit import BlockCircuit
from ffebm_sim.ep import ep_gradients, implicit_gradients

from conftest import make_block, random_inputs


def _strongly_nonlinear(kind="double", bias=True, seed=3):
    # gain 4 V drives a good share of the junctions into conduction
    return make_block((6, 5, 3), kind=kind, seed=seed, gain=4.0, bias=bias)


def _flat(g):
    parts = list(g.conductances) + (list(g.bias_pos) + list(g.bias_neg) if g.bias_pos else [])
    return torch.cat([p.flatten() for p in parts]), g.inputs.flatten()


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("kind", ["double", "single", "pwl"])
def test_centered_error_is_quadratic_one_sided_linear(kind):
    c = _strongly_nonlinear(kind)
    u = random_inputs(c, 8, seed=1)
    ref = ReferenceBackend()
    free = ref.solve(c, u)
    from ffebm_sim.verify import _conducting_fraction
    assert _conducting_fraction(c, free.node_voltages_v) > 0.2      # the nonlinearity matters here
    delta = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (8, 3)))
    exact_p, exact_u = _flat(implicit_gradients(c, u, free, delta))
    errors = {}
    for centered in (True, False):
        errs = []
        for beta in (4e-2, 4e-3):
            p, g_u = _flat(ep_gradients(c, ref, u, free, delta, beta_v=beta, centered=centered))
            errs.append(max(_rel(p, exact_p), _rel(g_u, exact_u)))
        errors[centered] = errs
    # one-sided: error / 10 when beta / 10; centered: error / 100 (allow slack for higher orders)
    one_ratio = errors[False][0] / errors[False][1]
    two_ratio = errors[True][0] / errors[True][1]
    assert 7 < one_ratio < 13, errors
    if kind == "pwl":
        # piecewise-quadratic energy: once beta no longer crosses a table kink,
        # centered EP is exact (to the solver's precision)
        assert errors[True][1] < 1e-9, errors
    else:
        assert 60 < two_ratio < 140, errors
    assert errors[True][1] < errors[False][1] / 10


def test_input_gradient_sign_and_value_by_hand():
    """Loss = V_out of a divider: dL/du = a*(g+ - g-)/(g+ + g-); EP must give it with its sign."""
    gp, gm, a = 3e-4, 1e-4, 2.0
    c = BlockCircuit((1, 1), (np.array([[gp], [gm]]),), input_gain_v=a)
    u = torch.tensor([[0.3]], dtype=torch.float64)
    for backend in ("reference", "ngspice"):
        be = get_backend(backend)
        free = be.solve(c, u)
        g = ep_gradients(c, be, u, free, torch.ones(1, 1, dtype=torch.float64))
        assert float(g.inputs) == pytest.approx(a * (gp - gm) / (gp + gm), rel=1e-7)
        # flipping the conductances flips the sign
        c2 = BlockCircuit((1, 1), (np.array([[gm], [gp]]),), input_gain_v=a)
        g2 = ep_gradients(c2, be, u, be.solve(c2, u), torch.ones(1, 1, dtype=torch.float64))
        assert float(g2.inputs) == pytest.approx(-a * (gp - gm) / (gp + gm), rel=1e-7)


def test_implicit_gradient_matches_finite_differences_of_the_reference_loss():
    c = _strongly_nonlinear("double", bias=True)
    u = random_inputs(c, 4, seed=2)
    w = torch.from_numpy(np.random.default_rng(1).normal(0, 1, (4, 3)))
    ref = ReferenceBackend()

    def loss(circuit, uu=u):
        return float((ref.solve(circuit, uu).output_voltages(circuit) * w).sum())

    g = implicit_gradients(c, u, ref.solve(c, u), w)
    rng = np.random.default_rng(5)
    for layer in range(2):
        G = [np.array(x) for x in c.conductances]
        for _ in range(4):
            i, j = (int(rng.integers(s)) for s in G[layer].shape)
            h = 1e-6 * G[layer][i, j]
            Gp = [x.copy() for x in G]; Gp[layer][i, j] += h
            Gm = [x.copy() for x in G]; Gm[layer][i, j] -= h
            fd = (loss(c.with_conductances(Gp)) - loss(c.with_conductances(Gm))) / (2 * h)
            assert float(g.conductances[layer][i, j]) == pytest.approx(fd, rel=1e-5, abs=1e-6 * abs(fd) + 1e-3)
    # bias conductance and input
    bp = [np.array(x) for x in c.bias_pos]
    h = 1e-6 * bp[0][1]
    bpp = [x.copy() for x in bp]; bpp[0][1] += h
    bpm = [x.copy() for x in bp]; bpm[0][1] -= h
    fd = (loss(c.with_conductances(c.conductances, bpp, c.bias_neg)) - loss(c.with_conductances(c.conductances, bpm, c.bias_neg))) / (2 * h)
    assert float(g.bias_pos[0][1]) == pytest.approx(fd, rel=1e-5)
    up, um = u.clone(), u.clone()
    up[2, 4] += 1e-6
    um[2, 4] -= 1e-6
    fd = (loss(c, up) - loss(c, um)) / 2e-6
    assert float(g.inputs[2, 4]) == pytest.approx(fd, rel=1e-5)


@pytest.mark.parametrize("backend", ["reference", "ngspice"])
def test_ep_matches_implicit_on_both_backends(backend):
    c = _strongly_nonlinear("double", bias=True, seed=7)
    u = random_inputs(c, 6, seed=3)
    delta = torch.from_numpy(np.random.default_rng(2).normal(0, 1, (6, 3)))
    be = get_backend(backend)
    exact_p, exact_u = _flat(implicit_gradients(c, u, ReferenceBackend().solve(c, u), delta))
    p, g_u = _flat(ep_gradients(c, be, u, be.solve(c, u), delta))
    assert _rel(p, exact_p) < 1e-4 and _rel(g_u, exact_u) < 1e-4


def test_resistive_nudge_gives_the_mse_gradient():
    c = _strongly_nonlinear("double", bias=False, seed=4)
    u = random_inputs(c, 5, seed=4).requires_grad_(True)
    y = torch.from_numpy(np.random.default_rng(3).uniform(-0.2, 0.2, (5, 3)))
    grads = {}
    for gradient in ("ep", "implicit"):
        block = EnergyBlock(c, "reference", gradient)
        uu = u.detach().clone().requires_grad_(True)
        loss = resistive_mse(block, uu, y)
        loss.backward()
        grads[gradient] = torch.cat([w.grad.flatten() for w in block.all_weights()] + [uu.grad.flatten()])
        # the free-phase loss value is the plain MSE
        v = ReferenceBackend().solve(c, u.detach()).output_voltages(c)
        assert float(loss) == pytest.approx(float(((v - y) ** 2).mean()), rel=1e-12)
    assert _rel(grads["ep"], grads["implicit"]) < 1e-4


@pytest.mark.parametrize("loss", ["current", "resistive"])
def test_implicit_gradient_is_the_reference_one_whatever_the_backend(loss):
    """Both autograd paths take the implicit gradient at the reference solver's free state,
    so a block on ngspice gives the reference block's exact gradient (to the solvers' 1e-9 V)."""
    c = _strongly_nonlinear("double", bias=True, seed=9)
    u = random_inputs(c, 4, seed=6)
    y = torch.from_numpy(np.random.default_rng(5).uniform(-0.2, 0.2, (4, 3)))
    grads = {}
    for backend in ("reference", "ngspice"):
        block = EnergyBlock(c, backend, "implicit")
        uu = u.detach().clone().requires_grad_(True)
        out = resistive_mse(block, uu, y) if loss == "resistive" else ((block(uu) - y) ** 2).sum()
        out.backward()
        grads[backend] = torch.cat([w.grad.flatten() for w in block.all_weights()] + [uu.grad.flatten()])
    assert _rel(grads["ngspice"], grads["reference"]) < 1e-9


def test_energy_block_backward_equals_current_nudge_ep():
    c = _strongly_nonlinear("double", bias=True, seed=8)
    block = EnergyBlock(c, "reference", "ep")
    u = random_inputs(c, 4, seed=5).requires_grad_(True)
    w = torch.from_numpy(np.random.default_rng(4).normal(0, 1, (4, 3)))
    (block(u) * w).sum().backward()
    ref = ReferenceBackend()
    g = ep_gradients(c, ref, u.detach(), ref.solve(c, u.detach()), w)
    torch.testing.assert_close(u.grad, g.inputs)
    torch.testing.assert_close(block.weights[0].grad, g.conductances[0] * block.conductance_unit_s)
    assert block.stats.solves == 4 * 3


def test_projection_keeps_conductances_in_range():
    c = make_block((3, 2, 2), seed=0)
    block = EnergyBlock(c, g_min_s=1e-6, g_max_s=5e-5)
    with torch.no_grad():
        block.weights[0].fill_(-1.0)
        block.weights[1].fill_(10.0)
    block.project()
    G = block.circuit.conductances
    assert G[0].min() == pytest.approx(1e-6) and G[1].max() == pytest.approx(5e-5)


def test_quantizer_forward_levels_and_straight_through_backward():
    q = Quantizer(-1.0, 1.0, bits=2, kind="dac")
    x = torch.tensor([-2.0, -0.9, -0.2, 0.2, 0.4, 0.9, 3.0], dtype=torch.float64, requires_grad=True)
    out = q(x)
    levels = torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0], dtype=torch.float64)
    assert all(bool((levels - v).abs().min() < 1e-12) for v in out.detach())
    torch.testing.assert_close(out.detach(), torch.tensor([-1.0, -1.0, -1 / 3, 1 / 3, 1 / 3, 1.0, 1.0], dtype=torch.float64))
    out.backward(torch.arange(7, dtype=torch.float64))
    torch.testing.assert_close(x.grad, torch.arange(7, dtype=torch.float64))
    clip = Quantizer(-0.5, 0.5, bits=None, kind="adc")
    y = torch.tensor([-1.0, 0.1, 1.0], dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(clip(y).detach(), torch.tensor([-0.5, 0.1, 0.5], dtype=torch.float64))
    clip(y).sum().backward()
    torch.testing.assert_close(y.grad, torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("gain", [1.0, 3.0])
@pytest.mark.parametrize("same_rows", [False, True])
def test_coupling_contrasted_partials_is_the_batch_sum_of_squared_drops(gain, same_rows):
    """``Coupling.contrasted_partials`` against its definition, ``sum_b w_b (d_a^2 - d_b^2) / 2``
    with ``d = A v_i - x_j`` formed as a ``(B, rows, cols)`` array: for two states with different
    rows, and for the rows shared by both states (crossbar 1 in EP, the short path)."""
    from ffebm_sim.interactions import plain_coupling
    from ffebm_sim.amplifier import drive_voltage
    rng = np.random.default_rng(5)
    B, rows, cols = 7, 6, 4
    t = lambda *shape: torch.from_numpy(rng.normal(0, 1, shape))
    coupling = plain_coupling(1, torch.from_numpy(rng.uniform(0, 1e-4, (rows, cols))), gain)
    v_a, x_a, x_b, w = t(B, rows), t(B, cols), t(B, cols), torch.from_numpy(rng.uniform(0.5, 2, B))
    v_b = v_a if same_rows else t(B, rows)
    drop = lambda v, x: drive_voltage(v, gain)[:, :, None] - x[:, None, :]
    expected = (w[:, None, None] * (drop(v_a, x_a) ** 2 - drop(v_b, x_b) ** 2) / 2).sum(0)
    got = coupling.contrasted_partials(v_a, x_a, v_b, x_b, w)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12 * float(expected.abs().max()))
