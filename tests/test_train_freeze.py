"""The ablations: train --freeze-analog / --freeze-digital hold one kind of parameter at its
initial values, and a run reports its analog and digital parameter counts."""

import json
from pathlib import Path

import pytest
import torch

from ffebm_sim.cli import main
from ffebm_sim.errors import SpecError
from ffebm_sim.model import build_model
from ffebm_sim.train import TrainConfig, _optimizer, freeze, make_update_rules, train

from test_train import _state

CFG = dict(batch_size=64, lr=1e-2, lr_analog=3e-2)
ROOT = Path(__file__).resolve().parents[1]
#: tiny (tests/conftest.py): Linear 64->8 (64*8 + 8), energy block [8, 8, 10] (2*8*8 + 8*10)
TINY_ANALOG, TINY_DIGITAL = 208, 520


def _split(model):
    """(names of the conductances, names of the digital parameters) in state_dict naming."""
    analog = {id(p) for p in model.analog_parameters()}
    names = dict(model.named_parameters())
    return ({n for n, p in names.items() if id(p) in analog}, {n for n, p in names.items() if id(p) not in analog})


def test_freeze_analog_keeps_every_conductance_and_trains_the_digital_blocks(tmp_path, tiny, capsys):
    run = tmp_path / "run"
    init = build_model(tiny, seed=0).state_dict()
    analog, digital = _split(build_model(tiny))
    capsys.readouterr()
    assert main(["train", str(tiny), "--epochs", "1", "--out", str(run), "--freeze-analog"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == \
        f"parameters: {TINY_ANALOG} analog (28.6 %), {TINY_DIGITAL} digital; analog frozen at their initial values"
    state, _ = _state(run)
    assert analog and all(torch.equal(state[n], init[n]) for n in analog)
    assert all(not torch.equal(state[n], init[n]) for n in digital)
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["analog_parameters"], summary["digital_parameters"]) == (TINY_ANALOG, TINY_DIGITAL)
    assert (summary["freeze_analog"], summary["freeze_digital"]) == (True, False)
    # Resumed without the flag, the run stays frozen (the stored configuration decides) ...
    assert main(["train", str(tiny), "--epochs", "2", "--out", str(run), "--resume"]) == 0
    state, metrics = _state(run)
    assert len(metrics) == 2 and all(torch.equal(state[n], init[n]) for n in analog)
    # ... and unfreezing or freezing the other kind on resume is refused.
    capsys.readouterr()
    assert main(["train", str(tiny), "--epochs", "3", "--out", str(run), "--resume", "--freeze-digital"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--freeze-digital true (the run's: false)" in err[0], err


def test_freeze_digital_keeps_every_digital_parameter_and_trains_the_conductances(tmp_path, tiny):
    run = tmp_path / "run"
    init = build_model(tiny, seed=0).state_dict()
    analog, digital = _split(build_model(tiny))
    lines = []
    summary = train(TrainConfig(model=str(tiny), out=str(run), epochs=1, freeze_digital=True, **CFG),
                    log=lambda m: None, info=lines.append)
    assert lines == [f"parameters: {TINY_ANALOG} analog (28.6 %), {TINY_DIGITAL} digital; "
                     "digital frozen at their initial values"]
    state, _ = _state(run)
    assert digital and all(torch.equal(state[n], init[n]) for n in digital)
    assert all(not torch.equal(state[n], init[n]) for n in analog)
    assert (summary["freeze_analog"], summary["freeze_digital"]) == (False, True)
    assert (summary["analog_parameters"], summary["digital_parameters"]) == (TINY_ANALOG, TINY_DIGITAL)


@pytest.mark.parametrize("fields, handed", [
    ({}, {"analog", "digital"}),
    (dict(freeze_analog=True), {"digital"}),
    (dict(freeze_digital=True), {"analog"}),
    (dict(freeze_digital=True, device="ideal"), set()),       # the device rule owns the conductances
])
def test_frozen_parameters_are_never_handed_to_an_update(tiny, fields, handed):
    config = TrainConfig(model=str(tiny), out="unused", **fields).validate()
    model = build_model(tiny)
    freeze(model, config)
    kinds = {"analog": model.analog_parameters(), "digital": model.digital_parameters()}
    optimizer = _optimizer(model, config)
    given = {id(p) for g in optimizer.param_groups for p in g["params"]} if optimizer else set()
    assert given == {id(p) for kind in handed for p in kinds[kind]}
    for kind, params in kinds.items():
        frozen = fields.get(f"freeze_{kind}", False)
        assert all(p.requires_grad != frozen for p in params), kind
    rules = make_update_rules(model, config)
    assert (rules is not None) == ("device" in fields)


@pytest.mark.parametrize("args, fragment", [
    (["--freeze-analog", "--freeze-digital"], "--freeze-analog and --freeze-digital: together they freeze every "
                                              "parameter and nothing would train"),
    (["--freeze-analog", "--device", "ideal"], "--freeze-analog and --device ideal: the device rule updates"),
])
def test_contradictory_freezes_are_one_line_exit_2(tmp_path, tiny, capsys, args, fragment):
    out = tmp_path / "r"
    assert main(["train", str(tiny), "--out", str(out), *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ffebm: error: ") and fragment in lines[0], lines
    assert not out.exists()


def test_freezing_the_only_kind_a_model_has_is_refused_before_anything_is_written(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(SpecError, match="drn_digits.toml has no digital parameters; with its analog ones frozen"):
        train(TrainConfig(model=str(ROOT / "circuits" / "drn_digits.toml"), out=str(run), epochs=1,
                          freeze_analog=True), log=lambda m: None)
    assert not run.exists()


def test_freeze_flags_must_be_booleans():
    with pytest.raises(SpecError, match="--freeze-analog: 'yes'; true or false"):
        TrainConfig(model="m.toml", out="o", freeze_analog="yes").validate()
