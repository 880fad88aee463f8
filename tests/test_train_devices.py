"""Training with device update rules (--device/--update): both backends, bounds, resume, bad names."""

import json

import pytest
import torch

from ffebm_sim.checkpoint import load_latest
from ffebm_sim.cli import main
from ffebm_sim.errors import SpecError
from ffebm_sim.hardware import PRESETS, RULES
from ffebm_sim.train import TrainConfig, default_lr_analog, prepare_run_dir, train

from test_train import _strip_time

G_MAX = 1e-3          # TINY's energy block: g_min = 0, g_max = 1e-3 S


def _conductances(run):
    """(every energy-block conductance in S, the checkpoint) of the run's last checkpoint."""
    from ffebm_sim.model import build_model
    _, state = load_latest(run / "checkpoints")
    model = build_model(state["config"]["model"])
    model.load_state_dict(state["model"])
    block = model.energy_blocks[0]
    return torch.cat([w.detach().flatten() * block.conductance_unit_s for w in block.all_weights()]), state


@pytest.mark.parametrize("backend", ["reference", "ngspice"])
def test_shd_on_reram_trains_within_the_device_range(tmp_path, tiny, capsys, backend):
    run = tmp_path / backend
    assert main(["train", str(tiny), "--epochs", "1", "--backend", backend, "--device", "reram", "--update", "shd",
                 "--update-option", "coupling=0.02", "--out", str(run), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    g, state = _conductances(run)
    assert float(g.min()) >= 0.0 and float(g.max()) <= G_MAX
    assert summary["device"] == "reram" and summary["update"] == "shd" and summary["pulses"] > 0
    config = json.loads((run / "config.json").read_text())
    assert config["device"] == "reram" and config["update"] == "shd" and config["update_options"] == {"coupling": 0.02}
    assert config["lr"] == 1e-2                                         # the spec's Adam lr, digital blocks
    # The preset's default for the rule, not the spec's Adam lr_analog.
    assert config["lr_analog"] == default_lr_analog("reram", "shd") == 1.0
    row = json.loads((run / "metrics.json").read_text())[0]
    assert row["pulses"] == row["pulses_up"] + row["pulses_down"] > 0 and row["fast_pulses"] > 0
    assert row["transfers"] == 23                                       # one per step: ceil(1437 / 64)
    assert state["update_rules"][0]["name"] == "shd" and state["update_rules"][0]["steps"] == 23
    assert summary["test_accuracy"] > 0.2                               # it learns (chance is 0.1)
    # Adam keeps only the digital block (Linear weight and bias); the rule owns the conductances.
    groups = state["optimizer"]["param_groups"]
    assert len(groups) == 1 and len(groups[0]["params"]) == 2


def test_resume_with_a_device_rule_is_bit_identical(tmp_path, tiny):
    full, part = tmp_path / "full", tmp_path / "part"
    cfg = dict(model=str(tiny), batch_size=64, lr=1e-2, lr_analog=0.2, seed=1, device="reram", update="tiki-taka",
               update_options={"coupling": 0.05})
    train(TrainConfig(out=str(full), epochs=2, **cfg), log=lambda m: None)
    assert train(TrainConfig(out=str(part), epochs=2, **cfg), log=lambda m: None, stop_after_epoch=1) is None
    train(TrainConfig(out=str(part), epochs=2, **cfg), resume=True, log=lambda m: None, epochs_given=False)
    a = load_latest(full / "checkpoints")[1]
    b = load_latest(part / "checkpoints")[1]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for ra, rb in zip(a["update_rules"], b["update_rules"]):
        assert ra["steps"] == rb["steps"] and torch.equal(ra["noise"], rb["noise"])
        for fa, fb in zip(ra["fast"], rb["fast"]):
            assert torch.equal(fa, fb)
    assert _strip_time(a["metrics"]) == _strip_time(b["metrics"])
    assert "pulses" in a["metrics"][1]


def test_a_config_json_from_before_devices_still_loads(tmp_path, tiny):
    run = tmp_path / "r"
    prepare_run_dir(TrainConfig(model=str(tiny), out=str(run), epochs=2, lr_analog=3e-2).validate(), resume=False)
    stored = json.loads((run / "config.json").read_text())
    for key in ("device", "update", "update_options"):
        del stored[key]
    (run / "config.json").write_text(json.dumps(stored))
    _, config = prepare_run_dir(TrainConfig(model=str(tiny), out=str(run)), resume=True, epochs_given=False)
    assert (config.device, config.update, config.update_options, config.lr_analog, config.epochs) == \
        (None, None, {}, 3e-2, 2)


def test_without_a_device_the_defaults_are_unchanged():
    config = TrainConfig(model="m.toml", out="o").validate()
    assert config.lr_analog == 2e-3 and config.device is None and config.update is None
    assert TrainConfig(model="m.toml", out="o", device="reram").validate().update == "sgd"


@pytest.mark.parametrize("fields, fragment", [
    (dict(device="memristor"), "valid presets are " + ", ".join(PRESETS)),
    (dict(device="reram", update="adam"), "valid rules are " + ", ".join(RULES)),
    (dict(update="shd"), "needs --device"),
])
def test_bad_names_raise_spec_errors(fields, fragment):
    with pytest.raises(SpecError, match=fragment):
        TrainConfig(model="m.toml", out="o", **fields).validate()


@pytest.mark.parametrize("args, fragment", [
    (["--device", "memristor"], "--device: unknown preset 'memristor'; valid presets are " + ", ".join(PRESETS)),
    (["--device", "reram", "--update", "adam"], "--update: unknown rule 'adam'; valid rules are " + ", ".join(RULES)),
    (["--update", "shd"], "needs --device"),
    (["--device", "reram", "--update", "shd", "--update-option", "friction=2"], "not an option of rule 'shd'"),
    (["--device", "reram", "--update-option", "coupling"], "KEY=VALUE"),
])
def test_cli_bad_device_options_one_line_exit_2(tmp_path, tiny, capsys, args, fragment):
    out = tmp_path / "r"
    assert main(["train", str(tiny), "--out", str(out), *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ffebm: error: ") and fragment in lines[0], captured.err
    assert not out.exists() or not any(out.iterdir())
