"""Energy conservation on ngspice's operating points, element by element (ffebm_sim.elements, issue 13).

What the sources deliver (ngspice's own branch currents) must equal what the
branches absorb (the element laws at ngspice's node voltages), on ideal blocks
and on blocks with crossbar wires, mismatch and temperature.
"""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import analyze_tiny, make_block, random_inputs
from ffebm_sim.analyze.phases import solve_phase
from ffebm_sim.analyze.power import element_powers
from ffebm_sim.analyze.spice import operating_points
from ffebm_sim.circuit import BlockCircuit, Nonlinearity, clamp_diode_voltage, source_voltages
from ffebm_sim.devices import DiodeModel, diode_current, pwl_current_and_conductance
from ffebm_sim.elements import (branch_currents_a, branch_power_w, flatten, node_voltages,
                                power_balance_rel_error)
from ffebm_sim.netlist import emit_deck
from ffebm_sim.spec import load_block

CROSSBAR = Path(__file__).resolve().parent.parent / "circuits" / "block_crossbar.toml"
#: The bar of issue 13 for ``power_balance_rel_error``; measured here about 1e-14.
BALANCE = 1e-9


def _rich_block():
    """Clamps at +-v_off (rails that deliver and sink), single clamps on the output, bias rails."""
    base = make_block((4, 6, 3), "double", seed=5, gain=2.0, bias=True, v_off=0.15)
    return BlockCircuit(base.layer_sizes, base.conductances, base.hidden, Nonlinearity("single", 0.1, base.hidden[0].diode),
                        base.input_gain_v, 0.8, base.bias_pos, base.bias_neg, base.gmin_s, name="rich")


def _crossbar(which: str) -> BlockCircuit:
    """circuits/block_crossbar.toml (wires + mismatch + 60 C) with only the non-ideality ``which`` kept."""
    full = load_block(CROSSBAR)
    keep = {"wire": dict(mismatch=None, temperature_c=27.0), "mismatch": dict(wire_resistance_ohm=0.0, temperature_c=27.0),
            "hot": dict(wire_resistance_ohm=0.0, mismatch=None), "all": {}}[which]
    return replace(full, **keep)


def _phases(circuit, B=4, seed=1):
    u = random_inputs(circuit, B, seed=seed).numpy()
    rng = np.random.default_rng(seed)
    n_out = circuit.n_outputs
    return [solve_phase("free", circuit, u),
            solve_phase("nudged +beta", circuit, u, currents=rng.normal(0, 2e-5, (B, n_out))),
            solve_phase("nudged -beta", circuit, u, g_nudge=-2e-6, targets=rng.uniform(-0.2, 0.2, (B, n_out)))]


@pytest.mark.parametrize("which", ["ideal", "wire", "mismatch", "hot", "all"])
def test_sources_deliver_what_the_branches_absorb(which):
    circuit = _rich_block() if which == "ideal" else _crossbar(which)
    for ph in _phases(circuit):
        assert all(m == "" for m in ph.messages), ph.messages
        assert ph.balance.size == 4 and ph.balance.max() <= BALANCE, (ph.name, ph.balance)
        assert (ph.power.network_w > 0).all()
    if which in ("wire", "all"):
        assert ph.elements.n_unknown > circuit.n_free                 # the internal crossbar nodes were read
        assert (ph.power.wires_w > 0).all()


@pytest.mark.parametrize("which", ["wire", "mismatch", "hot"])
def test_the_balance_sees_a_nominal_model(which):
    """The check can fail: the same ngspice solution with the elements of the nominal circuit
    (no wires / no mismatch / 27 C) is far from conserving energy."""
    circuit = _crossbar(which)
    u = random_inputs(circuit, 3, seed=2).numpy()
    ph = solve_phase("free", circuit, u)
    nominal = replace(circuit, wire_resistance_ohm=0.0, mismatch=None, temperature_c=27.0)
    wrong = flatten(nominal)
    assert wrong.vsource_names == ph.elements.vsource_names
    powers = branch_power_w(wrong, node_voltages(wrong, ph.x, u), vsource_currents_a=ph.vsource_currents_a)
    assert ph.balance.max() <= BALANCE
    assert power_balance_rel_error(wrong, powers).min() > 1e3 * BALANCE


