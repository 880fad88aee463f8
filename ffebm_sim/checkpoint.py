"""Checkpoints that survive being killed at any instant.

Each checkpoint is written to a temporary file, flushed to disk and renamed
into place (a rename is atomic on POSIX), and carries a SHA-256 of its payload
in a sidecar file. Loading the latest checkpoint skips any whose checksum does
not match (a torn or corrupted file) and falls back to the previous one with a
warning.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path

import torch

from .errors import SpecError


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(directory: Path, epoch: int, state: dict) -> Path:
    """Write ``epoch_<NNNN>.pt`` and its checksum; returns the checkpoint path."""
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    path = directory / f"epoch_{epoch:04d}.pt"
    # The checksum goes first: a checkpoint without a matching checksum is never trusted.
    _atomic_write_bytes(path.with_suffix(".sha256"), hashlib.sha256(data).hexdigest().encode())
    _atomic_write_bytes(path, data)
    return path


def _valid(path: Path) -> bool:
    sums = path.with_suffix(".sha256")
    if not sums.is_file():
        return False
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == sums.read_text().strip()
    except OSError:
        return False


def load_latest(directory: Path) -> tuple[int, dict] | None:
    """The newest checkpoint whose checksum matches, or None when there is none."""
    candidates = sorted(directory.glob("epoch_*.pt"), reverse=True) if directory.is_dir() else []
    for path in candidates:
        if not _valid(path):
            warnings.warn(f"checkpoint {path} is corrupted or incomplete (checksum mismatch); using an earlier one",
                          stacklevel=2)
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - any unreadable file is skipped the same way
            warnings.warn(f"checkpoint {path} cannot be read; using an earlier one", stacklevel=2)
            continue
        return int(path.stem.split("_")[1]), state
    return None


def load_checkpoint_file(path: str | Path) -> dict:
    """A single checkpoint given by the user (e.g. for ``ffebm analyze``); one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"--checkpoint: {path}: no such file; give an epoch_NNNN.pt from a run directory")
    if path.with_suffix(".sha256").is_file() and not _valid(path):
        raise SpecError(f"--checkpoint: {path}: checksum mismatch (corrupted or truncated)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise SpecError(f"--checkpoint: {path}: not a readable checkpoint ({e.__class__.__name__})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise SpecError(f"--checkpoint: {path}: not an ffebm checkpoint (no model state)")
    return state
