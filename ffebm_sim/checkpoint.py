"""Checkpoints that survive being killed at any instant, and that never run code when read.

Each checkpoint is written to a temporary file, flushed to disk and renamed
into place (a rename is atomic on POSIX), then its SHA-256 goes to a sidecar
file the same way. A checkpoint without its sidecar (killed between the two, or
the disk filled up) is incomplete and never trusted; if the sidecar cannot be
written the checkpoint is removed, so a full disk leaves neither file.

A checkpoint holds only tensors and plain data (dicts, lists, numbers, strings)
and is read with ``torch.load(weights_only=True)``: a file holding anything else
(a pickle crafted to run a command, say) is refused with one line and never
executed. Loading the latest checkpoint skips any that is incomplete or corrupted
and falls back to the previous one with a warning; when every checkpoint is bad,
it refuses (it never silently restarts at epoch 1).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from .errors import SpecError
from .outputs import atomic_write_bytes

# Kept under its old name for the modules that import it.
_atomic_write_bytes = atomic_write_bytes


def plain(obj, where: str = "state"):
    """``obj`` as tensors and plain data only (numpy scalars become Python numbers)."""
    if isinstance(obj, np.generic):          # before float: np.float64 is a float subclass
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, (dict, OrderedDict)):
        return type(obj)((k, plain(v, f"{where}[{k!r}]")) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"checkpoint {where}: {type(obj).__name__} is not a tensor or plain data")


def save_checkpoint(directory: Path, epoch: int, state: dict) -> Path:
    """Write the checksum of ``epoch_<NNNN>.pt`` and then the checkpoint; returns its path.

    Both writes are atomic (a rename), and the checksum goes first, so a ``.pt``
    never exists without its checksum, whenever the process is killed: a kill
    between the two leaves only a ``.sha256``, which no resume reads and the next
    save of that epoch replaces.
    """
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(plain(state), buf)
    data = buf.getvalue()
    path = directory / f"epoch_{epoch:04d}.pt"
    sums = path.with_suffix(".sha256")
    atomic_write_bytes(sums, hashlib.sha256(data).hexdigest().encode())
    try:
        atomic_write_bytes(path, data)
    except BaseException:
        sums.unlink(missing_ok=True)         # no checksum of a checkpoint that was not written
        raise
    return path


def checksum_problem(path: Path) -> str | None:
    """Why ``path`` cannot be trusted (no checksum file, mismatch, unreadable), or None."""
    sums = path.with_suffix(".sha256")
    if not sums.is_file():
        return "no checksum file (incomplete)"
    try:
        ok = hashlib.sha256(path.read_bytes()).hexdigest() == sums.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        return f"cannot be read ({getattr(e, 'strerror', None) or e.__class__.__name__})"
    return None if ok else "checksum mismatch (corrupted or truncated)"


def _valid(path: Path) -> bool:
    return checksum_problem(path) is None


def _load(path: Path):
    """``torch.load`` that never unpickles code: tensors and plain data only."""
    try:
        with warnings.catch_warnings():          # e.g. "Detected pickle protocol 4": one line, not two
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True), None
    except Exception as e:  # noqa: BLE001 - any file torch refuses is reported the same way
        if "weights_only" in str(e) or e.__class__.__name__ == "UnpicklingError":
            return None, "holds objects other than tensors and plain data (refused, not executed)"
        return None, f"not a readable checkpoint ({e.__class__.__name__})"


def load_latest(directory: Path, flag: str = "--resume") -> tuple[int, dict] | None:
    """The newest trustworthy checkpoint, or None when there is none at all.

    Bad checkpoints are skipped with a warning naming the one used instead; when
    checkpoints exist but none is usable this is a one-line :class:`SpecError`.
    """
    candidates = sorted(directory.glob("epoch_*.pt"), reverse=True) if directory.is_dir() else []
    problems = []
    for path in candidates:
        problem = checksum_problem(path)
        state = None
        if problem is None:
            state, problem = _load(path)
        if problem is None and not (isinstance(state, dict) and "model" in state):
            problem = "not an ffebm checkpoint (no model state)"
        if problem is not None:
            problems.append(f"{path.name}: {problem}")
            continue
        for p in problems:
            warnings.warn(f"checkpoint {directory / p}; using {path.name} instead", stacklevel=2)
        return int(path.stem.split("_")[1]), state
    if problems:
        raise SpecError(f"{flag}: {directory}: no usable checkpoint ({'; '.join(problems)}); restore one "
                        "or start a new run directory")
    return None


def load_checkpoint_file(path: str | Path, flag: str = "--checkpoint") -> dict:
    """A single checkpoint given by the user (e.g. for ``ffebm analyze``); one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{flag}: {path}: no such file; give an epoch_NNNN.pt from a run directory")
    if path.with_suffix(".sha256").is_file() and not _valid(path):
        raise SpecError(f"{flag}: {path}: {checksum_problem(path)}")
    state, problem = _load(path)
    if problem is not None:
        raise SpecError(f"{flag}: {path}: {problem}; give an epoch_NNNN.pt written by ffebm train")
    if not isinstance(state, dict) or "model" not in state:
        raise SpecError(f"{flag}: {path}: not an ffebm checkpoint (no model state)")
    return state
