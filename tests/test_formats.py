"""Deck formats (ffebm_sim.dialects) and subcircuit export: the same circuit in every dialect.

ngspice runs the ngspice and spice3 forms here; gnucap the gnucap/spice3 forms
(tests/test_gnucap.py has the agreement over every example block). Xyce and
LTspice are not installed: their decks are checked against the manuals' syntax.
"""

import json
import re
import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pytest
import torch

from ffebm_sim.backends import ReferenceBackend
from ffebm_sim.circuit import free_node_names
from ffebm_sim.devices import PwlTable, pwl_current_and_conductance
from ffebm_sim.dialects import FORMATS, HOLD_EXTENSION_V, extended_table, get_dialect, ramp_terms
from ffebm_sim.errors import SpecError
from ffebm_sim.examples import block_specs
from ffebm_sim.gnucap import agreement_tolerance_v, gnucap_path, gnucap_view, run_gnucap
from ffebm_sim.netlist import emit_deck, emit_subckt
from ffebm_sim.spec import load_block

NGSPICE = shutil.which("ngspice")
needs_ngspice = pytest.mark.skipif(NGSPICE is None, reason="the ngspice program is not installed")
needs_gnucap = pytest.mark.skipif(gnucap_path() is None,
                                  reason="gnucap is not installed (make setup installs it: apt-get install gnucap)")
TABLES = [PwlTable((-0.5, -0.1, 0.1, 0.5), (-2e-4, 0.0, 0.0, 2e-4)),
          PwlTable((-1.0, 0.0, 0.3), (-1e-3, 0.0, 5e-5)),                   # concave kink, uneven slopes
          PwlTable((0.2, 0.4), (1e-5, 3e-5))]                              # one segment, i(0) != 0


def _seed5(circuit):
    return np.random.default_rng(5).uniform(-1.0, 1.0, circuit.n_inputs)


def _pwl_driven():
    """block_pwl with 20 V per unit input: its nodes reach past the table's ends (+-0.5 V)."""
    return replace(load_block("circuits/block_pwl.toml"), input_gain_v=20.0)


# ---- the PWL law in every form ---------------------------------------------------------------

@pytest.mark.parametrize("table", TABLES, ids=["clamp", "concave", "one_segment"])
def test_ramp_form_of_spice3_is_the_pwl_law_everywhere(table):
    v = torch.linspace(table.voltages_v[0] - 3, table.voltages_v[-1] + 3, 2001, dtype=torch.float64)
    y0, s0, x0, terms = ramp_terms(table)
    ramp = y0 + s0 * (v - x0) + sum(d * torch.clamp(v - x, min=0) for d, x in terms)
    law, _ = pwl_current_and_conductance(v, table)
    scale = max(abs(c) for c in table.currents_a)
    torch.testing.assert_close(ramp, law, rtol=0, atol=1e-13 * scale)


@pytest.mark.parametrize("table", TABLES, ids=["clamp", "concave", "one_segment"])
def test_extended_table_held_at_its_ends_is_the_law_within_the_extension(table):
    """What a hold-at-ends TABLE (Xyce TABLE, LTspice table(); numpy's interp holds too)
    computes from the extended points equals the linearly extrapolating law out to 1 kV."""
    ext = extended_table(table)
    lo, hi = table.voltages_v[0] - HOLD_EXTENSION_V, table.voltages_v[-1] + HOLD_EXTENSION_V
    v = np.concatenate([np.linspace(lo, hi, 4001), np.linspace(table.voltages_v[0] - 1, table.voltages_v[-1] + 1, 999)])
    held = np.interp(v, ext.voltages_v, ext.currents_a)
    law, _ = pwl_current_and_conductance(torch.from_numpy(v), table)
    slope = max(abs(ext.currents_a[-1]), abs(ext.currents_a[0])) / HOLD_EXTENSION_V
    np.testing.assert_allclose(held, law.numpy(), rtol=0, atol=1e-12 * slope * HOLD_EXTENSION_V)
    # without the extension the held table is another law beyond the ends
    at_hi, _ = pwl_current_and_conductance(torch.tensor([hi], dtype=torch.float64), table)
    assert abs(np.interp(hi, table.voltages_v, table.currents_a) - float(at_hi)) > 0.1 * abs(float(at_hi))


def test_reference_solves_what_the_extended_table_says():
    """The circuit with the extended table (the TABLE decks' element) has the same equilibrium,
    with nodes driven past the original table's ends."""
    circuit = _pwl_driven()
    nl = circuit.hidden[0]
    wide = replace(circuit, hidden=(replace(nl, table=extended_table(nl.table)),),
                   output=replace(circuit.output, table=extended_table(circuit.output.table)))
    u = torch.from_numpy(np.random.default_rng(5).uniform(-1, 1, (8, circuit.n_inputs)))
    a = ReferenceBackend().solve(circuit, u).node_voltages_v
    b = ReferenceBackend().solve(wide, u).node_voltages_v
    assert float(a.abs().max()) > 0.5, "the test must reach the extrapolated segments"
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# ---- ngspice runs the spice3 form unchanged ----------------------------------------------------

