"""Emitted decks: golden files, standalone runs with the ngspice program, and the cards themselves."""

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from ffebm_sim.backends import ReferenceBackend
from ffebm_sim.circuit import free_node_names
from ffebm_sim.examples import NETLISTS, REGENERATE, block_specs, deck_differences, golden_decks
from ffebm_sim.netlist import emit_deck
from ffebm_sim.spec import load_block

from conftest import make_block

GOLDEN = golden_decks()


def test_every_example_spec_has_golden_decks():
    names = {p.stem for p in block_specs()}
    assert {"block_small", "block_single", "block_ideal", "block_pwl"} <= names
    from ffebm_sim.examples import model_specs
    stems = [p.name for p in GOLDEN]
    for stem in names:                                  # physical and reduced
        assert {f"{stem}.cir", f"{stem}_reduced.cir"} <= set(stems), stem
    for spec in model_specs():                          # every energy block
        assert f"{spec.stem}_block1.cir" in stems, spec.name
    from ffebm_sim.dialects import FORMATS
    from ffebm_sim.examples import DECK_FORMATS, NO_SUBCKT_GOLDEN
    paths = set(GOLDEN)
    for stem in names:                                  # every format, every subcircuit export
        for fmt in DECK_FORMATS:
            if fmt != "gnucap" or stem == "block_pwl":
                assert NETLISTS / fmt / f"{stem}.cir" in paths, (fmt, stem)
        for fmt in FORMATS:
            if stem not in NO_SUBCKT_GOLDEN:
                assert {NETLISTS / "subckt" / fmt / f"{stem}.lib", NETLISTS / "subckt" / fmt / f"{stem}.cir"} <= paths


def test_every_file_under_netlists_is_a_golden_deck():
    """No stale deck stays behind when an example or a format goes away."""
    on_disk = {p for p in NETLISTS.rglob("*") if p.is_file()}
    assert on_disk == set(GOLDEN), sorted(p.relative_to(NETLISTS) for p in on_disk ^ set(GOLDEN))[:5]


@pytest.mark.parametrize("path", sorted(GOLDEN), ids=lambda p: str(p.relative_to(NETLISTS)))
def test_golden_deck_is_current(path):
    """Structure exactly, numbers within 1e-12 relative: the last bits of computed values
    (Norton currents, mismatch factors) depend on the CPU's SIMD kernels."""
    assert path.exists(), f"{path.name} is missing; regenerate the golden decks with '{REGENERATE}'"
    problems = deck_differences(path.read_text(), GOLDEN[path])
    assert not problems, f"{path.name} is stale: {problems[0]}\n({len(problems)} lines differ); " \
                         f"regenerate with '{REGENERATE}'"


def test_golden_comparison_tolerates_rounding_and_nothing_else():
    deck = "RN1_0 n1_0 0 3906.25\nIN1_0 0 n1_0 DC 0.00025464312304421396\n.options reltol=1e-9\n"
    assert deck_differences(deck.replace("21396", "21407"), deck) == []           # 4e-16 relative
    assert deck_differences(deck.replace("0.000254643", "0.000254644"), deck)       # 4e-6: a real change
    assert deck_differences(deck.replace("n1_0 0 3906", "n1_1 0 3906"), deck)       # another node
    assert deck_differences(deck.replace("reltol", "abstol"), deck)                 # another keyword
    assert deck_differences(deck.replace("DC 0.0002", "DC 0.0002 0.0"), deck)      # an extra field
    assert deck_differences(deck + "R2 a b 1.0\n", deck)                           # an extra card
    assert deck_differences(deck.replace("3906.25", "-3906.25"), deck)              # a sign


def test_reduced_deck_of_a_sample_does_not_depend_on_its_batch():
    """The Norton currents going into a deck are summed in a fixed order: a sample's
    values are the same bit for bit alone, at any position of any batch."""
    from ffebm_sim.netlist import norton_currents_a
    rng = np.random.default_rng(3)
    g1 = rng.uniform(0, 1e-4, (130, 37))
    plus = rng.uniform(-4, 4, (67, 65))
    plus[:, 7] = 0.0                        # an input at zero in every sample, and in some
    plus[::3, 11] = 0.0
    v = np.concatenate([plus, -plus], axis=1)
    batch = norton_currents_a(g1, v)
    for b in (0, 5, 66):
        assert np.array_equal(norton_currents_a(g1, v[b]), batch[b])
        assert np.array_equal(norton_currents_a(g1, v[b:b + 1])[0], batch[b])
    assert np.array_equal(norton_currents_a(g1, v[::-1]), batch[::-1])
    # the same sums as BLAS's, to rounding of the terms' magnitudes (the signed terms cancel)
    np.testing.assert_array_less(np.abs(batch - v @ g1), 1e-14 * (np.abs(v) @ g1))
    with pytest.raises(ValueError, match=r"not \[\+a\*u, -a\*u\]"):
        norton_currents_a(g1, np.concatenate([plus, plus], axis=1))


