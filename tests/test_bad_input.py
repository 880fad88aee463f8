"""Bad input: one line naming the problem and what is allowed, exit 2, no traceback, nothing written."""

import json
import subprocess
import sys

import numpy as np
import pytest

from ffebm_sim.circuit import BlockCircuit, Nonlinearity
from ffebm_sim.devices import DiodeModel, PwlTable
from ffebm_sim.errors import SpecError
from ffebm_sim.spec import block_from_dict, load_block

GOOD = {"layers": [2, 2, 1], "nonlinearity": {"kind": "double"}}


def ffebm(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ffebm_sim.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


@pytest.mark.parametrize("spec, fragment", [
    ({"layers": [2]}, "layers"),
    ({"layers": [2, 0, 1]}, "layers"),
    ({"layers": [2, "x", 1]}, "layers"),
    ({"layers": [2, 2, 1], "nonlinearity": {"kind": "tanh"}}, "valid kinds are double, single, ideal, pwl"),
    ({"layers": [2, 2, 1], "nonlinearity": {"kind": "pwl"}}, "needs table"),
    ({"layers": [2, 2, 1], "nonlinearity": {"kind": "pwl", "table": {"voltages": [0, 1], "currents": [1, 0]}}}, "must not decrease"),
    ({"layers": [2, 2, 1], "nonlinearity": {"kind": "double", "diode": {"is": -1}}}, "diode.is"),
    ({"layers": [2, 2, 1], "nonlinearity": {"kind": "double", "v_off": float("nan")}}, "not finite"),
    ({"layers": [2, 2, 1], "conductances": {"low": -1e-5, "high": 1e-4}}, "0 <= low <= high"),
    ({"layers": [2, 2, 1], "conductances": {"hi": 1e-4}}, "unknown key 'hi'"),
    ({"layers": [2, 2, 1], "output": "tanh"}, "linear, clamped"),
    ({"layers": [2, 2, 1], "nudge": "magnetic"}, "current, resistive"),
    ({"layers": [2, 2, 1], "colour": "red"}, "unknown key 'colour'"),
    ({"layers": [2, 2, 1], "input_gain": 0}, "input_gain"),
    ({"layers": [2, 2, 1], "conductances": {"file": "missing.npz"}}, "no such file"),
])
def test_spec_errors_name_the_field(spec, fragment):
    with pytest.raises(SpecError) as e:
        block_from_dict(spec)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad, fragment", [
    (np.array([[1e-4, -1e-5], [1e-4, 1e-4], [1e-4, 1e-4], [1e-4, 1e-4]]), "negative value"),
    (np.array([[1e-4, np.nan], [1e-4, 1e-4], [1e-4, 1e-4], [1e-4, 1e-4]]), "not finite"),
    (np.array([[1e-4, np.inf], [1e-4, 1e-4], [1e-4, 1e-4], [1e-4, 1e-4]]), "not finite"),
    (np.ones((3, 2)) * 1e-4, "shape (3, 2) does not match the layer sizes, expected (4, 2)"),
])
def test_python_constructor_rejects_bad_conductances(bad, fragment):
    with pytest.raises(SpecError) as e:
        BlockCircuit((2, 2, 1), (bad, np.full((2, 1), 1e-4)), (Nonlinearity("double"),))
    assert str(e.value).startswith("conductances[0]: ")
    assert fragment in str(e.value)


def test_python_constructor_rejects_bad_devices():
    with pytest.raises(SpecError, match="valid kinds"):
        Nonlinearity("sigmoid")
    with pytest.raises(SpecError, match="diode.n"):
        Nonlinearity("double", diode=DiodeModel(1e-14, 0.0))
    with pytest.raises(SpecError, match="strictly increase"):
        Nonlinearity("pwl", table=PwlTable((0.0, 0.0), (0.0, 1.0)))


def test_circuit_is_frozen_and_read_only():
    c = block_from_dict(GOOD)
    with pytest.raises(Exception):
        c.input_gain_v = 3.0
    with pytest.raises(ValueError):
        c.conductances[0][0, 0] = 1.0


def test_malformed_and_missing_spec_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("layers = [2, 2\n")
    with pytest.raises(SpecError, match="malformed TOML"):
        load_block(bad)
    with pytest.raises(SpecError, match="no such file"):
        load_block(tmp_path / "nope.toml")


def _one_clean_line(result):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ffebm: error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


def test_cli_bad_inputs_are_one_line_exit_2_and_write_nothing(tmp_path):
    out = tmp_path / "deck.cir"
    bad = tmp_path / "bad.toml"
    bad.write_text('layers = [2, 2, 1]\n[nonlinearity]\nkind = "tanh"\n')
    line = _one_clean_line(ffebm("netlist", bad, "-o", out))
    assert "valid kinds are double, single, ideal, pwl" in line
    line = _one_clean_line(ffebm("netlist", tmp_path / "missing.toml", "-o", out))
    assert "no such file" in line
    line = _one_clean_line(ffebm("solve", "circuits/block_pwl.toml", "--backend", "hspice"))
    assert "valid backends are reference, ngspice" in line
    badin = tmp_path / "in.json"
    badin.write_text(json.dumps([1.0, 2.0]))
    line = _one_clean_line(ffebm("netlist", "circuits/block_pwl.toml", "--inputs", badin, "-o", out))
    assert "expected (8,)" in line
    badin.write_text("[1.0, NaN, 0, 0, 0, 0, 0, 0]")
    _one_clean_line(ffebm("netlist", "circuits/block_pwl.toml", "--inputs", badin, "-o", out))
    line = _one_clean_line(ffebm("verify", "circuits/block_pwl.toml", "--samples", "0"))
    assert "--samples" in line
    line = _one_clean_line(ffebm("netlist", "circuits/block_pwl.toml", "--seed", "1", "-o", tmp_path / "no" / "d.cir"))
    assert "no such directory" in line
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [bad, badin] or set(tmp_path.iterdir()) == {bad, badin}


def test_cli_never_overwrites_with_half_a_file(tmp_path):
    out = tmp_path / "deck.cir"
    out.write_text("my precious deck\n")
    _one_clean_line(ffebm("netlist", "circuits/block_pwl.toml", "--inputs", tmp_path / "nope.csv", "-o", out))
    assert out.read_text() == "my precious deck\n"
