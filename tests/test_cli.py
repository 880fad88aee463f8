"""The commands a designer runs: netlist, solve, verify."""

import json
import subprocess
import sys

import numpy as np
import pytest


def ffebm(*args):
    return subprocess.run([sys.executable, "-m", "ffebm_sim.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_verify_example_block_json():
    r = ffebm("verify", "circuits/block_small.toml", "--samples", "20", "--nudge", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["samples"] == 20
    assert report["backends"] == ["reference", "ngspice-physical", "ngspice-reduced"]
    assert report["max_abs_dv_volts"] <= 1e-9
    assert report["ok"] is True


@pytest.mark.parametrize("backend", ["reference", "ngspice"])
def test_solve_json_prints_every_node(tmp_path, backend):
    inputs = tmp_path / "u.csv"
    np.savetxt(inputs, np.random.default_rng(0).uniform(-1, 1, (3, 8)), delimiter=",")
    r = ffebm("solve", "circuits/block_single.toml", "--backend", backend, "--inputs", inputs, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["nodes"][:2] == ["n1_0", "n1_1"] and len(out["nodes"]) == 6 + 5 + 3
    assert np.array(out["node_voltages_v"]).shape == (3, 14)
    assert all(out["converged"])


def test_solve_backends_agree_through_the_cli(tmp_path):
    outs = [json.loads(ffebm("solve", "circuits/block_ideal.toml", "--backend", b, "--seed", "3", "--json").stdout)
            for b in ("reference", "ngspice")]
    # the reference solves the ideal clip; ngspice the emitted steep junction: within 1 mV
    np.testing.assert_allclose(outs[0]["node_voltages_v"], outs[1]["node_voltages_v"], atol=1e-3)


def test_netlist_writes_a_deck(tmp_path):
    out = tmp_path / "d.cir"
    r = ffebm("netlist", "circuits/block_single.toml", "--seed", "0", "--reduced", "-o", out)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "reduced" in text.splitlines()[0] and text.rstrip().endswith(".end")
