"""`ffebm analyze`: power by element, settling of an RC node, table round trip, the command end to end."""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import analyze_tiny, make_block, random_inputs
from ffebm_sim.analyze.cli import analyze
from ffebm_sim.analyze.power import element_powers
from ffebm_sim.analyze.settling import node_capacitances, simulate_step, slowest_time_constant
from ffebm_sim.analyze.spice import operating_points
from ffebm_sim.analyze.tables import block_spec_toml, npz_bytes, programming_trajectory, read_table, table_csv
from ffebm_sim.backends import Nudge
from ffebm_sim.backends.reference import ReferenceBackend
from ffebm_sim.circuit import BlockCircuit, Nonlinearity
from ffebm_sim.devices import THERMAL_VOLTAGE_V
from ffebm_sim.errors import SpecError
from ffebm_sim.hardware import get_device
from ffebm_sim.netlist import emit_deck
from ffebm_sim.spec import load_block
from ffebm_sim.train import TrainConfig, train


def _rich_block():
    """Every element kind whose power counts: clamps at +-v_off (rails that deliver and sink), single
    clamps on the output, bias rails, and (in the test) nudge current sources."""
    base = make_block((4, 6, 3), "double", seed=5, gain=2.0, bias=True, v_off=0.15)
    return BlockCircuit(base.layer_sizes, base.conductances, base.hidden, Nonlinearity("single", 0.1, base.hidden[0].diode),
                        base.input_gain_v, 0.8, base.bias_pos, base.bias_neg, base.gmin_s, name="rich")


def _diode(v, isat, n, gmin):
    """ngspice's level-1 junction at DC (written again here, on purpose)."""
    vte = n * THERMAL_VOLTAGE_V
    if v >= -3 * vte:
        return isat * (math.exp(v / vte) - 1) + gmin * v
    return -isat * (1 + (3 * vte / (math.e * v)) ** 3) + gmin * v


def _independent(circuit, u, x, i_nudge):
    """(network dissipation, sum of max(0, delivered) over sources) by looping over every element."""
    a, n0, m = circuit.input_gain_v, circuit.n_inputs, circuit.depth
    vs = [a * u[i] for i in range(n0)] + [-a * u[i] for i in range(n0)]
    nodes = [vs] + [list(x[circuit.layer_slice(k)]) for k in range(1, m + 1)]
    dissipated, delivered = 0.0, {}
    for k in range(1, m + 1):
        g = circuit.conductances[k - 1]
        for i in range(g.shape[0]):
            for j in range(g.shape[1]):
                dissipated += g[i, j] * (nodes[k - 1][i] - nodes[k][j]) ** 2
                if k == 1:
                    delivered[("src", i)] = delivered.get(("src", i), 0.0) + vs[i] * g[i, j] * (vs[i] - nodes[1][j])
        vb = circuit.bias_voltage_v
        for j, v in enumerate(nodes[k]):
            gp, gn = circuit.bias_pos[k - 1][j], circuit.bias_neg[k - 1][j]
            dissipated += gp * (v - vb) ** 2 + gn * (v + vb) ** 2
            delivered["vbp"] = delivered.get("vbp", 0.0) + vb * gp * (vb - v)
            delivered["vbm"] = delivered.get("vbm", 0.0) + (-vb) * gn * (-vb - v)
        nl = circuit.layer_nonlinearity(k)
        d = nl.emitted_diode
        up, down = nl.clamps_up(len(nodes[k])), nl.clamps_down(len(nodes[k]))
        for j, v in enumerate(nodes[k]):
            if up[j]:
                vd = v - nl.v_off_v
                i = _diode(vd, d.saturation_current_a, d.emission_coefficient, circuit.gmin_s)
                dissipated += vd * i
                delivered[("hi", k)] = delivered.get(("hi", k), 0.0) - nl.v_off_v * i
            if down[j]:
                vd = -nl.v_off_v - v
                i = _diode(vd, d.saturation_current_a, d.emission_coefficient, circuit.gmin_s)
                dissipated += vd * i
                delivered[("lo", k)] = delivered.get(("lo", k), 0.0) - nl.v_off_v * i
    for j, v in enumerate(nodes[m]):
        delivered[("nudge", j)] = v * i_nudge[j]
    return dissipated, sum(max(0.0, p) for p in delivered.values()), sum(delivered.values())


