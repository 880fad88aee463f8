"""Faults lose nothing: a worker process killed mid-batch (or mid-epoch) is replaced and its jobs re-run,
with results bit-identical to a crash-free run; a job that keeps killing workers is named; a training
run SIGKILLed after a checkpoint resumes to the same weights.

Faults are injected with the hooks of ffebm_sim.backends.faults (FFEBM_FAULT_DIR: token files that make a
worker SIGKILL itself)."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_block, random_inputs
from ffebm_sim.backends import Nudge
from ffebm_sim.backends.ngspice import NgspiceBackend
from ffebm_sim.backends.engines import WorkerCrashError
from ffebm_sim.backends.faults import FAULT_DIR_ENV
from ffebm_sim.backends.pool import PoolEngine
from ffebm_sim.checkpoint import load_latest


B, CHUNK = 21, 8            # three jobs: 8, 8 and 5 samples


def _faults(tmp_path, monkeypatch, *tokens, always=None):
    d = tmp_path / "faults"
    d.mkdir()
    for t in tokens:
        (d / t).touch()
    if always is not None:
        (d / "always").write_text(str(always))
    monkeypatch.setenv(FAULT_DIR_ENV, str(d))     # before the workers start: they inherit it
    return d


def _fired(d):
    return sorted(p.name for p in d.iterdir() if p.name.startswith("fired-"))


def _problem(seed=3):
    c = make_block((6, 5, 3), kind="double", seed=seed, bias=True)
    u = random_inputs(c, B, seed=1)
    nudge = Nudge(currents_a=torch.from_numpy(np.random.default_rng(0).normal(0, 2e-6, (B, 3))))
    return c, u, nudge


def test_killed_workers_are_replaced_and_results_are_identical(tmp_path, monkeypatch):
    d = _faults(tmp_path, monkeypatch, "once-0", "once-1")          # two kills
    c, u, nudge = _problem()
    engine = PoolEngine(2)
    try:
        for method in ("op", "sweep", "tran"):
            one = NgspiceBackend(reduced=True, method=method, chunk=CHUNK)     # in this process: no hook
            two = NgspiceBackend(reduced=True, method=method, workers=2, chunk=CHUNK)
            two._engine = engine
            for nd in (None, nudge):
                a, b = one.solve(c, u, nd), two.solve(c, u, nd)
                assert a.ok and b.ok
                assert torch.equal(a.node_voltages_v, b.node_voltages_v)
                assert torch.equal(a.source_currents_a, b.source_currents_a)
        assert len(_fired(d)) == 2 and not any(d.glob("once-*"))
        stats = engine.fault_stats()
        assert stats["restarts"] >= 1 and stats["lost_jobs"] >= 1
    finally:
        engine.close()


def test_a_job_that_always_kills_its_worker_is_named(tmp_path, monkeypatch):
    _faults(tmp_path, monkeypatch, always=5)       # the last chunk (5 samples) segfaults every time
    c, u, _ = _problem()
    engine = PoolEngine(1)          # one worker: the restarts cost half the CPU
    be = NgspiceBackend(reduced=True, method="op", workers=2, chunk=CHUNK)
    be._engine = engine
    try:
        with pytest.raises(WorkerCrashError) as e:
            be.solve(c, u)
        message = str(e.value)
        assert "job 3 of 3" in message and "samples 16..20" in message and "3 times" in message
        assert "\n" not in message
        # the engine is usable afterwards
        (Path(os.environ[FAULT_DIR_ENV]) / "always").unlink()
        assert be.solve(c, u[:16]).ok
    finally:
        engine.close()


def test_dask_reruns_the_tasks_of_a_killed_worker(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    d = _faults(tmp_path, monkeypatch, "once-0")
    c, u, nudge = _problem()
    from ffebm_sim.backends.dask_engine import DaskEngine
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, scheduler_port=0, worker_dashboard_address=None,
                                  silence_logs=50) as cluster:
        on_dask = NgspiceBackend(reduced=True, method="op", scheduler=cluster.scheduler_address, chunk=CHUNK)
        on_dask._engine = DaskEngine(cluster.scheduler_address, timeout_s=30, task_timeout_s=120)
        local = NgspiceBackend(reduced=True, method="op", chunk=CHUNK)
        try:
            a, b = on_dask.solve(c, u, nudge), local.solve(c, u, nudge)
            assert a.ok and b.ok
            assert torch.equal(a.node_voltages_v, b.node_voltages_v)
            assert torch.equal(a.source_currents_a, b.source_currents_a)
            assert _fired(d)
        finally:
            on_dask.close()


# ---- training ---------------------------------------------------------------------------------------


def _model(run):
    return load_latest(run / "checkpoints")[1]["model"]


def _assert_same_model(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_worker_killed_mid_epoch_gives_identical_weights(tmp_path, monkeypatch, tiny, caplog):
    from ffebm_sim.train import TrainConfig, train
    cfg = dict(model=str(tiny), epochs=1, batch_size=64, lr=1e-2, lr_analog=3e-2, seed=1, backend="ngspice",
               backend_options={"workers": 2})
    train(TrainConfig(out=str(tmp_path / "clean"), **cfg), log=lambda m: None)
    d = _faults(tmp_path, monkeypatch, "at-30-a", "at-60-b")        # mid-epoch, one of the two workers each
    with caplog.at_level(logging.WARNING, logger="ffebm_sim.pool"):
        train(TrainConfig(out=str(tmp_path / "killed"), **cfg), log=lambda m: None)
    assert len(_fired(d)) == 2
    assert sum("ngspice worker died" in r.getMessage() for r in caplog.records) >= 2
    _assert_same_model(_model(tmp_path / "clean"), _model(tmp_path / "killed"))


def _cli_train(tiny, out, *extra):
    return [sys.executable, "-m", "ffebm_sim.cli", "train", str(tiny), "--out", str(out), "--epochs", "3",
            "--batch-size", "64", "--seed", "1", *extra]


def test_training_sigkilled_after_a_checkpoint_resumes_to_identical_weights(tmp_path, tiny):
    full, part = tmp_path / "full", tmp_path / "part"
    r = subprocess.run(_cli_train(tiny, full), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen(_cli_train(tiny, part), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = part / "checkpoints" / "epoch_0001.pt"
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (part / "summary.json").exists()
    r = subprocess.run(_cli_train(tiny, part, "--resume"), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    _assert_same_model(_model(full), _model(part))
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((part / "metrics.json").read_text())
    strip = lambda ms: [{k: v for k, v in m.items() if "seconds" not in k} for m in ms]  # noqa: E731
    assert strip(a) == strip(b)
