"""Training runs: outputs, determinism, resume, corrupted checkpoints, refusal to overwrite."""

import json
import subprocess
import sys
import warnings

import pytest
import torch

from ffebm_sim.checkpoint import load_latest
from ffebm_sim.errors import SpecError
from ffebm_sim.train import TrainConfig, train


def _state(run):
    latest = load_latest(run / "checkpoints")
    return latest[1]["model"], latest[1]["metrics"]


def _strip_time(metrics):
    return [{k: v for k, v in m.items() if "seconds" not in k} for m in metrics]


def test_run_directory_contents_and_learning(tmp_path, tiny):
    run = tmp_path / "run"
    summary = train(TrainConfig(model=str(tiny), out=str(run), epochs=2, batch_size=64, lr=1e-2, lr_analog=3e-2),
                    log=lambda m: None)
    for name in ("config.json", "metrics.csv", "metrics.json", "summary.json", "learning_curves.png",
                 "checkpoints/epoch_0001.pt", "checkpoints/epoch_0002.pt"):
        assert (run / name).is_file(), name
    s = json.loads((run / "summary.json").read_text())
    assert s == summary
    for key in ("test_accuracy", "train_accuracy", "epochs", "seconds", "backend"):
        assert key in s
    assert s["epochs"] == 2 and s["backend"] == "reference"
    assert s["test_accuracy"] > 0.3          # it learns (chance is 0.1)
    metrics = json.loads((run / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[0]["solves"] > 0
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("epoch,train_loss")


def test_resume_gives_identical_weights_and_metrics(tmp_path, tiny):
    full, part = tmp_path / "full", tmp_path / "part"
    cfg = dict(model=str(tiny), batch_size=64, lr=1e-2, lr_analog=3e-2, seed=1)
    train(TrainConfig(out=str(full), epochs=3, **cfg), log=lambda m: None)
    assert train(TrainConfig(out=str(part), epochs=3, **cfg), log=lambda m: None, stop_after_epoch=1) is None
    train(TrainConfig(out=str(part), epochs=3, **cfg), resume=True, log=lambda m: None, epochs_given=False)
    a, ma = _state(full)
    b, mb = _state(part)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _strip_time(ma) == _strip_time(mb)


def test_corrupted_last_checkpoint_falls_back_with_a_warning(tmp_path, tiny):
    run = tmp_path / "run"
    train(TrainConfig(model=str(tiny), out=str(run), epochs=2, batch_size=64), log=lambda m: None)
    last = run / "checkpoints" / "epoch_0002.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        epoch, _ = load_latest(run / "checkpoints")
    assert epoch == 1
    assert any("checksum" in str(x.message) for x in w)


def test_an_existing_run_is_never_overwritten(tmp_path, tiny):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(SpecError, match="--resume"):
        train(TrainConfig(model=str(tiny), out=str(run), epochs=1), log=lambda m: None)
    assert (run / "notes.txt").read_text() == "mine"


def test_cli_train_json_last_line(tmp_path, tiny):
    r = subprocess.run([sys.executable, "-m", "ffebm_sim.cli", "train", str(tiny), "--data", "digits",
                        "--epochs", "1", "--out", str(tmp_path / "r"), "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 1 and 0 <= summary["test_accuracy"] <= 1
    # tiny: energy block [8, 8, 10] (2*8*8 + 8*10 conductances), Linear 64->8 (64*8 + 8)
    assert (summary["analog_parameters"], summary["digital_parameters"]) == (208, 520)
    assert "parameters: 208 analog (28.6 %), 520 digital\n" in r.stderr     # stdout holds the JSON alone
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--data", "cifar"], "valid data sets are digits, mnist-5k, mnist"),
    (["--data", "mnist"], "--data-dir"),
    (["--data", "mnist", "--data-dir", "/nonexistent"], "no such directory"),
    (["--backend", "spectre"], "valid backends are"),
    (["--epochs", "0"], "--epochs"),
    (["--gradient", "bp"], "valid values are ep, implicit"),
    (["--data", "mnist-5k"], "784 features"),
])
def test_cli_train_bad_options(tmp_path, tiny, args, fragment):
    out = tmp_path / "r"
    r = subprocess.run([sys.executable, "-m", "ffebm_sim.cli", "train", str(tiny), "--out", str(out), *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], r.stderr
    assert not out.exists() or not any(out.iterdir())
