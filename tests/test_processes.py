"""Processes: a Dask scheduler that is not there fails fast with one line; SIGTERM/SIGINT end every
worker (and the resource tracker) with one line, and the run resumes. Network traffic stays on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ffebm_sim.cli import main
from ffebm_sim.errors import SpecError


def _free_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(capsys, *args):
    t0 = time.monotonic()
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    return rc, err, time.monotonic() - t0


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ffebm: error: ") and "Traceback" not in err
    return lines[0]


# ---- item 3: --scheduler fails fast -----------------------------------------------------------------

@pytest.mark.parametrize("address", ["notanaddress", "tcp://127.0.0.1", "tcp://127.0.0.1:0", "tcp://127.0.0.1:99999",
                                     "http://127.0.0.1:8786", "tcp://:8786", "tcp://127.0.0.1:87a6", ""])
def test_malformed_scheduler_address_is_bad_input(tiny, tmp_path, capsys, address):
    out = tmp_path / "run"
    rc, err, seconds = _run(capsys, "train", tiny, "--backend", "ngspice", "--scheduler", address, "--out", out)
    line = _one_error_line(err)
    assert rc == 2 and "--scheduler" in line and repr(address) in line and "tcp://HOST:PORT" in line
    assert not out.exists()
    assert seconds < 5


def test_scheduler_with_workers_is_refused(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    rc, err, _ = _run(capsys, "train", tiny, "--backend", "ngspice", "--scheduler", "tcp://127.0.0.1:8786",
                      "--workers", "2", "--out", out)
    line = _one_error_line(err)
    assert rc == 2 and "--scheduler" in line and "--workers 2" in line
    assert not out.exists()
    from ffebm_sim.backends.ngspice import NgspiceBackend
    with pytest.raises(SpecError, match="--workers 2"):
        NgspiceBackend(workers=2, scheduler="tcp://127.0.0.1:8786")


def test_connect_timeout_is_a_few_seconds():
    from ffebm_sim.backends.dask_engine import CONNECT_TIMEOUT_S
    assert 1 <= CONNECT_TIMEOUT_S <= 5


def test_refused_scheduler_port_fails_fast(tiny, tmp_path, capsys):
    pytest.importorskip("distributed")
    address = f"tcp://127.0.0.1:{_free_port()}"
    out = tmp_path / "run"
    rc, err, seconds = _run(capsys, "train", tiny, "--backend", "ngspice", "--scheduler", address, "--out", out)
    line = _one_error_line(err)
    assert rc == 2 and f"--scheduler: {address}" in line
    assert not out.exists()               # connected before the run directory is made
    assert seconds < 10


@pytest.fixture
def silent_server():
    """A loopback TCP server that accepts connections and never says a word (like an unroutable peer)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held, stop = [], threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(2)
    for c in held:
        c.close()
    srv.close()


def test_silent_scheduler_fails_fast(tiny, tmp_path, capsys, monkeypatch, silent_server):
    pytest.importorskip("distributed")
    monkeypatch.setenv("FFEBM_CONNECT_TIMEOUT", "1.5")
    out = tmp_path / "run"
    rc, err, seconds = _run(capsys, "train", tiny, "--backend", "ngspice", "--scheduler", silent_server, "--out", out)
    line = _one_error_line(err)
    assert rc == 2 and f"--scheduler: {silent_server}" in line and "1.5 s" in line
    assert not out.exists()
    assert seconds < 6


# ---- item 7: signals end every process ---------------------------------------------------------------

def _session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (from /proc: field 6 of /proc/PID/stat), zombies excluded."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()       # after "pid (comm) "
        if fields[0] != "Z" and int(fields[3]) == sid:
            found.append(int(entry.name))
    return found


def _children(pid: int) -> list[int]:
    try:
        import psutil
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except ImportError:
        return [p for p in _session_members(os.getsid(pid)) if p != pid]


