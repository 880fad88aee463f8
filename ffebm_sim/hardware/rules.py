"""Training rules on pulsed devices: the contract, plain analog SGD and mixed precision.

Units. A rule works in siemens internally. The weights it is given are in
units of ``unit_s`` (``G = w * unit_s``; an EnergyBlock's parameters with
``unit_s = block.conductance_unit_s``, or siemens with ``unit_s = 1``), the
gradients are ``dL/dw`` in the same units, and ``lr`` is the step in those
units: the *requested* change of a conductance is

    dG_req = -lr * dL/dw * unit_s        (S)

which the device turns into pulses (:mod:`ffebm_sim.hardware.pulses`) and
applies pulse by pulse (:class:`~ffebm_sim.hardware.device.DeviceArray`). The
weights are written back in place, so an optimizer or an EnergyBlock sees the
conductances the devices actually hold. Every device is one conductance; a
signed weight's pair (positive and negative source rows) is two devices.

Each rule owns one :class:`DeviceArray` per weight tensor (its device-to-device
draws fixed by ``seed``) and clamps incoming weights into each device's range
(a device cannot hold anything else), so ``g_min <= G <= g_max`` always.

- ``sgd``: ``n = stochastic_round(dG_req / dg)``, pulses applied directly.
- ``mixed`` (mixed precision, Nandakumar et al. 2018): a digital accumulator
  ``chi`` per conductance integrates requests, ``chi += dG_req``; whole pulses
  ``n = trunc(chi / dg)`` are sent and ``chi -= n * dg`` (the nominal amount:
  the digital side does not see the device's actual step).
- ``tiki-taka``, ``shd``: two arrays, see :mod:`ffebm_sim.hardware.two_array`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..errors import SpecError
from .device import DTYPE, DeviceArray, DeviceParams
from .pulses import stochastic_pulses, truncated_pulses
from .seeding import generator_for


@dataclass
class UpdateStats:
    """What one update (or a sum of updates) cost on the hardware.

    ``pulses_up``/``pulses_down``: pulses sent to the weight (slow) devices;
    ``fast_pulses``: pulses sent to auxiliary (fast) devices; ``capped``:
    device requests clipped to the pulse budget; ``reads``: device reads of an
    auxiliary array (the transfers of the two-array rules); ``transfers``:
    transfer events.
    """

    pulses_up: int = 0
    pulses_down: int = 0

    @property
    def pulses(self) -> int:
        """Pulses sent to the weight devices, both directions."""
        return self.pulses_up + self.pulses_down

    fast_pulses: int = 0
    capped: int = 0
    reads: int = 0
    transfers: int = 0

    def count(self, n: torch.Tensor) -> None:
        self.pulses_up += int(n.clamp(min=0).sum())
        self.pulses_down += int((-n).clamp(min=0).sum())

    def __add__(self, other: "UpdateStats") -> "UpdateStats":
        return UpdateStats(**{k: v + getattr(other, k) for k, v in asdict(self).items()})

    def as_dict(self) -> dict:
        return {**asdict(self), "pulses": self.pulses}


class UpdateRule:
    """The contract: ``step(weights, grads, lr) -> UpdateStats``, updating ``weights`` in place.

    Args:
        device: the device family of every conductance (:func:`~ffebm_sim.hardware.presets.get_device`).
        shapes: the shapes of the weight tensors, in the order ``step`` receives them.
        seed: fixes the device-to-device draws and every noise stream.
        unit_s: siemens per weight unit (``G = w * unit_s``).
    """

    name = "base"

    def __init__(self, device: DeviceParams, shapes, seed: int = 0, unit_s: float = 1.0):
        if not (isinstance(unit_s, int | float) and unit_s > 0 and torch.isfinite(torch.tensor(float(unit_s)))):
            raise SpecError(f"unit_s: {unit_s!r}; siemens per weight unit, a finite number > 0")
        self.device, self.unit_s, self.seed = device, float(unit_s), int(seed)
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.arrays = [DeviceArray(device, s, generator_for(seed, "weights", i)) for i, s in enumerate(self.shapes)]
        self._noise = generator_for(seed, "updates")
        self.steps = 0

    # -- the contract ---------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, weights: list[torch.Tensor], grads: list[torch.Tensor | None], lr: float) -> UpdateStats:
        """Apply one update for gradients ``grads = dL/dw`` at learning rate ``lr`` (weight units)."""
        if len(weights) != len(self.shapes) or len(grads) != len(self.shapes):
            raise SpecError(f"step: got {len(weights)} weights and {len(grads)} gradients; "
                            f"this rule was made for {len(self.shapes)} tensors")
        for k, (w, s) in enumerate(zip(weights, self.shapes)):
            if tuple(w.shape) != s:
                raise SpecError(f"step: weight {k} has shape {tuple(w.shape)}; this rule was made for {s}")
        g = self.conductances(weights)
        requests = [torch.zeros(s, dtype=DTYPE) if d is None else -float(lr) * d.detach().to(DTYPE) * self.unit_s
                    for d, s in zip(grads, self.shapes)]
        stats = UpdateStats()
        new = self._update(g, requests, stats)
        for w, gk in zip(weights, new):
            w.copy_((gk / self.unit_s).to(w.dtype))
        self.steps += 1
        return stats

    def _update(self, g: list[torch.Tensor], requests: list[torch.Tensor], stats: UpdateStats) -> list[torch.Tensor]:
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------------------------------
    def conductances(self, weights: list[torch.Tensor]) -> list[torch.Tensor]:
        """The weights as device conductances (S), clamped into each device's own range."""
        return [a.clamp(w.detach().to(DTYPE) * self.unit_s) for a, w in zip(self.arrays, weights)]

    def symmetry_points(self) -> list[torch.Tensor]:
        """Per-device symmetry points of the weight devices (S)."""
        return [a.symmetry_point() for a in self.arrays]

    def _pulse_stochastic(self, arr: DeviceArray, g: torch.Tensor, request: torch.Tensor,
                          stats: UpdateStats, fast: bool = False) -> torch.Tensor:
        n, capped = stochastic_pulses(request, self.device.dg_s, self.device.max_pulses, self._noise)
        stats.capped += capped
        if fast:
            stats.fast_pulses += int(n.abs().sum())
        else:
            stats.count(n)
        return arr.pulse(g, n, self._noise)

    # -- checkpointing --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything that evolves (not the device draws, which ``seed`` recreates)."""
        return {"name": self.name, "steps": self.steps, "noise": self._noise.get_state(), **self._extra_state()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name:
            raise SpecError(f"update rule state: saved for {state.get('name')!r}, this rule is {self.name!r}")
        self.steps = int(state["steps"])
        self._noise.set_state(state["noise"])
        self._load_extra_state(state)

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict) -> None:
        pass

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(device={self.device.name}, tensors={len(self.shapes)}, unit_s={self.unit_s:g})"


