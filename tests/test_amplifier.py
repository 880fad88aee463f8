"""The bidirectional amplifier between layers (ffebm_sim.amplifier, docs/amplifier.md):
spec and validation, deck cards, the reference solver against ngspice and against energy
conservation, the weighted co-content, and EP against the implicit gradient and finite
differences."""

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import make_block, random_inputs
from ffebm_sim import ep as ep_module
from ffebm_sim.amplifier import port_quantities, supply_power_w
from ffebm_sim.backends.reference import ReferenceBackend
from ffebm_sim.interactions import network
from ffebm_sim.circuit import amplifier_sense_name, clamp_diode_voltage
from ffebm_sim.devices import junction_current_and_conductance
from ffebm_sim.ep import ep_energy_scales, ep_gradients, implicit_gradients, kcl_residual
from ffebm_sim.errors import SpecError
from ffebm_sim.netlist import emit_deck
from ffebm_sim.spec import block_from_dict
from ffebm_sim.verify import AGREEMENT_TOLERANCE_V, verify_block

GAINS = (3.0, 10.0)
BASE = {"layers": [3, 4, 3, 2], "nonlinearity": {"kind": "double"}}
TIGHT = ReferenceBackend(abstol_a=1e-20, reltol=1e-15)


def amplified(gains=GAINS, bias=True, clamped=True, seed=3, **kw):
    """A [5, 4, 3, 2] block whose junctions conduct, with amplifiers after layers 1 and 2."""
    c = make_block((5, 4, 3, 2), bias=bias, seed=seed, **kw)
    return replace(c, amplifier_gains=gains, output=c.hidden[0] if clamped else None)


# ---- spec and validation ------------------------------------------------------------------

@pytest.mark.parametrize("gain, fragment", [
    ([2.0], "1 gains for 2 layer boundaries"),
    ([2.0, 3.0, 4.0], "3 gains for 2 layer boundaries"),
    ([0.0, 2.0], "amplifier_gain[0] (after layer 1): 0.0 is outside 0.001..1000"),
    ([2.0, -5.0], "amplifier_gain[1] (after layer 2): -5.0 is outside"),
    ([2.0, 1e4], "outside 0.001..1000"),
    ([2.0, "x"], "amplifier_gain[1] (after layer 2): expected a number"),
    ([True, 2.0], "expected a number, got True"),
    ("big", "one number (V/V) for every boundary"),
    ([2.0, float("inf")], "not finite"),
])
def test_bad_gains_are_one_line_naming_the_key(gain, fragment):
    with pytest.raises(SpecError) as e:
        block_from_dict({**BASE, "amplifier_gain": gain})
    assert fragment in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith("amplifier_gain")


def test_a_gain_needs_a_boundary_and_ideal_wires():
    with pytest.raises(SpecError, match="no hidden layer"):
        block_from_dict({"layers": [3, 2], "amplifier_gain": 4.0})
    with pytest.raises(SpecError, match="not modelled with wire_resistance > 0") as e:
        block_from_dict({**BASE, "amplifier_gain": 4.0, "wire_resistance": 1.0})
    assert "\n" not in str(e.value)


