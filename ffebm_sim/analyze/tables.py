"""Conductance tables: what a designer programs into the array.

One CSV per energy block, one row per resistor (zero conductances included:
an open cell is a cell too)::

    layer,row,column,from_node,to_node,conductance_s,resistance_ohm[,target_pulses,programmed_s]

* ``layer`` k = 1..m, ``row``/``column`` index ``G_k[row, column]``; layer 1
  rows ``0..n0-1`` are the ``+`` sources, ``n0..2*n0-1`` the ``-`` sources;
  ``from_node``/``to_node`` are the deck's node names;
* bias conductances are rows of layer k with ``row`` = ``bias_pos`` or
  ``bias_neg`` and ``from_node`` the rail (``vbp``/``vbm``);
* numbers are written round-trip exact (17 significant digits); an open cell
  has ``resistance_ohm = inf``;
* with a device preset (``--device``): ``target_pulses`` is the number of
  nominal SET (up) pulses from the device's reset state ``g_min`` that lands
  nearest the target, and ``programmed_s`` the conductance it lands on
  (nominal device: no variation, no noise; see :mod:`ffebm_sim.hardware.device`).
  A target the device cannot reach (above a soft bound's asymptote within the
  pulse budget) gets the budget's last pulse count.

:func:`read_table` turns a CSV back into the ``g1..gm`` (and ``bias_pos<k>``,
``bias_neg<k>``) arrays of an ``.npz`` that a block spec's
``[conductances] file = ...`` loads (:func:`write_npz`, :func:`block_spec_toml`).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from ..circuit import BlockCircuit, node_name, source_node_names
from ..errors import SpecError

COLUMNS = ["layer", "row", "column", "from_node", "to_node", "conductance_s", "resistance_ohm"]
DEVICE_COLUMNS = ["target_pulses", "programmed_s"]
#: Cap on the nominal programming trajectory (pulses from reset).
MAX_PROGRAMMING_PULSES = 200_000


def _r(g: float) -> str:
    return repr(1.0 / g) if g > 0 else "inf"


def programming_trajectory(device, max_pulses: int = MAX_PROGRAMMING_PULSES) -> np.ndarray:
    """Conductance of the nominal device after 0, 1, 2, ... up pulses from reset (``g_min``), S.

    Stops when a pulse no longer moves it (a bound) or at ``max_pulses``.
    """
    from ..hardware.device import DeviceArray
    import torch
    arr = DeviceArray(device, (1,), generator=None)
    g = torch.tensor([device.g_min_s], dtype=torch.float64)
    out = [float(g[0])]
    if device.linear_noiseless or (device.slope_up == 0):
        a_up = float(arr.a_up[0])
        if a_up <= 0:
            return np.array(out)
        n = min(max_pulses, int(math.ceil(device.range_s / a_up)))
        return np.minimum(device.g_min_s + a_up * np.arange(n + 1), device.g_max_s)
    one = torch.ones(1, dtype=torch.int64)
    for _ in range(max_pulses):
        g_new = arr.pulse(g, one, None)
        if not float(g_new[0]) > float(g[0]) * (1 + 1e-15) + 1e-300:
            break
        g = g_new
        out.append(float(g[0]))
    return np.array(out)


def pulses_for(targets_s: np.ndarray, trajectory: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pulse count, conductance reached) nearest each target along a non-decreasing trajectory."""
    t = np.asarray(targets_s, dtype=np.float64)
    k = np.clip(np.searchsorted(trajectory, t), 0, len(trajectory) - 1)
    below = np.clip(k - 1, 0, len(trajectory) - 1)
    take_below = np.abs(trajectory[below] - t) <= np.abs(trajectory[k] - t)
    n = np.where(take_below, below, k)
    return n, trajectory[n]