def test_kcl_source_currents_equal_ngspice_branch_currents():
    """A voltage source's current from KCL at its node (the element laws) is ngspice's i(V)."""
    circuit = _crossbar("all")
    u = random_inputs(circuit, 3, seed=4).numpy()
    from ffebm_sim.analyze.phases import spice_operating_points
    el = flatten(circuit)
    volts, branch, messages = spice_operating_points(circuit, el, u)
    assert messages == ("", "", "")
    V = node_voltages(el, volts, u)
    kcl = branch_currents_a(el, V)
    from_kcl = np.concatenate([i for g, i in zip(el.groups, kcl) if g.law == "vsource"], axis=1)
    scale = np.abs(branch).max()
    assert np.abs(from_kcl - branch).max() <= 1e-9 * scale
    # and the internal crossbar nodes solved from the terminals are ngspice's
    solved = node_voltages(el, volts[:, :el.n_free], u)[:, :el.n_unknown]
    assert np.abs(solved - volts).max() < 1e-9


def test_every_deck_card_is_a_branch():
    """As many conductance branches as R cards, junction branches as junctions in the deck, one source per V/I card."""
    for circuit in (_rich_block(), _crossbar("all")):
        deck = emit_deck(circuit, control=False, nudge_conductance_s=1e-6, nudge_target_v=np.zeros(circuit.n_outputs))
        el = flatten(circuit, 1e-6)
        cards = [line.split()[0].lower() for line in deck.splitlines() if line and line[0].isalpha()]
        count = {law: sum(g.size for g in el.groups if g.law == law) for law in ("conductance", "junction", "vsource", "isource")}
        assert count["conductance"] == sum(c.startswith("r") for c in cards)
        assert count["vsource"] == sum(c.startswith("v") for c in cards)
        assert count["isource"] == sum(c.startswith("i") for c in cards)
        subckt_diodes = sum({"double": 2, "single": 1}[circuit.layer_nonlinearity(k).kind] * circuit.layer_sizes[k]
                            for k in range(1, circuit.depth + 1) if circuit.layer_nonlinearity(k) is not None)
        assert count["junction"] == subckt_diodes
        # the junction terminals are the clamps' orientation (circuit.clamp_diode_voltage)
        V = node_voltages(el, np.random.default_rng(0).normal(0, 0.3, (2, circuit.n_free)), np.ones(circuit.n_inputs))
        for g in el.groups:
            if g.law == "junction":
                upward = bool(el.node_names[g.b[0]].startswith("vhi"))
                node = g.a if upward else g.b
                assert np.array_equal(V[:, g.a] - V[:, g.b], clamp_diode_voltage(V[:, node], V[0, (g.b if upward else g.a)[0]], upward))


# ---- the elements reproduce the nominal formulas of the former analyze/power.py ------------------------

def _nominal_powers(circuit, u, x, i_nudge):
    """The former analyze/power.py, nominal parameters (ideal hardware only), kept as the reference:
    (resistors (B, m), bias (B, m), nonlinear (B, m), delivered by source group)."""
    B, m = x.shape[0], circuit.depth
    v_src = source_voltages(circuit, u)
    layers = [v_src] + [x[:, circuit.layer_slice(k)] for k in range(1, m + 1)]
    res, bias, nonlin = np.zeros((B, m)), np.zeros((B, m)), np.zeros((B, m))
    src = {}
    for k in range(1, m + 1):
        g = np.asarray(circuit.conductances[k - 1])
        d = layers[k - 1][:, :, None] - layers[k][:, None, :]
        res[:, k - 1] = np.einsum("bij,ij->b", d * d, g)
    g1 = np.asarray(circuit.conductances[0])
    src["inputs"] = v_src * (v_src * g1.sum(1) - layers[1] @ g1.T)
    vb, pp, pn = circuit.bias_voltage_v, np.zeros(B), np.zeros(B)
    for k in range(1, m + 1):
        gp, gn, xk = np.asarray(circuit.bias_pos[k - 1]), np.asarray(circuit.bias_neg[k - 1]), layers[k]
        bias[:, k - 1] = ((xk - vb) ** 2 * gp).sum(1) + ((xk + vb) ** 2 * gn).sum(1)
        pp += vb * ((vb - xk) * gp).sum(1)
        pn += -vb * ((-vb - xk) * gn).sum(1)
    src["bias_rails"] = np.stack([pp, pn], 1)
    rails = []
    for k in range(1, m + 1):
        nl, xk, n = circuit.layer_nonlinearity(k), layers[k], circuit.layer_sizes[k]
        if nl is None:
            continue
        if nl.kind == "pwl":
            i, _ = pwl_current_and_conductance(torch.from_numpy(xk.copy()), nl.table)
            nonlin[:, k - 1] = (xk * i.numpy()).sum(1)
            continue
        d = nl.emitted_diode
        model = DiodeModel(d.saturation_current_a, d.emission_coefficient, circuit.gmin_s)
        up, down = nl.clamps_up(n), nl.clamps_down(n)
        vu, vd = xk[:, up] - nl.v_off_v, -nl.v_off_v - xk[:, down]
        iu = diode_current(torch.from_numpy(vu.copy()), model).numpy()
        idn = diode_current(torch.from_numpy(vd.copy()), model).numpy()
        nonlin[:, k - 1] = (vu * iu).sum(1) + (vd * idn).sum(1)
        rails += [nl.v_off_v * -iu.sum(1), -nl.v_off_v * idn.sum(1)]
    if rails:
        src["clamp_rails"] = np.stack(rails, 1)
    src["nudge"] = layers[m] * i_nudge
    return res, bias, nonlin, src