def test_power_equals_independent_sum_of_element_powers():
    circuit = _rich_block()
    u = random_inputs(circuit, 6, seed=3)
    i_nudge = torch.from_numpy(np.random.default_rng(0).normal(0, 2e-5, (6, 3)))
    ref = ReferenceBackend().solve(circuit, u, Nudge(currents_a=i_nudge))
    assert ref.ok
    spice = operating_points(circuit, u.numpy(), i_nudge.numpy())          # what `ffebm analyze` measures
    assert spice.ok
    p = element_powers(circuit, u.numpy(), spice.node_voltages_v, nudge_currents_a=i_nudge.numpy())
    sinks = 0
    for b in range(6):
        dissipated, supplied, net = _independent(circuit, u[b].numpy(), ref.node_voltages_v[b].numpy(), i_nudge[b].numpy())
        assert p.network_w[b] == pytest.approx(dissipated, rel=1e-9)
        assert p.total_w[b] == pytest.approx(supplied, rel=1e-9)
        assert p.supplied_w[b] == pytest.approx(supplied, rel=1e-9)
        # Tellegen, with ngspice's own branch currents: the sources deliver what the elements dissipate
        assert spice.source_power_w[b] == pytest.approx(dissipated, rel=1e-9)
        assert net == pytest.approx(dissipated, rel=1e-9)
        sinks += supplied > dissipated * (1 + 1e-6)
    assert sinks > 0                    # the case where total != network dissipation is exercised
    assert p.layers_w.shape == (6, 2) and (p.nonlinear_w > 0).all()


def _rc(g_s=1e-3, c_f=1e-12):
    return BlockCircuit((1, 1), (np.array([[g_s], [0.0]]),), (), None, 1.0, name="rc"), c_f


def test_single_rc_node_settles_like_one_minus_exp():
    circuit, c = _rc()
    tau = c / 1e-3
    caps = node_capacitances(circuit, c, 0.0)
    assert slowest_time_constant(circuit, np.zeros((1, 1)), caps) == pytest.approx(tau, rel=1e-12)
    deck = emit_deck(circuit, np.array([1.0]), control=False)
    tr = simulate_step(circuit, deck, np.array([0.0]), np.array([1.0]), caps, slice(0, 1), np.array([0.01]))
    assert tr.message == ""
    assert tr.settling_s == pytest.approx(tau * math.log(100), rel=1e-2)
    assert abs(tr.settling_s / (tau * math.log(100)) - 1) < 1e-4          # in fact far closer
    expected = 1 - np.exp(-tr.time_s / tau)
    assert np.abs(tr.node_voltages_v[:, 0] - expected).max() < 1e-4
    # wire capacitance: half per cell to the node (one resistor here)
    assert node_capacitances(circuit, c, 4e-13)[0] == pytest.approx(c + 2e-13)


def test_tables_round_trip_into_a_block_spec(tmp_path):
    circuit = make_block((3, 5, 4), "double", seed=9, bias=True, v_off=0.1)
    csv_text = table_csv(circuit)
    (tmp_path / "t.csv").write_text(csv_text)
    arrays = read_table(tmp_path / "t.csv")
    assert sorted(arrays) == ["bias_neg1", "bias_neg2", "bias_pos1", "bias_pos2", "g1", "g2"]
    (tmp_path / "t.npz").write_bytes(npz_bytes(arrays))
    table = {"name": "rt", "layers": [3, 5, 4], "input_gain": circuit.input_gain_v, "output": "linear",
             "nonlinearity": {"kind": "double", "v_off": 0.1, "diode": {"is": 1e-8, "n": 1.0}},
             "bias": {"voltage": circuit.bias_voltage_v, "low": 0.0, "high": 1e-5}}
    (tmp_path / "rt.toml").write_text(block_spec_toml(table, "t.npz", "round trip"))
    back = load_block(tmp_path / "rt.toml")
    for a, b in zip(back.conductances + back.bias_pos + back.bias_neg,
                    circuit.conductances + circuit.bias_pos + circuit.bias_neg):
        assert np.array_equal(a, b)                       # bit for bit
    u = random_inputs(circuit, 4)
    e1, e2 = ReferenceBackend().solve(circuit, u), ReferenceBackend().solve(back, u)
    assert torch.equal(e1.node_voltages_v, e2.node_voltages_v)
    s1, s2 = operating_points(circuit, u.numpy()), operating_points(back, u.numpy())
    assert np.array_equal(s1.node_voltages_v, s2.node_voltages_v)
    header = csv_text.splitlines()[0]
    assert header == "layer,row,column,from_node,to_node,conductance_s,resistance_ohm"


def test_pulse_counts_from_reset():
    circuit = make_block((2, 3), "double", seed=1)
    device = get_device("reram", 0.0, 1e-4)
    lines = table_csv(circuit, device).splitlines()
    assert lines[0].endswith("target_pulses,programmed_s")
    traj = programming_trajectory(device)
    assert traj[0] == 0.0 and np.all(np.diff(traj) > 0)
    for line in lines[1:]:
        cells = line.split(",")
        g, n, reached = float(cells[5]), int(cells[7]), float(cells[8])
        assert reached == traj[n]
        assert abs(reached - g) <= max(abs(traj[max(n - 1, 0)] - g), abs(traj[min(n + 1, len(traj) - 1)] - g))
    linear = get_device("ideal", 0.0, 1e-4)            # constant steps: n = round(g/dg)
    traj = programming_trajectory(linear)
    assert len(traj) == 10001 and traj[5000] == pytest.approx(5e-5)




