"""The example specs in ``circuits/`` and their golden decks in ``netlists/``.

``python -m ffebm_sim.examples`` (or ``make netlists``) regenerates the golden
decks; ``tests/test_netlist.py`` fails when they are stale. Every block spec in
``circuits/`` (a TOML file with a top-level ``layers`` key) gets a physical and
a reduced deck, and every energy block of a model spec a physical deck, all
for the input vector drawn with ``--seed 0``, in the default ``ngspice`` format
(``netlists/*.cir``). The other formats (:mod:`ffebm_sim.dialects`), for the
block specs only, so the repository stays small (the model blocks' decks are
up to 10 MB each in one format):

* ``netlists/<format>/<block>.cir``: the physical deck in ``spice3``, ``xyce`` and
  ``ltspice``, and in ``gnucap`` where it differs from ``spice3`` (blocks with ``pwl``
  layers);
* ``netlists/subckt/<format>/<block>.lib`` + ``.cir``: the subcircuit library and
  its testbench (``--subckt``) in every format, for every block spec but
  ``block_small`` (180 kB a copy; its standalone decks cover it).

Golden decks are compared as gdsfactory compares its regression files: the
structure exactly, the numbers within a tolerance (:func:`deck_differences`).
The last bits of a computed value (a Norton current, a mismatch factor through
``exp``) can differ between CPUs, whose SIMD kernels round differently; a deck
whose every card, element, node and keyword matches and whose every number
agrees to 1e-12 relative is the same circuit on any machine.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from .dialects import FORMATS
from .netlist import emit_deck, emit_subckt
from .model import build_model
from .spec import load_block, read_toml

ROOT = Path(__file__).resolve().parent.parent
CIRCUITS = ROOT / "circuits"
NETLISTS = ROOT / "netlists"
REGENERATE = "make netlists"

#: Formats with a golden standalone deck per block spec besides the default ngspice one.
DECK_FORMATS = ("spice3", "gnucap", "xyce", "ltspice")
#: Block specs without golden subcircuit exports (size; see the module docstring).
NO_SUBCKT_GOLDEN = ("block_small",)

#: Relative tolerance on every number of a golden deck: far below anything
#: physical (ngspice's reltol is 1e-9) and far above CPU-dependent rounding (1e-16).
GOLDEN_RTOL = 1e-12

# A number standing alone (not part of a name such as n1_0 or dclamp0, nor of a
# version such as 0.1.0): SPICE values, option values, pwl points, counts.
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])")


def _split_numbers(line: str) -> tuple[list[str], list[float]]:
    """A line as its text around the numbers (compared exactly) and the numbers."""
    return _NUMBER.split(line), [float(x) for x in _NUMBER.findall(line)]


def _close(a: float, b: float, rtol: float) -> bool:
    return a == b or math.isclose(a, b, rel_tol=rtol, abs_tol=0.0)


def deck_differences(have: str, want: str, rtol: float = GOLDEN_RTOL) -> list[str]:
    """Where deck text ``have`` differs from ``want``: the structure (every card,
    element and node name, keyword and comment) exactly, every number within
    ``rtol`` relative. One entry per differing line (``"line K: ..."``), or a
    length difference; empty when the decks are the same circuit."""
    a, b = have.splitlines(), want.splitlines()
    problems = []
    for k, (x, y) in enumerate(zip(a, b), start=1):
        (tx, nx), (ty, ny) = _split_numbers(x), _split_numbers(y)
        if tx != ty or len(nx) != len(ny):
            problems.append(f"line {k}: structure differs:\n  file: {x}\n  code: {y}")
        elif not all(_close(p, q, rtol) for p, q in zip(nx, ny)):
            worst = max(abs(p - q) / max(abs(p), abs(q)) for p, q in zip(nx, ny) if p != q)
            problems.append(f"line {k}: a number differs by {worst:.1e} relative (tolerance {rtol:.0e}):"
                            f"\n  file: {x}\n  code: {y}")
    if len(a) != len(b):
        problems.append(f"length: the file has {len(a)} lines, the code emits {len(b)}")
    return problems


def block_specs() -> list[Path]:
    """Every block spec under circuits/, sorted."""
    return sorted(p for p in CIRCUITS.glob("*.toml") if "layers" in read_toml(p))


def model_specs() -> list[Path]:
    """Every model spec under circuits/, sorted."""
    return sorted(p for p in CIRCUITS.glob("*.toml") if "blocks" in read_toml(p))


def golden_decks() -> dict[Path, str]:
    """Golden deck path -> the text the current code emits for it."""
    decks = {}
    for spec in block_specs():
        circuit = load_block(spec)
        u = np.random.default_rng(0).uniform(-1.0, 1.0, circuit.n_inputs)
        for reduced in (False, True):
            name = f"{spec.stem}{'_reduced' if reduced else ''}.cir"
            command = f"ffebm netlist circuits/{spec.name} --seed 0{' --reduced' if reduced else ''} -o netlists/{name}"
            decks[NETLISTS / name] = emit_deck(circuit, u, reduced=reduced, command=command)
        for fmt in DECK_FORMATS:
            if fmt == "gnucap" and not any(circuit.layer_nonlinearity(k) is not None and
                                           circuit.layer_nonlinearity(k).kind == "pwl"
                                           for k in range(1, circuit.depth + 1)):
                continue                       # the same text as spice3 but for the format line
            name = f"{fmt}/{spec.stem}.cir"
            command = f"ffebm netlist circuits/{spec.name} --seed 0 --format {fmt} -o netlists/{name}"
            decks[NETLISTS / name] = emit_deck(circuit, u, command=command, dialect=fmt)
        if spec.stem in NO_SUBCKT_GOLDEN:
            continue
        for fmt in FORMATS:
            bench = NETLISTS / "subckt" / fmt / f"{spec.stem}.cir"
            flag = f" --format {fmt}" if fmt != "ngspice" else ""
            command = f"ffebm netlist circuits/{spec.name} --seed 0{flag} --subckt -o netlists/subckt/{fmt}/{spec.stem}.cir"
            library, testbench = emit_subckt(circuit, u, library_file=f"{spec.stem}.lib", command=command, dialect=fmt)
            decks[bench.with_suffix(".lib")] = library
            decks[bench] = testbench
    for spec in model_specs():
        for k, block in enumerate(build_model(spec).energy_blocks, start=1):
            circuit = block.circuit
            u = np.random.default_rng(0).uniform(-1.0, 1.0, circuit.n_inputs)
            name = f"{spec.stem}_block{k}.cir"
            command = f"ffebm netlist circuits/{spec.name} --block {k} --seed 0 -o netlists/{name}"
            decks[NETLISTS / name] = emit_deck(circuit, u, command=command)
    return decks


def main() -> None:
    for path, text in golden_decks().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
