"""Circuit non-idealities (issue 6 part 3): wire resistance (crossbars), device mismatch, temperature.

The deck is the authority: every option is emitted into the netlist and solved
by ngspice; the reference models all three exactly (crossbar internal nodes by
an exact Kron reduction, per-element parameters, ngspice's IS(T)), so the two
must agree to 1e-9 V, and EP must still match the exact gradient.
"""

import re
import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pytest
import torch

from ffebm_sim.backends import ReferenceBackend
from ffebm_sim.backends.ngspice import NgspiceBackend
from ffebm_sim.crossbar import crossbar_node_voltages
from ffebm_sim.backends.base import source_voltages
from ffebm_sim.circuit import Mismatch, column_node_name, free_node_names, row_node_name
from ffebm_sim.devices import thermal_voltage_v, saturation_current_at
from ffebm_sim.ep import ep_gradients, implicit_gradients
from ffebm_sim.errors import SpecError
from ffebm_sim.netlist import emit_deck
from ffebm_sim.spec import block_from_dict, load_block
from ffebm_sim.verify import AGREEMENT_TOLERANCE_V, random_nudge, verify_block

from conftest import make_block, random_inputs

HAVE_NGSPICE = shutil.which("ngspice") is not None
MISMATCH = Mismatch(conductance_sigma=0.1, is_sigma=0.5, n_sigma=0.05, seed=3)
OPTIONS = {
    "wire": dict(wire_resistance_ohm=100.0),
    "mismatch": dict(mismatch=MISMATCH),
    "hot": dict(temperature_c=85.0),
    "cold": dict(temperature_c=-20.0),
    "all": dict(wire_resistance_ohm=100.0, mismatch=MISMATCH, temperature_c=60.0),
}


def _block(options, bias=False, nudge="current", kind="double", sizes=(6, 5, 3)):
    return replace(make_block(sizes, kind=kind, seed=3, gain=4.0, bias=bias, nudge=nudge), **OPTIONS[options])


# ---- spec and circuit ------------------------------------------------------------------------

def test_spec_options_and_defaults():
    ideal = load_block("circuits/block_small.toml")
    assert ideal.is_ideal_hardware and not ideal.has_wires and ideal.mismatch is None and ideal.temperature_c == 27.0
    c = load_block("circuits/block_crossbar.toml")
    assert (c.wire_resistance_ohm, c.temperature_c) == (5.0, 60.0)
    assert c.mismatch == Mismatch(0.1, 0.5, 0.03, 7) and not c.is_ideal_hardware


@pytest.mark.parametrize("patch, match", [
    ({"wire_resistance": -1.0}, "wire_resistance"),
    ({"temperature": -300.0}, "temperature"),
    ({"mismatch": {"conductance_sigma": -0.1}}, "mismatch.conductance_sigma"),
    ({"mismatch": {"sigma": 0.1}}, "mismatch: unknown key 'sigma'"),
    ({"mismatch": {"seed": -1}}, "mismatch.seed"),
    ({"temperature": 50.0, "nonlinearity": {"kind": "ideal", "v_off": 0.1}}, "temperature"),
])
def test_bad_options_are_spec_errors(patch, match):
    spec = {"layers": [3, 2, 2], **patch}
    with pytest.raises(SpecError, match=match):
        block_from_dict(spec)


def test_mismatch_is_seeded_and_independent_of_the_conductances():
    c = _block("mismatch")
    f = [c.conductance_factors(k) for k in (1, 2)]
    d = c.diode_parameters(1)
    again = c.with_conductances([np.asarray(g) * 2 for g in c.conductances])
    for k in (1, 2):
        np.testing.assert_array_equal(again.conductance_factors(k), f[k - 1])
    np.testing.assert_array_equal(again.diode_parameters(1)["is"], d["is"])
    assert f[0].std() > 0.05 and d["is"].std() > 0 and d["n"].std() > 0
    other = replace(c, mismatch=replace(MISMATCH, seed=4))
    assert not np.array_equal(other.conductance_factors(1), f[0])
    # a quantity's draw does not depend on the other sigmas
    only_g = replace(c, mismatch=Mismatch(0.1, 0.0, 0.0, 3))
    np.testing.assert_array_equal(only_g.conductance_factors(1), f[0])


# ---- the deck --------------------------------------------------------------------------------

def test_options_absent_or_default_leave_the_deck_unchanged():
    base = make_block((4, 3, 2), kind="double", seed=1, bias=True)
    u = np.linspace(-1, 1, 4)
    for same in (replace(base, wire_resistance_ohm=0.0, temperature_c=27.0), replace(base, mismatch=Mismatch())):
        assert emit_deck(same, u) == emit_deck(base, u)
        assert emit_deck(same, u, reduced=True) == emit_deck(base, u, reduced=True)


