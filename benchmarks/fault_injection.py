"""Fault injection: ngspice workers SIGKILLed during training and a Dask worker killed mid-batch.

* **pool**: a small ff-EBM (a ``Linear`` into an 8-8-10 energy block) trained on
  digits with the ngspice backend on local workers, once undisturbed and once
  with several workers SIGKILLed per epoch (``FFEBM_FAULT_DIR`` tokens, see
  ``ffebm_sim/backends/faults.py``); the final weights must be bit-identical;
  reports the restarts and the time lost.
* **dask**: one batch solved on a loopback ``LocalCluster`` of two workers,
  one of which is SIGKILLed on its first job; the answers must equal the
  in-process ones (Dask re-runs the lost tasks).
* **nonconvergence**: the same training with ngspice analyses made to report
  "no convergence" (``noconv-*`` tokens, see ``ffebm_sim/backends/faults.py``):
  the retries (homotopies, warm start) rescue every sample, nothing is skipped,
  and the final weights match the undisturbed run's to solver tolerance (a
  rescued sample is solved by ``op`` instead of its chunk's DC sweep, so not
  bit for bit).

Writes ``benchmarks/results/faults.{json,md}``. Usage (a few minutes; be kind to shared cores)::

    nice python benchmarks/fault_injection.py [--epochs 1] [--kills 3] [--workers 2] [--nonconverged 40]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ffebm_sim.backends.faults import FAULT_DIR_ENV  # noqa: E402
from ffebm_sim.bench import machine  # noqa: E402
from ffebm_sim.checkpoint import load_latest  # noqa: E402
from ffebm_sim.train import TrainConfig, train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MODEL = """
name = "faults"
input_size = 64
[loss]
kind = "cross_entropy"
logit_scale = 20.0
[[blocks]]
type = "Linear"
args = { in_features = 64, out_features = 8 }
[[blocks]]
type = "energy"
g_max = 1e-3
[blocks.circuit]
layers = [8, 8, 10]
input_gain = 4.0
nonlinearity = { kind = "double", diode = { is = 1e-12, n = 1.0 } }
conductances = { low = 0.0, high = 1e-4, seed = 3 }
"""


class _Count(logging.Handler):
    def __init__(self):
        super().__init__()
        self.n = 0

    def emit(self, record):
        if "ngspice worker died" in record.getMessage():
            self.n += 1


def _model_state(run: Path) -> dict:
    return load_latest(run / "checkpoints")[1]["model"]


def pool_part(tmp: Path, epochs: int, kills: int, workers: int) -> dict:
    spec = tmp / "faults.toml"
    spec.write_text(MODEL)
    cfg = dict(model=str(spec), epochs=epochs, batch_size=64, lr=1e-2, lr_analog=3e-2, seed=1, backend="ngspice",
               backend_options={"workers": workers})
    t0 = time.perf_counter()
    train(TrainConfig(out=str(tmp / "clean"), **cfg), log=lambda m: None)
    clean_s = time.perf_counter() - t0
    faults = tmp / "faults"
    faults.mkdir()
    # spread the kills over the run: a worker's 25th, 50th, ... job (per worker process, counters restart)
    for k in range(kills * epochs):
        (faults / f"at-{25 * (k % 4 + 1)}-{k}").touch()
    os.environ[FAULT_DIR_ENV] = str(faults)
    counter = _Count()
    logging.getLogger("ffebm_sim.pool").addHandler(counter)
    try:
        t0 = time.perf_counter()
        train(TrainConfig(out=str(tmp / "killed"), **cfg), log=lambda m: None)
        killed_s = time.perf_counter() - t0
    finally:
        del os.environ[FAULT_DIR_ENV]
        logging.getLogger("ffebm_sim.pool").removeHandler(counter)
    a, b = _model_state(tmp / "clean"), _model_state(tmp / "killed")
    identical = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fired = sum(1 for p in faults.iterdir() if p.name.startswith("fired-"))
    return {"epochs": epochs, "workers": workers, "kills_requested": kills * epochs, "kills": fired,
            "restarts": counter.n, "identical_weights": identical, "clean_seconds": round(clean_s, 2),
            "killed_seconds": round(killed_s, 2)}


def nonconvergence_part(tmp: Path, epochs: int, injected: int, workers: int) -> dict:
    spec = tmp / "faults.toml"
    spec.write_text(MODEL)
    cfg = dict(model=str(spec), epochs=epochs, batch_size=64, lr=1e-2, lr_analog=3e-2, seed=1, backend="ngspice",
               backend_options={"workers": workers})
    clean = train(TrainConfig(out=str(tmp / "nc_clean"), **cfg), log=lambda m: None)
    faults = tmp / "nc_faults"
    faults.mkdir()
    for k in range(injected):
        (faults / f"noconv-{k:04d}").touch()
    os.environ[FAULT_DIR_ENV] = str(faults)
    try:
        t0 = time.perf_counter()
        hit = train(TrainConfig(out=str(tmp / "nc_faults_run"), on_failure="stop", **cfg), log=lambda m: None)
        seconds = time.perf_counter() - t0
    finally:
        del os.environ[FAULT_DIR_ENV]
    a, b = _model_state(tmp / "nc_clean"), _model_state(tmp / "nc_faults_run")
    diff = max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-30)) for k in a)
    fired = sum(1 for p in faults.iterdir() if p.name.startswith("fired-"))
    return {"epochs": epochs, "workers": workers, "injected": injected, "fired": fired,
            "rescued": hit["solver_stats"]["rescued"], "skipped": hit["solver_stats"]["skipped"],
            "max_relative_weight_difference": diff, "clean_test_accuracy": clean["test_accuracy"],
            "test_accuracy": hit["test_accuracy"], "seconds": round(seconds, 2)}


def dask_part(tmp: Path) -> dict:
    try:
        import distributed
    except ImportError:
        return {"skipped": "distributed not installed"}
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_block, random_inputs
    from ffebm_sim.backends.dask_engine import DaskEngine
    from ffebm_sim.backends.ngspice import NgspiceBackend
    faults = tmp / "dask_faults"
    faults.mkdir()
    (faults / "once-0").touch()
    os.environ[FAULT_DIR_ENV] = str(faults)
    c = make_block((6, 5, 3), kind="double", seed=3, bias=True)
    u = random_inputs(c, 64, seed=1)
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                      dashboard_address=None, scheduler_port=0, worker_dashboard_address=None,
                                      silence_logs=50) as cluster:
            be = NgspiceBackend(reduced=True, method="op", scheduler=cluster.scheduler_address, chunk=8)
            be._engine = DaskEngine(cluster.scheduler_address, timeout_s=30, task_timeout_s=300)
            t0 = time.perf_counter()
            got = be.solve(c, u)
            seconds = time.perf_counter() - t0
            be.close()
    finally:
        del os.environ[FAULT_DIR_ENV]
    ref = NgspiceBackend(reduced=True, method="op", chunk=8).solve(c, u)
    fired = sum(1 for p in faults.iterdir() if p.name.startswith("fired-"))
    return {"samples": 64, "jobs": 8, "kills": fired, "ok": bool(got.ok),
            "identical": bool(torch.equal(got.node_voltages_v, ref.node_voltages_v)
                              and torch.equal(got.source_currents_a, ref.source_currents_a)),
            "seconds": round(seconds, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--kills", type=int, default=3, help="worker kills per epoch")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--nonconverged", type=int, default=40, help="ngspice analyses made to fail")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result = {"machine": machine(), "pool": pool_part(tmp, args.epochs, args.kills, args.workers),
                  "dask": dask_part(tmp),
                  "nonconvergence": nonconvergence_part(tmp, args.epochs, args.nonconverged, args.workers)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "faults.json").write_text(json.dumps(result, indent=1) + "\n")
    p, q, r = result["pool"], result["dask"], result["nonconvergence"]
    md = ["# Fault injection", "", f"Machine: {result['machine']}", "",
          "## Local pool: workers SIGKILLed during training (digits)", "",
          "| epochs | workers | kills | restarts | identical weights | clean s | with kills s |",
          "|---|---|---|---|---|---|---|",
          f"| {p['epochs']} | {p['workers']} | {p['kills']} | {p['restarts']} | {p['identical_weights']} | "
          f"{p['clean_seconds']} | {p['killed_seconds']} |", "",
          "## Dask: one worker SIGKILLed mid-batch (LocalCluster, 2 workers)", "",
          "```", json.dumps(q), "```", "",
          "## ngspice analyses that do not converge, during training (digits)", "",
          "| epochs | workers | failed analyses | samples rescued | skipped | max relative weight difference | "
          "test accuracy clean / with failures | s |",
          "|---|---|---|---|---|---|---|---|",
          f"| {r['epochs']} | {r['workers']} | {r['fired']} | {r['rescued']} | {r['skipped']} | "
          f"{r['max_relative_weight_difference']:.1e} | {r['clean_test_accuracy']:.4f} / {r['test_accuracy']:.4f} | "
          f"{r['seconds']} |", "",
          "A failed chunk sweep is solved again sample by sample with `op`; a failed `op` is retried with gmin "
          "stepping, then source stepping, then from the reference solver's answer (`.nodeset`).", ""]
    (RESULTS / "faults.md").write_text("\n".join(md))
    print(json.dumps(result, indent=1))
    return 0 if p["identical_weights"] and q.get("identical", True) and r["skipped"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
