"""Two-array rules for asymmetric devices: Tiki-Taka and Stochastic Hamiltonian Descent (SHD).

Both keep, per weight conductance, a *fast* auxiliary device ``A`` beside the
*slow* device ``C`` that holds the weight (the conductance the circuit uses).
``A`` is read against a reference conductance ``r`` set to ``A``'s own
symmetry point (calibrated once per device: in hardware by alternating
up/down pulses until the device settles, "zero-shifting"; here from the
device law). The fast array's signal is its *momentum*

    p = A - r                                           (S)

Fast update (every step; ``dG_req = -lr * dL/dw * unit_s`` from the gradient at ``C``):

    A <- pulses(A, stochastic_round(dG_req / dg))
    E[dp] = m(A) dG_req - d(A) |dG_req|,   d(r) = 0,  d(A) ~= kappa * p  (kappa > 0)

so the device asymmetry is a *friction* on ``p``: it decays toward 0 at a rate
proportional to the update magnitude. Slow update (a read of ``p``, with read
noise ``A * read_noise_rel * N``, turned into stochastically rounded pulses):

    C <- pulses(C, stochastic_round(lambda_k * p_read / dg))

In the continuous limit (time = steps, ``eta = lr * unit_s``, ``lambda`` the
mean coupling per step) the pair is a damped Hamiltonian system with position
``q = C`` and momentum ``p``::

    dp/dt = -eta * grad f(q) - kappa * eta * |grad f(q)| * p
    dq/dt = lambda * p
    H(q, p) = f(q) + lambda / (2 eta) * |p|^2
    dH/dt = -lambda * kappa * sum_i |grad_i f| p_i^2  <= 0

so it settles where ``p = 0`` and therefore ``grad f(q) = 0``: at the true
minimum, not at plain SGD's point between the minimum and the symmetry point.
The asymmetry of ``C`` itself still acts, but only through the pulses that
``lambda * p`` requests, which vanish with ``p``: the remaining bias is of
order ``kappa_C * E|p| / half_range`` times SGD's.

- **SHD** couples every step, the whole array, and uses the freshly updated
  ``A`` (symplectic Euler): ``lambda_k = coupling``.
- **Tiki-Taka** (Gokmen & Haensch 2020, with a symmetry-point reference as in
  zero-shifting) transfers sparsely: every ``transfer_every`` steps it reads
  ``rows_per_transfer`` rows of ``A`` (cyclically; a row is the devices
  driven by one input line, axis 0 of the tensor; a 1-D tensor is one row) and
  writes ``C`` on those rows only, with ``lambda_k = coupling * transfer_every * n_rows / rows``
  so that the *mean* coupling equals ``coupling`` and the two rules share one
  Hamiltonian. What differs is the hardware cost (one row read per transfer
  instead of the whole array per step) and the noise of the sparse coupling.
"""

from __future__ import annotations

import torch

from ..errors import SpecError
from .device import DTYPE, DeviceArray, DeviceParams
from .pulses import stochastic_pulses
from .rules import UpdateRule, UpdateStats
from .seeding import generator_for


def n_rows(shape: tuple[int, ...]) -> int:
    """Rows of a crossbar tensor: axis 0 (one input line each); a 1-D tensor is one row."""
    return shape[0] if len(shape) >= 2 else 1


class _TwoArrayRule(UpdateRule):
    """Shared state: the fast arrays, their references and the momentum readout."""

    def __init__(self, device: DeviceParams, shapes, seed: int = 0, unit_s: float = 1.0,
                 coupling: float | None = None, fast_device: DeviceParams | None = None, read_noise: bool = True):
        super().__init__(device, shapes, seed, unit_s)
        self.fast_device = fast_device or device
        if coupling is None:
            # One slow-array pulse per step when the fast device sits half a range from its reference.
            coupling = 2 * device.dg_s / self.fast_device.range_s
        if not (isinstance(coupling, int | float) and 0 < coupling <= 1):
            raise SpecError(f"coupling: {coupling!r}; the mean transfer rate per step, in (0, 1]")
        self.coupling, self.read_noise = float(coupling), bool(read_noise)
        self.fast_arrays = [DeviceArray(self.fast_device, s, generator_for(seed, "fast", i))
                            for i, s in enumerate(self.shapes)]
        self.references = [a.symmetry_point() for a in self.fast_arrays]
        self.fast = [r.clone() for r in self.references]        # start at rest: p = 0

    def momentum(self) -> list[torch.Tensor]:
        """``p = A - r`` per fast device (S), noise-free (a diagnostic, not a hardware read)."""
        return [a - r for a, r in zip(self.fast, self.references)]

    def _fast_update(self, requests, stats: UpdateStats) -> None:
        for k, (arr, r) in enumerate(zip(self.fast_arrays, requests)):
            n, capped = self._round(r, self.fast_device)
            stats.capped += capped
            stats.fast_pulses += int(n.abs().sum())
            self.fast[k] = arr.pulse(self.fast[k], n, self._noise)

    def _round(self, request, device):
        return stochastic_pulses(request, device.dg_s, device.max_pulses, self._noise)

    def _read_momentum(self, k: int, rows=None) -> torch.Tensor:
        """A hardware read of ``p`` on tensor ``k`` (optionally only ``rows``, see :func:`n_rows`)."""
        a, r = self.fast[k], self.references[k]
        if rows is not None:
            m = n_rows(self.shapes[k])
            a, r = a.reshape(m, -1)[rows], r.reshape(m, -1)[rows]
        if self.read_noise and self.fast_device.read_noise_rel > 0:
            a = a * (1 + self.fast_device.read_noise_rel * torch.randn(a.shape, generator=self._noise, dtype=DTYPE))
        return a - r

    def _extra_state(self):
        return {"fast": [a.clone() for a in self.fast]}

    def _load_extra_state(self, state):
        self.fast = [a.clone().to(DTYPE) for a in state["fast"]]