def ngspice_raw(deck_path) -> dict[str, float]:
    """``ngspice -b -r`` on a deck: every vector of its operating point from the binary rawfile
    (float64, exact), names lower case (``v(n1_0)``, ``i(vxp0)``)."""
    raw = deck_path.with_suffix(".raw")
    run = subprocess.run([NGSPICE, "-b", "-r", str(raw), str(deck_path)], capture_output=True, text=True,
                         timeout=120, cwd=deck_path.parent)
    assert run.returncode == 0, run.stderr[-2000:]
    data = raw.read_bytes()
    head, _, body = data.partition(b"Binary:\n")
    names = [line.split("\t")[2].lower() for line in head.decode().splitlines() if line.startswith("\t")]
    values = np.frombuffer(body, dtype="<f8")
    assert len(values) == len(names), "one operating point"
    return dict(zip(names, values.tolist()))


def ngspice_print_all(deck_path) -> dict[str, float]:
    """``ngspice -b`` on an ngspice-format deck: its ``print all`` (17 digits)."""
    run = subprocess.run([NGSPICE, "-b", str(deck_path)], capture_output=True, text=True, timeout=120,
                         cwd=deck_path.parent)
    assert run.returncode == 0, run.stderr[-2000:]
    return {k.lower(): float(v) for k, v in re.findall(r"^(\S+) = (\S+)$", run.stdout, flags=re.M)}


BLOCKS = [p.stem for p in block_specs()]


@needs_ngspice
@pytest.mark.parametrize("stem", BLOCKS + ["block_pwl_driven"])
def test_spice3_form_gives_the_ngspice_form_voltages_in_ngspice(tmp_path, stem):
    circuit = _pwl_driven() if stem == "block_pwl_driven" else load_block(f"circuits/{stem}.toml")
    u = _seed5(circuit)
    (tmp_path / "a.cir").write_text(emit_deck(circuit, u))
    (tmp_path / "b.cir").write_text(emit_deck(circuit, u, dialect="spice3"))
    native, plain = ngspice_print_all(tmp_path / "a.cir"), ngspice_raw(tmp_path / "b.cir")
    names = free_node_names(circuit)
    np.testing.assert_allclose([plain[f"v({n})"] for n in names], [native[n] for n in names], rtol=0, atol=1e-12)
    sources = [f"vx{s}{i}" for s in "pm" for i in range(circuit.n_inputs)]
    np.testing.assert_allclose([plain[f"i({s})"] for s in sources], [native[f"{s}#branch"] for s in sources],
                               rtol=0, atol=1e-15)


# ---- subcircuit export ----------------------------------------------------------------------------

SUBCKT_BLOCKS = ["block_single", "block_deep", "block_crossbar", "block_pwl_driven"]


@needs_ngspice
@needs_gnucap
@pytest.mark.parametrize("stem", SUBCKT_BLOCKS)
def test_subckt_testbench_gives_the_standalone_answer_in_ngspice_and_gnucap(tmp_path, stem):
    circuit = _pwl_driven() if stem == "block_pwl_driven" else load_block(f"circuits/{stem}.toml")
    u = _seed5(circuit)
    outputs = free_node_names(circuit)[-circuit.n_outputs:]
    (tmp_path / "flat.cir").write_text(emit_deck(circuit, u))
    flat = ngspice_print_all(tmp_path / "flat.cir")
    want = np.array([flat[n] for n in outputs])
    for fmt in ("ngspice", "spice3", "gnucap"):
        lib, bench = emit_subckt(circuit, u, library_file="block.lib", dialect=fmt)
        d = tmp_path / fmt
        d.mkdir()
        (d / "block.lib").write_text(lib)
        (d / "tb.cir").write_text(bench)
        if fmt == "ngspice":
            got = ngspice_print_all(d / "tb.cir")
            np.testing.assert_allclose([got[n] for n in outputs], want, rtol=0, atol=1e-12)
        elif fmt == "spice3" and stem != "block_pwl_driven":
            got = ngspice_raw(d / "tb.cir")
            np.testing.assert_allclose([got[f"v({n})"] for n in outputs], want, rtol=0, atol=1e-12)
        if fmt == ("gnucap" if stem == "block_pwl_driven" else "spice3"):
            sub = run_gnucap(bench, files={"block.lib": lib})
            gflat = run_gnucap(emit_deck(circuit, u, dialect=fmt))
            got = np.array([sub[f"v({n})"] for n in outputs])
            # the same simulator on the flat and the placed block: the same circuit, to gnucap's
            # Newton stopping test (reltol 1e-9 of ~0.5 V; another node order, another last iterate)
            np.testing.assert_allclose(got, [gflat[f"v({n})"] for n in outputs], rtol=0, atol=1e-8)
            if stem == "block_deep":
                # gnucap's 28 ppm lower thermal voltage moves these 0.48 V nodes by 1.25e-5 V, above the
                # 1e-5 V of the other blocks (tests/test_gnucap.py); with it folded in they agree closely
                view = ReferenceBackend(ideal_as_clip=False).solve(gnucap_view(circuit), torch.from_numpy(u[None]))
                np.testing.assert_allclose(got, view.node_voltages_v[0, -circuit.n_outputs:].numpy(), rtol=0,
                                           atol=1e-7)
            else:
                np.testing.assert_allclose(got, want, rtol=0, atol=agreement_tolerance_v(circuit.temperature_c))


