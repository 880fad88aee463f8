"""The bidirectional amplifier between two layers of an energy block: its law, once.

The two-port of Kendall et al. 2020 (arXiv 2006.01981), after node ``j`` of
layer ``k`` with voltage gain ``A`` (V/V):

* **forward, a VCVS**: its output node ``a = a<k>_<j>`` sits at ``v(a) = A * x``
  (``x = v(n<k>_<j>)``) and drives crossbar ``k+1`` instead of ``x``; it delivers
  the current ``i_out = sum_l G_{k+1}[j, l] * (A*x - x_{k+1,l})`` into that crossbar;
* **backward, a CCCS**: it draws ``i_in = i_out / A`` out of node ``x`` (to ground).

With ``A = 1`` it is a plain wire (``i_in = i_out``). The amplifier is active:
it takes ``x * i_in`` from its input and delivers ``A*x * i_out`` at its output,
a power gain ``A**2``, so it can undo the attenuation of resistive layers; a
real amplifier draws the difference from its supply (:func:`supply_power_w`).

Its KCL is not symmetric (``dr_k/dx_{k+1} = -G/A``, ``dr_{k+1}/dx_k = -A*G``)
but becomes so when layer ``k+1``'s rows are scaled by ``1/A**2`` relative to
layer ``k``'s: the equilibrium is the minimum of ``E_w = sum_d w_d * E_d``, each
domain's co-content weighted by ``w_d = prod 1/A**2`` over the amplifiers
upstream (``BlockCircuit.domain_weights``). docs/amplifier.md derives it and
what it means for EP.

Functions work on numpy arrays and torch tensors alike.
"""

from __future__ import annotations

import numpy as np

from .circuit import BlockCircuit


def drive_voltage(x, gain: float):
    """The VCVS output ``v(a) = A * x`` (V): what crossbar k+1 sees from node x."""
    return gain * x


def back_current(i_out, gain: float):
    """The CCCS current ``i_in = i_out / A`` (A) drawn out of the input node."""
    return i_out / gain


def port_quantities(circuit: BlockCircuit, x):
    """Per amplified layer k, ``(k, v_in, i_in, v_out, i_out)``, each ``(B, n_k)``.

    ``x``: ``(B, n_free)`` free-node voltages (V). ``v_in`` is the input node's voltage,
    ``i_in`` the current the CCCS draws out of it, ``v_out = A*v_in`` the output node's
    voltage and ``i_out`` the current the VCVS delivers into crossbar k+1 (all A, V).
    Uses the hardware's conductances (mismatch included), as the deck does.
    """
    actual = circuit.actual_conductances()
    out = []
    for k in circuit.amplified_layers():
        gain = circuit.amplifier_gain(k)
        v_in = x[:, circuit.layer_slice(k)]
        nxt = x[:, circuit.layer_slice(k + 1)]
        g = actual[k]
        if not isinstance(x, np.ndarray):
            import torch          # only for tensors: this module stays free of torch otherwise
            g = torch.as_tensor(g, dtype=x.dtype)
        v_out = drive_voltage(v_in, gain)
        i_out = v_out * g.sum(1) - nxt @ g.T
        out.append((k, v_in, back_current(i_out, gain), v_out, i_out))
    return out


def supply_power_w(circuit: BlockCircuit, x):
    """``(B,)`` power (W) the ideal amplifiers draw from their supplies:
    ``sum over ports of (v_out*i_out - v_in*i_in) = sum x*i_out*(A - 1/A)``.

    An ideal controlled source delivers ``v_out*i_out`` into crossbar k+1 and absorbs
    ``v_in*i_in`` from layer k; the difference comes from the supply. It can be
    negative for a sample (the ideal source then returns power); a real amplifier's
    quiescent and class losses come on top (docs/amplifier.md).
    """
    total = 0.0
    for _, v_in, i_in, v_out, i_out in port_quantities(circuit, x):
        total = total + (v_out * i_out - v_in * i_in).sum(1)
    return total
