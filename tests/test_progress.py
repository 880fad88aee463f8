"""Progress when stderr is not a terminal: a plain line every few seconds (FFEBM_PROGRESS_INTERVAL),
from training, verify, analyze, gradcheck and bench; on a terminal the tqdm bar."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time

import pytest

from ffebm_sim import progress as progress_module
from ffebm_sim.cli import main
from ffebm_sim.progress import Progress, close_all

LINE = re.compile(r"^ffebm: (?P<desc>.+?): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+)")


def _progress_lines(text: str, desc: str) -> list[re.Match]:
    return [m for m in map(LINE.match, text.splitlines()) if m and m["desc"].startswith(desc)]


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.01)
    return predicate()


def test_plain_lines_every_interval_with_counts_solves_and_elapsed():
    out = io.StringIO()
    solves = [0]
    p = Progress(10, "work", solves=lambda: solves[0], interval=0.05, stream=out, tty=False)
    p.update(1)
    p.set(3)
    solves[0] = 27
    p.set_postfix(loss="0.5")
    assert _wait(lambda: p.lines >= 2)
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("ffebm: work: 3/10 samples (30%), 27 solves, ") and "s elapsed, loss 0.5" in lines[0]
    n = len(lines)
    time.sleep(0.2)
    assert len(out.getvalue().splitlines()) == n              # closed: no more lines


def test_first_line_is_prompt_and_a_quick_job_prints_none(monkeypatch):
    monkeypatch.setattr(progress_module, "FIRST_LINE_S", 0.05)
    out = io.StringIO()
    with Progress(5, "slow", interval=60, stream=out, tty=False) as p:
        assert _wait(lambda: p.lines == 1, timeout=3)       # the first line does not wait the interval
    quick = io.StringIO()
    with Progress(5, "quick", interval=60, stream=quick, tty=False) as p:
        p.update(5)
    assert quick.getvalue() == ""


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("FFEBM_PROGRESS_INTERVAL", "0")
    out = io.StringIO()
    p = Progress(5, "off", stream=out, tty=False)
    assert p._thread is None
    p.close()
    monkeypatch.setenv("FFEBM_PROGRESS_INTERVAL", "0.25")
    assert progress_module.interval_s() == 0.25
    monkeypatch.setenv("FFEBM_PROGRESS_INTERVAL", "soon")
    assert progress_module.interval_s() == progress_module.DEFAULT_INTERVAL_S


def test_on_a_terminal_it_is_the_tqdm_bar():
    out = io.StringIO()
    p = Progress(4, "bar", stream=out, tty=True, interval=0.01)
    p.update(2)
    p.close()
    assert p._thread is None and "bar" in out.getvalue() and "ffebm: bar" not in out.getvalue()


def test_close_all_and_a_dropped_progress_stop_their_lines():
    out = io.StringIO()
    Progress(3, "dropped", interval=0.02, stream=out, tty=False)      # never closed, not referenced
    kept = Progress(3, "kept", interval=0.02, stream=out, tty=False)
    assert _wait(lambda: kept.lines >= 1)
    close_all()
    time.sleep(0.1)
    n = len(out.getvalue())
    time.sleep(0.2)
    assert len(out.getvalue()) == n


def test_training_to_a_pipe_writes_progress_lines(tiny, tmp_path):
    env = {**os.environ, "FFEBM_PROGRESS_INTERVAL": "0.1"}
    r = subprocess.run([sys.executable, "-m", "ffebm_sim.cli", "train", str(tiny), "--epochs", "1",
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = _progress_lines(r.stderr, "train epoch 1/1")
    assert lines, r.stderr
    assert all(int(m["total"]) == 1437 and m["unit"] == "samples" for m in lines)
    assert all("solves" in m.string and "elapsed" in m.string for m in lines)
    done = [int(m["done"]) for m in lines]
    assert done == sorted(done)
    # the epoch's summary line follows its progress lines
    assert r.stderr.splitlines().index(lines[-1].string) < next(
        i for i, line in enumerate(r.stderr.splitlines()) if line.startswith("epoch 1/1:"))


@pytest.fixture
def fast_lines(monkeypatch):
    monkeypatch.setenv("FFEBM_PROGRESS_INTERVAL", "0.02")
    monkeypatch.setattr(progress_module, "FIRST_LINE_S", 0.0)


def test_verify_reports_progress(fast_lines, capsys):
    assert main(["verify", "circuits/block_small.toml", "--samples", "40", "--nudge"]) == 0
    lines = _progress_lines(capsys.readouterr().err, "verify ")
    assert lines and all(m["unit"] == "solves" and int(m["total"]) == 40 * 2 * 3 for m in lines)
    assert max(int(m["done"]) for m in lines) > 0


def test_gradcheck_reports_progress(fast_lines, capsys, tiny):
    main(["gradcheck", str(tiny), "--batch", "8"])
    lines = _progress_lines(capsys.readouterr().err, "gradcheck tiny")
    assert lines and all(int(m["total"]) == 16 for m in lines)


def test_bench_reports_progress(fast_lines, monkeypatch, capsys):
    from ffebm_sim import bench

    def fake(quick, log, within):
        for step, message in zip(bench.solver_steps(quick), ("one", "two", "three")):
            log(step, message)
            time.sleep(0.1)
        return {}
    monkeypatch.setattr(bench, "_run_solvers", fake)
    assert bench.run_solvers(quick=True) == {}
    lines = _progress_lines(capsys.readouterr().err, "bench solvers")
    assert lines and "now three" in lines[-1].string and int(lines[-1]["done"]) == 2


def test_analyze_says_when_it_has_fewer_samples_than_asked(tiny, tmp_path, monkeypatch):
    from ffebm_sim.analyze import analysis
    from ffebm_sim.train import TrainConfig, train
    train(TrainConfig(model=str(tiny), out=str(tmp_path / "run"), epochs=1, batch_size=256), log=lambda m: None)
    checkpoint = next((tmp_path / "run" / "checkpoints").glob("epoch_*.pt"))

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop
    monkeypatch.setattr(analysis, "analyze_block", stop)
    said = []
    with pytest.raises(Stop):
        analysis.analyze_model(tiny, checkpoint, analysis.AnalyzeOptions(samples=5000), log=said.append)
    assert said == ["--samples 5000: the digits test split has 360 samples; using all 360"]