def test_deck_carries_wires_mismatch_and_temperature():
    c = load_block("circuits/block_crossbar.toml")
    deck = emit_deck(c, np.zeros(8), control=False)
    cards = [line for line in deck.splitlines() if line and not line.startswith("*")]
    assert ".options temp=60.0 tnom=27" in cards
    # crossbars: (16 sources + 2 rails) x 6 and (6 + 2 rails) x 4, one row and one column segment per cell
    cells = 18 * 6 + 8 * 4
    assert sum(c_.startswith("RWR") for c_ in cards) == cells
    assert sum(c_.startswith("RWC") for c_ in cards) == cells
    assert all(c_.split()[3] == "5.0" for c_ in cards if c_.startswith("RW"))
    # a device between its own cross-point nodes, with its actual (mismatched) conductance
    g = np.asarray(c.conductances[0])[2, 3] * c.conductance_factors(1)[2, 3]
    assert f"R1_xp2_3 {row_node_name(1, 2, 3)} {column_node_name(1, 2, 3)} {float(1 / g)!r}" in cards
    # the row enters from its driver, the column leaves to its node
    assert "RWR1_2_0 xp2 r1_2_0 5.0" in cards and "RWC1_17_3 c1_17_3 n1_3 5.0" in cards
    assert "RWR1_16_0 vbp r1_16_0 5.0" in cards and "RWR2_7_0 vbm r2_7_0 5.0" in cards
    # one .model per diode (IS, N at 27 C, mismatched)
    p = c.diode_parameters(1)
    assert f".model dk1_4d D(IS={float(p['is'][4, 1])!r} N={float(p['n'][4, 1])!r})" in cards
    assert "DU1_4 n1_4 vhi1 dk1_4u" in cards and "DD1_4 vlo1 n1_4 dk1_4d" in cards
    assert sum(c_.startswith(".model") for c_ in cards) == 12
    assert max(len(line) for line in deck.splitlines()) < 1000


def test_reduced_form_with_wires_is_the_physical_deck_and_says_so():
    c = _block("wire")
    deck = emit_deck(c, np.zeros(6), reduced=True)
    assert "not exact with resistive lines" in deck and "IN1_0" not in deck and "VXP0" in deck


# ---- reference == ngspice ---------------------------------------------------------------------

@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("options", list(OPTIONS))
def test_reference_and_ngspice_agree_with_nonidealities(options, bias):
    c = _block(options, bias=bias)
    report = verify_block(c, samples=6, nudge=True, seed=2)
    assert report["failures"] == []
    assert report["max_abs_dv_volts"] <= AGREEMENT_TOLERANCE_V, report
    assert report["nonlinear_active_fraction"] >= 0.05, report
    # ... and the non-ideality is not a no-op
    u = random_inputs(c, 6, seed=2)
    ideal = replace(c, wire_resistance_ohm=0.0, mismatch=None, temperature_c=27.0)
    shift = (ReferenceBackend().solve(c, u).node_voltages_v - ReferenceBackend().solve(ideal, u).node_voltages_v)
    assert float(shift.abs().max()) > 1e-3


@pytest.mark.parametrize("kind", ["single", "pwl"])
def test_other_nonlinearities_and_resistive_nudge_with_everything(kind):
    c = _block("all", bias=True, nudge="resistive", kind=kind, sizes=(5, 4, 3, 2))
    report = verify_block(c, samples=4, nudge=True, seed=1)
    assert report["ok"], report


def test_training_backend_solves_the_physical_crossbar_deck():
    """ngspice with reduced=True (the training default) falls back to the exact physical deck."""
    c = _block("all", bias=True)
    u = random_inputs(c, 5, seed=4)
    nudge = random_nudge(c, 5, np.random.default_rng(1))
    be = NgspiceBackend(reduced=True)
    assert "VXP0" in be.deck_for(c, None)
    got, ref = be.solve(c, u, nudge), ReferenceBackend().solve(c, u, nudge)
    assert got.ok
    torch.testing.assert_close(got.node_voltages_v, ref.node_voltages_v, rtol=0, atol=1e-9)
    torch.testing.assert_close(got.source_currents_a, ref.source_currents_a, rtol=0, atol=1e-13)
    # mismatch without wires keeps the reduced deck, with the mismatched G1 in its Norton currents
    m = _block("mismatch", bias=True)
    assert "IN1_0" in be.deck_for(m, None)
    got, ref = be.solve(m, u, nudge), ReferenceBackend().solve(m, u, nudge)
    torch.testing.assert_close(got.node_voltages_v, ref.node_voltages_v, rtol=0, atol=1e-9)
    torch.testing.assert_close(got.source_currents_a, ref.source_currents_a, rtol=0, atol=1e-13)


