"""From a requested conductance change to an integer number of pulses.

The periphery knows only the nominal minimum step ``dg`` (it cannot see each
device's own step), so a request ``dG`` (S) becomes

    x = dG / dg,    n = floor(x) + Bernoulli(x - floor(x)),    n <- clip(n, -cap, cap)

*Stochastic rounding* makes ``E[n] = x`` for ``|x| <= cap``: small requests are
not lost (a request of 0.1 step gives one pulse one time in ten), which is what
lets SGD with few-state devices learn at all. The cap models the pulse budget
of one update cycle (aihwkit's bit-length); capped requests are counted.

Deterministic rounding toward zero (``n = trunc(x)``) is what the mixed-precision
rule uses on its digital accumulator: the remainder stays in the accumulator.
"""

from __future__ import annotations

import torch


def stochastic_pulses(request_s: torch.Tensor, dg_s: float, max_pulses: int | None,
                      generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """(signed pulse counts as int64, number of devices whose request hit the cap)."""
    x = request_s / dg_s
    base = torch.floor(x)
    n = base + (torch.rand(x.shape, generator=generator, dtype=x.dtype) < (x - base)).to(x.dtype)
    return _cap(n, max_pulses)


def truncated_pulses(request_s: torch.Tensor, dg_s: float, max_pulses: int | None) -> tuple[torch.Tensor, int]:
    """Whole pulses toward zero: ``n = trunc(dG/dg)`` (capped), and the capped count."""
    return _cap(torch.trunc(request_s / dg_s), max_pulses)


def _cap(n: torch.Tensor, max_pulses: int | None) -> tuple[torch.Tensor, int]:
    if max_pulses is None:
        return n.to(torch.int64), 0
    capped = int((n.abs() > max_pulses).sum())
    return n.clamp(-max_pulses, max_pulses).to(torch.int64), capped
