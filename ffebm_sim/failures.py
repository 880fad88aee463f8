"""What a run does with a sample that no solver retry makes converge (``on_failure``).

The ngspice backend has already tried its homotopies and a warm start from the
reference solver's answer (:mod:`ffebm_sim.backends.ngspice`) when a
:class:`~ffebm_sim.ep.SolveFailed` reaches this module. The sample's
stand-alone deck is written to ``RUN_DIR/failed/`` either way (open it with
``ngspice -b``); then

* ``stop``: the run ends with :class:`RunStopped`, one line naming the block,
  the phase, the data-set sample and the deck;
* ``skip``: the samples that failed leave their batch and the batch's step is
  repeated without them (the gradient is then exactly the gradient of the
  remaining samples), and ``skipped`` counts them. The deck written is the
  first failed sample's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import _atomic_write_bytes
from .ep import SolveFailed, and_more

ON_FAILURE = ("stop", "skip")


class RunStopped(RuntimeError):
    """A sample failed every retry and the run's policy is ``stop``."""


@dataclass
class FailurePolicy:
    """``on_failure`` of one run, the directory its failing decks go to, and the count of skips."""

    run_dir: Path
    on_failure: str = "stop"
    skipped: int = 0

    def step_without_failures(self, step: Callable[[torch.Tensor], object], sample_ids: torch.Tensor,
                              where: str) -> tuple[object | None, torch.Tensor]:
        """``step(rows)`` on every row of a batch whose data-set indices are ``sample_ids``;
        with ``skip``, rows whose solve fails are dropped and ``step`` is run again.
        Returns ``(step's result, rows kept)``, or ``(None, empty)`` if every row failed."""
        rows = torch.arange(len(sample_ids))
        while len(rows):
            try:
                return step(rows), rows
            except SolveFailed as e:
                first = int(sample_ids[rows[e.sample]])
                deck = self.write_deck(e, where, first)
                if self.on_failure == "stop":
                    raise RunStopped(f"{where}: block '{e.block}', {e.phase} phase, data-set sample {first}"
                                     f"{and_more(e.samples)} "
                                     f"did not converge ({e.reason}); its deck: {deck}; set on_failure = \"skip\" "
                                     "([training] or --on-failure skip) to skip such samples") from None
                self.skipped += len(e.samples)
                keep = torch.ones(len(rows), dtype=torch.bool)
                keep[list(e.samples)] = False
                rows = rows[keep]
        return None, rows

    def write_deck(self, error: SolveFailed, where: str, sample_id: int) -> Path:
        """Write the failing sample's deck under ``RUN_DIR/failed/`` (atomically); returns its path."""
        phase = re.sub(r"[^a-z0-9]+", "-", error.phase.lower()).strip("-")
        block = re.sub(r"[^A-Za-z0-9_.-]+", "-", error.block)
        path = self.run_dir / "failed" / f"{where}_{block}_{phase}_sample{sample_id}.cir"
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(path, error.deck.encode())
        return path