def _run_ngspice(path):
    out = subprocess.run(["ngspice", "-b", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return {k: float(v) for k, v in re.findall(r"^(\S+) = (\S+)$", out.stdout, flags=re.M)}


@pytest.mark.skipif(not HAVE_NGSPICE, reason="the ngspice program is not installed")
def test_standalone_crossbar_deck_every_node_including_cross_points(tmp_path):
    """`ngspice -b` on the emitted deck: free nodes and every cross-point node match the reference."""
    c = load_block("circuits/block_crossbar.toml")
    u = np.random.default_rng(7).uniform(-1, 1, c.n_inputs)
    path = tmp_path / "crossbar.cir"
    path.write_text(emit_deck(c, u))
    printed = _run_ngspice(path)
    ut = torch.from_numpy(u[None])
    eq = ReferenceBackend().solve(c, ut)
    want = dict(zip(free_node_names(c), eq.node_voltages_v[0].tolist()))
    for k, v in enumerate(crossbar_node_voltages(c, source_voltages(c, ut), eq.node_voltages_v), start=1):
        rows, cols = v.shape[2], v.shape[3]
        for i in range(rows):
            for j in range(cols):
                want[row_node_name(k, i, j)] = float(v[0, 0, i, j])
                want[column_node_name(k, i, j)] = float(v[0, 1, i, j])
    assert len(want) == 6 + 4 + 2 * (18 * 6 + 8 * 4)
    assert set(want) <= set(printed)
    err = max(abs(printed[n] - x) for n, x in want.items())
    assert err <= 1e-9, err
    # IR drop is there: row lines sag along their length
    assert abs(want["r1_0_5"] - want["r1_0_0"]) > 1e-4


@pytest.mark.skipif(not HAVE_NGSPICE, reason="the ngspice program is not installed")
def test_saturation_current_temperature_law_against_ngspice(tmp_path):
    """IS(T) = IS*(T/Tnom)^(XTI/N)*exp(-EG/(N*Vt(T))*(1-T/Tnom)): a forward-biased junction's current
    in ngspice at several temperatures and emission coefficients, against the formula."""
    lines = ["* IS(T) check", ".options reltol=1e-9 vntol=1e-12 abstol=1e-18 gmin=1e-12"]
    cases = [(t, n) for t in (-40.0, 0.0, 27.0, 85.0, 125.0) for n in (1.0, 1.7)]
    lines += [f".model dm{k} D(IS=1e-14 N={n!r})" for k, (_, n) in enumerate(cases)]
    lines += ["VD a 0 DC 0.35"] + [f"D{k} a 0 dm{k}" for k in range(len(cases))]
    got = {}
    for t in sorted({t for t, _ in cases}):
        path = tmp_path / f"t{t}.cir"
        path.write_text("\n".join(lines + [f".options temp={t!r} tnom=27", ".control", "set numdgt=17",
                                           "op"] + [f"print @d{k}[id]" for k in range(len(cases))] +
                                  ["quit 0", ".endc", ".end", ""]))
        printed = _run_ngspice(path)
        for k, (tk, n) in enumerate(cases):
            if tk == t:
                got[(t, n)] = printed[f"@d{k}[id]"]
    for (t, n), i_ng in got.items():
        is_t = saturation_current_at(1e-14, n, t)
        i_ref = is_t * (np.exp(0.35 / (n * thermal_voltage_v(t))) - 1) + 1e-12 * 0.35
        assert i_ng == pytest.approx(i_ref, rel=1e-9), (t, n)
    # the temperature law matters: at 85 C IS grows by more than two decades
    assert saturation_current_at(1e-14, 1.0, 85.0) / 1e-14 > 100


# ---- gradients --------------------------------------------------------------------------------

def _flat(g):
    parts = list(g.conductances) + (list(g.bias_pos) + list(g.bias_neg) if g.bias_pos else [])
    return torch.cat([p.flatten() for p in parts]), g.inputs.flatten()


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("options", ["wire", "mismatch", "all"])
def test_implicit_gradient_matches_finite_differences(options):
    """Wrt the programmed conductances (mismatch: the hardware conducts G*factor) and the inputs."""
    c = _block(options, bias=True)
    u = random_inputs(c, 3, seed=2)
    w = torch.from_numpy(np.random.default_rng(1).normal(0, 1, (3, 3)))
    ref = ReferenceBackend()
    exact = implicit_gradients(c, u, ref.solve(c, u), w)

    def loss(circuit, uu):
        return float((ref.solve(circuit, uu).output_voltages(circuit) * w).sum())
    g = [np.array(x) for x in c.conductances]
    bp, bn = [np.array(x) for x in c.bias_pos], [np.array(x) for x in c.bias_neg]
    h = 1e-9
    for layer, idx in ((0, (0, 0)), (0, (9, 4)), (1, (2, 1))):
        plus, minus = [x.copy() for x in g], [x.copy() for x in g]
        plus[layer][idx] += h
        minus[layer][idx] -= h
        fd = (loss(c.with_conductances(plus), u) - loss(c.with_conductances(minus), u)) / (2 * h)
        assert float(exact.conductances[layer][idx]) == pytest.approx(fd, rel=1e-5, abs=1e-6)
    for arrays, grad in ((bp, exact.bias_pos), (bn, exact.bias_neg)):
        plus, minus = [x.copy() for x in arrays], [x.copy() for x in arrays]
        plus[1][1] += h
        minus[1][1] -= h
        args = (lambda a: (g, a, bn)) if arrays is bp else (lambda a: (g, bp, a))
        fd = (loss(c.with_conductances(*args(plus)), u) - loss(c.with_conductances(*args(minus)), u)) / (2 * h)
        assert float(grad[1][1]) == pytest.approx(fd, rel=1e-5, abs=1e-6)
    e = 1e-6
    up, um = u.clone(), u.clone()
    up[1, 2] += e
    um[1, 2] -= e
    assert float(exact.inputs[1, 2]) == pytest.approx((loss(c, up) - loss(c, um)) / (2 * e), rel=1e-6)


@pytest.mark.parametrize("options", ["wire", "mismatch", "hot", "all"])
def test_ep_matches_the_implicit_gradient(options):
    """EP from the drops across each device at its own cross-point nodes; centered error O(beta^2)."""
    c = _block(options, bias=True)
    u = random_inputs(c, 6, seed=1)
    ref = ReferenceBackend()
    free = ref.solve(c, u)
    delta = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (6, 3)))
    exact_p, exact_u = _flat(implicit_gradients(c, u, free, delta))
    errs = []
    for beta in (4e-2, 4e-3):
        p, g_u = _flat(ep_gradients(c, ref, u, free, delta, beta_v=beta))
        errs.append(max(_rel(p, exact_p), _rel(g_u, exact_u)))
    assert errs[1] < 1e-4, errs
    assert 60 < errs[0] / errs[1] < 140, errs


