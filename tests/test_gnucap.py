"""gnucap, a second simulator, on the spice3 decks of every example block (issue 15).

Each deck is emitted as ``ffebm netlist SPEC --format spice3 --seed 5`` would write
it and run unchanged through ``gnucap -b``; ngspice solves the same circuit as
``ffebm solve SPEC --seed 5 --backend ngspice`` does. The agreement gnucap's models
allow (docs/formats.md): 1e-5 V at 27 C, 1e-3 V elsewhere. Two blocks miss 1e-5 V,
by the thermal voltage alone: they are strict xfails with the measured numbers, and
``test_gnucap_is_the_reference_with_gnucaps_thermal_voltage`` shows that folding
gnucap's constants into the reference leaves < 1e-6 V at 27 C everywhere.
"""

import math
import os
import tempfile

import numpy as np
import pytest
import torch

from ffebm_sim.backends import ReferenceBackend, get_backend
from ffebm_sim.circuit import free_node_names
from ffebm_sim.devices import saturation_current_at, thermal_voltage_v
from ffebm_sim.examples import block_specs, model_specs
from ffebm_sim.gnucap import (THERMAL_VOLTAGE_RATIO, GnucapFailed, GnucapUnavailable, agreement_tolerance_v,
                              gnucap_path, gnucap_view, parse_number, run_gnucap)
from ffebm_sim.model import build_model
from ffebm_sim.netlist import emit_deck
from ffebm_sim.spec import load_block

pytestmark = pytest.mark.skipif(gnucap_path() is None,
                                reason="gnucap is not installed (make setup installs it: apt-get install gnucap)")

#: Physical decks with thousands of input resistors take gnucap minutes to read (its parser is
#: quadratic in the element count: mnist block 1, 230400 resistors, did not finish in 600 s):
#: those run as their Norton-reduced deck, the same node voltages (ngspice: 7e-16 V apart).
REDUCED_ABOVE_INPUTS = 500

#: Measured at seed 5 (V): gnucap's 28.25 ppm lower thermal voltage on nodes near 0.5 V.
OVER_1E5 = {"block_deep": 1.252e-5, "digits_ffebm_block1": 1.473e-5}


def _has_pwl(circuit):
    return any((nl := circuit.layer_nonlinearity(k)) is not None and nl.kind == "pwl"
               for k in range(1, circuit.depth + 1))


def _cases():
    cases = [(p.stem, str(p), None) for p in block_specs()]
    for spec in model_specs():
        if spec.stem in ("digits_ffebm", "mnist_ffebm"):
            for k, _ in enumerate(build_model(spec).energy_blocks, start=1):
                cases.append((f"{spec.stem}_block{k}", str(spec), k))
    return [pytest.param(name, spec, k, id=name, marks=[pytest.mark.xfail(
        strict=True, reason=f"gnucap-ngspice {OVER_1E5[name]:.3e} V > 1e-5 V: the thermal voltage (see module doc)")]
        if name in OVER_1E5 else []) for name, spec, k in cases]


def _circuit(spec, k):
    if k is None:
        return load_block(spec)
    return build_model(spec).energy_blocks[k - 1].circuit


def _gnucap_voltages(circuit, u, reduced):
    """Run the deck gnucap gets: the spice3 text itself, or for pwl layers the gnucap format."""
    spice3 = emit_deck(circuit, u, reduced=reduced, dialect="spice3")
    if _has_pwl(circuit):
        with pytest.raises(GnucapFailed, match="no B element"):
            run_gnucap(spice3)
        deck = emit_deck(circuit, u, reduced=reduced, dialect="gnucap")
    else:
        deck = spice3
        same = emit_deck(circuit, u, reduced=reduced, dialect="gnucap")
        assert [x for x in same.splitlines() if not x.startswith("* format")] == \
            [x for x in spice3.splitlines() if not x.startswith("* format")]
    printed = run_gnucap(deck)
    assert printed["temperature"] == circuit.temperature_c
    return np.array([printed[f"v({n})"] for n in free_node_names(circuit)])


def _seed5(circuit):
    return np.random.default_rng(5).uniform(-1.0, 1.0, (1, circuit.n_inputs))   # as `ffebm solve --seed 5`


