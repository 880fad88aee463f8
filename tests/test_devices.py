"""The element laws: co-contents integrate the currents; ngspice's diode branches join smoothly."""

import math

import pytest
import torch

from ffebm_sim.devices import (THERMAL_VOLTAGE_V, DiodeModel, PwlTable, diode_cocontent,
                               diode_current_and_conductance, pwl_cocontent, pwl_current_and_conductance)

MODELS = [DiodeModel(1e-14, 1.0), DiodeModel(1e-8, 1.0), DiodeModel(1e-12, 0.001), DiodeModel(1e-14, 1.8, 0.0)]


def test_thermal_voltage_is_ngspice_27C():
    # ngspice const.h (CODATA 2014): k = 1.38064852e-23, q = 1.6021766208e-19, T = 300.15 K
    assert THERMAL_VOLTAGE_V == pytest.approx(0.025864917007157463, rel=1e-15)


def _sweep(model):
    v = torch.linspace(-40 * model.vte, 25 * model.vte, 2001, dtype=torch.float64)
    return v[(v + 3 * model.vte).abs() > 1e-6 * model.vte].requires_grad_(True)


@pytest.mark.parametrize("model", MODELS)
def test_conductance_is_derivative_of_current(model):
    v = _sweep(model)
    i, g = diode_current_and_conductance(v, model)
    (di_dv,) = torch.autograd.grad(i.sum(), v)
    torch.testing.assert_close(di_dv, g.detach(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("model", MODELS)
def test_cocontent_is_integral_of_current(model):
    v = _sweep(model)
    c = diode_cocontent(v, model)
    (dc_dv,) = torch.autograd.grad(c.sum(), v)
    i, _ = diode_current_and_conductance(v.detach(), model)
    torch.testing.assert_close(dc_dv, i, rtol=1e-12, atol=1e-30)
    assert float(diode_cocontent(torch.zeros(1, dtype=torch.float64), model)) == 0.0
    # continuity of the co-content across the forward/reverse branch point
    v0 = -3 * model.vte
    near = torch.tensor([v0 * (1 - 1e-12), v0 * (1 + 1e-12)], dtype=torch.float64)
    c_near = diode_cocontent(near, model)
    assert float(c_near[0]) == pytest.approx(float(c_near[1]), rel=1e-9)


@pytest.mark.parametrize("model", MODELS)
def test_reverse_branch_is_continuous(model):
    v0 = torch.tensor([-3 * model.vte], dtype=torch.float64)
    eps = 1e-12 * model.vte
    below, _ = diode_current_and_conductance(v0 - eps, model)
    above, _ = diode_current_and_conductance(v0 + eps, model)
    assert float(below) == pytest.approx(float(above), rel=1e-9)
    # deep reverse: -IS - GMIN*|v|
    deep, _ = diode_current_and_conductance(torch.tensor([-5.0], dtype=torch.float64), model)
    assert float(deep) == pytest.approx(-model.saturation_current_a * (1 + (3 * model.vte / (math.e * -5.0)) ** 3)
                                        - 5.0 * model.gmin_s, rel=1e-12)


def test_pwl_interpolates_extrapolates_and_integrates():
    t = PwlTable((-0.5, -0.1, 0.1, 0.5), (-2e-4, 0.0, 0.0, 2e-4))
    v = torch.tensor([-1.0, -0.3, 0.0, 0.3, 1.0], dtype=torch.float64)
    i, g = pwl_current_and_conductance(v, t)
    torch.testing.assert_close(i, torch.tensor([-4.5e-4, -1e-4, 0.0, 1e-4, 4.5e-4], dtype=torch.float64))
    torch.testing.assert_close(g, torch.tensor([5e-4, 5e-4, 0.0, 5e-4, 5e-4], dtype=torch.float64))
    # co-content of the clamp: 0 inside, quadratic outside
    c = pwl_cocontent(v, t)
    expect = torch.tensor([0.5 * 5e-4 * 0.9 ** 2, 0.5 * 5e-4 * 0.2 ** 2, 0.0, 0.5 * 5e-4 * 0.2 ** 2, 0.5 * 5e-4 * 0.9 ** 2],
                          dtype=torch.float64)
    torch.testing.assert_close(c, expect)