@pytest.mark.parametrize("options", ["wire", "all"])
def test_ep_on_ngspice_matches_the_implicit_gradient(options):
    c = _block(options, bias=True)
    u = random_inputs(c, 5, seed=3)
    delta = torch.from_numpy(np.random.default_rng(2).normal(0, 1, (5, 3)))
    exact_p, exact_u = _flat(implicit_gradients(c, u, ReferenceBackend().solve(c, u), delta))
    ng = NgspiceBackend()
    p, g_u = _flat(ep_gradients(c, ng, u, ng.solve(c, u), delta))
    assert _rel(p, exact_p) < 1e-4 and _rel(g_u, exact_u) < 1e-4
    assert float(torch.nn.functional.cosine_similarity(p, exact_p, dim=0)) > 0.999999


def test_model_spec_with_options_trains_a_step():
    """A [blocks.circuit] table with the options builds, runs forward and backward (EP) and moves G."""
    from ffebm_sim.model import build_model
    spec = {"name": "t", "input_size": 4, "loss": {"kind": "cross_entropy", "logit_scale": 20.0},
            "blocks": [{"type": "energy", "circuit": {
                "layers": [4, 3], "input_gain": 4.0, "output": "clamped", "wire_resistance": 20.0,
                "temperature": 50.0, "mismatch": {"conductance_sigma": 0.1, "is_sigma": 0.3, "seed": 1},
                "nonlinearity": {"kind": "double", "v_off": 0.0, "diode": {"is": 1e-12, "n": 1.0}},
                "conductances": {"low": 0.0, "high": 1e-3, "seed": 1}}}]}
    model = build_model(spec)
    block = model.energy_blocks[0]
    assert block.circuit.has_wires and block.circuit.temperature_c == 50.0
    x = torch.rand(5, 4, dtype=torch.float64)
    loss, _ = model.loss(x, torch.tensor([0, 1, 2, 0, 1]))
    loss.backward()
    assert all(w.grad is not None and float(w.grad.abs().max()) > 0 for w in block.all_weights())


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_wide_crossbars_more_columns_than_rows(bias):
    """Crossbars numbered along their shorter side (here the rows): 4x7 and 7x9 (+ rails)."""
    c = replace(make_block((2, 7, 9), kind="double", seed=1, gain=4.0, bias=bias),
                wire_resistance_ohm=100.0, mismatch=Mismatch(0.1, 0.3, 0.02, 1))
    report = verify_block(c, samples=4, nudge=True, seed=1)
    assert report["ok"] and report["nonlinear_active_fraction"] > 0.05, report
