"""Training on pulsed devices: ideal updates vs analog SGD, mixed precision, Tiki-Taka and SHD.

The digits ff-EBM flagship of 2026-11 (``benchmarks/results/specs/digits_ffebm_linear.toml``:
a digital Linear in front of each one-layer energy block) trained with EP on the
reference backend (the ngspice backend gives the same gradients; its training
path is exercised by ``tests/test_train_devices.py``). Digital blocks keep Adam
(the spec's lr); each energy block's conductances are updated by a device rule
(``ffebm train --device PRESET --update RULE``):

* ``ideal`` / ``sgd``: the symmetric 10000-state device, plain SGD as pulses
  (the "ideal updates" row);
* ``reram`` (asymmetric soft bounds, symmetry point at 60% of the range) with
  ``sgd``, ``mixed``, ``tiki-taka`` and ``shd``;
* controls (not tuned): Adam on the conductances (no device: the toolkit's
  default training) and ``reram`` with the conductances *frozen* (SGD at
  ``lr = 1e-9``: no pulse is ever sent) to show how much the digital blocks
  learn on their own.

Tuning, the same budget for every rule: ``TUNE_RUNS`` short runs
(``--tune-epochs``) over a fixed grid per rule (``GRID``: the rule's lr, and
for the two-array rules the coupling), choosing the setting with the lowest
final *training* loss (the test set is never used to choose). Then one full
run (``--epochs``) per rule and seed with the chosen setting.

Writes ``benchmarks/results/devices.{json,md}``::

    nice .venv/bin/python benchmarks/bench_devices.py [--epochs 10] [--tune-epochs 5] [--seeds 0] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
MODEL = ROOT / "benchmarks" / "results" / "specs" / "digits_ffebm_linear.toml"
LR_DIGITAL = 1e-2                   # the spec's Adam lr of the digital blocks
BATCH = 32

# (device, rule) -> tuning grid of (lr_analog, rule options); the same number of runs for every rule.
_LRS = [0.03, 0.1, 0.3, 1.0]
_TWO = [(lr, {"coupling": c}) for lr in (0.3, 1.0) for c in (0.01, 0.04)]
GRID = {
    ("ideal", "sgd"): [(lr, {}) for lr in _LRS],
    ("reram", "sgd"): [(lr, {}) for lr in _LRS],
    ("reram", "mixed"): [(lr, {}) for lr in _LRS],
    ("reram", "tiki-taka"): _TWO,
    ("reram", "shd"): _TWO,
}
TUNE_RUNS = 4
assert all(len(g) == TUNE_RUNS for g in GRID.values())
CONTROLS = {"adam (no device)": (None, None, 3e-2, {}), "reram, frozen": ("reram", "sgd", 1e-9, {})}


def _run(job: dict) -> dict:
    """One training run in a scratch directory; returns its summary and per-epoch metrics."""
    import torch
    torch.set_num_threads(1)
    from ffebm_sim.model import build_model
    from ffebm_sim.train import TrainConfig, train
    from ffebm_sim.checkpoint import load_latest
    out = Path(tempfile.mkdtemp(prefix="bench_devices_")) / "run"
    try:
        config = TrainConfig(model=str(MODEL), out=str(out), epochs=job["epochs"], batch_size=BATCH, lr=LR_DIGITAL,
                             lr_analog=job["lr"], seed=job["seed"], device=job["device"], update=job["update"],
                             update_options=job["options"])
        t0 = time.process_time()
        summary = train(config, log=lambda m: None)
        cpu = time.process_time() - t0
        metrics = json.loads((out / "metrics.json").read_text())
        _, state = load_latest(out / "checkpoints")
        model = build_model(MODEL)
        g0 = [b.circuit_for() for b in model.energy_blocks]
        model.load_state_dict(state["model"])
        frac = lambda circuits, blocks: float(sum(float(sum(c.sum() for c in ci.conductances)) for ci in circuits) /
                                              sum(b.g_max_s * sum(c.size for c in ci.conductances)
                                                  for ci, b in zip(circuits, blocks)))
        return {**job, "test_accuracy": summary["test_accuracy"], "train_accuracy": summary["train_accuracy"],
                "train_loss": summary["train_loss"], "test_loss": summary["test_loss"],
                "pulses": summary["pulses"], "fast_pulses": sum(m.get("fast_pulses", 0) for m in metrics),
                "capped": sum(m.get("capped", 0) for m in metrics),
                "pulses_per_epoch": [m.get("pulses") for m in metrics],
                "test_accuracy_per_epoch": [m["test_accuracy"] for m in metrics],
                "g_mean_fraction_start": frac(g0, model.energy_blocks),
                "g_mean_fraction_end": frac([b.circuit_for() for b in model.energy_blocks], model.energy_blocks),
                "cpu_seconds": cpu}
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def _map(jobs: list[dict], workers: int) -> list[dict]:
    if workers <= 1:
        return [_run(j) for j in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_run, jobs))


def _label(device, rule):
    return "adam (no device)" if device is None else f"{device} / {rule}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10, help="epochs of the final runs")
    ap.add_argument("--tune-epochs", type=int, default=5, help="epochs of the tuning runs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the final runs (tuning: seed 0)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (runs are independent)")
    args = ap.parse_args()
    from ffebm_sim.bench import machine
    info = machine()
    t_start = time.perf_counter()

    tune_jobs = [dict(device=d, update=r, lr=lr, options=o, seed=0, epochs=args.tune_epochs, phase="tune")
                 for (d, r), grid in GRID.items() for lr, o in grid]
    tuned = _map(tune_jobs, args.jobs)
    chosen = {}
    for key in GRID:
        runs = [t for t in tuned if (t["device"], t["update"]) == key]
        best = min(runs, key=lambda t: (t["train_loss"], t["lr"]))
        chosen[key] = (best["lr"], best["options"])
        print(f"tuned {_label(*key)}: " + ", ".join(f"lr {t['lr']:g} {t['options'] or ''} -> train loss "
                                                    f"{t['train_loss']:.4f}" for t in runs) +
              f"; chose lr {best['lr']:g} {best['options'] or ''}", flush=True)

    final_jobs = [dict(device=d, update=r, lr=chosen[(d, r)][0], options=chosen[(d, r)][1], seed=s,
                       epochs=args.epochs, phase="final", label=_label(d, r)) for (d, r) in GRID for s in args.seeds]
    final_jobs += [dict(device=d, update=r, lr=lr, options=o, seed=s, epochs=args.epochs, phase="control", label=name)
                   for name, (d, r, lr, o) in CONTROLS.items() for s in args.seeds]
    final = _map(final_jobs, args.jobs)
    cpu = sum(r["cpu_seconds"] for r in tuned + final)
    report = {"benchmark": "devices", "model": str(MODEL.relative_to(ROOT)), "data": "digits", "backend": "reference",
              "gradient": "ep", "batch_size": BATCH, "lr_digital_adam": LR_DIGITAL, "epochs": args.epochs,
              "tune_epochs": args.tune_epochs, "seeds": args.seeds, "selection": "lowest final training loss",
              "grid": {_label(*k): [[lr, o] for lr, o in g] for k, g in GRID.items()},
              "machine": info, "wall_seconds": time.perf_counter() - t_start, "cpu_seconds": cpu,
              "tuning": tuned, "final": final}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "devices.json").write_text(json.dumps(report, indent=1))
    (RESULTS / "devices.md").write_text(markdown(report))
    print(markdown(report))


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Training on pulsed devices (digits, EP, reference backend)",
        "",
        f"`{report['model']}`, {report['epochs']} epochs, batch {report['batch_size']}, cosine schedule; digital "
        f"blocks: Adam at {report['lr_digital_adam']:g}; conductances: the rule below, one per energy block, "
        "on devices of the preset scaled to the block's [g_min, g_max] = [0, 1 mS]. "
        f"Seeds {', '.join(map(str, report['seeds']))} (test accuracy: mean over seeds; 360 test images).",
        "",
        f"Tuning: {TUNE_RUNS} runs of {report['tune_epochs']} epochs per rule over a fixed grid "
        "(the rule's lr; for Tiki-Taka and SHD lr x coupling), chosen by the lowest final training loss. "
        "Controls are not tuned.",
        "",
        "| rule | lr_analog | options | test acc. (%) | train acc. (%) | pulses to weights (total) | "
        "fast-array pulses | mean G / g_max start -> end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    labels = list(dict.fromkeys(r["label"] for r in report["final"]))
    for label in labels:
        runs = [r for r in report["final"] if r["label"] == label]
        r0 = runs[0]
        opts = ", ".join(f"{k}={v:g}" for k, v in r0["options"].items()) or "-"
        pulses = "-" if r0["pulses"] is None else f"{_mean([r['pulses'] for r in runs]):.0f}"
        fast = "-" if r0["device"] is None else f"{_mean([r['fast_pulses'] for r in runs]):.0f}"
        test = 100 * _mean([r["test_accuracy"] for r in runs])
        train = 100 * _mean([r["train_accuracy"] for r in runs])
        g_end = _mean([r["g_mean_fraction_end"] for r in runs])
        lines.append(f"| {label} | {r0['lr']:g} | {opts} | {test:.2f} | {train:.2f} | {pulses} | {fast} | "
                     f"{r0['g_mean_fraction_start']:.3f} -> {g_end:.3f} |")
    lines += ["", "Tuning runs (final training loss / test accuracy after the tuning epochs):", "",
              "| rule | lr_analog | options | train loss | train acc. (%) | test acc. (%) | pulses |",
              "|---|---|---|---|---|---|---|"]
    for t in report["tuning"]:
        opts = ", ".join(f"{k}={v:g}" for k, v in t["options"].items()) or "-"
        lines.append(f"| {_label(t['device'], t['update'])} | {t['lr']:g} | {opts} | {t['train_loss']:.4f} | "
                     f"{100 * t['train_accuracy']:.2f} | {100 * t['test_accuracy']:.2f} | {t['pulses']} |")
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB, torch {m['torch']}, "
                  f"python {m['python']}, {m['platform']}; load average at start {m['loadavg_start']} "
                  "(shared machine). "
                  f"CPU time {report['cpu_seconds']:.0f} s, wall {report['wall_seconds']:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