@pytest.mark.parametrize("name, spec, k", _cases())
def test_gnucap_agrees_with_ngspice_on_every_example_block(name, spec, k):
    circuit = _circuit(spec, k)
    u = _seed5(circuit)
    reduced = circuit.n_inputs > REDUCED_ABOVE_INPUTS
    want = get_backend("ngspice", reduced=reduced).solve(circuit, torch.from_numpy(u)).node_voltages_v[0].numpy()
    got = _gnucap_voltages(circuit, u[0], reduced)
    np.testing.assert_allclose(got, want, rtol=0, atol=agreement_tolerance_v(circuit.temperature_c))


@pytest.mark.parametrize("name, spec, k", [pytest.param(*c.values, id=c.id) for c in _cases()])
def test_gnucap_is_the_reference_with_gnucaps_thermal_voltage(name, spec, k):
    """With gnucap's k/q folded in (every N scaled by 1 - 28.25 ppm) the reference is within
    1e-6 V of gnucap at 27 C: what is left is gnucap's reverse junction branch (its exponential,
    not SPICE3's cubic, up to ~6 % of IS near -3*N*Vt) and its Newton stopping test.
    At 60 C IS(T) is ~100x larger and that reverse branch moves block_crossbar by 1.9e-4 V."""
    circuit = _circuit(spec, k)
    u = _seed5(circuit)
    got = _gnucap_voltages(circuit, u[0], circuit.n_inputs > REDUCED_ABOVE_INPUTS)
    view = ReferenceBackend(ideal_as_clip=False).solve(gnucap_view(circuit), torch.from_numpy(u))
    np.testing.assert_allclose(got, view.node_voltages_v[0].numpy(), rtol=0,
                               atol=1e-6 if circuit.temperature_c == 27.0 else agreement_tolerance_v(60.0))


def test_gnucap_pwl_element_is_the_law_beyond_the_table():
    """block_pwl driven to +-1.3 V (20 V per unit input): every node past the table's +-0.5 V ends
    on the extrapolated segments; gnucap's pwl VCCS agrees with ngspice to its stopping test."""
    from dataclasses import replace
    circuit = replace(load_block("circuits/block_pwl.toml"), input_gain_v=20.0)
    u = np.random.default_rng(5).uniform(-1.0, 1.0, (3, circuit.n_inputs))
    want = get_backend("ngspice").solve(circuit, torch.from_numpy(u)).node_voltages_v.numpy()
    assert np.abs(want).max() > 0.5
    got = np.array([_gnucap_voltages(circuit, row, False) for row in u])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-8)


# ---- the model differences, measured one junction at a time ---------------------------------------

def _junction(temperature_c, source, isat=1e-14, probe="v(a)"):
    deck = f"""* one junction
.options reltol=1e-12 vntol=1e-15 abstol=1e-20 gmin=0 tnom=27
.temp {temperature_c!r}
.model dd D(IS={isat!r} N=1.0)
{source}
D1 a 0 dd
.print op {probe}
.op
.end
"""
    return run_gnucap(deck)[probe.lower()]


def test_gnucap_thermal_voltage_is_28_ppm_lower():
    """A junction at 1 mA: gnucap's forward drop over the SPICE3 law's is the ratio of the
    constants' k/q, 1 - 28.25 ppm (CODATA 1973 against ngspice's CODATA 2014)."""
    v = _junction(27.0, "I1 0 a DC 1e-3")
    law = thermal_voltage_v(27.0) * math.log(1e-3 / 1e-14 + 1.0)
    assert v / law == pytest.approx(THERMAL_VOLTAGE_RATIO, rel=1e-12)
    assert (THERMAL_VOLTAGE_RATIO - 1) * 1e6 == pytest.approx(-28.25, abs=0.01)


def test_gnucap_reverse_branch_is_the_exponential_not_the_spice3_cubic():
    vt = thermal_voltage_v(27.0) * THERMAL_VOLTAGE_RATIO
    for v in (-0.1, -0.3):
        i = _junction(27.0, f"V1 a 0 DC {v}", isat=1e-8, probe="i(D1)")
        assert i == pytest.approx(1e-8 * (math.exp(v / vt) - 1), rel=1e-9)
        cubic = -1e-8 * (1 + (3 * thermal_voltage_v(27.0) / (math.e * v)) ** 3)
        assert abs(i - cubic) > 5e-4 * 1e-8                    # SPICE3's (ngspice's) branch differs