def table_rows(circuit: BlockCircuit, device=None) -> list[dict]:
    """The CSV rows of ``circuit`` (see the module docstring)."""
    trajectory = programming_trajectory(device) if device is not None else None
    rows = []
    n0 = circuit.n_inputs
    for k in range(1, circuit.depth + 1):
        g = np.asarray(circuit.conductances[k - 1])
        src = source_node_names(n0) if k == 1 else [node_name(k - 1, i) for i in range(g.shape[0])]
        for i in range(g.shape[0]):
            for j in range(g.shape[1]):
                rows.append({"layer": k, "row": i, "column": j, "from_node": src[i], "to_node": node_name(k, j),
                             "conductance_s": float(g[i, j])})
        if circuit.has_bias:
            for label, rail, arrays in (("bias_pos", "vbp", circuit.bias_pos), ("bias_neg", "vbm", circuit.bias_neg)):
                for j, b in enumerate(np.asarray(arrays[k - 1])):
                    rows.append({"layer": k, "row": label, "column": j, "from_node": rail,
                                 "to_node": node_name(k, j), "conductance_s": float(b)})
    if trajectory is not None:
        n, reached = pulses_for(np.array([r["conductance_s"] for r in rows]), trajectory)
        for r, p, gr in zip(rows, n, reached):
            r["target_pulses"], r["programmed_s"] = int(p), float(gr)
    return rows


def table_csv(circuit: BlockCircuit, device=None) -> str:
    rows = table_rows(circuit, device)
    cols = COLUMNS + (DEVICE_COLUMNS if device is not None else [])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        line = [r["layer"], r["row"], r["column"], r["from_node"], r["to_node"], repr(r["conductance_s"]),
                _r(r["conductance_s"])]
        if device is not None:
            line += [r["target_pulses"], repr(r["programmed_s"])]
        w.writerow(line)
    return buf.getvalue()


def read_table(path: str | Path) -> dict[str, np.ndarray]:
    """A conductance CSV back to the arrays of a block spec's ``.npz`` (``g1..gm``, ``bias_pos<k>``, ``bias_neg<k>``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"{path}: cannot read ({e.__class__.__name__}); a conductance table CSV") from None
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not set(COLUMNS[:3] + ["conductance_s"]) <= set(reader.fieldnames):
        raise SpecError(f"{path}: not a conductance table; expected columns {', '.join(COLUMNS)}")
    cells: dict[str, dict[tuple[int, int], float]] = {}
    for line, r in enumerate(reader, start=2):
        try:
            k, col, g = int(r["layer"]), int(r["column"]), float(r["conductance_s"])
            row = r["row"]
            if row in ("bias_pos", "bias_neg"):
                cells.setdefault(f"{row}{k}", {})[(0, col)] = g
            else:
                cells.setdefault(f"g{k}", {})[(int(row), col)] = g
        except (TypeError, ValueError, KeyError):
            raise SpecError(f"{path}:{line}: malformed row; layer,row,column are integers "
                            "(row may be bias_pos/bias_neg), conductance_s a number") from None
    arrays = {}
    for name, entries in cells.items():
        rows = max(i for i, _ in entries) + 1
        cols = max(j for _, j in entries) + 1
        a = np.full((rows, cols), np.nan)
        for (i, j), g in entries.items():
            a[i, j] = g
        if np.isnan(a).any():
            raise SpecError(f"{path}: {name} is missing cells; a table lists every cell of every layer")
        arrays[name] = a[0] if name.startswith("bias") else a
    return arrays


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"TOML has no {v}")
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise ValueError(f"cannot write {type(v).__name__} as TOML")


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _toml_value(k)


def block_spec_toml(circuit_table: dict, npz_name: str, header: str = "") -> str:
    """A block spec: the model's ``[blocks.circuit]`` table with ``[conductances] file = npz_name``."""
    spec = {k: v for k, v in circuit_table.items() if k not in ("conductances", "bias")}
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    for k, v in spec.items():
        lines.append(f"{_key(k)} = {_toml_value(v)}")
    conductances = {"file": npz_name}
    lines.append(f"conductances = {_toml_value(conductances)}")
    if "bias" in circuit_table:
        bias = {k: v for k, v in circuit_table["bias"].items() if k == "voltage"}
        lines.append(f"bias = {_toml_value(bias)}")
    return "\n".join(lines) + "\n"
