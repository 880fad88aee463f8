"""The example specs in ``circuits/`` and their golden decks in ``netlists/``.

``python -m ffebm_sim.examples`` (or ``make netlists``) regenerates the golden
decks; ``tests/test_netlist.py`` fails when they are stale. Every block spec in
``circuits/`` (a TOML file with a top-level ``layers`` key) gets a physical and
a reduced deck, and every energy block of a model spec a physical deck, all
for the input vector drawn with ``--seed 0``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .netlist import emit_deck
from .model import build_model
from .spec import load_block, read_toml

ROOT = Path(__file__).resolve().parent.parent
CIRCUITS = ROOT / "circuits"
NETLISTS = ROOT / "netlists"
REGENERATE = "make netlists"


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
    for spec in model_specs():
        for k, block in enumerate(build_model(spec).energy_blocks, start=1):
            circuit = block.circuit
            u = np.random.default_rng(0).uniform(-1.0, 1.0, circuit.n_inputs)
            name = f"{spec.stem}_block{k}.cir"
            command = f"ffebm netlist circuits/{spec.name} --block {k} --seed 0 -o netlists/{name}"
            decks[NETLISTS / name] = emit_deck(circuit, u, command=command)
    return decks


def main() -> None:
    NETLISTS.mkdir(exist_ok=True)
    for path, text in golden_decks().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
