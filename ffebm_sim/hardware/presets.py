"""Named device families, defined relative to the range they are scaled to.

A preset fixes the *shape* of a device (number of states, asymmetry, bounds
law, noise) as fractions of its range; :func:`get_device` scales it to a
conductance range in siemens (e.g. an energy block's ``[g_min, g_max]``).
The numbers are representative of the device literature (aihwkit's presets,
Gokmen & Haensch 2020, Onen et al. 2022, Nandakumar et al. 2018), not fits to
one measured device.

| preset  | states | law | up_down | d2d step / asym / bounds | c2c | read: prog, read, drift nu |
|---|---|---|---|---|---|---|
| `ideal` | 10000 | constant step, hard bounds | 0 | 0 / 0 / 0 | 0 | 0, 0, 0 |
| `reram` | 200 | soft bounds (s=1, gamma=1) | +0.2 | 0.2 / 0.05 / 0.05 | 0.3 | 1%, 1%, 0.005 |
| `ecram` | 1000 | near-linear step (s=0.1) | +0.02 | 0.1 / 0.01 / 0.02 | 0.05 | 0.5%, 0.5%, 0 |
| `pcm`   | 100 | one-directional soft bound (s=1, gamma_up=2) | +1 | 0.3 / 0 / 0.05 | 0.5 | 3%, 2%, 0.05 |

(Read noise is relative to ``g``; programming noise is a fraction of the range.
All presets use a budget of 31 pulses per device per update, except `ideal` (none);
`t0` is 1 s, 20 s for `pcm`.)

- `ideal`: many states, symmetric, noiseless: the floating-point baseline
  expressed as pulses.
- `reram` (filamentary ReRAM, the *asymmetric soft-bounds* device of the
  benchmark): few states, steps that shrink toward the bounds, up steps 1.5x
  the down steps at ``g0``, so the symmetry point sits at 60% of the range;
  plain SGD is pulled toward it.
- `ecram` (electrochemical RAM): many nearly constant, nearly symmetric
  steps. The soft-bound slope is weak (0.1), so even its 2% asymmetry puts
  the symmetry point at 60% of the range, but the drift toward it is weak.
- `pcm` (phase-change memory): gradual SET only; RESET is abrupt, so a
  requested decrease does nothing (``up_down = 1``: zero down step; the up
  step at ``g0`` is ``2 dg`` = range/50). Training
  relies on the other conductance of each signed weight's pair; the periodic
  refresh (RESET both and re-program the difference) is not modelled. Its
  symmetry point is ``g_max`` (saturation). Strong drift at inference.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import SpecError
from .device import DeviceParams

# Fractions of the range (steps, noise); dimensionless otherwise. ``states`` sets dg = range/states.
_PRESETS: dict[str, dict] = {
    "ideal": dict(states=10000, up_down=0.0, slope_up=0.0, slope_down=0.0, max_pulses=None,
                  description="symmetric constant steps, 10000 states, no noise: the float baseline as pulses"),
    "reram": dict(states=200, up_down=0.2, slope_up=1.0, slope_down=1.0, dg_dtod=0.2, up_down_dtod=0.05,
                  bound_dtod=0.05, dg_ctoc=0.3, max_pulses=31, prog=0.01, read_noise_rel=0.01, drift_nu=0.005,
                  drift_nu_dtod=0.002, t0_sec=1.0,
                  description="ReRAM-like soft bounds, 200 states, up/down asymmetric (symmetry point at 60%)"),
    "ecram": dict(states=1000, up_down=0.02, slope_up=0.1, slope_down=0.1, dg_dtod=0.1, up_down_dtod=0.01,
                  bound_dtod=0.02, dg_ctoc=0.05, max_pulses=31, prog=0.005, read_noise_rel=0.005,
                  description="ECRAM-like near-linear, near-symmetric steps, 1000 states"),
    "pcm": dict(states=100, up_down=1.0, slope_up=1.0, slope_down=1.0, gamma_up=2.0, dg_dtod=0.3,
                bound_dtod=0.05, dg_ctoc=0.5, max_pulses=31, prog=0.03, read_noise_rel=0.02, drift_nu=0.05,
                drift_nu_dtod=0.01, t0_sec=20.0,
                description="PCM-like one-directional (gradual SET, no gradual RESET), strong drift"),
}

PRESETS = tuple(_PRESETS)


def get_device(name: str | DeviceParams, g_min_s: float = 0.0, g_max_s: float = 1.0, **overrides) -> DeviceParams:
    """The preset ``name`` scaled to ``[g_min_s, g_max_s]`` (S), with field overrides.

    A :class:`DeviceParams` passes through (with ``overrides`` applied).
    """
    if isinstance(name, DeviceParams):
        return replace(name, **overrides) if overrides else name
    if name not in _PRESETS:
        raise SpecError(f"device: unknown preset {name!r}; valid presets are {', '.join(PRESETS)}")
    p = dict(_PRESETS[name])
    rng = float(g_max_s) - float(g_min_s)
    states, prog = p.pop("states"), p.pop("prog", 0.0)
    fields = dict(name=name, g_min_s=float(g_min_s), g_max_s=float(g_max_s), dg_s=rng / states,
                  prog_noise_s=prog * rng, **p)
    unknown = set(overrides) - set(DeviceParams.__dataclass_fields__)
    if unknown:
        raise SpecError(f"device.{sorted(unknown)[0]}: unknown field; valid fields are "
                        f"{', '.join(DeviceParams.__dataclass_fields__)}")
    fields.update(overrides)
    return DeviceParams(**fields)
