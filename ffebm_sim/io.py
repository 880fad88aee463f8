"""Reading user files and writing outputs without ever leaving half a file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import SpecError

INPUT_FORMATS = ".npy, .json (a list or list of lists), .csv or .txt (one sample per row)"


def read_inputs(path: str | Path, n_inputs: int) -> np.ndarray:
    """Input vectors ``(B, n_inputs)`` from a file; one line of error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"--inputs: {path}: no such file; give {INPUT_FORMATS}")
    try:
        if path.suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif path.suffix == ".json":
            data = np.array(json.loads(path.read_text()), dtype=np.float64)
        else:
            text = path.read_text().replace(",", " ")
            data = np.array([[float(x) for x in line.split()] for line in text.splitlines() if line.strip()
                             and not line.lstrip().startswith("#")], dtype=np.float64)
    except (OSError, ValueError, TypeError, UnicodeDecodeError) as e:
        raise SpecError(f"--inputs: {path}: cannot parse ({e.__class__.__name__}); give {INPUT_FORMATS}") from None
    data = np.asarray(data)
    if data.dtype.kind not in "biuf":
        what = {"c": "complex numbers (an imaginary part would be dropped)", "U": "strings", "S": "byte strings",
                "O": "Python objects", "V": "structured records", "M": "dates", "m": "time deltas"}.get(
            data.dtype.kind, f"values of type {data.dtype}")
        raise SpecError(f"--inputs: {path}: holds {what} (dtype {data.dtype}); input vectors are real numbers "
                        f"(unitless, the sources get +-input_gain*u); give {INPUT_FORMATS}")
    data = data.astype(np.float64)
    if data.ndim == 1:
        data = data[None, :]
    if data.ndim != 2 or data.shape[1] != n_inputs or data.shape[0] == 0:
        raise SpecError(f"--inputs: {path}: shape {data.shape}; expected ({n_inputs},) or (samples, {n_inputs})")
    if not np.isfinite(data).all():
        raise SpecError(f"--inputs: {path}: contains NaN or inf; finite numbers only")
    return data


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: all or nothing."""
    from .outputs import atomic_write_bytes
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"{path}: is a directory; give a file path to write")
    if not path.parent.exists():
        raise SpecError(f"{path.parent}: no such directory; create it first")
    atomic_write_bytes(path, text.encode(), fsync=False)
