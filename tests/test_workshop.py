"""The CLI as a user's workshop: a corpus of bad inputs and hostile files.

Every case is bad input: exit code 2, exactly one line on stderr
(``ffebm: error: ...``), no traceback, nothing written, nothing of the user's
changed or deleted, and said within 10 s. Each runs the real command line in a
fresh process inside a directory of the user's own files.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "circuits" / "digits_ffebm.toml"
BLOCK = ROOT / "circuits" / "block_small.toml"
REPORT_WITHIN_S = 10.0


def _snapshot(directory: Path) -> dict[str, str]:
    """Every path under ``directory``: a file with the hash of its bytes, a directory as such."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(directory.rglob("*"))}


def _idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    header = struct.pack(">HBB", 0, 8, array.ndim) + b"".join(struct.pack(">I", n) for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (path.with_name(path.name + ".gz") if compress else path).write_bytes(gzip.compress(data) if compress else data)


def _mnist_dir(root: Path, name: str, spoil: str) -> Path:
    """A small IDX set (60 train, 20 test images) with one defect."""
    d = root / name
    d.mkdir()
    rng = np.random.default_rng(0)
    sets = {"train": 60, "t10k": 20 if spoil != "empty-test" else 0}
    for part, n in sets.items():
        images = rng.integers(0, 256, (n, 28, 28))
        labels = np.arange(n) % 10
        if spoil == "label-200" and part == "train":
            labels[3] = 200
        if spoil == "labels-2d" and part == "train":
            labels = labels.reshape(-1, 2)
        if spoil == "swapped" and part == "train":
            images, labels = labels, images
        _idx(d / f"{part}-images-idx3-ubyte", images)
        _idx(d / f"{part}-labels-idx1-ubyte", labels)
    if spoil == "corrupt-gzip":
        p = d / "train-images-idx3-ubyte"
        body = gzip.compress(p.read_bytes())
        p.unlink()
        (d / "train-images-idx3-ubyte.gz").write_bytes(body[:20] + bytes(64) + body[84:])
    return d


class _Evil:
    """Unpickling this runs a shell command that creates a file: it must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_spec(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


CASES = {
    # --- data loss: outputs onto inputs or onto the user's files
    "netlist onto its spec": lambda d: ["netlist", d / "block.toml", "--seed", "0", "-o", d / "block.toml"],
    "analyze --force over user files": lambda d: ["analyze", d / "tiny.toml", "--checkpoint", d / "evil.pt",
                                                  "--out", d / "mine", "--force"],
    "analyze --out . --force": lambda d: ["analyze", d / "tiny.toml", "--checkpoint", d / "evil.pt", "--out", ".",
                                          "--force"],
    # --- a checkpoint is data, never code
    "crafted checkpoint to netlist": lambda d: ["netlist", d / "tiny.toml", "--block", "1", "--checkpoint",
                                                d / "evil.pt", "-o", d / "deck.cir"],
    "crafted checkpoint to solve": lambda d: ["solve", d / "tiny.toml", "--block", "1", "--checkpoint",
                                              d / "evil.pt"],
    "crafted checkpoint to gradcheck": lambda d: ["gradcheck", d / "tiny.toml", "--checkpoint", d / "evil.pt"],
    # --- the scheduler
    "malformed scheduler": lambda d: ["train", d / "tiny.toml", "--backend", "ngspice", "--scheduler",
                                      "notanaddress", "--out", d / "run"],
    "scheduler with workers": lambda d: ["train", d / "tiny.toml", "--backend", "ngspice", "--scheduler",
                                         "tcp://127.0.0.1:1", "--workers", "2", "--out", d / "run"],
    # --- bad values
    "npy of strings": lambda d: ["netlist", d / "block.toml", "--inputs", d / "strings.npy", "-o", d / "deck.cir"],
    "complex inputs": lambda d: ["netlist", d / "block.toml", "--inputs", d / "complex.npy", "-o", d / "deck.cir"],
    "huge layers": lambda d: ["solve", d / "huge.toml"],
    "g_min above g_max": lambda d: ["train", d / "gminmax.toml", "--epochs", "1", "--out", d / "run"],
    "nine outputs on digits": lambda d: ["train", d / "nine.toml", "--epochs", "1", "--out", d / "run"],
    "data-dir with digits": lambda d: ["train", d / "tiny.toml", "--data", "digits", "--data-dir", d,
                                       "--out", d / "run"],
    "beta 1e6": lambda d: ["train", d / "tiny.toml", "--beta", "1e6", "--out", d / "run"],
    "training table typo": lambda d: ["train", d / "many.toml", "--out", d / "run"],
    "gradcheck batch 5000": lambda d: ["gradcheck", d / "tiny.toml", "--batch", "5000"],
    "gradcheck digits model on mnist-5k": lambda d: ["gradcheck", d / "tiny.toml", "--data", "mnist-5k"],
    "gradcheck a block spec": lambda d: ["gradcheck", d / "block.toml"],
    "gradcheck another model's checkpoint": lambda d: ["gradcheck", DIGITS, "--checkpoint", d / "tiny.pt"],
    "netlist another model's checkpoint": lambda d: ["netlist", DIGITS, "--block", "1", "--checkpoint",
                                                     d / "tiny.pt", "-o", d / "deck.cir"],
    **{f"mnist {spoil}": (lambda s: lambda d: ["train", d / "mnist.toml", "--data", "mnist", "--data-dir",
                                               d / f"mnist-{s}", "--out", d / "run"])(spoil)
       for spoil in ("label-200", "labels-2d", "swapped", "empty-test", "corrupt-gzip")},
}


@pytest.fixture(scope="module")
def workshop(tmp_path_factory):
    """A directory of the user's files: specs, inputs, a crafted and a foreign checkpoint, IDX sets."""
    d = tmp_path_factory.mktemp("workshop")
    (d / "block.toml").write_text(BLOCK.read_text())
    _write_spec(d / "tiny.toml", TINY)
    _write_spec(d / "gminmax.toml", TINY.replace("g_max = 1e-3", "g_min = 2e-3\ng_max = 1e-3"))
    _write_spec(d / "nine.toml", TINY.replace("layers = [8, 8, 10]", "layers = [8, 8, 9]"))
    _write_spec(d / "many.toml", TINY.replace("epochs = 2", 'epochs = "many"'))
    _write_spec(d / "huge.toml", 'layers = [100000, 100000]\nnonlinearity = { kind = "double" }\n')
    _write_spec(d / "mnist.toml", TINY.replace("in_features = 64", "in_features = 784")
                .replace("input_size = 64", "input_size = 784"))
    np.save(d / "strings.npy", np.array(["a"] * 64))
    np.save(d / "complex.npy", np.ones(64) * (1 + 2j))
    evil = _Evil(d / "PWNED")
    (d / "evil.pt").write_bytes(pickle.dumps({"model": evil, "epoch": 1}))
    import torch
    torch.save({"model": {"layers.0.weight": torch.zeros(8, 64)}, "epoch": 1}, d / "tiny.pt")
    mine = d / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work\n")
    for spoil in ("label-200", "labels-2d", "swapped", "empty-test", "corrupt-gzip"):
        _mnist_dir(d, f"mnist-{spoil}", spoil)
    return d


def _session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (the command and everything it started)."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(p.name))
    return found


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_nothing_written(workshop, case):
    args = [str(a) for a in CASES[case](workshop)]
    (workshop / "PWNED").unlink(missing_ok=True)        # each case on its own: not another case's doing
    before = _snapshot(workshop)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "ffebm_sim.cli", *args], cwd=workshop, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    elapsed = time.monotonic() - start
    lines = stderr.strip().splitlines()
    assert proc.returncode == 2, (case, proc.returncode, stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("ffebm: error: "), (case, stderr[-3000:])
    assert "Traceback" not in stderr and ".tmp" not in lines[0] and "np.float64" not in lines[0], lines[0]
    assert not (workshop / "PWNED").exists(), "a checkpoint ran code"
    assert _snapshot(workshop) == before, "the command wrote, changed or deleted files"
    assert elapsed < REPORT_WITHIN_S, f"{case}: {elapsed:.1f} s before saying it failed"
    left = _session_members(proc.pid)
    assert not left, f"{case}: processes left behind: {left}"
