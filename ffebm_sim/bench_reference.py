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

import json
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


def mnist_epoch_s(solver: str | None, seed: int = 0) -> dict:
    """One mnist-5k training epoch of ``circuits/drn_mnist.toml`` on the reference (``solver``):
    the training loop of ``ffebm train`` (:meth:`ffebm_sim.train.Run.train_batches`), the spec's
    batch size and learning rates, without the test-set evaluation and checkpoint."""
    import tempfile
    from .backends.reference import ReferenceBackend
    from .data import load_dataset
    from .train import Run, TrainConfig, config_with_spec_defaults
    data = load_dataset("mnist-5k")
    with tempfile.TemporaryDirectory() as tmp:
        config = config_with_spec_defaults(TrainConfig(model=str(DRN_MNIST), out=str(Path(tmp) / "run"),
                                                       data="mnist-5k", epochs=1, seed=seed), set()).validate()
        backend = ReferenceBackend() if solver is None else ReferenceBackend(solver=solver)
        run = Run.create(config, data, backend, log=lambda msg: None)
        t = time.perf_counter()
        tally = run.train_batches(1)
        seconds = time.perf_counter() - t
    return {"seconds": seconds, "samples": len(data.x_train), "batch_size": config.batch_size,
            "train_accuracy": tally.correct / len(data.x_train)}


#: Run in another source tree (``baseline``): the same figures from that tree's own reference.
_BASELINE = r"""
import json, statistics, sys, time, numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
import ffebm_sim
print("tree", ffebm_sim.__file__, file=sys.stderr)
from bench_reference_new import FASTDRN_NETWORKS, BATCH, fastdrn_circuit, fastdrn_inputs, DRN_MNIST, SMALL
from ffebm_sim.backends.reference import ReferenceBackend
from ffebm_sim.ep import ep_gradients
from ffebm_sim.model import build_model
from ffebm_sim.spec import load_block
rounds = int(sys.argv[2])
b = ReferenceBackend()
out = {"fastdrn": {}, "ep": {}}
for name, n0, n1, v_off in FASTDRN_NETWORKS:
    for kind in ("ideal", "double"):
        c, u = fastdrn_circuit(n0, n1, v_off, kind), fastdrn_inputs(n0)
        b.solve(c, u)
        ts = []
        for _ in range(rounds):
            t = time.perf_counter(); b.solve(c, u); ts.append(time.perf_counter() - t)
        out["fastdrn"][name + " " + kind] = 1e6 * statistics.median(ts) / len(u)
for name, c in (("block_small", load_block(SMALL)),
                ("drn_mnist_e1", build_model(DRN_MNIST, backend="reference").energy_blocks[0].circuit)):
    rng = np.random.default_rng(3)
    u = torch.from_numpy(rng.uniform(0 if c.n_inputs > 100 else -1, 1, (BATCH, c.n_inputs)))
    delta = torch.from_numpy(rng.normal(0, 1, (BATCH, c.n_outputs)))
    def ep():
        ep_gradients(c, b, u, b.solve(c, u), delta)
    ep()
    ts = []
    for _ in range(rounds):
        t = time.perf_counter(); ep(); ts.append(time.perf_counter() - t)
    out["ep"][name] = 1e6 * statistics.median(ts) / BATCH
if sys.argv[3] == "1":
    from bench_reference_new import mnist_epoch_s
    out["mnist_epoch_s"] = mnist_epoch_s(None)["seconds"]
print(json.dumps(out))
"""


def baseline(tree: str | Path, rounds: int = 5, epoch: bool = True) -> dict:
    """The same figures from the reference solver of another source tree (e.g. ``git archive`` of the
    commit before the layered solver), in a subprocess: this module's network builders, that tree's
    ``ffebm_sim``."""
    import subprocess
    import sys
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        src = (Path(__file__).read_text().replace("from .", "from ffebm_sim.")
               .replace("ROOT = Path(__file__).resolve().parent.parent", f"ROOT = Path({str(ROOT)!r})"))
        (Path(tmp) / "bench_reference_new.py").write_text(src)
        env = {**__import__("os").environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
        # cwd: the temporary directory, so that no ffebm_sim but the tree's is importable
        r = subprocess.run([sys.executable, "-c", _BASELINE, tmp, str(rounds), "1" if epoch else "0"],
                           capture_output=True, text=True, env=env, timeout=3600, cwd=tmp)
    if r.returncode:
        raise RuntimeError(f"baseline tree {tree}: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_reference(quick: bool = False, log=lambda msg: None, baseline_tree: str | None = None) -> dict:
    """Every figure of the module docstring, old (dense) and new (layered) side by side; with
    ``baseline_tree`` also that tree's own reference (measured in the same run, right after)."""
    torch.set_num_threads(1)
    out = {"batch": BATCH, "threads": 1, "dtype": "float64",
           "fastdrn": fastdrn_table(3 if quick else 7, log), "ep": ep_sample_times(3 if quick else 5, log)}
    log("mnist-5k epoch, layered then dense")
    out["mnist_epoch"] = {s: mnist_epoch_s(s) for s in ("layered",) + (() if quick else ("dense",))}
    if baseline_tree:
        log(f"the same in {baseline_tree}")
        out["baseline"] = {"tree": str(baseline_tree), **baseline(baseline_tree, 3 if quick else 5, not quick)}
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
    lines += ["", "mnist-5k epoch of `circuits/drn_mnist.toml` on the reference (training loop only): "
              + ", ".join(f"{s} {v['seconds']:.1f} s" for s, v in ep.items()), ""]
    base = report.get("baseline")
    if base:
        lines += [f"The reference of `{base['tree']}`, same run:", "",
                  "| figure | us per sample |", "|---|---|"]
        lines += [f"| free equilibrium, {k} | {v:.1f} |" for k, v in base["fastdrn"].items()]
        lines += [f"| EP sample, {k} | {v:.0f} |" for k, v in base["ep"].items()]
        if "mnist_epoch_s" in base:
            lines.append(f"| mnist-5k epoch (s) | {base['mnist_epoch_s']:.1f} |")
        lines.append("")
    return lines


