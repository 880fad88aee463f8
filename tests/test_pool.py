"""ngspice on worker processes: the fast paths agree with the reference, and results are
bit-identical whatever the number of workers (fixed chunks, history-free solves)."""

import numpy as np
import pytest
import torch

from conftest import make_block, random_inputs
from ffebm_sim.backends import Nudge
from ffebm_sim.backends.deckedit import sweep_deck
from ffebm_sim.backends.ngspice import NgspiceBackend
from ffebm_sim.backends.session import digest
from ffebm_sim.backends.pool import PoolEngine
from ffebm_sim.backends.reference import ReferenceBackend
from ffebm_sim.ep import ep_gradients

B = 21          # not a multiple of the chunk: the last job is short
CHUNK = 8


def _nudge(c, batch, seed=0):
    return Nudge(currents_a=torch.from_numpy(np.random.default_rng(seed).normal(0, 2e-6, (batch, c.n_outputs))))


def _equal(a, b):
    assert a.ok and b.ok, (a.messages, b.messages)
    assert torch.equal(a.node_voltages_v, b.node_voltages_v)
    assert torch.equal(a.source_currents_a, b.source_currents_a)


@pytest.fixture(scope="module")
def pool():
    """Backends of every variant on one pool of two worker processes."""
    engine = PoolEngine(2)

    def get(reduced, method):
        backend = NgspiceBackend(reduced=reduced, method=method, workers=2, chunk=CHUNK)
        backend._engine = engine
        return backend
    yield get
    engine.close()


@pytest.mark.parametrize("method", ["op", "sweep", "tran"])
@pytest.mark.parametrize("reduced", [True, False], ids=["reduced", "physical"])
def test_two_workers_bit_identical_to_one(pool, method, reduced):
    c = make_block((6, 5, 3), kind="double", seed=3, bias=True)
    u = random_inputs(c, B, seed=1)
    nudge = _nudge(c, B)
    one = NgspiceBackend(reduced=reduced, method=method, chunk=CHUNK)
    two = pool(reduced, method)
    for nd in (None, nudge):
        _equal(one.solve(c, u, nd), two.solve(c, u, nd))
    ref = ReferenceBackend().solve(c, u, nudge)
    got = two.solve(c, u, nudge)
    assert float((got.node_voltages_v - ref.node_voltages_v).abs().max()) <= 1e-9
    assert float((got.source_currents_a - ref.source_currents_a).abs().max()) <= 1e-12


def test_workers_keep_their_circuit(pool):
    c = make_block((6, 5, 3), kind="double", seed=4)
    u = random_inputs(c, B, seed=2)
    be = pool(True, "op")
    mine = digest(be.deck_for(c, None))          # what a worker holding this circuit reports
    be.solve(c, u)
    before = {s["pid"]: s for s in be.engine.stats()}
    be.solve(c, u, _nudge(c, B))           # same conductances, current nudge: same deck, no reload
    after = {s["pid"]: s for s in be.engine.stats()}
    # A process pool gives no way to address one worker: compare the workers that hold this
    # circuit's deck (by digest) after the first solve and answered both stats queries.
    holders = [p for p in before.keys() & after.keys() if before[p]["deck"] == mine]
    assert holders, f"no worker that answered both times holds this circuit: {before} {after}"
    for p in holders:
        assert after[p]["deck"] == mine and after[p]["loads"] == before[p]["loads"], (before[p], after[p])


def test_op_answer_does_not_depend_on_what_was_solved_before():
    c = make_block((6, 5, 3), kind="single", seed=5)
    u = random_inputs(c, 9, seed=3)
    be = NgspiceBackend(reduced=True, method="op")
    forward = be.solve(c, u)
    backward = be.solve(c, u.flip(0))
    assert torch.equal(forward.node_voltages_v, backward.node_voltages_v.flip(0))


@pytest.mark.parametrize("method", ["sweep", "tran"])
@pytest.mark.parametrize("kind", ["double", "single", "ideal", "pwl"])
def test_sweep_agrees_with_reference_and_op(kind, method):
    c = make_block((5, 4, 3), kind=kind, seed=6, v_off=0.1 if kind == "ideal" else 0.0)
    u = random_inputs(c, 10, seed=4)
    nudge = _nudge(c, 10, seed=1)
    sweep = NgspiceBackend(reduced=False, method=method, chunk=10).solve(c, u, nudge)
    op = NgspiceBackend(reduced=False, method="op").solve(c, u, nudge)
    assert sweep.ok and op.ok
    assert float((sweep.node_voltages_v - op.node_voltages_v).abs().max()) <= 1e-9
    assert float((sweep.source_currents_a - op.source_currents_a).abs().max()) <= 1e-12
    if kind != "ideal":       # the reference clips ideally; the deck has a steep junction
        ref = ReferenceBackend().solve(c, u, nudge)
        assert float((sweep.node_voltages_v - ref.node_voltages_v).abs().max()) <= 1e-9


@pytest.mark.parametrize("method", ["sweep", "tran"])
def test_sweep_resistive_nudge_matches_reference(method):
    c = make_block((5, 4, 3), kind="double", seed=7, nudge="resistive")
    u = random_inputs(c, 8, seed=5)
    y = torch.from_numpy(np.random.default_rng(2).uniform(-0.2, 0.2, (8, 3)))
    for g in (1e-5, -1e-5):
        nd = Nudge(conductance_s=g, target_v=y)
        got = NgspiceBackend(reduced=False, method=method, chunk=8).solve(c, u, nd)
        ref = ReferenceBackend().solve(c, u, nd)
        assert got.ok
        assert float((got.node_voltages_v - ref.node_voltages_v).abs().max()) <= 1e-9


def test_sweep_deck_holds_the_exact_values():
    c = make_block((2, 2, 1), kind="double", seed=0)
    be = NgspiceBackend(reduced=True)
    values = np.array([[0.1, 1e-5, 0.0], [0.30000000000000004, 2e-5, 0.0], [-1 / 3, 1e-5, 0.0]])
    deck = sweep_deck(be.deck_for(c, None), ("in1_0", "in1_1", "inudge0"), values)
    assert "0, 0.1, 1, 0.30000000000000004, 2, -0.3333333333333333, 3, -0.3333333333333333" in deck.replace("\n+ ", " ")
    assert "INUDGE0 0 n2_0 DC 0.0" in deck          # constant over the chunk: stays a DC card
    assert "BSW_INUDGE0" not in deck


def test_ep_gradients_identical_on_two_workers(pool):
    c = make_block((6, 5, 3), kind="double", seed=8)
    u = random_inputs(c, B, seed=6)
    delta = torch.from_numpy(np.random.default_rng(3).normal(0, 1, (B, 3)))
    one = NgspiceBackend(reduced=True, method="sweep", chunk=CHUNK)
    two = pool(True, "sweep")
    g1 = ep_gradients(c, one, u, one.solve(c, u), delta)
    g2 = ep_gradients(c, two, u, two.solve(c, u), delta)
    for a, b in zip(g1.conductances, g2.conductances):
        assert torch.equal(a, b)
    assert torch.equal(g1.inputs, g2.inputs)
