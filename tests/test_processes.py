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
