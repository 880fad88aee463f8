"""Device update models: bounds, symmetry point, saturation, stochastic rounding, presets, read model."""

import math

import pytest
import torch

from ffebm_sim.errors import SpecError
from ffebm_sim.hardware import PRESETS, DeviceArray, get_device, program
from ffebm_sim.hardware.pulses import stochastic_pulses, truncated_pulses
from ffebm_sim.hardware.seeding import generator_for

G_MAX = 1e-3   # S


def gen(seed=0, role="test"):
    return generator_for(seed, role)


@pytest.mark.parametrize("name", PRESETS)
def test_random_pulse_trains_never_cross_the_bounds(name):
    # Heavy per-pulse and write noise, large steps: only the hard bounds can keep g inside.
    dev = get_device(name, 1e-5, G_MAX, dg_ctoc=1.0, write_noise_s=0.05 * G_MAX, dg_s=0.2 * G_MAX,
                     max_pulses=None, bound_dtod=0.1)
    arr = DeviceArray(dev, (64, 8), gen(1, "d2d"))
    assert bool((arr.g_lo >= dev.g_min_s).all()) and bool((arr.g_hi <= dev.g_max_s).all())
    assert bool((arr.g_lo < arr.g_hi).all())
    g = arr.clamp(torch.rand(64, 8, generator=gen(2), dtype=torch.float64) * G_MAX)
    noise = gen(3)
    for _ in range(30):
        n = torch.randint(-6, 7, (64, 8), generator=noise)
        g = arr.pulse(g, n, noise)
        assert bool((g >= arr.g_lo).all()) and bool((g <= arr.g_hi).all())
    assert float(g.min()) >= 0.0


def test_soft_bounds_step_law_is_the_documented_formula():
    dev = get_device("reram", 0.0, G_MAX, dg_dtod=0.0, up_down_dtod=0.0, bound_dtod=0.0, dg_ctoc=0.0)
    arr = DeviceArray(dev, (3,), None)
    g = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64) * G_MAX
    g0, a_up, a_down = 0.5 * G_MAX, dev.dg_s * 1.2, dev.dg_s * 0.8
    up = arr.pulse(g, torch.ones(3, dtype=torch.int64), None)
    down = arr.pulse(g, -torch.ones(3, dtype=torch.int64), None)
    torch.testing.assert_close(up - g, a_up * (1 - (g - g0) / (G_MAX - g0)), rtol=1e-12, atol=0)
    torch.testing.assert_close(g - down, a_down * (1 - (g - g0) / (0.0 - g0)), rtol=1e-12, atol=0)


def test_symmetry_point_closed_form_for_soft_bounds():
    dev = get_device("reram", 0.0, G_MAX)
    a_up, a_down = dev.dg_s * (1 + dev.up_down), dev.dg_s * (1 - dev.up_down)
    expected = (a_up * G_MAX + a_down * 0.0) / (a_up + a_down)
    assert dev.symmetry_point_s == pytest.approx(expected, rel=1e-9)
    assert dev.symmetry_point_s == pytest.approx(0.6 * G_MAX, rel=1e-9)


@pytest.mark.parametrize("start", ["low", "high"])
def test_alternating_pulses_converge_to_each_devices_symmetry_point(start):
    # Device-to-device variation moves every device's g*; alternating pulses must find each one.
    dev = get_device("reram", 0.0, G_MAX, dg_ctoc=0.0)
    arr = DeviceArray(dev, (200,), gen(5, "d2d"))
    g_star = arr.symmetry_point()
    assert float(g_star.std()) > 0.01 * G_MAX          # the variation is real, so the test can fail
    g = arr.g_lo.clone() if start == "low" else arr.g_hi.clone()
    one = torch.ones(200, dtype=torch.int64)
    for _ in range(1500):
        g = arr.pulse(arr.pulse(g, one, None), -one, None)
    up, down = arr.step_sizes(g_star)
    assert bool(((g - g_star).abs() <= 1.01 * torch.maximum(up, down)).all())


def test_pulse_count_to_saturation_matches_the_closed_form():
    for name, eps in (("reram", 0.01), ("reram", 0.05), ("ideal", 0.01)):
        dev = get_device(name, 0.0, G_MAX, dg_dtod=0.0, up_down_dtod=0.0, bound_dtod=0.0, dg_ctoc=0.0)
        arr = DeviceArray(dev, (1,), None)
        g, count = torch.zeros(1, dtype=torch.float64), 0
        while float(g[0]) < G_MAX - eps * dev.range_s - 1e-6 * dev.dg_s:   # float sums of steps
            g = arr.pulse(g, torch.ones(1, dtype=torch.int64), None)
            count += 1
        assert count == dev.pulses_to_saturation(eps), (name, eps)
    reram = get_device("reram", 0.0, G_MAX)
    # soft bounds: r = 1 - 1.2*dg/(range/2) = 0.988 -> ln(0.01)/ln(0.988) = 381.5
    assert reram.pulses_to_saturation(0.01) == 382
    assert reram.n_states == pytest.approx(200)


