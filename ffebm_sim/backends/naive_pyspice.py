"""The baseline of the solver benchmark: a block solved the way a PySpice user writes it.

Per solve (one sample, one phase): a new PySpice ``Circuit`` built element by
element (the physical circuit: sources, resistors, double-diode clamps, nudge
current sources), then ``circuit.simulator().operating_point()``. Only for the
``double`` and ``single`` nonlinearities (the benchmark blocks). Not a backend:
``ffebm bench solvers`` times it against :class:`.ngspice.NgspiceBackend`.

PySpice's shared simulator is the same libngspice instance as this process's
:func:`.ngspice.session` (PySpice keeps one per process): run the baseline in
its own process (the benchmark does), not beside a live session.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from ..circuit import (BlockCircuit, free_node_names, node_name, rail_potentials, source_names, source_node_names,
                       source_voltages)
from ..netlist import SOLVER_OPTIONS
from .session import library_path


def naive_solve(circuit: BlockCircuit, u: np.ndarray, nudge_currents_a: np.ndarray | None = None) -> np.ndarray:
    """Free-node voltages (V) of one sample ``u`` (n_0,), a fresh PySpice circuit and simulator per call."""
    logging.getLogger("PySpice").setLevel(logging.CRITICAL)
    os.environ.setdefault("NGSPICE_LIBRARY_PATH", library_path())
    from PySpice.Spice.Netlist import Circuit

    c = circuit.as_emitted()
    if c.has_amplifiers:
        raise ValueError("naive PySpice baseline: amplifiers between layers are not supported (the benchmark blocks have none)")
    sizes, m, n0 = c.layer_sizes, c.depth, c.n_inputs
    v_src = source_voltages(c, np.asarray(u, dtype=np.float64))
    net = Circuit(c.name)
    for name, node, v in zip(source_names(n0), source_node_names(n0), v_src):
        net.V(name[1:], node, net.gnd, float(v))
    g1 = np.asarray(c.conductances[0])
    for s, src in enumerate(source_node_names(n0)):
        for j in range(sizes[1]):
            if g1[s, j] > 0:
                net.R(f"1_{src}_{j}", src, node_name(1, j), float(1.0 / g1[s, j]))
    for k in range(2, m + 1):
        g = np.asarray(c.conductances[k - 1])
        for i in range(sizes[k - 1]):
            for j in range(sizes[k]):
                if g[i, j] > 0:
                    net.R(f"{k}_{i}_{j}", node_name(k - 1, i), node_name(k, j), float(1.0 / g[i, j]))
    if c.has_bias:
        rails = rail_potentials(c)
        net.V("bp", "vbp", net.gnd, rails["vbp"])
        net.V("bm", "vbm", net.gnd, rails["vbm"])
        for k in range(1, m + 1):
            for rail, gs in (("vbp", c.bias_pos[k - 1]), ("vbm", c.bias_neg[k - 1])):
                for j, g in enumerate(gs):
                    if g > 0:
                        net.R(f"b{k}_{rail[-1]}{j}", node_name(k, j), rail, float(1.0 / g))
    models = {}
    for k in range(1, m + 1):
        nl = c.layer_nonlinearity(k)
        if nl is None:
            continue
        if nl.kind not in ("double", "single"):
            raise ValueError(f"naive PySpice baseline: nonlinearity {nl.kind!r} not supported (double, single)")
        d = nl.emitted_diode
        key = (d.saturation_current_a, d.emission_coefficient)
        if key not in models:
            models[key] = f"dclamp{len(models)}"
            net.model(models[key], "D", IS=key[0], N=key[1])
        net.V(f"hi{k}", f"vhi{k}", net.gnd, nl.v_off_v)
        net.V(f"lo{k}", f"vlo{k}", net.gnd, -nl.v_off_v)
        up, down = nl.clamps_up(sizes[k]), nl.clamps_down(sizes[k])
        for j in range(sizes[k]):
            if up[j]:
                net.D(f"up{k}_{j}", node_name(k, j), f"vhi{k}", model=models[key])
            if down[j]:
                net.D(f"dn{k}_{j}", f"vlo{k}", node_name(k, j), model=models[key])
    i_n = np.zeros(sizes[-1]) if nudge_currents_a is None else nudge_currents_a
    for j in range(sizes[-1]):
        net.I(f"nudge{j}", net.gnd, node_name(m, j), float(i_n[j]))
    simulator = net.simulator(temperature=27, nominal_temperature=27)
    options = dict(kv.split("=") for kv in SOLVER_OPTIONS.split())
    simulator.options(**{k: float(v) for k, v in options.items()}, gmin=c.gmin_s)
    analysis = simulator.operating_point()
    return np.array([float(np.asarray(analysis.nodes[name])[0]) for name in free_node_names(c)])
