"""Element I-V laws and co-contents, written once for the solver and the emitter.

Every two-terminal element here is described by its branch current ``i(v)``
(amperes, flowing from the first terminal through the element to the second)
as a function of its branch voltage ``v`` (volts, first minus second
terminal), and by its co-content ``C(v) = integral_0^v i(u) du`` (joules per
second, i.e. watts times volts / volts: the "energy" of a resistive element
whose minimum over the node voltages is the DC operating point).

The diode law is ngspice's level-1 junction exactly as ``dioload.c`` evaluates
it for a DC operating point (ngspice 39, no series resistance, no breakdown
voltage, area 1, TEMP = TNOM = 27 C):

    vte = N * k*T/q                                 (thermal voltage times N)
    v >= -3*vte :  i = IS*(exp(v/vte) - 1) + GMIN*v (forward and weak reverse)
    v <  -3*vte :  i = -IS*(1 + (3*vte/(e*v))**3) + GMIN*v   (reverse)

with ngspice's constants (``const.h``, CODATA 2014) below. GMIN is the
conductance ngspice puts in parallel with every junction (option ``gmin``,
1e-12 S by default); the netlist emitter writes the same value into the deck,
so the torch solver and ngspice model the same element.

The piecewise-linear element interpolates a table of (volts, amperes) points
linearly and extrapolates the end segments linearly, which is what an ngspice
``B`` source with ``I = pwl(v(node), ...)`` does (measured, see tests).

All functions take and return torch tensors (any shape, float64 advised).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# ngspice 39 src/include/ngspice/const.h
BOLTZMANN_J_PER_K = 1.38064852e-23
ELECTRON_CHARGE_C = 1.6021766208e-19
CELSIUS_TO_KELVIN = 273.15
NOMINAL_TEMPERATURE_C = 27.0
#: k*T/q at TNOM = 27 C, volts (about 25.86 mV).
THERMAL_VOLTAGE_V = BOLTZMANN_J_PER_K * (NOMINAL_TEMPERATURE_C + CELSIUS_TO_KELVIN) / ELECTRON_CHARGE_C
#: ngspice's default junction GMIN, siemens.
DEFAULT_GMIN_S = 1e-12



@dataclass(frozen=True)
class DiodeModel:
    """A Shockley junction as SPICE sees it.

    Attributes:
        saturation_current_a: IS, amperes (> 0).
        emission_coefficient: N, dimensionless (> 0). Small N makes a steep,
            nearly ideal diode.
        gmin_s: conductance in parallel with the junction, siemens (>= 0).
    """

    saturation_current_a: float = 1e-14
    emission_coefficient: float = 1.0
    gmin_s: float = DEFAULT_GMIN_S

    @property
    def vte(self) -> float:
        """N * k*T/q in volts."""
        return self.emission_coefficient * THERMAL_VOLTAGE_V


def diode_current(v: torch.Tensor, model: DiodeModel) -> torch.Tensor:
    """Junction current (A, anode -> cathode) at branch voltage ``v`` (V, anode - cathode)."""
    current, _ = diode_current_and_conductance(v, model)
    return current


def diode_current_and_conductance(v: torch.Tensor, model: DiodeModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Current (A) and small-signal conductance di/dv (S) of the ngspice junction."""
    return junction_current_and_conductance(v, model.saturation_current_a, model.vte, model.gmin_s)