def test_subckt_ports_are_inputs_outputs_rails_and_the_testbench_places_it():
    circuit = load_block("circuits/block_single.toml")
    lib, bench = emit_subckt(circuit, _seed5(circuit), library_file="x.lib", dialect="spice3")
    logical = _logical_lines(lib)
    header = next(line for line in logical if line.lower().startswith(".subckt block_single"))
    ports = header.split()[2:]
    n0 = circuit.n_inputs
    assert ports[:2 * n0] == [f"xp{i}" for i in range(n0)] + [f"xm{i}" for i in range(n0)]
    assert ports[2 * n0:2 * n0 + 3] == ["n3_0", "n3_1", "n3_2"]
    assert ports[2 * n0 + 3:] == ["vbp", "vbm", "vhi1", "vlo1", "vhi2", "vlo2"]
    # the library has no sources of the testbench and no analysis; the testbench drives every port
    body = logical[logical.index(header):]
    assert not any(re.match(r"(?i)(VX|VB|VHI|VLO|INUDGE)", line) for line in body)
    assert not any(line.lower().startswith((".op", ".print", ".control", ".options")) for line in logical)
    tb = _logical_lines(bench)
    assert ".include x.lib" in tb
    place = next(line for line in tb if line.startswith("XBLOCK"))
    assert place.split()[1:] == ports + ["block_single"]
    for node in ports:
        if node not in ("n3_0", "n3_1", "n3_2"):
            assert any(re.match(rf"V\w+ {node} 0 DC ", line) for line in tb), node


# ---- syntax of each format ------------------------------------------------------------------------

def _logical_lines(text: str) -> list[str]:
    """Cards with their '+' continuation lines joined, comments and blank lines dropped."""
    out = []
    for line in text.splitlines():
        if line.startswith("+"):
            out[-1] += " " + line[1:].strip()
        elif line.strip() and not line.startswith("*"):
            out.append(line)
    return out


def _balanced(line: str) -> bool:
    depth = {"(": 0, "{": 0}
    for ch in line:
        if ch in "({":
            depth[ch] += 1
        elif ch in ")}":
            depth["(" if ch == ")" else "{"] -= 1
            if min(depth.values()) < 0:
                return False
    return not any(depth.values())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("stem", ["block_pwl", "block_crossbar", "block_ideal"])
def test_every_card_of_every_format_is_well_formed(fmt, stem):
    circuit = load_block(f"circuits/{stem}.toml")
    deck = emit_deck(circuit, _seed5(circuit), dialect=fmt)
    cards = _logical_lines(deck)
    assert all(_balanced(c) for c in cards), [c for c in cards if not _balanced(c)][:2]
    assert cards[-1].lower() == ".end"
    lower = [c.lower() for c in cards]
    assert (".control" in lower) == (fmt == "ngspice")
    if fmt != "ngspice":
        assert not any("pwl(v(" in c for c in lower), "ngspice's B-source pwl() is ngspice-only"
    temp = "60.0" if stem == "block_crossbar" else "27"
    if fmt in ("spice3", "gnucap", "ltspice"):
        assert f".temp {temp}" in lower and any(c.startswith(".options ") and "tnom=27" in c for c in lower)
        assert not any("temp=" in c for c in lower if c.startswith(".options"))
    if fmt in ("spice3", "gnucap"):
        assert lower.index(".op") == len(lower) - 2 and lower[-3].startswith(".print op ")
    if fmt == "xyce":
        assert f".options device gmin=1e-12 tnom=27 temp={temp}" in lower
        assert ".options nonlin reltol=1e-9 abstol=1e-12 rhstol=1e-15" in lower
        assert ".op" in lower and any(c.startswith(".print dc ") for c in lower)
    if fmt == "ltspice":
        assert ".op" in lower and any(c.startswith(".save ") for c in lower)
    printed = next((c for c in cards if c.lower().startswith((".print", ".save"))), "")
    for n in free_node_names(circuit):
        assert fmt == "ngspice" or f"v({n})" in printed.lower(), n


