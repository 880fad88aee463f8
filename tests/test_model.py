"""ff-EBM model specs and the end-to-end gradient check."""

import json
import subprocess
import sys

import pytest
import torch

from ffebm_sim.blocks import EnergyBlock, Quantizer
from ffebm_sim.errors import SpecError
from ffebm_sim.model import build_model

SMALL = {
    "name": "tiny", "input_size": 6,
    "loss": {"kind": "cross_entropy", "logit_scale": 20.0},
    "blocks": [
        {"type": "Linear", "args": {"in_features": 6, "out_features": 4}},
        {"type": "energy", "dac": {"range": [-1.0, 1.0], "bits": 8}, "adc": {"range": [-0.5, 0.5]},
         "circuit": {"layers": [4, 5, 3], "input_gain": 3.0,
                     "nonlinearity": {"kind": "double", "diode": {"is": 1e-8, "n": 1.0}},
                     "conductances": {"low": 0.0, "high": 1e-4, "seed": 1}}},
    ],
}


def test_model_from_spec_chains_digital_and_analog_blocks():
    m = build_model(SMALL)
    kinds = [type(x) for x in m.layers]
    assert kinds == [torch.nn.Linear, Quantizer, EnergyBlock, Quantizer]
    x = torch.rand(5, 6, dtype=torch.float64)
    loss, pred = m.loss(x, torch.tensor([0, 1, 2, 0, 1]))
    loss.backward()
    assert m.layers[0].weight.grad is not None and m.layers[0].weight.grad.abs().sum() > 0
    assert all(w.grad is not None for w in m.layers[2].all_weights())
    assert pred.shape == (5,)


def test_examples_build_and_chain():
    for spec in ("circuits/digits_ffebm.toml", "circuits/mnist_ffebm.toml"):
        m = build_model(spec)
        assert len(m.energy_blocks) == 2


@pytest.mark.parametrize("patch, fragment", [
    ({"blocks": []}, "needs [[blocks]]"),
    ({"loss": {"kind": "hinge"}}, "valid losses are cross_entropy, mse"),
    ({"loss": {"kind": "cross_entropy", "nudge": "resistive"}}, "resistive nudge is the MSE cost"),
    ({"blocks": [{"type": "Lineer", "args": {}}]}, "neither 'energy' nor a torch.nn module"),
    ({"blocks": [{"type": "Linear", "args": {"in_features": 6}}]}, "bad arguments"),
    ({"blocks": [{"type": "energy"}]}, "needs a [blocks.circuit] table"),
    ({"blocks": [{"type": "Linear", "args": {"in_features": 6, "out_features": 5}}, SMALL["blocks"][1]]},
     "receives 5 features, its circuit has 4 inputs"),
])
def test_model_spec_errors(patch, fragment):
    with pytest.raises(SpecError) as e:
        build_model({**SMALL, **patch})
    assert fragment in str(e.value)


def _gradcheck(*args):
    r = subprocess.run([sys.executable, "-m", "ffebm_sim.cli", "gradcheck", *args, "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


@pytest.mark.parametrize("backend", ["reference", "ngspice"])
def test_gradcheck_digits_model_passes(backend):
    rc, report = _gradcheck("circuits/digits_ffebm.toml", "--backend", backend)
    names = [t["name"] for t in report["tensors"]]
    # every tensor: both blocks' conductances and the digital BatchNorm's gains and offsets between them
    expected = [n for n, _ in build_model("circuits/digits_ffebm.toml").named_parameters()]
    assert names == expected and "layers.1.weight" in names and "layers.0.weights.0" in names
    assert report["min_cosine"] >= 0.9999 and report["max_rel_error"] <= 0.01
    assert rc == 0 and report["ok"]


def test_gradcheck_fails_honestly_with_a_huge_beta():
    # The largest beta inside the linear-regime bound (N*Vt = 25.9 mV; 5 V is refused as bad
    # input since issue 12), one-sided: biased by O(beta), and the check says so.
    rc, report = _gradcheck("circuits/digits_ffebm.toml", "--beta", "0.025", "--one-sided")
    assert rc == 1 and not report["ok"] and report["max_rel_error"] > 0.01


def test_parameter_counts_split_conductances_from_digital_parameters():
    from ffebm_sim.model import parameter_counts
    spec = {"name": "counted", "input_size": 6, "loss": {"kind": "cross_entropy"}, "blocks": [
        {"type": "Linear", "args": {"in_features": 6, "out_features": 4}},       # 6*4 + 4 = 28
        {"type": "BatchNorm1d", "args": {"num_features": 4}},                    # 4 + 4 (running stats: buffers)
        {"type": "energy", "circuit": {"layers": [4, 5, 3], "input_gain": 3.0, "bias": {"voltage": 1.0},
                                       "nonlinearity": {"kind": "double", "diode": {"is": 1e-8, "n": 1.0}},
                                       "conductances": {"low": 0.0, "high": 1e-4, "seed": 1}}},
        {"type": "Linear", "args": [3, 2]},                                      # 3*2 + 2 = 8
    ]}
    m = build_model(spec)
    # the energy block: G1 (2*4 x 5), G2 (5 x 3), bias conductances to both rails for 5 + 3 nodes
    analog = 2 * 4 * 5 + 5 * 3 + 2 * (5 + 3)
    assert parameter_counts(m) == {"analog": analog, "digital": 28 + 8 + 8}
    assert sum(p.numel() for p in m.parameters()) == analog + 28 + 8 + 8      # every parameter, once
    assert {id(p) for p in m.analog_parameters()} == {id(p) for p in m.energy_blocks[0].all_weights()}
    no_digital = build_model({**spec, "input_size": 4, "blocks": spec["blocks"][2:3]})
    assert parameter_counts(no_digital) == {"analog": analog, "digital": 0}