def _run_ngspice(deck_path):
    out = subprocess.run(["ngspice", "-b", str(deck_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    values = dict(re.findall(r"^(\S+) = (\S+)$", out.stdout, flags=re.M))
    return {k: float(v) for k, v in values.items()}


@pytest.mark.skipif(shutil.which("ngspice") is None, reason="the ngspice program is not installed")
@pytest.mark.parametrize("stem", ["block_single", "block_ideal", "block_pwl", "block_small"])
@pytest.mark.parametrize("reduced", [False, True], ids=["physical", "reduced"])
def test_standalone_deck_runs_in_ngspice_and_matches_reference(tmp_path, stem, reduced):
    """The deck a designer gets runs as is with `ngspice -b` and prints every node voltage."""
    circuit = load_block(f"circuits/{stem}.toml")
    u = np.random.default_rng(7).uniform(-1, 1, circuit.n_inputs)
    deck = tmp_path / f"{stem}.cir"
    deck.write_text(emit_deck(circuit, u, reduced=reduced))
    printed = _run_ngspice(deck)
    ref = ReferenceBackend(ideal_as_clip=False).solve(circuit.as_emitted(), torch.from_numpy(u[None]))
    names = free_node_names(circuit)
    assert set(names) <= set(printed), "ngspice -b did not print every node voltage"
    got = np.array([printed[n] for n in names])
    np.testing.assert_allclose(got, ref.node_voltages_v[0].numpy(), rtol=0, atol=1e-9)


def test_deck_structure_line_by_line():
    """A 1-input, 1-hidden, 1-output double-diode block, card by card."""
    c = make_block((1, 1, 1), kind="double", seed=0, gain=2.0)
    g1, g2 = c.conductances
    deck = emit_deck(c, [0.5], control=False).splitlines()
    cards = [line for line in deck if line and not line.startswith("*")]
    assert cards == [
        ".options reltol=1e-9 vntol=1e-12 abstol=1e-15 gmin=1e-12",
        ".options temp=27 tnom=27",
        ".model dclamp0 D(IS=1e-08 N=1.0)",
        ".subckt clamp_double0 node hi lo",
        "D_up node hi dclamp0",
        "D_dn lo node dclamp0",
        ".ends clamp_double0",
        "VXP0 xp0 0 DC 1.0",
        "VXM0 xm0 0 DC -1.0",
        f"R1_xp0_0 xp0 n1_0 {float(1 / g1[0, 0])!r}",
        f"R1_xm0_0 xm0 n1_0 {float(1 / g1[1, 0])!r}",
        f"R2_0_0 n1_0 n2_0 {float(1 / g2[0, 0])!r}",
        "VHI1 vhi1 0 DC 0.0",
        "VLO1 vlo1 0 DC -0.0",
        "X1_0 n1_0 vhi1 vlo1 clamp_double0",
        "INUDGE0 0 n2_0 DC 0.0",
        ".end",
    ]


def test_reduced_deck_replaces_sources_by_norton_equivalent():
    c = make_block((2, 1, 1), kind="double", seed=0, gain=2.0)
    g1 = np.asarray(c.conductances[0])
    u = np.array([0.5, -0.25])
    deck = emit_deck(c, u, reduced=True, control=False)
    assert "VXP0" not in deck and "R1_xp0" not in deck
    v = np.concatenate([2 * u, -2 * u])
    assert f"RN1_0 n1_0 0 {float(1 / g1[:, 0].sum())!r}" in deck
    assert f"IN1_0 0 n1_0 DC {float(v @ g1[:, 0])!r}" in deck


def test_zero_conductance_is_an_open_circuit_not_a_card():
    c = make_block((2, 2, 1), kind="double", seed=0)
    g = [np.array(x) for x in c.conductances]
    g[1][0, 0] = 0.0
    deck = emit_deck(c.with_conductances(g), control=False)
    assert "R2_0_0 " not in deck and "R2_1_0 " in deck


def test_pwl_table_spans_continuation_lines():
    from ffebm_sim.circuit import BlockCircuit, Nonlinearity
    from ffebm_sim.devices import PwlTable
    v = tuple(np.linspace(-1, 1, 11))
    nl = Nonlinearity("pwl", table=PwlTable(v, tuple(1e-4 * x ** 3 for x in v)))
    c = BlockCircuit((1, 1, 1), (np.full((2, 1), 1e-4), np.full((1, 1), 1e-4)), (nl,))
    lines = emit_deck(c, control=False).splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith("B_iv"))
    assert lines[start].endswith("pwl(v(node),")
    assert lines[start + 1].startswith("+ ") and lines[start + 3].endswith(")")
    assert max(len(line) for line in lines) < 200


def test_fixed_order_matmul_is_the_sequential_sum_bit_for_bit():
    """Blocked products and skipped zero columns change nothing: the result is
    ``((x0 g0 + x1 g1) + x2 g2) ...`` evaluated one k at a time, the same bits (signed zeros
    included), at every batch size."""
    from ffebm_sim.numerics import fixed_order_matmul
    rng = np.random.default_rng(11)
    for B, K, N in ((1, 1, 1), (3, 700, 5), (40, 1568, 100), (257, 9, 3)):
        x, g = rng.normal(size=(B, K)), rng.uniform(-1e-4, 1e-4, (K, N))
        x[0, : min(K, 3)] = -0.0
        x[:, K // 2] = 0.0                   # a column of zeros in every row (left out by the product)
        x[1:, K // 3] = -0.0
        expected = np.zeros((B, N))
        for k in range(K):
            expected = expected + x[:, k:k + 1] * g[k]
        got = fixed_order_matmul(x, g)
        assert got.tobytes() == expected.tobytes(), (B, K, N)
    assert fixed_order_matmul(x[0], g).tobytes() == expected[0].tobytes()
