"""Block specs in TOML -> :class:`~ffebm_sim.circuit.BlockCircuit`.

A block spec (see ``circuits/block_small.toml`` for a commented example)::

    name = "block_small"
    layers = [64, 32, 10]      # inputs (each drives +/- sources), hidden..., outputs
    input_gain = 1.0           # V per unit input
    output = "linear"          # "linear", "clamped" (same as hidden) or a table like [nonlinearity]
    nudge = "current"          # or "resistive"
    gmin = 1e-12               # S, ngspice's junction GMIN
    amplifier_gain = [1.0, 10.0]   # V/V per boundary after layers 1..m-1 (1.0 = wire), or one
                               # number for every boundary; absent = no amplifier (docs/amplifier.md)

    [nonlinearity]             # every hidden layer; [[nonlinearity]] gives one per layer
    kind = "double"            # double | single | ideal | pwl
    v_off = 0.2                # V, clamp rails at +-v_off
    diode = { is = 1e-14, n = 1.0 }
    # table = { voltages = [...], currents = [...] }   (kind = "pwl")

    [conductances]             # seeded uniform draw in siemens ...
    low = 1e-5
    high = 1e-4
    seed = 0
    # file = "weights.npz"     # ... or arrays g1..gm (and bias_pos1.., bias_neg1..)

    [bias]                     # optional
    voltage = 1.0              # V, rails at +-voltage
    low = 0.0                  # S, seeded uniform draw like the conductances
    high = 1e-5

    # Non-idealities (optional; absent = the ideal circuit, decks unchanged):
    wire_resistance = 2.0      # ohm per crossbar line segment (0: ideal wires)
    temperature = 27.0         # C (ngspice temp; TNOM = 27 C)
    [mismatch]                 # seeded log-normal factors exp(sigma*z) per element
    conductance_sigma = 0.05   # every resistor's conductance
    is_sigma = 0.5             # every diode's IS
    n_sigma = 0.02             # every diode's N
    seed = 0

Every mistake raises :class:`~ffebm_sim.errors.SpecError` naming the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from .circuit import NONLINEARITY_KINDS, BlockCircuit, Mismatch, Nonlinearity
from .devices import DiodeModel, PwlTable
from .errors import SpecError
from .validate import check_memory, conductance_parts

BLOCK_KEYS = {"name", "layers", "input_gain", "output", "nudge", "gmin", "nonlinearity", "conductances", "bias",
              "wire_resistance", "temperature", "mismatch", "amplifier_gain"}
MISMATCH_KEYS = {"conductance_sigma", "is_sigma", "n_sigma", "seed"}
NONLINEARITY_KEYS = {"kind", "v_off", "diode", "table"}
CONDUCTANCE_KEYS = {"low", "high", "seed", "file"}
BIAS_KEYS = {"voltage", "low", "high", "seed"}
OUTPUT_CHOICES = ("linear", "clamped")


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a missing, unreadable or malformed file is a SpecError."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file; give the path of a TOML spec") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a directory; give the path of a TOML spec") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read ({e.__class__.__name__}); give a readable UTF-8 TOML file") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: malformed TOML ({e}); see circuits/block_small.toml for the format") from None


def load_block(path: str | Path) -> BlockCircuit:
    """Read a block spec file."""
    path = Path(path)
    return block_from_dict(read_toml(path), base_dir=path.parent, default_name=path.stem)


def _check_keys(where: str, table: Any, allowed: set[str]) -> dict:
    if not isinstance(table, dict):
        raise SpecError(f"{where}: expected a table, got {type(table).__name__}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r}; allowed keys are {', '.join(sorted(allowed))}")
    return table


def _number(where: str, value: Any, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{where}: expected a number, got {value!r}; {allowed}")
    if not np.isfinite(value):
        raise SpecError(f"{where}: {value} is not finite; {allowed}")
    return float(value)


def _nonlinearity(where: str, table: Any) -> Nonlinearity:
    table = _check_keys(where, table, NONLINEARITY_KEYS)
    kind = table.get("kind", "double")
    if kind not in NONLINEARITY_KINDS:
        raise SpecError(f"{where}.kind: unknown nonlinearity {kind!r}; valid kinds are {', '.join(NONLINEARITY_KINDS)}")
    v_off = _number(f"{where}.v_off", table.get("v_off", 0.0), "clamp offset in volts")
    diode = None
    if "diode" in table:
        d = _check_keys(f"{where}.diode", table["diode"], {"is", "n"})
        diode = DiodeModel(
            _number(f"{where}.diode.is", d.get("is", 1e-14), "saturation current in amperes, > 0"),
            _number(f"{where}.diode.n", d.get("n", 1.0), "emission coefficient, > 0"))
    pwl = None
    if kind == "pwl":
        if "table" not in table:
            raise SpecError(f"{where}.table: kind 'pwl' needs table = {{ voltages = [...], currents = [...] }}")
        t = _check_keys(f"{where}.table", table["table"], {"voltages", "currents"})
        seqs = []
        for key in ("voltages", "currents"):
            seq = t.get(key)
            if not isinstance(seq, list):
                raise SpecError(f"{where}.table.{key}: expected a list of numbers")
            seqs.append(tuple(_number(f"{where}.table.{key}", x, "finite numbers") for x in seq))
        pwl = PwlTable(*seqs)
    try:
        return Nonlinearity(kind, v_off, diode, pwl)
    except SpecError as e:
        raise SpecError(f"{where}: {e}") from None


def _draw(where: str, table: dict, shapes: list[tuple[int, ...]], default_seed: int) -> list[np.ndarray]:
    low = _number(f"{where}.low", table.get("low", 1e-5), "siemens, >= 0")
    high = _number(f"{where}.high", table.get("high", 1e-4), "siemens, >= low")
    if low < 0 or high < low:
        raise SpecError(f"{where}: low={low!r}, high={high!r}; need 0 <= low <= high (siemens)")
    seed = table.get("seed", default_seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SpecError(f"{where}.seed: {seed!r}; a non-negative integer")
    rng = np.random.default_rng(seed)
    return [rng.uniform(low, high, size=s) for s in shapes]


def _load_arrays(where: str, path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise SpecError(f"{where}: {path}: no such file; an .npz with arrays g1..gm") from None
    except (OSError, ValueError) as e:
        raise SpecError(f"{where}: {path}: not a readable .npz ({e.__class__.__name__}); an .npz with arrays g1..gm") from None


def block_from_dict(spec: dict, base_dir: str | Path = ".", default_name: str = "block") -> BlockCircuit:
    """Build a circuit from a parsed block spec (see the module docstring)."""
    spec = _check_keys("block", spec, BLOCK_KEYS)
    layers = spec.get("layers")
    if not isinstance(layers, list) or len(layers) < 2 or not all(
            isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 100_000 for n in layers):
        raise SpecError(f"layers: {layers!r}; a list of at least two integers in 1..100000, e.g. [64, 32, 10]")
    depth = len(layers) - 1
    name = spec.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise SpecError(f"name: {name!r}; a non-empty string")

    raw = spec.get("nonlinearity", {"kind": "double"})
    if isinstance(raw, list):
        if len(raw) != depth - 1:
            raise SpecError(f"nonlinearity: {len(raw)} tables for {depth - 1} hidden layers; give one table, or one per hidden layer")
        hidden = tuple(_nonlinearity(f"nonlinearity[{k}]", t) for k, t in enumerate(raw))
    else:
        hidden = (_nonlinearity("nonlinearity", raw),) * (depth - 1)

    out = spec.get("output", "linear")
    if isinstance(out, dict):
        output = _nonlinearity("output", out)
    elif out == "linear":
        output = None
    elif out == "clamped":
        output = hidden[-1] if hidden else _nonlinearity("nonlinearity", raw if isinstance(raw, dict) else {})
    else:
        raise SpecError(f"output: {out!r}; valid values are {', '.join(OUTPUT_CHOICES)} or a nonlinearity table")

    shapes = [(2 * layers[0], layers[1])] + [(layers[k - 1], layers[k]) for k in range(2, depth + 1)]
    # Before anything of that size exists: the matrices alone may not fit in memory.
    check_memory(conductance_parts(layers, "bias" in spec), "layers", layers,
                 "use smaller layers (a digital front block reduces a block's inputs)")
    ctable = _check_keys("conductances", spec.get("conductances", {}), CONDUCTANCE_KEYS)
    bias_pos = bias_neg = None
    arrays = None
    if "file" in ctable:
        if not isinstance(ctable["file"], str):
            raise SpecError("conductances.file: expected a path string to an .npz")
        arrays = _load_arrays("conductances.file", Path(base_dir) / ctable["file"])
        missing = [f"g{k}" for k in range(1, depth + 1) if f"g{k}" not in arrays]
        if missing:
            raise SpecError(f"conductances.file: array {missing[0]!r} missing; the .npz needs g1..g{depth}")
        conductances = [arrays[f"g{k}"] for k in range(1, depth + 1)]
    else:
        conductances = _draw("conductances", ctable, shapes, 0)

    bias_voltage = 1.0
    if "bias" in spec:
        btable = _check_keys("bias", spec["bias"], BIAS_KEYS)
        bias_voltage = _number("bias.voltage", btable.get("voltage", 1.0), "bias rail in volts")
        if arrays is not None and "bias_pos1" in arrays:
            bias_pos = [arrays[f"bias_pos{k}"] for k in range(1, depth + 1)]
            bias_neg = [arrays[f"bias_neg{k}"] for k in range(1, depth + 1)]
        else:
            drawn = _draw("bias", {"low": 0.0, "high": 1e-5, **btable}, [(n,) for n in layers[1:]] * 2,
                          int(btable.get("seed", 1)) if isinstance(btable.get("seed", 1), int) else -1)
            bias_pos, bias_neg = drawn[:depth], drawn[depth:]

    mismatch = None
    if "mismatch" in spec:
        mtable = _check_keys("mismatch", spec["mismatch"], MISMATCH_KEYS)
        seed = mtable.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise SpecError(f"mismatch.seed: {seed!r}; a non-negative integer")
        mismatch = Mismatch(*(_number(f"mismatch.{key}", mtable.get(key, 0.0), "a log-normal sigma, >= 0")
                              for key in ("conductance_sigma", "is_sigma", "n_sigma")), seed)
    wire = _number("wire_resistance", spec.get("wire_resistance", 0.0), "ohm per crossbar line segment, >= 0")
    temperature = _number("temperature", spec.get("temperature", 27.0), "degrees Celsius")
    gmin = _number("gmin", spec.get("gmin", 1e-12), "GMIN in siemens, >= 0")
    gain = _number("input_gain", spec.get("input_gain", 1.0), "volts per unit input")
    nudge = spec.get("nudge", "current")
    gains = _amplifier_gains(spec.get("amplifier_gain"), depth)
    return BlockCircuit(tuple(layers), tuple(conductances), hidden, output, gain, bias_voltage,
                        None if bias_pos is None else tuple(bias_pos),
                        None if bias_neg is None else tuple(bias_neg), gmin, nudge, name,
                        wire_resistance_ohm=wire, temperature_c=temperature, mismatch=mismatch,
                        amplifier_gains=gains)


def _amplifier_gains(raw: Any, depth: int) -> tuple[float, ...] | None:
    """``amplifier_gain``: absent, one number for every boundary, or a list with one per boundary
    (checked against the layers by :class:`BlockCircuit`, which names what is allowed)."""
    if raw is None:
        return None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        if depth < 2:
            raise SpecError(f"amplifier_gain: {raw!r} but the block has no hidden layer, so no boundary "
                            "between layers to amplify; remove it or add a hidden layer")
        return (float(raw),) * (depth - 1)
    if not isinstance(raw, list):
        raise SpecError(f"amplifier_gain: {raw!r}; one number (V/V) for every boundary between layers, "
                        "or a list with one per boundary, 1.0 = a plain wire")
    return tuple(raw)
