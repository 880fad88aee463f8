"""The torch solver on its own: exact on linear networks, status instead of exceptions, batch-invariant."""

import numpy as np
import pytest
import torch

from ffebm_sim.backends import Nudge, ReferenceBackend
from ffebm_sim.interactions import network
from ffebm_sim.circuit import BlockCircuit, Nonlinearity

from conftest import make_block, random_inputs


def test_linear_network_equals_direct_solve():
    c = make_block((5, 4, 3), kind="double", seed=0)
    # a zero-current table element: the network is purely resistive
    linear = BlockCircuit((5, 4, 3), c.conductances, (Nonlinearity("pwl", table=_zero_table()),), None, 2.0)
    u = random_inputs(linear, 4)
    eq = ReferenceBackend().solve(linear, u)
    net = network(linear)
    v_src = torch.cat([2.0 * u, -2.0 * u], 1)
    g_in = torch.tensor(np.array(linear.conductances[0]))
    L = torch.zeros(linear.n_free, linear.n_free, dtype=torch.float64)     # the Laplacian, by hand
    L[:4, :4] += torch.diag(g_in.sum(0))
    g2 = torch.tensor(np.array(linear.conductances[1]))
    L[:4, :4] += torch.diag(g2.sum(1))
    L[4:, 4:] += torch.diag(g2.sum(0))
    L[:4, 4:] -= g2
    L[4:, :4] -= g2.T
    # the same sums in another order may differ in the last bit (by CPU): rounding, not physics
    torch.testing.assert_close(net.dense_laplacian(), L, rtol=1e-14, atol=0)
    b = torch.zeros(4, linear.n_free, dtype=torch.float64)
    b[:, :4] = v_src @ g_in
    torch.testing.assert_close(net.fixed_currents(v_src), b, rtol=1e-15, atol=1e-20)
    direct = torch.linalg.solve(L, b.T).T
    torch.testing.assert_close(eq.node_voltages_v, direct, rtol=0, atol=1e-14)


def _zero_table():
    from ffebm_sim.devices import PwlTable
    return PwlTable((-1.0, 1.0), (0.0, 0.0))


def test_floating_node_is_a_status_not_an_exception():
    g2 = np.full((2, 2), 1e-4)
    g2[:, 1] = 0.0                 # output node 1 connects to nothing
    c = BlockCircuit((2, 2, 2), (np.full((4, 2), 1e-4), g2), (Nonlinearity("pwl", table=_zero_table()),))
    for u in (torch.zeros(3, 2, dtype=torch.float64), random_inputs(c, 3)):
        eq = ReferenceBackend(max_iterations=20).solve(c, u)
        assert not eq.ok
        assert all("node n2_1 floats" in m for m in eq.messages), eq.messages


def test_floating_node_in_ngspice_is_a_status_too():
    from ffebm_sim.backends.ngspice import NgspiceBackend
    g2 = np.full((2, 2), 1e-4)
    g2[:, 1] = 0.0
    c = BlockCircuit((2, 2, 2), (np.full((4, 2), 1e-4), g2), (Nonlinearity("pwl", table=_zero_table()),))
    eq = NgspiceBackend().solve(c, random_inputs(c, 2))
    assert not eq.ok and all(eq.messages)
    assert torch.isnan(eq.node_voltages_v).all()
    # the session is still usable afterwards
    good = make_block((2, 2, 1), kind="double", seed=0)
    assert NgspiceBackend().solve(good, random_inputs(good, 2)).ok


@pytest.mark.parametrize("kind", ["double", "single", "ideal", "pwl"])
def test_batch_equals_one_by_one(kind):
    c = make_block((6, 5, 4, 2), kind=kind, seed=1, bias=True)
    u = random_inputs(c, 5, seed=4)
    nudge = Nudge(currents_a=torch.from_numpy(np.random.default_rng(0).normal(0, 2e-6, (5, 2))))
    ref = ReferenceBackend()
    batch = ref.solve(c, u, nudge)
    assert batch.ok
    for b in range(5):
        one = ref.solve(c, u[b:b + 1], Nudge(currents_a=nudge.currents_a[b:b + 1]))
        torch.testing.assert_close(one.node_voltages_v[0], batch.node_voltages_v[b], rtol=0, atol=1e-13)


def test_kcl_holds_at_the_solution():
    """Residual current at every node below the stated tolerance (1e-15 A + 1e-12 relative)."""
    from ffebm_sim.elements import _incidence, flatten, law_currents_a, leaving_currents_a, node_voltages
    c = make_block((16, 12, 4), kind="double", seed=3, bias=True, gain=4.0)
    u = random_inputs(c, 8)
    eq = ReferenceBackend().solve(c, u)
    # an independent residual: the flattened branch list of the deck, law by law
    elements = flatten(c)
    V = node_voltages(elements, eq.node_voltages_v.numpy(), u.numpy())
    currents = law_currents_a(elements, V)
    r = leaving_currents_a(elements, currents)[:, :c.n_free]
    # s_i, the magnitudes of the branch currents meeting at node i: |incidence| @ |i|
    s = sum(np.asarray((abs(_incidence(elements, n, g)).T @ np.abs(i).T).T)
            for n, (g, i) in enumerate(zip(elements.groups, currents)) if i is not None)[:, :c.n_free]
    assert (np.abs(r) < 1e-12 * s + 1e-15).all(), float(np.abs(r).max())