@pytest.mark.parametrize("temperature_c, expected", [(60.0, 1.20e-4), (100.0, 2.37e-4)])
def test_gnucap_saturation_current_at_temperature(temperature_c, expected):
    """IS(T) from the deep reverse current: gnucap's is ngspice's formula with its own thermal
    voltage, EG/(N*Vt(T))*(T/Tnom - 1) times 28.25 ppm higher in the exponent: 1.2e-4 at 60 C."""
    vt = thermal_voltage_v(temperature_c) * THERMAL_VOLTAGE_RATIO
    i = _junction(temperature_c, "V1 a 0 DC -2.0", isat=1e-8, probe="i(D1)")
    is_gnucap = -i / (1 - math.exp(-2.0 / vt))
    relative = is_gnucap / saturation_current_at(1e-8, 1.0, temperature_c) - 1
    assert relative == pytest.approx(expected, rel=0.02)
    t, t0 = temperature_c + 273.15, 300.15
    assert relative == pytest.approx((t / t0 - 1) * 1.11 / thermal_voltage_v(temperature_c)
                                     * (1 / THERMAL_VOLTAGE_RATIO - 1), rel=0.02)


# ---- the runner ---------------------------------------------------------------------------------------

def test_numbers_as_gnucap_prints_them():
    assert parse_number("732.51730646006762u") == pytest.approx(732.51730646006762e-6, rel=1e-15)
    assert parse_number("27.") == 27.0 and parse_number("-0.5") == -0.5 and parse_number("0.") == 0.0
    assert parse_number("1.5K") == 1500.0 and parse_number("-2.25n") == pytest.approx(-2.25e-9)
    with pytest.raises(GnucapFailed):
        parse_number("12x")


def test_runner_errors_are_one_line_and_leave_no_files(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    good = "* ok\nV1 a 0 DC 1\nR1 a 0 1k\n.print op v(a) i(V1)\n.op\n.end\n"
    printed = run_gnucap(good)
    # gnucap's voltage source has a 10 uOhm internal resistance (its option `short`): 1e-8 V at 1 mA
    assert printed == {"temperature": 27.0, "v(a)": pytest.approx(1.0, abs=2e-8),
                       "i(v1)": pytest.approx(-1e-3, rel=2e-8)}
    with pytest.raises(GnucapFailed, match="could not read a line.*QQ1 foo bar"):
        run_gnucap("* bad\nV1 a 0 DC 1\nR1 a 0 1k\nQQ1 foo bar\n.print op v(a)\n.op\n.end\n")
    with pytest.raises(GnucapFailed, match="no B element.*B_iv"):
        run_gnucap("* b\nV1 a 0 DC 1\nB_iv a 0 I = 1e-3*v(a)\n.print op v(a)\n.op\n.end\n")
    with pytest.raises(GnucapFailed, match="no operating point"):
        run_gnucap("* nothing printed\nV1 a 0 DC 1\nR1 a 0 1k\n.op\n.end\n")
    small = load_block("circuits/block_small.toml")
    slow = emit_deck(small, _seed5(small)[0], dialect="spice3")                     # ~0.2 s in gnucap
    with pytest.raises(GnucapFailed, match="did not finish within"):
        run_gnucap(slow, timeout_s=0.01)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr("ffebm_sim.gnucap.shutil.which", lambda name: None)
    with pytest.raises(GnucapUnavailable, match="apt-get install gnucap"):
        run_gnucap(good)


def test_gnucap_non_convergence_is_a_failure_not_a_value():
    """gnucap prints its last Newton iterate after 'did not converge'; the runner refuses it and
    verify reports the sample (here a nudged block_deep sample, amplified junctions)."""
    from ffebm_sim.verify import _nudge_cards, random_nudge, verify_gnucap
    circuit = load_block("circuits/block_deep.toml")
    rng = np.random.default_rng(0)                     # the draws of verify --seed 0 --nudge
    u = rng.uniform(-1.0, 1.0, (5, circuit.n_inputs))
    nudge = random_nudge(circuit, 5, rng)
    with pytest.raises(GnucapFailed, match="did not converge"):
        run_gnucap(emit_deck(circuit, u[1], dialect="gnucap", **_nudge_cards(nudge, 1)))
    report = verify_gnucap(circuit, samples=5, nudge=True, seed=0)
    assert not report["ok"] and len(report["failures"]) == 1
    assert report["failures"][0].startswith("sample 1: gnucap: did not converge")
    assert math.isfinite(report["max_abs_dv_volts"]["gnucap_vs_ngspice"])     # the other samples still compared