def junction_current_and_conductance(v: torch.Tensor, isat, vte, gmin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The junction law with explicit parameters: ``isat`` (A) and ``vte`` = N*Vt (V)
    may be floats or tensors broadcasting against ``v`` (per-element mismatch, temperature)."""
    current, conductance, _ = junction_law(v, isat, vte, gmin)
    return current, conductance


def junction_law(v: torch.Tensor, isat, vte, gmin: float, energy: bool = False):
    """``(current, conductance, co-content)`` of the junction at ``v`` (A, S, J; the co-content
    None unless ``energy``), evaluated together (one exponential): :func:`junction_current_and_conductance`
    and :func:`junction_cocontent` are this law.

    In ``y = v / vte``: forward (``y >= -3``): ``IS (e^y - 1)``, ``IS e^y / vte``, ``IS vte (e^y - 1 - y)``;
    reverse: ngspice's ``-IS (1 + a)``, ``a = (3 vte / (e v))^3 = (3 / e)^3 / y^3``, its derivative
    ``(IS / vte) 3 a / y``, and its integral continued from ``v0 = -3 vte``. GMIN adds ``GMIN v``,
    ``GMIN``, ``GMIN v^2 / 2``. (Written for few tensor operations: the solvers call it on every
    iteration, where each operation's fixed cost dominates.)"""
    y = v / vte
    forward = y >= -3.0
    exp_v = torch.exp(y)
    # Reverse branch: guard the forward entries with y0 = -3 (nonzero), where it is unused.
    y_rev = y.clamp(max=-3.0)
    inv3 = y_rev.pow(3).reciprocal_()          # pow(-3) is a slow kernel
    current = torch.where(forward, exp_v, inv3.mul(-_REVERSE_C3)).sub_(1.0).mul_(isat).add_(v, alpha=gmin)
    conductance = torch.where(forward, exp_v, inv3.div(y_rev).mul_(3.0 * _REVERSE_C3)).mul_(isat / vte).add_(gmin)
    cocontent = None
    if energy:
        # IS*vte*(e^y - 1 - y): near y = 0 the difference cancels (its rounding, IS*vte*1e-16 ~ 1e-26 J,
        # swamps the energy of a network within 1e-12 V of 0 V, where Newton's line search compares
        # energies): its Taylor series there (|y| < 0.05: truncation below 1e-18 relative).
        series = y * y * _expm1_minus_y_over_y2(y)
        fwd = isat * vte * torch.where(y.abs() < 0.05, series, torch.expm1(y) - y)
        c3 = (3.0 * vte / math.e) ** 3
        v0 = -3.0 * vte
        v_rev = y_rev * vte
        at_v0 = isat * (vte * (math.exp(-3.0) - 1.0) - v0)
        # integral_{v0}^{v} -IS*(1 + c3*u**-3) du = -IS*[(v - v0) - c3/2*(v**-2 - v0**-2)]
        rev = at_v0 - isat * ((v_rev - v0) - 0.5 * c3 * (v_rev ** -2 - v0 ** -2))
        cocontent = torch.where(forward, fwd, rev) + 0.5 * gmin * v * v
    return current, conductance, cocontent


#: ``(3 / e)^3``: ngspice's reverse-branch constant in ``y = v / vte``.
_REVERSE_C3 = (3.0 / math.e) ** 3


def diode_cocontent(v: torch.Tensor, model: DiodeModel) -> torch.Tensor:
    """Co-content integral_0^v i(u) du of the junction, W (V*A).

    Forward: IS*(vte*(exp(v/vte) - 1) - v). Reverse (v < -3*vte): the integral
    of -IS*(1 + c**3/u**3) with c = 3*vte/e, continued from v0 = -3*vte.
    Both include GMIN*v**2/2.
    """
    return junction_cocontent(v, model.saturation_current_a, model.vte, model.gmin_s)


def _expm1_minus_y_over_y2(y: torch.Tensor) -> torch.Tensor:
    """``(e^y - 1 - y) / y^2 = sum_k y^k / (k + 2)!`` for k = 0..8 (Horner)."""
    acc = torch.full_like(y, 1.0 / math.factorial(10))
    for k in range(7, -1, -1):
        acc = acc * y + 1.0 / math.factorial(k + 2)
    return acc


def junction_cocontent(v: torch.Tensor, isat, vte, gmin: float) -> torch.Tensor:
    """:func:`diode_cocontent` with explicit (float or tensor) ``isat`` and ``vte``."""
    return junction_law(v, isat, vte, gmin, energy=True)[2]


# ---- temperature (ngspice diotemp.c, level-1 junction, TLEV = 0) --------------------------

#: ngspice's junction defaults: saturation-current temperature exponent and band gap (eV).
DEFAULT_XTI = 3.0
DEFAULT_EG_EV = 1.11


def thermal_voltage_v(temperature_c: float) -> float:
    """k*T/q at ``temperature_c`` (V), with ngspice's constants."""
    return BOLTZMANN_J_PER_K * (temperature_c + CELSIUS_TO_KELVIN) / ELECTRON_CHARGE_C


def saturation_current_at(is_nominal_a, emission_coefficient, temperature_c: float,
                          nominal_c: float = NOMINAL_TEMPERATURE_C, xti: float = DEFAULT_XTI,
                          eg_ev: float = DEFAULT_EG_EV):
    """IS(T) = IS * (T/Tnom)**(XTI/N) * exp(-EG/(N*Vt(T)) * (1 - T/Tnom)) as ngspice computes it.

    Works on floats or numpy arrays (per-diode IS and N). At T = Tnom it returns IS unchanged.
    """
    import numpy as np
    t = temperature_c + CELSIUS_TO_KELVIN
    ratio = t / (nominal_c + CELSIUS_TO_KELVIN)
    if ratio == 1.0:
        return is_nominal_a
    vt = thermal_voltage_v(temperature_c)
    n = np.asarray(emission_coefficient, dtype=np.float64)
    out = np.asarray(is_nominal_a, dtype=np.float64) * np.exp(
        (ratio - 1.0) * eg_ev / (n * vt) + xti / n * np.log(ratio))
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class PwlTable:
    """A measured I-V table: current (A, node -> ground) at node voltage (V).

    Voltages strictly increase; currents must not decrease (a passive,
    monotone element keeps the network's energy convex, so the operating
    point is unique). Outside the table the end segments continue linearly.
    """

    voltages_v: tuple[float, ...]
    currents_a: tuple[float, ...]

    def segments(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor(self.voltages_v, dtype=torch.float64),
                torch.tensor(self.currents_a, dtype=torch.float64))


def _pwl_segment(v: torch.Tensor, table: PwlTable):
    xs, ys = table.segments()
    xs, ys = xs.to(v.device), ys.to(v.device)
    # Segment index k such that xs[k] <= v < xs[k+1], clamped to the end segments.
    k = torch.clamp(torch.searchsorted(xs, v.contiguous(), right=True) - 1, 0, len(xs) - 2)
    x0, x1, y0, y1 = xs[k], xs[k + 1], ys[k], ys[k + 1]
    slope = (y1 - y0) / (x1 - x0)
    return k, x0, y0, slope


def pwl_current_and_conductance(v: torch.Tensor, table: PwlTable) -> tuple[torch.Tensor, torch.Tensor]:
    """Current (A) and slope (S) of the table element at node voltage ``v``."""
    _, x0, y0, slope = _pwl_segment(v, table)
    return y0 + slope * (v - x0), slope


def pwl_cocontent(v: torch.Tensor, table: PwlTable) -> torch.Tensor:
    """integral_0^v i(u) du of the table element (exact for piecewise-linear i), W."""
    xs, ys = table.segments()
    xs, ys = xs.to(v.device), ys.to(v.device)

    def primitive(x: torch.Tensor) -> torch.Tensor:
        # P(x) = integral_{xs[0]}^{x} i(u) du, piecewise quadratic.
        k, x0, y0, slope = _pwl_segment(x, table)
        seg_areas = 0.5 * (ys[1:] + ys[:-1]) * (xs[1:] - xs[:-1])
        cumulative = torch.cat([torch.zeros(1, dtype=xs.dtype, device=xs.device), torch.cumsum(seg_areas, 0)])
        dx = x - x0
        return cumulative[k] + y0 * dx + 0.5 * slope * dx * dx

    return primitive(v) - primitive(torch.zeros_like(v))
