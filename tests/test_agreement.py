"""The torch reference and ngspice solve the same circuit: agreement to 1e-9 V.

Every nonlinearity, three sizes (one with bias rails and a clamped output),
free and nudged (current and resistive nudge), physical and reduced decks.
Each case also checks that the nonlinear elements actually carry current, so
agreement is not the trivial agreement of two linear solvers.
"""

import numpy as np
import pytest
import torch

from ffebm_sim.backends import ReferenceBackend
from ffebm_sim.backends.ngspice import NgspiceBackend
from ffebm_sim.circuit import Nonlinearity
from ffebm_sim.verify import AGREEMENT_TOLERANCE_V, _conducting_fraction, random_nudge, verify_block

from conftest import make_block, random_inputs

#: How far the reference's hard clip may sit from the emitted steep junction
#: (IS = 1e-12 A, N = 0.001): its forward drop N*Vt*ln(I/IS) is ~0.5 mV at
#: the ~1e-4 A these blocks carry.
IDEAL_VS_STEEP_TOLERANCE_V = 1e-3

SIZES = [
    dict(sizes=(4, 3, 2)),
    dict(sizes=(8, 6, 5, 3), bias=True, output="clamped"),
    dict(sizes=(16, 12, 4), nudge="resistive"),
]
KINDS = ["double", "single", "pwl", "ideal"]


def _circuit(kind, case, seed):
    case = dict(case)
    clamped = case.pop("output", None) == "clamped"
    c = make_block(kind=kind, seed=seed, **case)
    if clamped:
        from dataclasses import replace
        c = replace(c, output=c.hidden[-1])
    return c


@pytest.mark.parametrize("case", SIZES, ids=lambda c: "x".join(map(str, c["sizes"])))
@pytest.mark.parametrize("kind", KINDS)
def test_reference_and_ngspice_agree(kind, case):
    circuit = _circuit(kind, case, seed=len(case["sizes"]))
    report = verify_block(circuit, samples=6, nudge=True, seed=3)
    assert report["failures"] == []
    assert report["max_abs_dv_volts"] <= AGREEMENT_TOLERANCE_V, report
    assert report["phases"] == ["free", "nudged"]
    # the nonlinearity is exercised, not bypassed
    assert report["nonlinear_active_fraction"] >= 0.05, report
    if kind == "ideal":
        assert 0 < report["ideal_vs_emitted_dv_volts"] <= IDEAL_VS_STEEP_TOLERANCE_V


def test_ideal_is_the_limit_of_the_steep_junction():
    """Hard clip vs steeper and steeper junctions: the gap shrinks with N."""
    from dataclasses import replace
    from ffebm_sim.devices import DiodeModel
    base = make_block((8, 6, 3), kind="ideal", seed=5, v_off=0.1)
    u = random_inputs(base, 8)
    clip = ReferenceBackend(ideal_as_clip=True).solve(base, u).node_voltages_v
    gaps = []
    for n in (0.01, 0.001, 0.0001):
        nl = Nonlinearity("ideal", 0.1, DiodeModel(1e-12, n))
        steep = ReferenceBackend(ideal_as_clip=False).solve(replace(base, hidden=(nl,)), u)
        assert steep.ok
        gaps.append(float((steep.node_voltages_v - clip).abs().max()))
    assert gaps[0] > gaps[1] > gaps[2] > 0
    assert gaps[1] <= IDEAL_VS_STEEP_TOLERANCE_V
    # the clip is active: some hidden nodes sit exactly on the rails
    assert bool((clip[:, :6].abs() == 0.1).any())


def test_physical_and_reduced_decks_agree_on_voltages_and_source_currents():
    circuit = make_block((16, 12, 4), kind="double", seed=9, bias=True)
    u = random_inputs(circuit, 5, seed=2)
    nudge = random_nudge(circuit, 5, np.random.default_rng(0))
    phys = NgspiceBackend(reduced=False).solve(circuit, u, nudge)
    red = NgspiceBackend(reduced=True).solve(circuit, u, nudge)
    assert phys.ok and red.ok
    torch.testing.assert_close(phys.node_voltages_v, red.node_voltages_v, rtol=0, atol=1e-12)
    # physical: read from ngspice's branch currents; reduced: from G1 and the node voltages
    torch.testing.assert_close(phys.source_currents_a, red.source_currents_a, rtol=0, atol=1e-15)
    assert _conducting_fraction(circuit, phys.node_voltages_v) > 0.05


def test_example_block_verifies(tmp_path):
    from ffebm_sim.spec import load_block
    report = verify_block(load_block("circuits/block_small.toml"), samples=20, nudge=True)
    assert report["ok"] and report["max_abs_dv_volts"] <= 1e-9
    assert report["nonlinear_active_fraction"] > 0.05