class AnalogSGD(UpdateRule):
    """Plain analog SGD: every request goes straight to the devices as stochastically rounded pulses.

    ``n = floor(x) + Bernoulli(frac(x))``, ``x = dG_req / dg``; in expectation, per device,

        E[dG] = m(G) * dG_req - d(G) * |dG_req|,
        m = (dg_up + dg_down) / (2 dg),   d = (dg_down - dg_up) / (2 dg),   d(G*) = 0

    i.e. the requested step plus a drift toward the symmetry point ``G*``
    proportional to the *magnitude* of the request. For soft bounds
    (``g0`` mid-range, asymmetry ``u = up_down``, ``x = (G - g0) / half_range``):
    ``m = 1 - u x`` and ``d = x - u``, so ``G* = g0 + u * half_range``. With noisy
    gradients ``E|dG_req|`` does not vanish at the loss minimum, so SGD settles
    where ``E[dL/dG] ~= -E|dL/dG| * d(G)``: between the minimum and the symmetry
    point (the bias Onen et al. 2022 analyse).
    """

    name = "sgd"

    def _update(self, g, requests, stats):
        return [self._pulse_stochastic(a, gk, r, stats) for a, gk, r in zip(self.arrays, g, requests)]


class MixedPrecision(UpdateRule):
    """A digital accumulator per conductance; whole pulses are transferred when it holds one.

        chi  += dG_req
        n     = clip(trunc(chi / dg), -cap, cap)
        G    <- pulses(G, n)
        chi  -= n * dg

    The gradient noise is averaged digitally before it reaches the device, so
    far fewer pulses are sent and the drift toward the symmetry point (which
    scales with the number of pulses) shrinks; the residual error is within one
    step ``dg`` of the accumulator.
    """

    name = "mixed"

    def __init__(self, device, shapes, seed=0, unit_s=1.0):
        super().__init__(device, shapes, seed, unit_s)
        self.accumulators = [torch.zeros(s, dtype=DTYPE) for s in self.shapes]

    def _update(self, g, requests, stats):
        out = []
        for k, (a, gk, r) in enumerate(zip(self.arrays, g, requests)):
            self.accumulators[k] += r
            n, capped = truncated_pulses(self.accumulators[k], self.device.dg_s, self.device.max_pulses)
            stats.capped += capped
            stats.count(n)
            self.accumulators[k] -= n.to(DTYPE) * self.device.dg_s
            out.append(a.pulse(gk, n, self._noise))
        return out

    def _extra_state(self):
        return {"accumulators": [c.clone() for c in self.accumulators]}

    def _load_extra_state(self, state):
        self.accumulators = [c.clone().to(DTYPE) for c in state["accumulators"]]