@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("analyze")
    spec = d / "tiny.toml"
    spec.write_text(analyze_tiny())
    train(TrainConfig(model=str(spec), out=str(d / "run"), epochs=1, batch_size=128), log=lambda m: None)
    return d, spec, d / "run" / "checkpoints" / "epoch_0001.pt"


def _run(*args):
    return CliRunner().invoke(analyze, [str(a) for a in args])


def test_analyze_writes_report_tables_pictures_and_json(trained):
    d, spec, ckpt = trained
    out = d / "out"
    r = _run(spec, "--checkpoint", ckpt, "--samples", 3, "--out", out, "--device", "reram", "--json")
    assert r.exit_code == 0, r.output + repr(r.exception)
    a = json.loads(r.stdout.strip().splitlines()[-1])
    assert a == json.loads((out / "analysis.json").read_text())
    (b,) = a["blocks"]
    for key in ("power_w_mean", "settling_s_median", "settling_s_worst", "energy_j_per_inference"):
        assert isinstance(b[key], float) and b[key] > 0, key
    assert b["settling_s_worst"] >= b["settling_s_median"]
    assert set(b["phases"]) == {"free", "nudged +beta", "nudged -beta"}
    assert b["phases"]["free"]["tellegen_max_rel"] < 1e-9 and b["reference_max_abs_dv_v"] < 1e-9
    assert all(p["power_balance_rel_error"] <= 1e-9 for p in b["phases"].values())
    assert b["power_balance_rel_error"] == max(p["power_balance_rel_error"] for p in b["phases"].values())
    assert len(b["phases"]["free"]["power_by_layer_w_mean"]) == 2
    # every picture and table the report points at exists
    report = (out / "report.md").read_text()
    for rel in list(b["tables"].values()) + [b["figures"]["conductances"], b["figures"]["node_voltages"],
                                             b["figures"]["settling"]] + b["figures"]["iv"]:
        assert (out / rel).is_file(), rel
        assert rel in report
    assert (out / b["figures"]["settling"]).read_bytes()[:4] == b"\x89PNG"
    assert "target_pulses" in (out / b["tables"]["csv"]).read_text().splitlines()[0]
    # the written block spec rebuilds the trained block: the same equilibrium
    from ffebm_sim.analyze.analysis import AnalyzeOptions, load_for_analysis
    model, infos = load_for_analysis(spec, ckpt, AnalyzeOptions())
    rebuilt = load_block(out / b["tables"]["spec"])
    u = random_inputs(rebuilt, 3)
    assert torch.equal(ReferenceBackend().solve(rebuilt, u).node_voltages_v,
                       ReferenceBackend().solve(infos[0].module.circuit, u).node_voltages_v)
    # a non-empty --out is refused without --force, and left alone
    before = (out / "analysis.json").read_bytes()
    r = _run(spec, "--checkpoint", ckpt, "--samples", 1, "--out", out, "--no-nudged")
    assert isinstance(r.exception, SpecError) and "--force" in str(r.exception)
    assert (out / "analysis.json").read_bytes() == before


def test_capacitance_keys_in_the_spec_and_linear_scaling(trained):
    d, _, ckpt = trained
    settle = {}
    for c in (1e-14, 4e-14):
        spec = d / f"tiny_c{c}.toml"
        spec.write_text(analyze_tiny(f"node_capacitance_f = {c!r}"))
        out = d / f"out_c{c}"
        r = _run(spec, "--checkpoint", ckpt, "--samples", 2, "--out", out, "--no-nudged")
        assert r.exit_code == 0, r.output + repr(r.exception)
        b = json.loads((out / "analysis.json").read_text())["blocks"][0]
        assert b["node_capacitance_f"] == c
        settle[c] = b["settling_s_median"]
    assert settle[4e-14] / settle[1e-14] == pytest.approx(4.0, rel=1e-3)     # the network is linear in C
    bad = d / "tiny_bad.toml"
    bad.write_text(analyze_tiny("node_capacitance_f = -1.0"))
    r = _run(bad, "--checkpoint", ckpt, "--out", d / "never")
    assert isinstance(r.exception, SpecError) and "node_capacitance_f" in str(r.exception)
    assert not (d / "never").exists()
    r = _run(d / "tiny.toml", "--checkpoint", ckpt, "--out", d / "never", "--device", "memristor9")
    assert isinstance(r.exception, SpecError) and "reram" in str(r.exception)