class StochasticHamiltonianDescent(_TwoArrayRule):
    """SHD: fast array = momentum (reference at its symmetry point), slow array = weights.

    Per step (all devices, in parallel; ``eta = lr * unit_s``):

        A   <- pulses(A, round(-eta * dL/dw / dg))          force, with asymmetry as friction
        p   =  A * (1 + read_noise * N) - r                 read against the reference
        C   <- pulses(C, round(coupling * p / dg))          velocity (symplectic Euler)

    minimising ``H = f(C) + coupling/(2 eta) |p|^2`` (module docstring).
    ``coupling`` (dimensionless, per step) defaults to ``2 dg / range``: one
    slow pulse per step at half a range of momentum.
    """

    name = "shd"

    def _update(self, g, requests, stats):
        self._fast_update(requests, stats)
        out = []
        for k, (arr, gk) in enumerate(zip(self.arrays, g)):
            p = self._read_momentum(k)
            stats.reads += p.numel()
            out.append(self._pulse_stochastic(arr, gk, self.coupling * p, stats))
        stats.transfers += 1
        return out


class TikiTaka(_TwoArrayRule):
    """Tiki-Taka: gradient pulses into the fast array, sparse row-wise transfers into the weights.

    Per step: ``A <- pulses(A, round(-eta * dL/dw / dg))``. Every
    ``transfer_every`` steps, for each tensor, the next ``rows_per_transfer``
    rows ``R`` (cyclic over axis 0; ``None`` = all rows) are read and written:

        p_R  = A_R * (1 + read_noise * N) - r_R
        C_R <- pulses(C_R, round(transfer_lr * p_R / dg)),
        transfer_lr = coupling * transfer_every * n_rows / |R|     (capped at 1)

    so the mean coupling per step is ``coupling`` (the SHD one) whenever the cap
    does not bind. ``A`` is not reset after a transfer (Tiki-Taka v1): its
    asymmetric decay toward the reference is the friction.
    """

    name = "tiki-taka"

    def __init__(self, device, shapes, seed=0, unit_s=1.0, coupling=None, fast_device=None, read_noise=True,
                 transfer_every: int = 1, rows_per_transfer: int | None = 1):
        super().__init__(device, shapes, seed, unit_s, coupling, fast_device, read_noise)
        if not (isinstance(transfer_every, int) and transfer_every >= 1):
            raise SpecError(f"transfer_every: {transfer_every!r}; an integer >= 1 (steps between transfers)")
        if rows_per_transfer is not None and not (isinstance(rows_per_transfer, int) and rows_per_transfer >= 1):
            raise SpecError(f"rows_per_transfer: {rows_per_transfer!r}; an integer >= 1 or None (all rows)")
        self.transfer_every, self.rows_per_transfer = transfer_every, rows_per_transfer
        self.next_row = [0] * len(self.shapes)

    def _rows(self, k: int) -> tuple[torch.Tensor, int]:
        m = n_rows(self.shapes[k])
        take = m if self.rows_per_transfer is None else min(self.rows_per_transfer, m)
        rows = (self.next_row[k] + torch.arange(take)) % m
        self.next_row[k] = int((self.next_row[k] + take) % m)
        return rows, m

    def _update(self, g, requests, stats):
        self._fast_update(requests, stats)
        if (self.steps + 1) % self.transfer_every:
            return g
        stats.transfers += 1
        out = []
        for k, (arr, gk) in enumerate(zip(self.arrays, g)):
            rows, m = self._rows(k)
            rate = min(1.0, self.coupling * self.transfer_every * m / len(rows))
            p = self._read_momentum(k, rows)
            stats.reads += p.numel()
            g2 = gk.reshape(m, -1).clone()
            n, capped = self._round(rate * p, self.device)
            stats.capped += capped
            stats.count(n)
            g2[rows] = arr.rows(rows).pulse(g2[rows], n, self._noise)
            out.append(g2.reshape(gk.shape))
        return out

    def _extra_state(self):
        return {**super()._extra_state(), "next_row": list(self.next_row)}

    def _load_extra_state(self, state):
        super()._load_extra_state(state)
        self.next_row = [int(r) for r in state["next_row"]]
