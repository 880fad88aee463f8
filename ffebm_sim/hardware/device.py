"""Pulsed conductance devices: the update law, device-to-device variation, pulse application.

One device is one conductance ``g`` (siemens) in ``[g_lo, g_hi]`` with
``0 <= g_lo < g_hi``. A *pulse* moves it by one step whose size depends on
``g`` and on the direction. With ``g0`` the reference point (mid-range
by default) the step sizes are

    up:    dg_up(g)   = a_up   * max(0, 1 - s_up   * (g - g0) / (g_hi - g0)) ** gamma_up
    down:  dg_down(g) = a_down * max(0, 1 - s_down * (g - g0) / (g_lo - g0)) ** gamma_down

    a_up = dg * (1 + up_down),   a_down = dg * (1 - up_down)

- ``s = 1, gamma = 1`` is the *soft-bounds* law (steps shrink linearly to zero
  at the bounds: ``g += a_up*(1 - (g-g0)/(g_hi-g0))``, ``g -= a_down*(1 - (g-g0)/(g_lo-g0))``);
  ``gamma != 1`` bends it (nonlinearity exponents).
- ``s = 0`` is the *linear-step* law (constant steps); only the hard bounds stop it.
- ``up_down`` is the systematic up/down asymmetry (aihwkit's convention);
  ``up_down = 1`` is a one-directional device (no gradual depression).
- Every pulse is followed by the *hard bounds* ``g <- clip(g, g_lo, g_hi)``:
  cycle-to-cycle noise may overshoot a soft bound, never the device range.

The **symmetry point** ``g*`` is where ``dg_up(g*) = dg_down(g*)``: alternating
up/down pulses drive a device there, and any stream of pulses whose mean is
zero but whose magnitude is not pulls it toward ``g*`` (this drift is the
asymmetry that biases plain analog SGD). For soft bounds with ``gamma = 1``
and ``g0`` mid-range, ``g* = (a_up*g_hi + a_down*g_lo) / (a_up + a_down)``.

The **number of states** is ``(g_max - g_min) / dg`` (aihwkit's convention:
minimum steps across the range, counted at ``g0``).

Variation (each drawn once per device, seeded, by :class:`DeviceArray`):
``a_up, a_down *= (1 + dg_dtod*N)`` (clipped at 0), ``up_down += up_down_dtod*N``,
``g_lo = g_min + bound_dtod*(g_max-g_min)*|N|`` and ``g_hi = g_max - bound_dtod*(g_max-g_min)*|N|``
(the nominal range is the envelope, so every device stays in ``[g_min, g_max]``
and an :class:`~ffebm_sim.blocks.EnergyBlock` clamp to that range never acts);
``g0`` keeps its relative position in each device's range. Per pulse: each
step is multiplied by ``(1 + dg_ctoc*N)`` (cycle-to-cycle). Per write (one
update of a device that received at least one pulse): ``+ write_noise_s*N``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import SpecError

DTYPE = torch.float64


@dataclass(frozen=True)
class DeviceParams:
    """Nominal parameters of one device family, in siemens (conductances) and seconds (time).

    Update model (see the module docstring for the equations):
        g_min_s, g_max_s: the device range (S), ``0 <= g_min_s < g_max_s``.
        dg_s: the minimum step at ``g0`` (S); also the unit in which requests become pulses.
        up_down: up/down asymmetry, ``a_up = dg(1+up_down)``, ``a_down = dg(1-up_down)``, in [-1, 1].
        slope_up, slope_down: 1 = soft bound, 0 = constant (linear) step, in [0, 1].
        gamma_up, gamma_down: nonlinearity exponents of the soft-bound factor (> 0).
        g0_fraction: reference point ``g0`` as a fraction of the range (0.5 = mid-range).
        dg_dtod, up_down_dtod, bound_dtod: device-to-device spreads (relative, absolute, fraction of range).
        dg_ctoc: cycle-to-cycle relative spread of every pulse's step.
        write_noise_s: additive noise per write of a device (S).
        max_pulses: cap on pulses per device per update (``None``: no cap).

    Read model for inference (see :mod:`ffebm_sim.hardware.inference`):
        prog_noise_s: programming noise (S), drawn once when weights are programmed.
        read_noise_rel: relative read noise, drawn at every read.
        drift_nu, drift_nu_dtod: drift exponent ``g(t) = g*(t/t0)**-nu`` and its spread.
        t0_sec: time after programming at which ``g`` is the programmed value (s).
    """

    name: str
    g_min_s: float
    g_max_s: float
    dg_s: float
    up_down: float = 0.0
    slope_up: float = 1.0
    slope_down: float = 1.0
    gamma_up: float = 1.0
    gamma_down: float = 1.0
    g0_fraction: float = 0.5
    dg_dtod: float = 0.0
    up_down_dtod: float = 0.0
    bound_dtod: float = 0.0
    dg_ctoc: float = 0.0
    write_noise_s: float = 0.0
    max_pulses: int | None = 31
    prog_noise_s: float = 0.0
    read_noise_rel: float = 0.0
    drift_nu: float = 0.0
    drift_nu_dtod: float = 0.0
    t0_sec: float = 1.0
    description: str = field(default="", compare=False)

    def __post_init__(self):
        def bad(name, allowed):
            raise SpecError(f"device.{name}: {getattr(self, name)!r}; {allowed}")
        finite = {k: v for k, v in self.__dict__.items() if isinstance(v, float | int) and not isinstance(v, bool)}
        for k, v in finite.items():
            if not np.isfinite(v):
                bad(k, "a finite number")
        if not 0 <= self.g_min_s < self.g_max_s:
            bad("g_min_s", f"need 0 <= g_min_s < g_max_s (g_max_s = {self.g_max_s!r})")
        if not 0 < self.dg_s <= self.g_max_s - self.g_min_s:
            bad("dg_s", "siemens, > 0 and at most the range g_max_s - g_min_s")
        if not -1 <= self.up_down <= 1:
            bad("up_down", "in [-1, 1]")
        for k in ("slope_up", "slope_down"):
            if not 0 <= getattr(self, k) <= 1:
                bad(k, "in [0, 1] (1 = soft bound, 0 = constant step)")
        for k in ("gamma_up", "gamma_down", "t0_sec"):
            if not getattr(self, k) > 0:
                bad(k, "> 0")
        if not 0 < self.g0_fraction < 1:
            bad("g0_fraction", "strictly between 0 and 1")
        for k in ("dg_dtod", "up_down_dtod", "bound_dtod", "dg_ctoc", "write_noise_s", "prog_noise_s",
                  "read_noise_rel", "drift_nu", "drift_nu_dtod"):
            if getattr(self, k) < 0:
                bad(k, ">= 0")
        if self.bound_dtod >= 0.25:
            bad("bound_dtod", "< 0.25 (a fraction of the range; larger spreads can empty a device's range)")
        if self.max_pulses is not None and not (isinstance(self.max_pulses, int) and self.max_pulses >= 1):
            bad("max_pulses", "an integer >= 1 or None")

    @property
    def range_s(self) -> float:
        return self.g_max_s - self.g_min_s

    @property
    def g0_s(self) -> float:
        return self.g_min_s + self.g0_fraction * self.range_s

    @property
    def n_states(self) -> float:
        """Minimum steps across the range, ``(g_max - g_min) / dg``."""
        return self.range_s / self.dg_s

    @property
    def symmetry_point_s(self) -> float:
        """The nominal device's symmetry point (S): where up and down steps are equal."""
        nominal = DeviceArray(self, (1,), generator=None)
        return float(nominal.symmetry_point()[0])

    @property
    def linear_noiseless(self) -> bool:
        """Constant steps and no per-pulse noise: ``n`` pulses are exactly ``n`` steps (a fast path)."""
        return self.slope_up == 0 and self.slope_down == 0 and self.dg_ctoc == 0

    def pulses_to_saturation(self, eps: float = 0.01) -> float:
        """Up pulses from ``g_min`` until the nominal device is within ``eps*range`` of ``g_max``.

        Soft bounds (``s = gamma = 1``): the gap to ``g_max`` shrinks by the factor
        ``r = 1 - a_up/(g_max - g0)`` per pulse, so ``n = ceil(ln(eps*range/gap_0) / ln r)``.
        Linear step: ``n = ceil((1 - eps)*range / a_up)``.
        """
        a_up = self.dg_s * (1 + self.up_down)
        if self.slope_up == 0:
            return float(np.ceil((1 - eps) * self.range_s / a_up))
        if not (self.slope_up == 1 and self.gamma_up == 1):
            raise ValueError("closed form only for soft bounds with gamma_up = 1 or linear steps")
        gap0, r = self.range_s, 1 - a_up / (self.g_max_s - self.g0_s)
        return float(np.ceil(np.log(eps) / np.log(r))) if gap0 > 0 else 0.0


