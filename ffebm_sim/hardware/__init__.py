"""Hardware realism: pulsed device update models, training rules on them, read-time non-idealities.

See ``docs/hardware.md`` for the equations, presets and API.

    from ffebm_sim.hardware import get_device, make_update_rule, program

    device = get_device("reram", g_min_s=0.0, g_max_s=1e-3)
    rule = make_update_rule("shd", device, [w.shape for w in block.all_weights()], seed=0,
                            unit_s=block.conductance_unit_s)
    stats = rule.step(list(block.all_weights()), [w.grad for w in block.all_weights()], lr=0.03)
    weights_1h = program(device, list(block.all_weights()), seed=0,
                         unit_s=block.conductance_unit_s).read(3600.0)
"""

from .device import DeviceArray, DeviceParams
from .factory import RULES, make_update_rule
from .inference import ProgrammedWeights, program
from .presets import PRESETS, get_device
from .rules import AnalogSGD, MixedPrecision, UpdateRule, UpdateStats
from .two_array import StochasticHamiltonianDescent, TikiTaka

__all__ = ["DeviceArray", "DeviceParams", "RULES", "make_update_rule", "ProgrammedWeights", "program",
           "PRESETS", "get_device", "AnalogSGD", "MixedPrecision", "UpdateRule", "UpdateStats",
           "StochasticHamiltonianDescent", "TikiTaka"]
