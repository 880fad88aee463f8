"""Fast-DRN side by side with the reference, on the networks of ffebm_sim/bench_reference.py.

    python benchmarks/fastdrn_side_by_side.py DIR

DIR: a checkout of rain-neuromorphics/energy-based-learning (Scellier 2024's Fast-DRN), used
unmodified and not part of this repository; run from outside the repository's directory.
Same conductances and inputs, batch 128, float64, one thread, the two interleaved in each
round (median of 15). Fast-DRN's hidden units are its own half-wave ideal diodes at 0 V
(half clamp above, half below), so its clip fraction is its own; its sweep count is the
fewest that reach 1e-9 V of its 200-sweep answer. Prints one JSON line per network.
"""
import json
import statistics
import sys
import time

sys.path.insert(0, sys.argv[1])
import torch  # noqa: E402
torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
from model.resistive.network import DeepResistiveEnergy
from model.function.network import Network
from model.resistive.minimizer import QuadraticMinimizer
from ffebm_sim.bench_reference import FASTDRN_NETWORKS, fastdrn_circuit, fastdrn_inputs
from ffebm_sim.backends.reference import ReferenceBackend

rows = []
for name, n0, n1, v_off in FASTDRN_NETWORKS:
    if "unclipped" in name:
        continue   # Fast-DRN's half-wave clamps at 0 V have no unclipped setting (its clip fraction is its own)
    c = fastdrn_circuit(n0, n1, v_off, "ideal")
    u = fastdrn_inputs(n0)
    fn = DeepResistiveEnergy([(2 * n0,), (n1,), (10,)], [1.0, 1.0], 1.0)
    params = fn.params()      # biases[1:] then weights
    for p in params:
        if p._state.dim() == 1:
            p._state = torch.zeros(p._state.shape, dtype=torch.float64)
    weights = [p for p in params if p._state.dim() == 2]
    for p, g in zip(weights, c.conductances):
        p._state = torch.tensor(g, dtype=torch.float64)
    net = Network(fn)
    mini = QuadraticMinimizer(fn, net.free_layers())
    mini.mode = "asynchronous"
    def solve(k):
        net.set_input(u, reset=True)
        mini.num_iterations = k
        mini.compute_equilibrium()
        return torch.cat([l.state for l in net.free_layers()], 1)
    ref = solve(200)
    need = next(k for k in range(1, 200) if float((solve(k) - ref).abs().max()) <= 1e-9)
    clipped = float((ref[:, :n1] == 0).double().mean())
    ours = ReferenceBackend()
    ours.solve(c, u)
    cd = fastdrn_circuit(n0, n1, v_off, "double")
    ours.solve(cd, u)
    ts = {"fastdrn": [], "reference_ideal": [], "reference_double": []}
    for _ in range(15):
        t = time.perf_counter(); solve(need); ts["fastdrn"].append(time.perf_counter() - t)
        t = time.perf_counter(); ours.solve(c, u); ts["reference_ideal"].append(time.perf_counter() - t)
        t = time.perf_counter(); ours.solve(cd, u); ts["reference_double"].append(time.perf_counter() - t)
    row = {"network": name, "fastdrn_sweeps_to_1e-9_V": need, "fastdrn_clip_fraction": clipped,
           **{k + "_us": 1e6 * statistics.median(v) / len(u) for k, v in ts.items()}}
    rows.append(row)
    print(json.dumps(row), flush=True)
