"""Names to rules, at the edge: ``make_update_rule("shd", device, shapes, seed)``."""

from __future__ import annotations

import inspect

from ..errors import SpecError
from .device import DeviceParams
from .presets import get_device
from .rules import AnalogSGD, MixedPrecision, UpdateRule
from .two_array import StochasticHamiltonianDescent, TikiTaka

_RULES: dict[str, type[UpdateRule]] = {
    "sgd": AnalogSGD,
    "mixed": MixedPrecision,
    "tiki-taka": TikiTaka,
    "shd": StochasticHamiltonianDescent,
}
RULES = tuple(_RULES)


def make_update_rule(name: str, device: DeviceParams | str, shapes, seed: int = 0, unit_s: float = 1.0,
                     g_range_s: tuple[float, float] | None = None, **options) -> UpdateRule:
    """The update rule ``name`` on ``device`` for weight tensors of ``shapes``.

    Args:
        name: one of :data:`RULES` (``sgd``, ``mixed``, ``tiki-taka``, ``shd``).
        device: a :class:`DeviceParams`, or a preset name with ``g_range_s = (g_min, g_max)`` in siemens.
        shapes: the weight tensors' shapes, in the order ``step`` receives them.
        seed: device-to-device draws and noise streams.
        unit_s: siemens per weight unit (an EnergyBlock's ``conductance_unit_s``; 1 for siemens).
        options: rule options (``coupling``, ``fast_device``, ``read_noise``, ``transfer_every``,
            ``rows_per_transfer``); an option the rule does not take is an error.
    """
    if name not in _RULES:
        raise SpecError(f"update: unknown rule {name!r}; valid rules are {', '.join(RULES)}")
    if isinstance(device, str):
        if g_range_s is None:
            raise SpecError(f"device: preset {device!r} needs g_range_s = (g_min, g_max) in siemens")
        device = get_device(device, *g_range_s)
    cls = _RULES[name]
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "device", "shapes", "seed", "unit_s"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise SpecError(f"update.{unknown[0]}: not an option of rule {name!r}; "
                        f"its options are {', '.join(sorted(allowed)) or 'none'}")
    return cls(device, shapes, seed=seed, unit_s=unit_s, **options)