def test_strongly_driven_steep_diodes_converge():
    """Inputs far beyond the clamp rails with N = 0.001 junctions: Newton must not overflow."""
    c = make_block((8, 6, 3), kind="ideal", seed=2, gain=50.0, v_off=0.05)
    eq = ReferenceBackend(ideal_as_clip=False).solve(c.as_emitted(), random_inputs(c, 16))
    assert eq.ok, eq.messages
    assert float(eq.node_voltages_v[:, :6].abs().max()) < 0.06


@pytest.mark.parametrize("kind", ["double", "ideal", "pwl"])
@pytest.mark.parametrize("solver", ["dense", "layered"])
def test_warm_start_reaches_the_same_equilibrium(kind, solver):
    """A nudged phase may start from the free state: same answer (the energy is strictly
    convex), no more Newton iterations (fewer for the dense Newton on junctions; the layered
    solver's cold start already sweeps the junctions to within a few Newton steps)."""
    c = make_block((6, 5, 3), kind=kind, seed=8, bias=True, v_off=0.1 if kind == "ideal" else 0.0)
    u = random_inputs(c, 12, seed=5)
    nudge = Nudge(currents_a=torch.from_numpy(np.random.default_rng(2).normal(0, 5e-6, (12, 3))))
    be = ReferenceBackend(solver=solver)
    free = be.solve(c, u)
    cold = be.solve(c, u, nudge)
    warm = be.solve(c, u, nudge, start=free.node_voltages_v)
    assert cold.ok and warm.ok
    # to the Newton tolerance: KCL residual <= reltol (1e-12) x the currents, over conductances ~1e-4 S
    assert float((cold.node_voltages_v - warm.node_voltages_v).abs().max()) <= 1e-11
    # piecewise-linear elements: Newton is exact on a segment, both take a couple of steps
    if kind == "double" and solver == "dense":
        assert warm.iterations < cold.iterations
    else:
        assert warm.iterations <= cold.iterations
    with pytest.raises(Exception, match="start: shape"):
        be.solve(c, u, nudge, start=free.node_voltages_v[:3])


def test_repeated_inputs_reuse_the_free_phase_rows_and_never_stale_ones():
    """EP's nudged request stacks the free phase's inputs ``[u; u]``: the backend reuses their fixed
    currents. The answers are those of a backend that computes everything afresh, and inputs
    changed in place since (the same tensor, new values) are not mistaken for the last ones."""
    c = make_block((6, 5, 3), kind="double", seed=4, bias=True)
    u = random_inputs(c, 7, seed=1)
    nudge = Nudge(currents_a=torch.from_numpy(np.random.default_rng(3).normal(0, 1e-7, (14, 3))))
    be = ReferenceBackend()
    free = be.solve(c, u)
    both = be.solve(c, torch.cat([u, u]), nudge, start=torch.cat([free.node_voltages_v] * 2))
    fresh = ReferenceBackend().solve(c, torch.cat([u, u]), nudge)
    assert both.ok and fresh.ok
    assert float((both.node_voltages_v - fresh.node_voltages_v).abs().max()) <= 1e-11
    assert float((both.source_currents_a - fresh.source_currents_a).abs().max()) <= 1e-15
    u.add_(0.25)                                  # the caller's tensor, changed in place
    again = be.solve(c, u)
    assert float((again.node_voltages_v - ReferenceBackend().solve(c, u).node_voltages_v).abs().max()) <= 1e-11
    assert float((again.node_voltages_v - free.node_voltages_v).abs().max()) > 1e-3


def test_nudged_copies_share_what_does_not_depend_on_the_targets():
    """A resistive nudge's network (``with_nudge``) reuses its network's constants and those built
    for the same nudge conductance before; the targets' currents stay its own."""
    c = make_block((6, 5, 3), kind="double", seed=4, bias=True)
    net = network(c)
    builds = []
    count = lambda value: (lambda: builds.append(value) or value)
    assert net.cached("probe", count(1)) == 1
    y1, y2 = torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)
    a, b = net.with_nudge(1e-5, y1), net.with_nudge(1e-5, y2)
    assert a.cached("probe", count(2)) == 2 and b.cached("probe", count(3)) == 2
    assert net.with_nudge(-1e-5, y1).cached("probe", count(4)) == 4
    assert builds == [1, 2, 4]
    assert a.self_blocks() is b.self_blocks() and a.self_blocks() is not net.self_blocks()
    assert not torch.equal(a.constants()[-1], b.constants()[-1])