def test_bad_gain_on_the_command_line_is_one_line_exit_2(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text('layers = [3, 4, 3, 2]\namplifier_gain = [4.0, 0.0]\n')
    r = subprocess.run([sys.executable, "-m", "ffebm_sim.cli", "netlist", str(spec), "-o", str(tmp_path / "d.cir")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "amplifier_gain[1] (after layer 2)" in r.stderr
    assert not (tmp_path / "d.cir").exists()


def test_one_number_is_every_boundary_and_unity_is_a_wire():
    assert block_from_dict({**BASE, "amplifier_gain": 5}).amplifier_gains == (5.0, 5.0)
    plain = block_from_dict(BASE)
    unity = block_from_dict({**BASE, "amplifier_gain": [1.0, 1.0]})
    assert unity.amplifier_gains is None and not unity.has_amplifiers
    u = np.array([0.3, -0.2, 0.9])
    assert emit_deck(unity, u) == emit_deck(plain, u)
    one = block_from_dict({**BASE, "amplifier_gain": [1.0, 6.0]})
    assert one.amplified_layers() == [2] and one.drive_gain(2) == 1.0 and one.drive_gain(3) == 6.0
    np.testing.assert_allclose(one.domain_weights(), [1.0, 1.0, 1.0 / 36.0], rtol=1e-15)


def test_domain_weights():
    c = amplified()
    np.testing.assert_allclose(c.domain_weights(), [1.0, 1.0 / 9.0, 1.0 / 900.0], rtol=1e-15)
    np.testing.assert_allclose(ep_energy_scales(c), [900.0, 100.0, 1.0], rtol=1e-13)


# ---- the deck -------------------------------------------------------------------------------

@pytest.mark.parametrize("reduced", [False, True])
def test_deck_cards(reduced):
    c = amplified()
    lines = emit_deck(c, np.zeros(5), reduced=reduced).splitlines()
    assert "EA1_2 ae1_2 0 n1_2 0 3.0" in lines
    assert "VA1_2 ae1_2 a1_2 DC 0" in lines
    assert "FA1_2 n1_2 0 VA1_2 0.3333333333333333" in lines
    assert "FA2_0 n2_0 0 VA2_0 0.1" in lines
    # the next crossbar hangs on the amplifier outputs, not on the layer's nodes
    layer2 = [l for l in lines if l.startswith("R2_")]
    layer3 = [l for l in lines if l.startswith("R3_")]
    assert layer2 and all(l.split()[1].startswith("a1_") for l in layer2)
    assert layer3 and all(l.split()[1].startswith("a2_") for l in layer3)
    assert not any(l.startswith("EA3") for l in lines)          # no amplifier after the output layer
    assert sum(l.startswith(("EA", "VA", "FA")) for l in lines) == 3 * (4 + 3)


# ---- the reference solver against ngspice and against physics ------------------------------

def test_ngspice_agrees_on_every_node_including_the_amplifier_outputs():
    r = verify_block(amplified(), samples=6, nudge=True)
    assert r["ok"], r
    for phase in ("free", "nudged"):
        assert r["per_phase"][phase]["max_abs_amplifier_dv_volts"] <= AGREEMENT_TOLERANCE_V


def test_port_currents_match_ngspice_sense_sources():
    from ffebm_sim.backends.jobs import run_job
    from ffebm_sim.backends.ngspice import NgspiceBackend
    c = amplified()
    u = random_inputs(c, 4, seed=2)
    x = ReferenceBackend().solve(c, u).node_voltages_v
    backend = NgspiceBackend(method="op")
    names = tuple(f"{amplifier_sense_name(k, j)}#branch" for k in c.amplified_layers() for j in range(c.layer_sizes[k]))
    jobs, _ = backend.jobs(c, u, None)
    got = np.concatenate([run_job(replace(job, vectors=names)).values for job in jobs])
    want = torch.cat([i_out for *_, i_out in port_quantities(c, x)], 1).numpy()
    # a 1e-9 V disagreement through 1e-4 S crossbars: ~1e-13 A
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.abs(want).max() > 1e-6                                  # the amplifiers carry current


def test_power_balance_with_the_amplifier_supply():
    """Tellegen: the power the input sources, the nudge and the amplifiers' supplies deliver
    is what the resistors and junctions dissipate (clamp rails at 0 V, no bias)."""
    c = amplified(bias=False)
    u = random_inputs(c, 5, seed=4)
    nudge_i = torch.from_numpy(np.random.default_rng(5).normal(0, 2e-5, (5, 2)))
    from ffebm_sim.backends.base import Nudge
    eq = TIGHT.solve(c, u, Nudge(currents_a=nudge_i))
    x = eq.node_voltages_v
    v_src = torch.cat([c.input_gain_v * u, -c.input_gain_v * u], 1)
    delivered = (v_src * eq.source_currents_a).sum(1) + (nudge_i * eq.output_voltages(c)).sum(1) + supply_power_w(c, x)
    layers = [v_src] + [x[:, c.layer_slice(k)] for k in range(1, 4)]
    dissipated = torch.zeros(5, dtype=torch.float64)
    for k, g in enumerate(c.conductances, start=1):
        drive = c.drive_gain(k) * layers[k - 1]
        dissipated += (torch.tensor(np.array(g)) * (drive[:, :, None] - layers[k][:, None, :]) ** 2).sum((1, 2))
    for grp in network(c).diodes:
        vd = clamp_diode_voltage(x[:, grp.nodes], grp.rail_v, grp.upward)
        i, _ = junction_current_and_conductance(vd, grp.isat, grp.vte, grp.model.gmin_s)
        dissipated += (i * vd).sum(1)
    assert float(supply_power_w(c, x).abs().min()) > 1e-3 * float(dissipated.min())   # the supply matters
    np.testing.assert_allclose(delivered.numpy(), dissipated.numpy(), rtol=1e-10)


def test_weighted_cocontent_gradient_is_the_row_scaled_kcl():
    """grad E_w = W r at any point (not only at the equilibrium): the claim that makes the
    amplified block an energy-based model."""
    c = amplified()
    net = network(c, ideal_as_clip=False)
    u = random_inputs(c, 3, seed=6)
    v_src = torch.cat([c.input_gain_v * u, -c.input_gain_v * u], 1)
    b = net.fixed_currents(v_src)
    x = torch.from_numpy(np.random.default_rng(7).uniform(-0.6, 0.6, (3, c.n_free))).requires_grad_(True)
    e = net.energy(x, net.linear_currents(x, v_src), b).sum()
    (grad,) = torch.autograd.grad(e, x)
    bias = None if not c.has_bias else ([torch.tensor(np.array(p)) for p in c.bias_pos], [torch.tensor(np.array(n)) for n in c.bias_neg])
    f, _, _ = net.nonlinear(x.detach())
    r = kcl_residual(c, [torch.tensor(np.array(g)) for g in c.conductances], *(bias or (None, None)), x.detach(), v_src) + f
    np.testing.assert_allclose(grad.numpy(), net.weighted(r).numpy(), rtol=1e-12, atol=1e-18)
    # and the physical KCL is not symmetric: W is needed
    L = net.dense_laplacian()
    assert float((L - L.T).abs().max()) > 1e-5


# ---- gradients --------------------------------------------------------------------------------

def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _mse(c, u, y):
    v = TIGHT.solve(c, u).output_voltages(c)
    return float(0.5 * ((v - y) ** 2).sum())


def test_ep_equals_implicit_equals_finite_differences():
    c = amplified()
    u = random_inputs(c, 3, seed=1)
    y = torch.from_numpy(np.random.default_rng(2).uniform(-0.3, 0.3, (3, 2)))
    free = TIGHT.solve(c, u)
    delta = free.output_voltages(c) - y
    ep = ep_gradients(c, TIGHT, u, free, delta, beta_v=1e-4)
    im = implicit_gradients(c, u, free, delta)
    for name in ("conductances", "bias_pos", "bias_neg"):
        for a, b in zip(getattr(ep, name), getattr(im, name)):
            assert _rel(a, b) < 1e-6, name
    assert _rel(ep.inputs, im.inputs) < 1e-6
    # finite differences of the circuit itself, one entry of every conductance matrix
    for k, (i, j) in enumerate([(1, 2), (3, 0), (2, 1)]):
        gs = [np.array(g) for g in c.conductances]
        h = 1e-4 * gs[k][i, j]
        gs[k][i, j] += h
        plus = _mse(c.with_conductances(gs), u, y)
        gs[k][i, j] -= 2 * h
        minus = _mse(c.with_conductances(gs), u, y)
        fd = (plus - minus) / (2 * h)
        assert abs(float(im.conductances[k][i, j]) - fd) <= 1e-6 * abs(fd), k
    du = torch.zeros_like(u)
    du[0, 1] = 1e-6
    fd = (_mse(c, u + du, y) - _mse(c, u - du, y)) / 2e-6
    assert abs(float(im.inputs[0, 1]) - fd) <= 1e-6 * abs(fd)


def test_ep_without_the_domain_weights_is_wrong(monkeypatch):
    """The w_d / w_out factors are what make EP exact: without them the layers before the
    amplifiers get gradients 900x and 100x too small."""
    c = amplified()
    u = random_inputs(c, 3, seed=1)
    free = TIGHT.solve(c, u)
    delta = free.output_voltages(c)
    im = implicit_gradients(c, u, free, delta)
    monkeypatch.setattr(ep_module, "ep_energy_scales", lambda circuit: np.ones(circuit.depth))
    naive = ep_gradients(c, TIGHT, u, free, delta, beta_v=1e-4)
    assert _rel(naive.conductances[0], im.conductances[0]) > 0.9
    assert _rel(naive.conductances[2], im.conductances[2]) < 1e-6        # the output domain has w = w_out


def test_resistive_nudge_with_amplifiers():
    c = replace(amplified(), nudge="resistive")
    u = random_inputs(c, 4, seed=8)
    y = torch.from_numpy(np.random.default_rng(9).uniform(-0.3, 0.3, (4, 2)))
    free = TIGHT.solve(c, u)
    ep = ep_gradients(c, TIGHT, u, free, targets=y, beta_v=1e-4)
    im = implicit_gradients(c, u, free, free.output_voltages(c) - y)
    for a, b in zip(ep.conductances, im.conductances):
        assert _rel(a, b) < 1e-6
    assert _rel(ep.inputs, im.inputs) < 1e-6


@pytest.mark.parametrize("backend", ["reference", "ngspice"])
def test_gradcheck_of_the_block_deep_model(backend):
    r = subprocess.run([sys.executable, "-m", "ffebm_sim.cli", "gradcheck", "tests/data/block_deep_model.toml",
                        "--backend", backend, "--batch", "8", "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] and report["min_cosine"] >= 0.9999 and report["max_rel_error"] <= 0.01
    assert any(t["name"] == "layers.1.weights.0" for t in report["tensors"])