@pytest.mark.parametrize("kind", ["double", "pwl"])
def test_elements_equal_the_nominal_formulas_on_an_ideal_block(kind):
    circuit = _rich_block() if kind == "double" else make_block((4, 6, 3), "pwl", seed=2, bias=True)
    u = random_inputs(circuit, 5, seed=3).numpy()
    i_nudge = np.random.default_rng(0).normal(0, 2e-5, (5, circuit.n_outputs))
    x = operating_points(circuit, u, i_nudge).node_voltages_v
    p = element_powers(circuit, u, x, nudge_currents_a=i_nudge)
    res, bias, nonlin, src = _nominal_powers(circuit, u, x, i_nudge)
    for new, old in ((p.resistors_w, res), (p.bias_w, bias), (p.nonlinear_w, nonlin)):
        assert np.abs(new - old).max() <= 1e-12 * np.abs(old).max()
    assert set(p.sources_w) == set(src)
    for key in p.sources_w:
        assert np.abs(p.sources_w[key] - src[key]).max() <= 1e-12 * np.abs(src[key]).max(), key


def test_kron_reduced_transient_deck_has_the_full_decks_operating_point():
    """The crossbars eliminated exactly (internal nodes hold no charge): same free-node voltages."""
    from ffebm_sim.analyze.settling import kron_reduced_deck
    from ffebm_sim.analyze.spice import dc_sweep
    from ffebm_sim.circuit import free_node_names
    circuit = _crossbar("all")
    u = random_inputs(circuit, 1, seed=6).numpy()[0]
    deck = emit_deck(circuit, u, control=False)
    reduced = kron_reduced_deck(deck, flatten(circuit))
    assert "r1_0_0" in deck and "r1_0_0" not in reduced and "RK0 " in reduced
    nodes = free_node_names(circuit)
    full, red = (dc_sweep(d, "inudge0", 0.0, 0.0, 1.0, nodes) for d in (deck, reduced))
    assert np.abs(full - red).max() < 1e-12


NONIDEAL = analyze_tiny(circuit_extra="wire_resistance = 8.0\ntemperature = 60.0\nmismatch = { conductance_sigma = 0.2, "
                        "is_sigma = 1.0, n_sigma = 0.05, seed = 3 }", name="tiny_nonideal")



def test_analyze_a_trained_block_with_wires_mismatch_and_temperature(tmp_path):
    import json
    from click.testing import CliRunner
    from ffebm_sim.analyze.cli import analyze
    from ffebm_sim.train import TrainConfig, train
    spec = tmp_path / "tiny_nonideal.toml"
    spec.write_text(NONIDEAL)
    train(TrainConfig(model=str(spec), out=str(tmp_path / "run"), epochs=1, batch_size=128), log=lambda m: None)
    out = tmp_path / "out"
    r = CliRunner().invoke(analyze, [str(spec), "--checkpoint", str(tmp_path / "run" / "checkpoints" / "epoch_0001.pt"),
                                     "--samples", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output + repr(r.exception)
    (b,) = json.loads((out / "analysis.json").read_text())["blocks"]
    assert b["non_idealities"]["wire_resistance_ohm"] == 8.0 and b["non_idealities"]["temperature_c"] == 60.0
    assert b["nodes_solved"] == 15 + 2 * (12 * 5 + 5 * 10)             # free + every cross-point row/column node
    assert set(b["phases"]) == {"free", "nudged +beta", "nudged -beta"}
    for ph in b["phases"].values():
        assert ph["samples"] == 2 and ph["power_balance_rel_error"] <= BALANCE
        assert all(w > 0 for w in ph["wires_by_layer_w_mean"])
    assert b["power_balance_rel_error"] <= BALANCE and b["reference_max_abs_dv_v"] < 1e-9
    assert b["energy_j_per_inference"] > 0 and b["settling_s_median"] > 0
    assert b["iv_max_rel_diff"] < 1e-6             # the I-V law at 60 C with node 0's own IS and N