class DeviceArray:
    """A tensor of independent devices of one family, each with its own drawn parameters.

    ``generator`` (a seeded ``torch.Generator``) draws the device-to-device
    variation once, here; ``None`` gives nominal devices. The array holds no
    conductances: the caller owns them (an EnergyBlock's weights, a fast array's
    state) and passes them to :meth:`pulse`, so there is one source of truth.
    """

    def __init__(self, params: DeviceParams, shape: tuple[int, ...], generator: torch.Generator | None):
        self.params, self.shape = params, tuple(shape)
        p, g = params, generator

        def normal():
            if g is None:
                return torch.zeros(self.shape, dtype=DTYPE)
            return torch.randn(self.shape, generator=g, dtype=DTYPE)

        up_down = (p.up_down + p.up_down_dtod * normal()).clamp(-1.0, 1.0)
        scale_up = (1 + p.dg_dtod * normal()).clamp(min=0.0)
        scale_down = (1 + p.dg_dtod * normal()).clamp(min=0.0)
        self.a_up = p.dg_s * (1 + up_down) * scale_up
        self.a_down = p.dg_s * (1 - up_down) * scale_down
        spread = p.bound_dtod * p.range_s
        self.g_lo = p.g_min_s + spread * normal().abs()
        self.g_hi = p.g_max_s - spread * normal().abs()
        self.g0 = self.g_lo + p.g0_fraction * (self.g_hi - self.g_lo)

    def rows(self, rows: torch.Tensor) -> "DeviceArray":
        """The devices on ``rows`` of axis 0 (a 1-D array is one row), as an array of their own.

        The drawn parameters are shared (not redrawn): shape ``(len(rows), -1)``.
        """
        m = self.shape[0] if len(self.shape) >= 2 else 1
        sub = DeviceArray.__new__(DeviceArray)
        sub.params = self.params
        for name in ("a_up", "a_down", "g_lo", "g_hi", "g0"):
            setattr(sub, name, getattr(self, name).reshape(m, -1)[rows])
        sub.shape = tuple(sub.a_up.shape)
        return sub

    def clamp(self, g: torch.Tensor) -> torch.Tensor:
        """Hard bounds: a device holds no conductance outside its own range."""
        return torch.minimum(torch.maximum(g, self.g_lo), self.g_hi)

    def step_sizes(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(up, down) step magnitudes (S) at conductances ``g`` (both >= 0)."""
        p = self.params
        x_up = (g - self.g0) / (self.g_hi - self.g0)
        x_down = (g - self.g0) / (self.g_lo - self.g0)
        up = self.a_up * (1 - p.slope_up * x_up).clamp(min=0.0) ** p.gamma_up
        down = self.a_down * (1 - p.slope_down * x_down).clamp(min=0.0) ** p.gamma_down
        return up, down

    def symmetry_point(self, iterations: int = 64) -> torch.Tensor:
        """Per-device ``g*`` with ``dg_up(g*) = dg_down(g*)`` (bisection; S).

        ``dg_up - dg_down`` is non-increasing in ``g``; where it never changes
        sign the device drifts to a bound, which is then its symmetry point
        (a one-directional device: ``g_hi``). Where it is zero everywhere (a
        symmetric constant-step device) every point is one; ``g0`` is returned.
        """
        lo, hi = self.g_lo.clone(), self.g_hi.clone()
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            up, down = self.step_sizes(mid)
            above = up > down              # the crossing lies above mid
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        g_star = 0.5 * (lo + hi)
        up_lo, down_lo = self.step_sizes(self.g_lo)
        up_hi, down_hi = self.step_sizes(self.g_hi)
        flat = (up_lo == down_lo) & (up_hi == down_hi)
        return torch.where(flat, self.g0, g_star)

    def pulse(self, g: torch.Tensor, n: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Apply ``n`` (signed integer tensor) pulses to devices at ``g``, one pulse at a time.

        Returns the new conductances (S); ``g`` is not modified. Each pulse uses
        the step law at the device's current conductance, then the hard bounds.
        """
        p = self.params
        n = n.to(torch.int64)
        count = n.abs()
        if p.linear_noiseless:
            # Constant steps: n pulses are n steps; the bounds only clip (order does not matter
            # because all pulses of one device go the same way).
            step = torch.where(n > 0, self.a_up, self.a_down) * n.to(DTYPE)
            out = self.clamp(g + step)
        else:
            out, up_dir = g.clone(), n > 0
            for k in range(int(count.max()) if count.numel() else 0):
                active = count > k
                up, down = self.step_sizes(out)
                step = torch.where(up_dir, up, -down)
                if p.dg_ctoc > 0 and generator is not None:
                    step = step * (1 + p.dg_ctoc * torch.randn(out.shape, generator=generator, dtype=DTYPE))
                out = torch.where(active, self.clamp(out + step), out)
        if p.write_noise_s > 0 and generator is not None:
            noise = p.write_noise_s * torch.randn(out.shape, generator=generator, dtype=DTYPE)
            out = torch.where(count > 0, self.clamp(out + noise), out)
        return out
