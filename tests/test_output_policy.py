"""Issue 12: nothing lost, nothing executed. The output policy (ffebm_sim.outputs), safe checkpoint
loading, resume that refuses a changed configuration, the run-directory lock, permissions and
the messages of failed writes. Commands run in this process through ffebm_sim.cli.main (exit code
and stderr), except the lock test, which needs two processes."""

import errno
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ffebm_sim.checkpoint import load_latest
from ffebm_sim.cli import main
from ffebm_sim.errors import SpecError
from ffebm_sim.train import TrainConfig, train

CFG = dict(batch_size=64, lr=1e-2, lr_analog=3e-2, seed=1)


def run_cli(capsys, *args):
    """(exit code, stderr lines) of one ffebm command run in this process."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def one_error_line(code, err, *fragments):
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("ffebm: error: "), err
    for f in fragments:
        assert f in err[0], err
    assert "Traceback" not in err[0] and ".tmp" not in err[0]


def tree(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(Path(d).rglob("*")) if p.is_file()}


@pytest.fixture
def trained(tmp_path, tiny):
    run = tmp_path / "run"
    train(TrainConfig(model=str(tiny), out=str(run), epochs=1, **CFG), log=lambda m: None)
    return run


# ---- 1. data loss ---------------------------------------------------------------------------------------

def test_analyze_force_never_replaces_a_training_run(capsys, trained, tiny):
    before = tree(trained)
    ckpt = trained / "checkpoints" / "epoch_0001.pt"
    code, err = run_cli(capsys, "analyze", tiny, "--checkpoint", ckpt, "--samples", 1, "--out", trained, "--force")
    one_error_line(code, err, "--out", str(trained))
    assert tree(trained) == before


def test_analyze_force_never_replaces_files_the_tool_did_not_write(capsys, tmp_path, trained, tiny):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    ckpt = trained / "checkpoints" / "epoch_0001.pt"
    code, err = run_cli(capsys, "analyze", tiny, "--checkpoint", ckpt, "--out", mine, "--force")
    one_error_line(code, err, "--out", "did not write")
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_force_replaces_the_tools_own_earlier_output(tmp_path):
    from ffebm_sim.analyze.analysis import write_outputs
    out = tmp_path / "a"
    write_outputs(out, {"report.md": b"one"})
    with pytest.raises(SpecError, match="--force"):
        write_outputs(out, {"report.md": b"two"})
    write_outputs(out, {"report.md": b"two"}, force=True)
    assert (out / "report.md").read_bytes() == b"two"


def test_out_dot_is_refused(capsys, tmp_path, trained, tiny, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(tiny, work / "tiny.toml")
    shutil.copy(trained / "checkpoints" / "epoch_0001.pt", work / "e.pt")
    monkeypatch.chdir(work)
    before = tree(work)
    code, err = run_cli(capsys, "analyze", "tiny.toml", "--checkpoint", "e.pt", "--out", ".", "--force")
    one_error_line(code, err, "--out", "current directory")
    code, err = run_cli(capsys, "train", "tiny.toml", "--out", ".", "--epochs", 1)
    one_error_line(code, err, "--out")
    assert tree(work) == before


def test_netlist_never_writes_onto_its_spec_or_checkpoint(capsys, tmp_path, trained, tiny):
    spec = tmp_path / "block.toml"
    shutil.copy(Path(__file__).parent.parent / "circuits" / "block_small.toml", spec)
    before = spec.read_bytes()
    code, err = run_cli(capsys, "netlist", spec, "-o", spec)
    one_error_line(code, err, "--output", "input")
    assert spec.read_bytes() == before
    ckpt = trained / "checkpoints" / "epoch_0001.pt"
    saved = ckpt.read_bytes()
    code, err = run_cli(capsys, "netlist", tiny, "--block", 1, "--checkpoint", ckpt, "-o", ckpt)
    one_error_line(code, err, "--output", "input")
    assert ckpt.read_bytes() == saved


# ---- 2. a checkpoint cannot run code --------------------------------------------------------------------

class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_crafted_checkpoint_is_refused_and_never_executed(capsys, tmp_path, tiny, how):
    marker = tmp_path / "EXECUTED"
    evil = tmp_path / "evil.pt"
    payload = {"model": _Evil(marker)}
    if how == "pickle":
        evil.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, evil)
    deck = tmp_path / "deck.cir"
    code, err = run_cli(capsys, "netlist", tiny, "--block", 1, "--checkpoint", evil, "-o", deck)
    one_error_line(code, err, "--checkpoint", str(evil))
    assert not marker.exists()
    assert not deck.exists()


def test_a_crafted_checkpoint_in_a_run_is_not_resumed_from(capsys, tmp_path, trained, tiny):
    import hashlib
    marker = tmp_path / "EXECUTED"
    ckpt = trained / "checkpoints" / "epoch_0001.pt"
    ckpt.write_bytes(pickle.dumps({"model": _Evil(marker)}))
    ckpt.with_suffix(".sha256").write_text(hashlib.sha256(ckpt.read_bytes()).hexdigest())
    code, err = run_cli(capsys, "train", tiny, "--out", trained, "--resume", "--epochs", 2)
    one_error_line(code, err, "--resume", "no usable checkpoint")
    assert not marker.exists()
    assert not (trained / "checkpoints" / "epoch_0002.pt").exists()


def test_own_checkpoints_hold_only_tensors_and_plain_data(trained):
    state = torch.load(trained / "checkpoints" / "epoch_0001.pt", weights_only=True)
    assert "model" in state and state["epoch"] == 1


# ---- 4. a failed start leaves nothing behind ------------------------------------------------------------

def test_a_failed_start_leaves_nothing_and_the_corrected_command_works(tmp_path, tiny, monkeypatch):
    import ffebm_sim.train as train_module
    run = tmp_path / "run"

    def broken(*a, **k):
        raise OSError(errno.ECONNREFUSED, "Connection refused (a scheduler, say)")
    monkeypatch.setattr(train_module, "evaluate", broken)
    with pytest.raises(OSError):
        train(TrainConfig(model=str(tiny), out=str(run), epochs=1, **CFG), log=lambda m: None)
    assert not run.exists()
    monkeypatch.undo()
    train(TrainConfig(model=str(tiny), out=str(run), epochs=1, **CFG), log=lambda m: None)
    assert (run / "summary.json").is_file()


def test_a_failed_start_in_an_empty_directory_leaves_it_empty(tmp_path, tiny, monkeypatch):
    import ffebm_sim.train as train_module
    run = tmp_path / "empty"
    run.mkdir()
    monkeypatch.setattr(train_module, "evaluate", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        train(TrainConfig(model=str(tiny), out=str(run), epochs=1, **CFG), log=lambda m: None)
    assert run.is_dir() and not any(run.iterdir())


def test_bad_options_create_no_run_directory(capsys, tmp_path, tiny):
    run = tmp_path / "run"
    code, err = run_cli(capsys, "train", tiny, "--out", run, "--lr", "-1")
    one_error_line(code, err, "--lr")
    assert not run.exists()


# ---- 5. resume compares the configuration; extending continues the schedule ---------------------------

@pytest.mark.parametrize("extra, named", [
    (["--lr", "0.5"], "--lr 0.5"),
    (["--backend", "ngspice"], "--backend ngspice"),
    (["--data", "mnist-5k"], "--data mnist-5k"),
    (["--seed", "7"], "--seed 7"),
    (["--batch-size", "16"], "--batch-size 16"),
])
def test_resume_refuses_a_changed_configuration(capsys, trained, tiny, extra, named):
    before = tree(trained)
    code, err = run_cli(capsys, "train", tiny, "--out", trained, "--resume", "--epochs", 2, *extra)
    one_error_line(code, err, "--resume", named, "--epochs")
    assert tree(trained) == before


def test_resume_refuses_an_edited_spec(capsys, tmp_path, trained, tiny):
    edited = tmp_path / "edited.toml"
    edited.write_text(tiny.read_text().replace("input_gain = 4.0", "input_gain = 5.0"))
    code, err = run_cli(capsys, "train", edited, "--out", trained, "--resume", "--epochs", 2)
    one_error_line(code, err, "MODEL", "differs")
    moved = tmp_path / "moved.toml"
    shutil.copy(tiny, moved)                 # the same spec elsewhere is the same run
    code, err = run_cli(capsys, "train", moved, "--out", trained, "--resume", "--epochs", 2,
                        "--on-failure", "skip")
    assert code == 0, err


def test_extending_a_finished_run_never_trains_at_lr_zero(tmp_path, tiny):
    run = tmp_path / "run"
    train(TrainConfig(model=str(tiny), out=str(run), epochs=1, **CFG), log=lambda m: None)
    summary = train(TrainConfig(model=str(tiny), out=str(run), epochs=2, **CFG), resume=True, log=lambda m: None)
    one = torch.load(run / "checkpoints" / "epoch_0001.pt", weights_only=True)["model"]
    two = torch.load(run / "checkpoints" / "epoch_0002.pt", weights_only=True)["model"]
    assert any(not torch.equal(one[k], two[k]) for k in one), "epoch 2 did not move any weight"
    assert json.loads((run / "config.json").read_text())["epochs"] == summary["epochs"] == 2
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


def test_resume_cannot_shrink_a_run(capsys, tmp_path, tiny):
    run = tmp_path / "run"
    train(TrainConfig(model=str(tiny), out=str(run), epochs=2, **CFG), log=lambda m: None)
    code, err = run_cli(capsys, "train", tiny, "--out", run, "--resume", "--epochs", 1)
    one_error_line(code, err, "--epochs", "finished 2 epochs")


# ---- 6. a run directory is locked while a run uses it ---------------------------------------------------

def test_a_second_training_on_the_same_out_fails_at_once(tmp_path, tiny):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "ffebm_sim.cli", "train", str(tiny), "--out", str(run), "--epochs", "50",
           "--batch-size", "64"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (run / "config.json").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second started"
        for extra in (["--resume"], []):
            t0 = time.monotonic()
            r = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=120)
            assert r.returncode == 2, r.stderr
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and str(run) in lines[0], r.stderr
            assert time.monotonic() - t0 < 120
            assert first.poll() is None, "the first run ended before the second was refused"
        assert "in use" in subprocess.run(cmd + ["--resume"], capture_output=True, text=True,
                                          timeout=300).stderr
    finally:
        first.kill()
        first.wait(timeout=60)


# ---- 10. messages of failed writes and bad checkpoints --------------------------------------------------

def test_disk_full_names_the_checkpoint_and_leaves_no_lone_checksum(capsys, tmp_path, tiny, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):
        if ".epoch_0002.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setenv("FFEBM_PROGRESS_INTERVAL", "0")   # the error line alone, however slow the machine
    run = tmp_path / "run"
    code, err = run_cli(capsys, "train", tiny, "--out", run, "--epochs", 2, "--batch-size", 64)
    err = [line for line in err if line.startswith("ffebm:")]
    one_error_line(code, err, "epoch_0002.pt", "No space left on device")
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch_0001.pt", "epoch_0001.sha256"]
    monkeypatch.undo()
    code, err = run_cli(capsys, "train", tiny, "--out", run, "--resume")
    assert code == 0, err
    assert (ckpts / "epoch_0002.pt").is_file()


def test_a_checkpoint_never_exists_without_its_checksum(tmp_path, monkeypatch):
    # A SIGKILL can land between any two renames; the checksum is renamed into place first, so
    # whenever epoch_0001.pt exists its checksum does too (a kill in between leaves a lone
    # .sha256 that no resume reads).
    from ffebm_sim.checkpoint import save_checkpoint
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append((Path(dst).name, sorted(q.name for q in Path(dst).parent.glob("epoch_*"))))
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(tmp_path / "ckpt", 1, {"model": {"w": torch.zeros(3)}})
    assert [name for name, _ in seen] == ["epoch_0001.sha256", "epoch_0001.pt"]
    assert seen[1][1] == ["epoch_0001.sha256"]          # the .pt appears only after its checksum
    monkeypatch.undo()
    assert load_latest(tmp_path / "ckpt")[0] == 1


def test_a_missing_checksum_is_not_called_a_mismatch(trained, tiny):
    train(TrainConfig(model=str(tiny), out=str(trained), epochs=2, **CFG), resume=True, log=lambda m: None)
    (trained / "checkpoints" / "epoch_0002.sha256").unlink()
    with pytest.warns(UserWarning) as w:
        epoch, _ = load_latest(trained / "checkpoints")
    assert epoch == 1
    text = " ".join(str(x.message) for x in w)
    assert "no checksum file" in text and "mismatch" not in text and "epoch_0001.pt" in text


def test_when_every_checkpoint_is_bad_resume_refuses(capsys, trained, tiny):
    ckpt = trained / "checkpoints" / "epoch_0001.pt"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    metrics = (trained / "metrics.json").read_bytes()
    code, err = run_cli(capsys, "train", tiny, "--out", trained, "--resume", "--epochs", 2)
    one_error_line(code, err, "no usable checkpoint", "epoch_0001.pt: checksum mismatch")
    assert (trained / "metrics.json").read_bytes() == metrics
    assert not (trained / "checkpoints" / "epoch_0002.pt").exists()


def _read_only(monkeypatch, directory):
    """Make ``directory`` behave as on a read-only file system (root ignores chmod)."""
    directory = str(directory)
    real_open, real_mkdir = os.open, os.mkdir

    def guarded(real):
        def call(path, *a, **k):
            where = os.path.abspath(os.fspath(path))
            if where == directory or where.startswith(directory + os.sep):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
            return real(path, *a, **k)
        return call
    monkeypatch.setattr(os, "open", guarded(real_open))
    monkeypatch.setattr(os, "mkdir", guarded(real_mkdir))


def test_analyze_to_a_read_only_out_fails_before_the_analysis(capsys, tmp_path, trained, tiny, monkeypatch):
    import ffebm_sim.analyze.cli as analyze_cli
    calls = []
    monkeypatch.setattr(analyze_cli, "analyze_model", lambda *a, **k: calls.append(a) or ({"blocks": []}, {}))
    ro = tmp_path / "ro"
    ro.mkdir()
    _read_only(monkeypatch, ro)
    code, err = run_cli(capsys, "analyze", tiny, "--checkpoint", trained / "checkpoints" / "epoch_0001.pt",
                        "--out", ro / "analysis")
    one_error_line(code, err, "--out", "not writable")
    assert calls == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_analyze_to_a_chmod_read_only_out_fails_before_the_analysis(capsys, tmp_path, trained, tiny, monkeypatch):
    import ffebm_sim.analyze.cli as analyze_cli
    calls = []
    monkeypatch.setattr(analyze_cli, "analyze_model", lambda *a, **k: calls.append(a) or ({"blocks": []}, {}))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, err = run_cli(capsys, "analyze", tiny, "--checkpoint", trained / "checkpoints" / "epoch_0001.pt",
                            "--out", ro / "analysis")
    finally:
        ro.chmod(0o755)
    one_error_line(code, err, "--out", "not writable")
    assert calls == []


def test_write_errors_name_the_users_path_not_a_temporary_file(capsys, tmp_path, tiny, monkeypatch):
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("deck.cir"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(src))
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    deck = tmp_path / "deck.cir"
    code, err = run_cli(capsys, "netlist", tiny, "--block", 1, "--seed", 0, "-o", deck)
    one_error_line(code, err, str(deck), os.strerror(errno.EIO))
    assert list(tmp_path.glob(".deck.cir*")) == []


# ---- 11. files honour the umask -------------------------------------------------------------------------

@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_outputs_honour_the_umask(capsys, tmp_path, tiny, mask):
    old = os.umask(mask)
    try:
        deck = tmp_path / "deck.cir"
        code, err = run_cli(capsys, "netlist", tiny, "--block", 1, "--seed", 0, "-o", deck)
        assert code == 0, err
        run = tmp_path / "run"
        train(TrainConfig(model=str(tiny), out=str(run), epochs=1, **CFG), log=lambda m: None)
    finally:
        os.umask(old)
    want = 0o666 & ~mask
    for path in [deck] + [p for p in run.rglob("*") if p.is_file()]:
        assert stat.S_IMODE(path.stat().st_mode) == want, path
