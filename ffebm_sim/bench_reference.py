"""The reference solver's speed: the layered solver against the dense Newton it replaced.

Measurements, not tests (``ffebm bench solvers`` calls :func:`run_reference`; the
result is the ``reference_solver`` entry of its report). One torch thread,
float64, batch 128, median of interleaved rounds (the old and the new solver
alternate inside every round, so machine load hits both alike).

**The Fast-DRN networks** (Scellier 2024's job, :func:`fastdrn_circuit`): layers
``[n0, n1, 10]``, every input driving ``+u`` and ``-u`` (input gain 1 V per
unit), inputs ``u ~ U(0, 1)`` (``numpy.random.default_rng(1)``), conductances of
both crossbars ``G ~ U(0, 1e-4) S`` (``default_rng(0)``: ``G_1`` ``(2 n0, n1)``
first, then ``G_2`` ``(n1, 10)``), a linear output layer, the hidden layer
clamped to ``[-v_off, v_off]``:

* ``ideal``: the hard clip (ideal diodes);
* ``double``: Shockley diodes to the rails ``+-v_off`` (``IS = 1e-8 A``, ``N = 1``,
  GMIN ``1e-12 S``: the block_small junction).

``v_off`` sets how many hidden nodes clip: 0.045 V on ``64x2-32-10``, 0.0105 V on
``784x2-100-10``, 1 V (nothing clips) on the third. The clip fraction reported is
the share of (sample, hidden node) pairs at a bound in the ``ideal`` solution.
Timed: one free equilibrium of the batch to the solver's convergence test
(``|r_i| <= 1e-15 A + 1e-12 * sum |currents at i|``: far below 1e-9 V).

**EP samples**: free equilibrium plus the two nudged ones (``ep_gradients``, current
nudge, ``delta ~ N(0, 1)``) per sample at batch 128 on ``circuits/block_small.toml``
and on the block of ``circuits/drn_mnist.toml`` (``[784, 100, 10]``). **Epoch**: one
mnist-5k training epoch of ``circuits/drn_mnist.toml`` with the reference (4000
images, batches of 32 as the spec says), old and new solver.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "circuits" / "block_small.toml"
DRN_MNIST = ROOT / "circuits" / "drn_mnist.toml"
BATCH = 128
#: (name, n0, n1, v_off): the three networks of the issue's table.
FASTDRN_NETWORKS = (("64x2-32-10", 64, 32, 0.045), ("784x2-100-10", 784, 100, 0.0105),
                    ("784x2-100-10 unclipped", 784, 100, 1.0))
#: Fast-DRN's figures (us per sample, one free equilibrium to 1e-9 V), from the issue.
FASTDRN_US = {"64x2-32-10": "14-16", "784x2-100-10": "46-58", "784x2-100-10 unclipped": "61-83"}


def fastdrn_circuit(n0: int, n1: int, v_off: float, kind: str = "ideal"):
    """The network of the module docstring (``kind``: ``ideal`` or ``double``)."""
    from .circuit import BlockCircuit, Nonlinearity
    from .devices import DiodeModel
    rng = np.random.default_rng(0)
    gs = (rng.uniform(0, 1e-4, (2 * n0, n1)), rng.uniform(0, 1e-4, (n1, 10)))
    nl = Nonlinearity(kind, v_off, None if kind == "ideal" else DiodeModel(1e-8, 1.0))
    return BlockCircuit((n0, n1, 10), gs, (nl,), None, 1.0, name=f"fastdrn_{n0}_{n1}_{kind}")


def fastdrn_inputs(n0: int, batch: int = BATCH) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).uniform(0, 1, (batch, n0)))


def _interleaved(calls: dict, rounds: int) -> dict:
    """Median seconds of every call over ``rounds`` rounds, the calls alternating in each round."""
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            t = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _solvers():
    from .backends.reference import ReferenceBackend
    return {"dense": ReferenceBackend(solver="dense"), "layered": ReferenceBackend()}


def fastdrn_table(rounds: int = 7, log=lambda msg: None) -> list[dict]:
    """Per network: the clip fraction and us per sample of one free equilibrium, per mode and solver."""
    solvers = _solvers()
    rows = []
    for name, n0, n1, v_off in FASTDRN_NETWORKS:
        log(f"reference: {name}")
        u = fastdrn_inputs(n0)
        row = {"network": name, "v_off_v": v_off, "fastdrn_us": FASTDRN_US[name]}
        for kind in ("ideal", "double"):
            c = fastdrn_circuit(n0, n1, v_off, kind)
            eqs = {s: b.solve(c, u) for s, b in solvers.items()}           # warm-up, and the agreement
            if not all(eq.ok for eq in eqs.values()):
                raise RuntimeError(f"benchmark: {name} {kind} did not converge")
            row[f"{kind}_max_abs_dv_volts"] = float((eqs["dense"].node_voltages_v
                                                     - eqs["layered"].node_voltages_v).abs().max())
            row[f"{kind}_iterations"] = {s: eq.iterations for s, eq in eqs.items()}
            if kind == "ideal":
                x1 = eqs["layered"].node_voltages_v[:, :n1]
                row["clip_fraction"] = float((x1.abs() >= v_off * (1 - 1e-12)).double().mean())
            med = _interleaved({s: (lambda b=b: b.solve(c, u)) for s, b in solvers.items()}, rounds)
            for s, t in med.items():
                row[f"{kind}_{s}_us"] = 1e6 * t / len(u)
        rows.append(row)
    return rows


def ep_sample_times(rounds: int = 5, log=lambda msg: None) -> list[dict]:
    """Seconds per EP sample (free + two nudged phases) at batch 128, old and new solver."""
    from .ep import ep_gradients
    from .model import build_model
    from .spec import load_block
    blocks = {"block_small": load_block(SMALL),
              "drn_mnist_e1": build_model(DRN_MNIST, backend="reference").energy_blocks[0].circuit}
    rows = []
    for name, c in blocks.items():
        log(f"reference EP: {name}")
        rng = np.random.default_rng(3)
        u = torch.from_numpy(rng.uniform(0 if c.n_inputs > 100 else -1, 1, (BATCH, c.n_inputs)))
        delta = torch.from_numpy(rng.normal(0, 1, (BATCH, c.n_outputs)))

        def ep(backend):
            free = backend.solve(c, u)
            if not free.ok:
                raise RuntimeError(f"benchmark: {name} free phase failed: {free.messages[0]}")
            return ep_gradients(c, backend, u, free, delta)
        solvers = _solvers()
        grads = {s: ep(b) for s, b in solvers.items()}
        rel = max(float((a - b).abs().max() / max(float(b.abs().max()), 1e-300))
                  for a, b in zip(grads["layered"].conductances, grads["dense"].conductances))
        med = _interleaved({s: (lambda b=b: ep(b)) for s, b in solvers.items()}, rounds)
        rows.append({"block": name, "layers": list(c.layer_sizes),
                     **{f"{s}_ep_us": 1e6 * t / BATCH for s, t in med.items()},
                     "speedup": med["dense"] / med["layered"], "gradient_max_rel_difference": rel})
    return rows


def mnist_epoch_s(solver: str, seed: int = 0) -> dict:
    """One mnist-5k training epoch of ``circuits/drn_mnist.toml`` on the reference (``solver``)."""
    from .backends.reference import ReferenceBackend
    from .data import load_dataset
    from .model import build_model
    from .spec import read_toml
    data = load_dataset("mnist-5k")
    batch = int(read_toml(DRN_MNIST)["training"]["batch_size"])
    model = build_model(DRN_MNIST, backend=ReferenceBackend(solver=solver), seed=seed)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    n = len(data.x_train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    t = time.perf_counter()
    correct = 0
    for s in range(0, n, batch):
        idx = perm[s:s + batch]
        optimizer.zero_grad(set_to_none=True)
        loss, pred = model.loss(data.x_train[idx], data.y_train[idx])
        loss.backward()
        optimizer.step()
        model.project()
        correct += int((pred == data.y_train[idx]).sum())
    return {"seconds": time.perf_counter() - t, "samples": n, "train_accuracy": correct / n}


def run_reference(quick: bool = False, log=lambda msg: None) -> dict:
    """Every figure of the module docstring, old (dense) and new (layered) side by side."""
    torch.set_num_threads(1)
    out = {"batch": BATCH, "threads": 1, "dtype": "float64",
           "fastdrn": fastdrn_table(3 if quick else 7, log), "ep": ep_sample_times(3 if quick else 5, log)}
    log("mnist-5k epoch, layered then dense")
    out["mnist_epoch"] = {s: mnist_epoch_s(s) for s in ("layered",) + (() if quick else ("dense",))}
    return out


def markdown(report: dict) -> list[str]:
    """The reference section of the solver benchmark's Markdown."""
    lines = ["## The reference solver (layered vs dense Newton)", "",
             "One free equilibrium, us per sample, batch 128, float64, 1 thread (median of interleaved rounds); "
             "networks as in `ffebm_sim/bench_reference.py`.", "",
             "| network | hidden clipped | Fast-DRN (issue) | ideal, layered | ideal, dense | double, layered | double, dense |",
             "|---|---|---|---|---|---|---|"]
    for r in report["fastdrn"]:
        lines.append(f"| {r['network']} | {100 * r['clip_fraction']:.1f} % | {r['fastdrn_us']} | {r['ideal_layered_us']:.1f} | "
                     f"{r['ideal_dense_us']:.1f} | {r['double_layered_us']:.1f} | {r['double_dense_us']:.1f} |")
    lines += ["", "| block | EP sample, layered (us) | dense (us) | speedup |", "|---|---|---|---|"]
    for r in report["ep"]:
        lines.append(f"| {r['block']} {r['layers']} | {r['layered_ep_us']:.0f} | {r['dense_ep_us']:.0f} | {r['speedup']:.1f}x |")
    ep = report["mnist_epoch"]
    lines += ["", "mnist-5k epoch of `circuits/drn_mnist.toml` on the reference: "
              + ", ".join(f"{s} {v['seconds']:.1f} s" for s, v in ep.items()), ""]
    return lines


if __name__ == "__main__":                 # pragma: no cover - python -m ffebm_sim.bench_reference
    import json
    import sys
    rep = run_reference("--quick" in sys.argv, log=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True))
    print(json.dumps(rep, indent=1))
    print("\n".join(markdown(rep)), file=sys.stderr)
