"""A seconds-long check that a rule finds the true minimum on asymmetric devices.

Noisy multi-output linear regression on conductances (normalized units,
``unit_s`` = the device range): a ``(n_in, n_out)`` crossbar holds ``W``
(rows = input lines, so Tiki-Taka's row-wise transfers are exercised),
targets ``y = x W_true + sigma * N`` with ``x ~ N(0, I)``, minibatch gradients
of ``f(W) = E|x W - y|^2 / 2`` (Hessian = identity per column, minimum ``W_true``). ``w_true`` lies away from the devices' symmetry point, so
plain analog SGD on an asymmetric device settles between ``w_true`` and the
symmetry point, while a rule that cancels the asymmetry lands on ``w_true``.
Reports the RMS distance to ``w_true`` averaged over the last quarter of the
run, in units of the device range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .device import DTYPE, DeviceParams
from .factory import make_update_rule
from .presets import get_device
from .seeding import generator_for


@dataclass(frozen=True)
class SanityResult:
    rule: str
    device: str
    rms_error: float          # RMS |w - w_true| / range, last quarter of the run
    rms_start: float          # the same at step 0
    pulses: int               # pulses on the weight devices
    fast_pulses: int

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def regression_sanity(rule: str, device: str | DeviceParams = "reram", steps: int = 3000, n_in: int = 8, n_out: int = 4,
                      batch: int = 4, sigma: float = 0.5, lr: float = 0.02, seed: int = 0,
                      w_true_range: tuple[float, float] = (0.15, 0.45), **options) -> SanityResult:
    """Run ``rule`` on the regression problem; ``lr`` in range units per unit gradient."""
    dev = device if isinstance(device, DeviceParams) else get_device(device, 0.0, 1e-3)
    unit = dev.range_s
    data = generator_for(seed, "sanity-data")
    lo, hi = w_true_range
    w_true = lo + (hi - lo) * torch.rand(n_in, n_out, generator=data, dtype=DTYPE)
    rule_obj = make_update_rule(rule, dev, [(n_in, n_out)], seed=seed, unit_s=unit, **options)
    w = torch.full((n_in, n_out), 0.5, dtype=DTYPE)   # mid-range start (normalized, g_min = 0)
    start = float(((w - w_true) ** 2).mean().sqrt())
    tail, errs, pulses, fast = steps // 4, [], 0, 0
    for k in range(steps):
        x = torch.randn(batch, n_in, generator=data, dtype=DTYPE)
        y = x @ w_true + sigma * torch.randn(batch, n_out, generator=data, dtype=DTYPE)
        grad = x.T @ (x @ w - y) / batch
        stats = rule_obj.step([w], [grad], lr)
        pulses += stats.pulses
        fast += stats.fast_pulses
        if k >= steps - tail:
            errs.append(float(((w - w_true) ** 2).mean()))
    return SanityResult(rule, dev.name, (sum(errs) / len(errs)) ** 0.5, start, pulses, fast)