@pytest.mark.parametrize("x", [0.3, -1.7, 2.05, 0.0])
def test_stochastic_rounding_is_unbiased(x):
    dg, n = 1e-6, 200_000
    req = torch.full((n,), x * dg, dtype=torch.float64)
    pulses, capped = stochastic_pulses(req, dg, None, gen(7))
    assert capped == 0
    frac = x - math.floor(x)
    assert set(pulses.unique().tolist()) <= {math.floor(x), math.floor(x) + 1}
    sigma = math.sqrt(frac * (1 - frac) / n) + 1e-12
    assert abs(float(pulses.double().mean()) - x) < 5 * sigma
    if frac:   # and not deterministic rounding
        assert abs(float(pulses.double().mean()) - round(x)) > 20 * sigma


def test_pulse_cap_and_truncation():
    req = torch.tensor([50.4, -50.4, 3.9, -3.9], dtype=torch.float64)
    n, capped = stochastic_pulses(req, 1.0, 31, gen(0))
    assert n[:2].tolist() == [31, -31] and capped == 2
    t, capped = truncated_pulses(req, 1.0, 31)
    assert t.tolist() == [31, -31, 3, -3] and capped == 2


def test_one_directional_device_cannot_depress_and_saturates():
    dev = get_device("pcm", 0.0, G_MAX, dg_ctoc=0.0, dg_dtod=0.0, bound_dtod=0.0)
    arr = DeviceArray(dev, (4,), None)
    g = torch.full((4,), 0.3 * G_MAX, dtype=torch.float64)
    assert torch.equal(arr.pulse(g, torch.full((4,), -5, dtype=torch.int64), None), g)
    assert bool((arr.pulse(g, torch.full((4,), 5, dtype=torch.int64), None) > g).all())
    assert dev.symmetry_point_s == pytest.approx(G_MAX)


def test_variation_is_seeded():
    dev = get_device("reram", 0.0, G_MAX)
    a, b, c = (DeviceArray(dev, (10, 10), generator_for(s, "weights")) for s in (1, 1, 2))
    assert torch.equal(a.a_up, b.a_up) and torch.equal(a.g_hi, b.g_hi)
    assert not torch.equal(a.a_up, c.a_up)


def test_preset_and_parameter_errors_name_the_field():
    with pytest.raises(SpecError, match="valid presets are ideal, reram, ecram, pcm"):
        get_device("flash")
    with pytest.raises(SpecError, match="g_min_s"):
        get_device("reram", -1e-4, G_MAX)
    with pytest.raises(SpecError, match="up_down"):
        get_device("reram", 0.0, G_MAX, up_down=1.5)
    with pytest.raises(SpecError, match="unknown field"):
        get_device("reram", 0.0, G_MAX, dw_min=0.1)


def test_drift_follows_the_power_law_and_noise_has_the_documented_size():
    dev = get_device("pcm", 0.0, G_MAX, prog_noise_s=0.0, read_noise_rel=0.0, drift_nu_dtod=0.0, bound_dtod=0.0)
    w = [torch.rand(50, 20, generator=gen(1), dtype=torch.float64)]      # units of 1e-3 S
    prog = program(dev, w, seed=0, unit_s=1e-3)
    torch.testing.assert_close(prog.read(0.0)[0], w[0])                  # before t0: as programmed
    torch.testing.assert_close(prog.read(dev.t0_sec)[0], w[0])
    t = 3600.0
    torch.testing.assert_close(prog.read(t)[0], w[0] * (t / dev.t0_sec) ** -dev.drift_nu, rtol=1e-12, atol=0)

    noisy = get_device("reram", 0.0, G_MAX, read_noise_rel=0.0, drift_nu=0.0, drift_nu_dtod=0.0, bound_dtod=0.0)
    mid = [torch.full((200, 50), 0.5, dtype=torch.float64)]
    err = program(noisy, mid, seed=3, unit_s=1e-3).read(10.0)[0] - 0.5
    assert float(err.std()) * 1e-3 == pytest.approx(noisy.prog_noise_s, rel=0.05)

    reads = program(get_device("reram", 0.0, G_MAX), mid, seed=3, unit_s=1e-3)
    r1, r2 = reads.read(10.0)[0], reads.read(10.0)[0]
    assert not torch.equal(r1, r2)                                        # read noise is per read
    assert float((r1 - r2).std()) == pytest.approx(math.sqrt(2) * 0.5 * 0.01, rel=0.05)
    assert float(r1.min()) >= 0.0
