"""Read-time non-idealities: what an inference sees after the weights are programmed.

Programming (once, at time ``t = 0``): each device lands at

    g_p = clip(g_target + prog_noise_s * N, g_lo, g_hi)

and draws its drift exponent ``nu_i = max(0, drift_nu + drift_nu_dtod * N)``.
A read at time ``t`` (seconds after programming) gives

    g(t) = g_p * (max(t, t0) / t0) ** (-nu_i) * (1 + read_noise_rel * N),   clipped at >= 0

(drift is the power law of PCM/ReRAM relaxation; before ``t0`` the device
reads its programmed value; read noise is fresh at every read). Conductances
never go negative: a resistor is passive.
"""

from __future__ import annotations

import torch

from .device import DTYPE, DeviceArray, DeviceParams
from .seeding import generator_for


class ProgrammedWeights:
    """Weights written once to devices, read at later times with drift and read noise.

    ``weights``: tensors in units of ``unit_s`` (siemens per unit; an EnergyBlock's
    ``conductance_unit_s``); :meth:`read` returns new tensors in the same units.
    """

    def __init__(self, device: DeviceParams, weights: list[torch.Tensor], seed: int = 0, unit_s: float = 1.0):
        self.device, self.unit_s = device, float(unit_s)
        self.dtypes = [w.dtype for w in weights]
        self._read_gen = generator_for(seed, "read")
        prog_gen = generator_for(seed, "program")
        self.programmed, self.nu = [], []
        for i, w in enumerate(weights):
            arr = DeviceArray(device, tuple(w.shape), generator_for(seed, "inference-devices", i))
            g = w.detach().to(DTYPE) * self.unit_s
            noise = device.prog_noise_s * torch.randn(g.shape, generator=prog_gen, dtype=DTYPE)
            self.programmed.append(arr.clamp(g + noise))
            nu = device.drift_nu + device.drift_nu_dtod * torch.randn(g.shape, generator=prog_gen, dtype=DTYPE)
            self.nu.append(nu.clamp(min=0.0))

    def read(self, t_sec: float) -> list[torch.Tensor]:
        """The weights (units of ``unit_s``) as read ``t_sec`` seconds after programming."""
        if not t_sec >= 0:
            raise ValueError(f"t_sec: {t_sec!r}; seconds after programming, >= 0")
        ratio = max(float(t_sec), self.device.t0_sec) / self.device.t0_sec
        out = []
        for g, nu, dtype in zip(self.programmed, self.nu, self.dtypes):
            g_t = g * ratio ** (-nu)
            if self.device.read_noise_rel > 0:
                g_t = g_t * (1 + self.device.read_noise_rel * torch.randn(g.shape, generator=self._read_gen,
                                                                         dtype=DTYPE))
            out.append((g_t.clamp(min=0.0) / self.unit_s).to(dtype))
        return out


def program(device: DeviceParams, weights: list[torch.Tensor], seed: int = 0, unit_s: float = 1.0) -> ProgrammedWeights:
    """Program ``weights`` (units of ``unit_s``) into devices; read them later with ``.read(t_sec)``."""
    return ProgrammedWeights(device, weights, seed, unit_s)