@pytest.mark.parametrize("fmt, pattern", [
    ("spice3", r"^B_iv node 0 I = (.*)$"),
    ("gnucap", r"^G_iv node 0 node 0 pwl\((.*)\)$"),
    ("xyce", r"^B_iv node 0 I=\{TABLE\(V\(node\), (.*)\)\}$"),
    ("ltspice", r"^B_iv node 0 I=table\(V\(node\), (.*)\)$"),
])
def test_pwl_element_of_each_format_carries_the_law(fmt, pattern):
    table = TABLES[1]
    card = " ".join(line.lstrip("+ ") if k else line for k, line in enumerate(get_dialect(fmt).pwl_element(table))
                    if not line.startswith("*"))
    m = re.match(pattern, card)
    assert m, card
    if fmt == "spice3":
        y0, s0, x0, terms = ramp_terms(table)
        assert card.count("uramp(") == len(terms) and "pwl" not in card.lower() and "table" not in card.lower()
        return
    numbers = [float(x) for x in re.findall(r"[-+]?\d+\.?\d*(?:e[-+]?\d+)?", m.group(1))]
    want = table if fmt == "gnucap" else extended_table(table)   # gnucap's pwl extends linearly itself
    assert numbers[0::2] == list(want.voltages_v) and numbers[1::2] == list(want.currents_a)


def test_xyce_testbench_includes_with_quotes():
    circuit = load_block("circuits/block_small.toml")
    _, bench = emit_subckt(circuit, None, library_file="b.lib", dialect="xyce")
    assert '.INCLUDE "b.lib"' in bench.splitlines()


def test_unknown_format_names_the_valid_ones():
    with pytest.raises(SpecError, match="ngspice, spice3, gnucap, xyce, ltspice"):
        get_dialect("hspice")


# ---- the command line ------------------------------------------------------------------------------

@pytest.fixture
def ffebm(capsys):
    """The CLI in this process (its entry point, as `ffebm ...` runs it): (exit code, stdout, stderr)."""
    from ffebm_sim.cli import main

    def run(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


def _one_line_exit_2(run):
    code, _, err = run
    assert code == 2, (code, err)
    lines = [line for line in err.splitlines() if "Unsupported Ngspice" not in line]
    assert len(lines) == 1 and lines[0].startswith("ffebm: error: ") and "Traceback" not in err, err
    return lines[0]


def test_cli_bad_format_and_subckt_options_are_one_line_and_write_nothing(tmp_path, ffebm):
    spec = "circuits/block_single.toml"
    line = _one_line_exit_2(ffebm("netlist", spec, "--format", "hspice", "-o", tmp_path / "d.cir"))
    assert "hspice" in line and "spice3" in line
    line = _one_line_exit_2(ffebm("netlist", spec, "--subckt", "--reduced", "-o", tmp_path / "d.cir"))
    assert "--subckt and --reduced" in line
    line = _one_line_exit_2(ffebm("netlist", spec, "--subckt", "-o", tmp_path / "d.lib"))
    assert "d.cir" in line
    line = _one_line_exit_2(ffebm("verify", spec, "--reduced"))
    assert "--simulator gnucap" in line
    assert list(tmp_path.iterdir()) == []


def test_cli_subckt_library_never_overwrites_an_input(tmp_path, ffebm):
    spec = tmp_path / "blk.lib"
    spec.write_text(open("circuits/block_single.toml").read())
    line = _one_line_exit_2(ffebm("netlist", spec, "--subckt", "-o", tmp_path / "blk.cir"))
    assert "is an input" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blk.lib"]


def test_cli_writes_library_and_testbench(tmp_path, ffebm):
    code, _, err = ffebm("netlist", "circuits/block_pwl.toml", "--seed", "5", "--format", "xyce", "--subckt",
                         "-o", tmp_path / "tb.cir")
    assert code == 0, err
    circuit = load_block("circuits/block_pwl.toml")
    lib, bench = emit_subckt(circuit, _seed5(circuit), library_file="tb.lib", dialect="xyce")
    strip = lambda t: [x for x in t.splitlines() if not x.startswith("* regenerate")]  # noqa: E731
    assert strip((tmp_path / "tb.lib").read_text()) == strip(lib)
    assert strip((tmp_path / "tb.cir").read_text()) == strip(bench)


@needs_gnucap
def test_cli_verify_with_gnucap(ffebm):
    code, out, err = ffebm("verify", "circuits/block_single.toml", "--simulator", "gnucap", "--samples", "2", "--json")
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["ok"] and report["max_abs_dv_volts"]["gnucap_vs_ngspice"] < 1e-5
    assert report["max_abs_dv_volts"]["ngspice_vs_reference"] < 1e-9
