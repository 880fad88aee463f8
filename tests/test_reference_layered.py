"""The layered reference solver (block elimination, layer sweeps) against the dense Newton oracle.

Both solve the same equations to the same convergence test; the layered one never forms an
``(N, N)`` matrix. They must agree to within what that test allows (``_agreement_bound``) on
every example block, on seeded random circuits with every nonlinearity, bias, amplifiers, wires
and mismatch, free and nudged (current and resistive nudges, warm starts)."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ffebm_sim.backends import Nudge
from ffebm_sim.backends.blocktri import block_solve
from ffebm_sim.backends.reference import ReferenceBackend
from ffebm_sim.circuit import Mismatch, Nonlinearity, source_voltages
from ffebm_sim.devices import DiodeModel, PwlTable
from ffebm_sim.errors import SpecError
from ffebm_sim.examples import block_specs
from ffebm_sim.interactions import network
from ffebm_sim.spec import load_block

from conftest import make_block, random_inputs

DENSE, LAYERED = ReferenceBackend(solver="dense"), ReferenceBackend()
#: Both solvers stop at |r_i| <= 1e-15 A + 1e-12 * sum |currents at i| (from different iterates):
#: two such points differ by what :func:`_agreement_bound` gives, plus this for the rounding of
#: the voltages themselves (V): about 450 ulps of a 1 V node (2.2e-16 V each). Every test here
#: passes with 1e-15 (measured 2026-12-02); 1e-13 leaves room for other CPUs' kernels.
AGREE_V = 1e-13


def _agreement_bound(circuit, u, nudge, x):
    """``(B, N)`` how far apart two points that both pass the convergence test can be (V):
    each has ``|r_i| <= 1e-15 A + 1e-12 * s_i`` (``s_i`` the magnitudes of the currents meeting
    at node i), so to first order they differ by ``|J^-1| (2 * tol)`` with ``J`` the KCL
    Jacobian there, plus ``AGREE_V`` for the rounding of the voltages themselves."""
    net = network(circuit)
    if nudge is not None and nudge.conductance_s != 0:
        net = net.with_nudge(float(nudge.conductance_s), torch.as_tensor(nudge.target_v, dtype=torch.float64))
    L = net.dense_laplacian()
    b = net.fixed_currents(source_voltages(circuit, torch.as_tensor(u, dtype=torch.float64)))
    if nudge is not None and nudge.currents_a is not None:
        b[:, net.out_slice] += nudge.currents_a
    f, df, _ = net.nonlinear(x)
    scale = x.abs() @ L.abs().T + b.abs() + f.abs()
    tol = 1e-15 + 1e-12 * scale
    J = L + torch.diag_embed(df)
    return AGREE_V + (torch.linalg.inv(J).abs() @ (2.0 * tol).unsqueeze(-1)).squeeze(-1)


def _agree(circuit, u, nudge=None, start=None, require_ok=True):
    a = DENSE.solve(circuit, u, nudge, start=start)
    b = LAYERED.solve(circuit, u, nudge, start=start)
    if not require_ok:
        # a random circuit may defeat the oracle (Newton cycling on a table's kinks from a warm
        # start, as before the layered solver): then the layered solver must say so too
        assert a.converged.tolist() == b.converged.tolist(), (a.messages, b.messages)
        keep = a.converged
        if not keep.any():
            return b
        rows = keep.nonzero().flatten()
        a, b, u = a.rows(keep), b.rows(keep), u[rows]
        nudge = None if nudge is None else nudge.rows(rows)
    assert a.ok and b.ok, (a.messages, b.messages)
    bound = _agreement_bound(circuit, u, nudge, a.node_voltages_v).numpy()
    assert (np.abs(b.node_voltages_v.numpy() - a.node_voltages_v.numpy()) <= bound).all(), \
        float((b.node_voltages_v - a.node_voltages_v).abs().max())
    scale = float(a.source_currents_a.abs().max()) + 1e-30
    np.testing.assert_allclose(b.source_currents_a.numpy(), a.source_currents_a.numpy(), rtol=0, atol=1e-10 * scale)
    return b


def _phases(circuit, u, seed=0, require_ok=True):
    """Free, +-current nudges from the free state, and a resistive nudge of either sign."""
    free = _agree(circuit, u)
    rng = np.random.default_rng(seed)
    g_out = float(np.asarray(circuit.conductances[-1]).sum(0).mean())
    i = torch.from_numpy(rng.normal(0, 1e-2 * g_out, (len(u), circuit.n_outputs)))
    for sign in (1.0, -1.0):
        _agree(circuit, u, Nudge(currents_a=sign * i), start=free.node_voltages_v, require_ok=require_ok)
    y = torch.from_numpy(rng.uniform(-0.5, 0.5, (len(u), circuit.n_outputs)))
    for sign in (1.0, -1.0):
        _agree(circuit, u, Nudge(conductance_s=sign * 0.1 * g_out, target_v=y), start=free.node_voltages_v,
               require_ok=require_ok)


@pytest.mark.parametrize("path", block_specs(), ids=lambda p: p.stem)
def test_every_example_block_free_and_nudged(path):
    c = load_block(path)
    _phases(c, random_inputs(c, 6, seed=2))


@pytest.mark.parametrize("spec", ["circuits/digits_ffebm.toml", "circuits/drn_digits.toml", "circuits/drn_mnist.toml"])
def test_model_example_blocks(spec):
    from ffebm_sim.model import build_model
    for block in build_model(spec, backend="reference").energy_blocks:
        c = block.circuit
        _phases(c, torch.from_numpy(np.random.default_rng(1).uniform(0, 1, (4, c.n_inputs))))


KINDS = ("double", "single", "ideal", "pwl", None)


@st.composite
def circuits(draw):
    sizes = tuple(draw(st.lists(st.integers(1, 6), min_size=3, max_size=5)))
    v_off = draw(st.sampled_from([0.0, 0.05]))
    base = make_block(sizes, kind="double", seed=draw(st.integers(0, 50)), gain=draw(st.sampled_from([1.0, 4.0])),
                      bias=draw(st.booleans()), v_off=v_off)
    templates = {k: make_block((1, 1, 1), kind=k, v_off=v_off).hidden[0] for k in KINDS if k}
    hidden = tuple(templates[draw(st.sampled_from(KINDS[:4]))] for _ in sizes[2:])
    c = replace(base, hidden=hidden, output=templates.get(draw(st.sampled_from(KINDS))))
    extra = draw(st.sampled_from(["none", "amplifiers", "wires", "mismatch"]))
    if extra == "amplifiers" and c.depth >= 2:
        c = replace(c, amplifier_gains=tuple(draw(st.sampled_from([0.5, 1.0, 3.0])) for _ in range(c.depth - 1)))
    elif extra == "wires":
        c = replace(c, wire_resistance_ohm=draw(st.sampled_from([10.0, 300.0])))
    elif extra == "mismatch" and c.has_ideal:
        c = replace(c, mismatch=Mismatch(0.1, 0.0, 0.0, 5))
    elif extra == "mismatch":
        c = replace(c, mismatch=Mismatch(0.1, 0.3, 0.03, 5), temperature_c=60.0)
    return c


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=circuits(), seed=st.integers(0, 1000))
def test_random_circuits_agree_with_the_dense_oracle(c, seed):
    _phases(c, random_inputs(c, 3, seed=seed), seed, require_ok=False)


def test_negative_resistive_nudge_on_a_flat_table_found_by_hypothesis():
    """The mirror phase (-beta) of a resistive nudge on an output in a table's flat part, weakly
    tied to the rest (2 uS through the middle crossbar): the energy is concave along the output
    at the free state, the Newton step is not a descent direction and both solvers stalled there
    for 200 iterations (residual 4.7e-6 A). The shifted Hessian's step (``concave_shift``)
    descends; both converge and agree."""
    junction = Nonlinearity("double", 0.0, DiodeModel(1e-8, 1.0, 1e-12))
    table = Nonlinearity("pwl", 0.0, None, PwlTable((-0.5, -0.1, 0.1, 0.5), (-2e-4, 0.0, 0.0, 2e-4)))
    gs = (np.array([[6.52299263e-05], [4.37753236e-06]]), np.array([[2.00295869e-06]]),
          np.array([[8.39212583e-05]]))
    c = replace(make_block((1, 1, 1, 1), kind="double", seed=0, gain=1.0, v_off=0.0), conductances=gs,
                hidden=(junction, junction), output=table)
    u = random_inputs(c, 3, seed=0)
    free = _agree(c, u)
    y = torch.tensor([[-0.4834723644714709], [0.2], [-0.1]], dtype=torch.float64)
    g_out = float(gs[-1].sum())
    for sign in (1.0, -1.0):
        _agree(c, u, Nudge(conductance_s=sign * 0.1 * g_out, target_v=y), start=free.node_voltages_v)


def test_clipped_to_zero_with_junctions_at_zero_rails_found_by_hypothesis():
    """An ``ideal`` first layer clipped to 0 V and junctions at 0 V rails after it: the operating
    point is within 1e-12 V of 0 V, where the co-content ``IS*vte*(e^y - 1 - y)`` written as that
    difference rounded to 1e-26 J, above the energies the line search compares; the dense Newton
    took its shortest step 200 times (residual 1.5e-15 A). The co-content's series near 0 V
    (``devices.junction_cocontent``) is exact there; both converge and agree."""
    junction = Nonlinearity("double", 0.0, DiodeModel(1e-8, 1.0, 1e-12))
    gs = (np.array([[5.11821625e-05], [9.50463696e-05]]), np.array([[1.44159613e-05, 9.48649447e-05, 3.11831452e-05]]),
          np.array([[4.23326449e-05], [8.27702594e-05], [4.09199136e-05]]))
    c = replace(make_block((1, 1, 3, 1), kind="double", seed=0, gain=4.0, v_off=0.0), conductances=gs,
                hidden=(Nonlinearity("ideal", 0.0), junction), output=Nonlinearity("single", 0.0, DiodeModel(1e-8, 1.0, 1e-12)))
    _phases(c, random_inputs(c, 3, seed=0), 0)


def test_negative_nudge_on_clipped_outputs_found_by_hypothesis():
    """A negative resistive nudge (0.1 of the output conductance) on ``ideal`` outputs, mismatch:
    the energy is concave along the outputs and bounded by their clips, so more than one
    equilibrium exists; the layered solver's coordinate descent reached another one (0.06 V
    away) than the dense Newton. Under a negative nudge both take the same Newton path."""
    junction = Nonlinearity("double", 0.05, DiodeModel(1e-8, 1.0, 1e-12))
    gs = (np.array([[6.93933081e-05], [6.41458221e-05]]), np.array([[1.28644224e-05, 1.13708050e-05]]),
          np.array([[6.53345521e-05, 8.53457106e-05, 2.01779134e-05, 2.18018637e-05, 7.16584636e-05],
                    [4.70699671e-05, 4.15221931e-05, 3.49147805e-05, 6.38537531e-06, 4.54666166e-05]]))
    c = replace(make_block((1, 1, 2, 5), kind="double", seed=0, gain=4.0, v_off=0.05), conductances=gs,
                hidden=(junction, junction), output=Nonlinearity("ideal", 0.05), mismatch=Mismatch(0.1, 0.0, 0.0, 5))
    _phases(c, random_inputs(c, 3, seed=805), 805)


def test_block_solve_is_the_dense_solve_with_held_nodes():
    """The block elimination solves (W J) dx = g exactly, held nodes as identity rows, in either order."""
    for sizes, gains in (((5, 7, 3, 4), (2.0, 0.5)), ((3, 2, 9), None), ((4, 6), None), ((3, 4, 4, 4, 2), None)):
        c = make_block(sizes, kind="ideal", seed=4, bias=True)
        if gains:
            c = replace(c, amplifier_gains=gains)
        net = network(c)
        rng = np.random.default_rng(0)
        B, N = 5, c.n_free
        df = torch.from_numpy(rng.uniform(0, 1e-4, (B, N)))
        held = torch.from_numpy(rng.uniform(0, 1, (B, N)) < 0.3)
        g = torch.from_numpy(rng.normal(0, 1e-5, (B, N))) * (~held)
        L = net.dense_laplacian()
        w = torch.ones(N, dtype=torch.float64) if net.node_weights is None else net.node_weights
        keep = (~held).double()
        J = (w[:, None] * L)[None] + torch.diag_embed(w * df)
        J = J * keep[:, :, None] * keep[:, None, :] + torch.diag_embed(held.double())
        want = torch.linalg.solve(J, g.unsqueeze(-1)).squeeze(-1)
        got = block_solve(net, df, held, g)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14 * float(want.abs().max()))


def test_unknown_solver_is_one_line():
    with pytest.raises(SpecError, match="reference solver: 'fast'; one of layered, dense"):
        ReferenceBackend(solver="fast")


def test_device_cpu_is_the_default_path():
    c = make_block((6, 5, 3), kind="double", seed=1)
    u = random_inputs(c, 4)
    a = ReferenceBackend(device="cpu").solve(c, u)
    torch.testing.assert_close(a.node_voltages_v, LAYERED.solve(c, u).node_voltages_v, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_agrees_with_cpu():                              # pragma: no cover - needs a GPU
    for kind in ("double", "ideal"):
        c = make_block((16, 12, 4), kind=kind, seed=1, bias=True)
        u = random_inputs(c, 32)
        a = ReferenceBackend(device="cuda").solve(c, u)
        assert a.node_voltages_v.device.type == "cpu"
        b = LAYERED.solve(c, u)             # other kernels, other iterates: both within the solver's tolerance
        assert ((a.node_voltages_v - b.node_voltages_v).abs() <= _agreement_bound(c, u, None, b.node_voltages_v)).all()


def _ffebm(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "ffebm_sim.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
@pytest.mark.parametrize("flag", ["--device", "--torch-device"])
def test_cuda_without_a_gpu_is_one_line_exit_2(tmp_path, tiny, flag):
    r = _ffebm("train", tiny, flag, "cuda", "--epochs", "1", "--out", tmp_path / "run")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["ffebm: error: device: 'cuda' asked, but no CUDA device is available "
                                             "here (torch.cuda.is_available() is False); use cpu"]
    assert not (tmp_path / "run").exists()


def test_training_on_the_cpu_device_is_training_without_it(tmp_path, tiny):
    from ffebm_sim.train import TrainConfig, train
    runs = {}
    for name, options in (("plain", {}), ("cpu", {"device": "cpu"})):
        cfg = TrainConfig(model=str(tiny), out=str(tmp_path / name), epochs=1, backend_options=options)
        runs[name] = train(cfg, log=lambda m: None)
    assert runs["plain"]["test_accuracy"] == runs["cpu"]["test_accuracy"]


@pytest.mark.parametrize("kind, extra", [("double", {}), ("ideal", {}), ("single", {"amplifier_gains": (3.0, 0.5)}),
                                         ("pwl", {"wire_resistance_ohm": 50.0}), ("ideal", {"amplifier_gains": (2.0, 2.0)})])
def test_adjoint_by_blocks_is_the_dense_adjoint(kind, extra):
    from ffebm_sim.ep import adjoint
    c = replace(make_block((6, 5, 4, 3), kind=kind, seed=2, bias=True, gain=4.0), **extra)
    u = random_inputs(c, 5, seed=1)
    x = LAYERED.solve(c, u).node_voltages_v
    delta = torch.from_numpy(np.random.default_rng(3).normal(0, 1, (5, 3)))
    net = network(c)
    want = adjoint(net, x, delta, dense=True)
    torch.testing.assert_close(adjoint(net, x, delta), want, rtol=1e-9, atol=1e-9 * float(want.abs().max()))


@pytest.mark.parametrize("sizes", [(1, 1, 3), (1, 1, 1, 2)])
def test_strongly_clamped_chains_found_by_hypothesis(sizes):
    """Junctions at 0 V rails in every layer (IS = 1e-8 A): the free phase converges where the
    junctions carry most of the current (the points differ by more than 1e-11 V, within what the
    convergence test allows), and a negative resistive nudge larger than an output node's own
    conductance, which made the layer sweeps (a per-node weighted mean) divide by a negative
    self block, is left to Newton."""
    junction = make_block((1, 1, 1), kind="double", v_off=0.0).hidden[0]
    c = replace(make_block(sizes, kind="double", seed=0, gain=1.0, bias=False, v_off=0.0),
                hidden=tuple(junction for _ in sizes[2:]), output=junction)
    _phases(c, random_inputs(c, 3, seed=0), 0, require_ok=False)


def test_singular_dense_block_gives_non_finite_steps_not_an_exception():
    """A dense self block that is singular (two nodes tied only to each other: a floating pair)
    is not positive definite and cannot be LU-factored either: the steps there are non-finite
    (the solver then reports the floating node), the other samples solve as before. Singular
    within rounding counts alike, so the answer does not depend on the CPU's LU kernel: the
    exact floating pair's last pivot is 0 with an exact division and ~1e-20 S with MKL's
    AVX-512 reciprocal; ``[[a, b], [b, fl(b^2/a)]]`` leaves a residue on every kernel."""
    from ffebm_sim.backends.blocktri import _Inverse
    g = 1e-4
    spd = torch.tensor([[2 * g, -g], [-g, 2 * g]], dtype=torch.float64)
    floating = torch.tensor([[g, -g], [-g, g]], dtype=torch.float64)
    a, b = 3e-4, -7e-5
    rounded = torch.tensor([[a, b], [b, b * b / a]], dtype=torch.float64)
    indefinite = torch.tensor([[g, -2 * g], [-2 * g, g]], dtype=torch.float64)     # not PD, not singular
    T = torch.stack([spd, floating, rounded, indefinite])
    y = torch.tensor([[1e-6, 2e-6]] * 4, dtype=torch.float64)
    out = _Inverse(T)(y)
    torch.testing.assert_close(out[0], torch.linalg.solve(spd, y[0]), rtol=1e-14, atol=0)
    assert not torch.isfinite(out[1]).any()
    assert not torch.isfinite(out[2]).any()
    torch.testing.assert_close(out[3], torch.linalg.solve(indefinite, y[3]), rtol=1e-14, atol=0)