def _gone(pids, timeout: float) -> list[int]:
    """The pids still alive after waiting up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if Path(f"/proc/{p}").exists() and
                 not (Path(f"/proc/{p}/stat").read_text().split(") ")[-1].startswith("Z")
                      if Path(f"/proc/{p}/stat").exists() else True)]
    return alive


class _Lines:
    """stderr of a child, read line by line in a thread."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._t = threading.Thread(target=lambda: [self.lines.append(line.rstrip("\n")) for line in stream],
                                   daemon=True)
        self._t.start()

    def wait_for(self, predicate, proc, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if any(predicate(line) for line in list(self.lines)):
                return True
            time.sleep(0.05)
        return False

    def join(self):
        self._t.join(10)


def _solving(line: str) -> bool:
    """A progress line of the training epoch with solves done."""
    import re
    m = re.search(r"train epoch 1/\d+: \d+/\d+ samples.*?, (\d+) solves", line)
    return bool(m and int(m.group(1)) > 0)


def _train_cmd(tiny, out, *extra):
    return [sys.executable, "-m", "ffebm_sim.cli", "train", str(tiny), "--backend", "ngspice", "--workers", "2",
            "--epochs", "1", "--out", str(out), *extra]


@pytest.mark.parametrize("sig, to_group", [(signal.SIGTERM, False), (signal.SIGINT, True)], ids=["SIGTERM", "Ctrl-C"])
def test_signal_stops_every_process_with_one_line_and_the_run_resumes(tiny, tmp_path, sig, to_group):
    out = tmp_path / "run"
    env = {**os.environ, "FFEBM_PROGRESS_INTERVAL": "0.2"}
    # As from a terminal: SIGINT at its default, whatever this test run inherited (a job started
    # in the background by a non-interactive shell ignores SIGINT, and ffebm keeps an ignored
    # signal ignored, as nohup expects).
    proc = subprocess.Popen(_train_cmd(tiny, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    err = _Lines(proc.stderr)
    try:
        assert err.wait_for(_solving, proc, 120), "training did not start solving:\n" + "\n".join(err.lines)
        children = _children(proc.pid)
        assert len(children) >= 2, children          # the two spawn workers (and the resource tracker)
        if to_group:
            os.killpg(proc.pid, sig)                 # a terminal's Ctrl-C reaches the whole process group
        else:
            proc.send_signal(sig)                    # `kill PID`: the parent alone
        t0 = time.monotonic()
        rc = proc.wait(timeout=20)
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err.join()
    assert rc == 128 + sig, err.lines
    text = "\n".join(err.lines)
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    words = [line for line in err.lines if line.strip() and not line.startswith("ffebm: train epoch")]
    name = signal.Signals(sig).name
    assert words == [f"ffebm: interrupted ({name}); finished epochs are kept, continue with --resume"], text
    assert err.lines[-1] == words[0]             # no progress line after it
    assert _gone(children, 5) == [], "workers or the resource tracker outlived the parent"
    assert _gone(_session_members(proc.pid), 5) == []
    assert (out / "config.json").is_file() and not (out / "summary.json").exists()
    if sig == signal.SIGTERM:       # resuming does not depend on the signal: once is enough (it takes a while)
        assert main(_train_cmd(tiny, out, "--resume")[3:]) == 0
        assert (out / "summary.json").is_file()


_ORPHAN = """
import os, sys, time
from ffebm_sim.backends.pool import PoolEngine
engine = PoolEngine(2)
pids = sorted({f.result() for f in [engine._executor.submit(os.getpid) for _ in range(8)]})
print(" ".join(map(str, pids)), flush=True)
time.sleep(120)
"""


def test_workers_exit_when_their_parent_is_killed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _ORPHAN], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line.strip(), proc.stderr.read()
        children = _children(proc.pid)
        assert set(map(int, line.split())) <= set(children)
        proc.kill()                                  # SIGKILL: no cleanup in the parent at all
        proc.wait(10)
        assert _gone(children, 5) == [], "a worker lived on after its parent died"
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in _session_members(proc.pid):
            os.kill(p, signal.SIGKILL)


def test_signals_raise_interrupted_once_and_restore_the_handlers():
    from ffebm_sim.interrupt import Interrupted, signals_raise
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as info:
        with signals_raise():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert info.value.name == "SIGTERM" and info.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_ignored_signal_stays_ignored():
    """`nohup ffebm train ...`: SIGHUP was ignored on purpose; closing the terminal must not stop the run."""
    from ffebm_sim.interrupt import signals_raise
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with signals_raise():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)
