"""Does the analog part learn? Trained vs frozen conductances vs digital twin, and the paper's splitting result.

Writes ``benchmarks/results/training.{json,md}`` (results merge across runs, so
models and parts can be measured separately):

* **ablations** (per model: the two flagships and the two fully analog DRNs):
  EP with ngspice in the loop, EP with the torch reference (the two
  trajectories are compared epoch by epoch), the same model with its
  conductances frozen at their initial values (``--freeze-analog``), and a
  digital-only twin of the same shape (every resistive layer a ``Linear``,
  clamped layers followed by ``Hardtanh``) trained by backprop. Each row records
  its trainable analog and digital parameter counts.
* **splitting**: one deep resistive network (four hidden layers between the 64
  pixels and the 10 classes) trained as 1, 2 or 4 energy blocks with digital
  ``BatchNorm1d`` glue between blocks (a per-node gain and offset, what an
  ADC/DAC stage does), widths chosen so every split has the same conductance
  count within 3 % (each block's inputs are differential pairs of sources, so a
  block boundary doubles the next crossbar's rows).

Usage::

    python benchmarks/bench_training.py --part ablations --model digits_ffebm [--epochs E]
    python benchmarks/bench_training.py --part splitting [--epochs E] [--ngspice-blocks 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ffebm_sim.bench import machine  # noqa: E402
from ffebm_sim.model import build_model, parameter_counts  # noqa: E402
from ffebm_sim.spec import read_toml  # noqa: E402
from ffebm_sim.train import TrainConfig, train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SPECS = RESULTS / "specs"
#: model name -> (spec, data set): the flagships and the fully analog DRNs
MODELS = {"digits_ffebm": (ROOT / "circuits" / "digits_ffebm.toml", "digits"),
          "mnist_ffebm": (ROOT / "circuits" / "mnist_ffebm.toml", "mnist-5k"),
          "drn_digits": (ROOT / "circuits" / "drn_digits.toml", "digits"),
          "drn_mnist": (ROOT / "circuits" / "drn_mnist.toml", "mnist-5k")}
#: the splitting plans: number of energy blocks -> hidden width (conductance counts 7488, 7366, 7644)
SPLIT_WIDTHS = {1: 32, 2: 29, 4: 26}


def _toml(value) -> str:
    """Minimal TOML writer for the spec dicts used here (tables, arrays, scalars)."""
    lines: list[str] = []

    def scalar(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {scalar(x)}" for k, x in v.items()) + " }"
        return repr(v)

    for k, v in value.items():
        if not isinstance(v, (dict, list)) or (isinstance(v, list) and not (v and isinstance(v[0], dict))):
            lines.append(f"{k} = {scalar(v)}")
    for k, v in value.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines += [f"{kk} = {scalar(vv)}" for kk, vv in v.items()]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines.append(f"\n[[{k}]]")
                lines += [f"{kk} = {scalar(vv)}" for kk, vv in item.items()]
    return "\n".join(lines) + "\n"


def digital_twin(spec: dict) -> dict:
    """The same shape with every resistive layer a Linear (+ Hardtanh where clamped)."""
    out = copy.deepcopy(spec)
    blocks = []
    last_energy = max(i for i, b in enumerate(spec["blocks"]) if b["type"] == "energy")
    for i, b in enumerate(spec["blocks"]):
        if b["type"] != "energy":
            blocks.append(b)
            continue
        c = b["circuit"]
        sizes = c["layers"]
        for k in range(1, len(sizes)):
            blocks.append({"type": "Linear", "args": {"in_features": sizes[k - 1], "out_features": sizes[k]}})
            last = k == len(sizes) - 1
            # the network's final layer gives logits: no clamp there (the ff-EBM scales its
            # clamped output voltages by logit_scale instead)
            if (not last or c.get("output", "linear") == "clamped") and not (last and i == last_energy):
                blocks.append({"type": "Hardtanh"})
    out["blocks"] = blocks
    out["name"] = spec.get("name", "model") + "_digital"
    out["loss"] = {**spec.get("loss", {}), "logit_scale": 1.0}
    return out


def split_plan(n_blocks: int, width: int, n_in: int = 64, n_out: int = 10) -> list[list[int]]:
    """Four hidden resistive layers between ``n_in`` inputs and ``n_out`` classes, cut into blocks."""
    w = width
    return {1: [[n_in, w, w, w, w, n_out]],
            2: [[n_in, w, w], [w, w, w, n_out]],
            4: [[n_in, w], [w, w], [w, w], [w, w, n_out]]}[n_blocks]


def conductance_count(plan: list[list[int]]) -> int:
    """Conductances of a chain of energy blocks: each block's inputs are differential pairs (2 sources each)."""
    return sum(2 * s[0] * s[1] + sum(a * b for a, b in zip(s[1:], s[2:])) for s in plan)


def split_spec(base: dict, n_blocks: int, amplifier_gain: float | None = None) -> dict:
    """The deep network as ``n_blocks`` energy blocks with BatchNorm1d glue, from the digits flagship's
    first energy block (nonlinearity, conductance range, beta); the first block takes the pixels at its
    input gain, later ones the normalised signals at 1 V per unit."""
    template = next(b for b in base["blocks"] if b["type"] == "energy")
    plan = split_plan(n_blocks, SPLIT_WIDTHS[n_blocks])
    blocks = []
    for k, sizes in enumerate(plan):
        last = k == len(plan) - 1
        if k:
            blocks.append({"type": "BatchNorm1d", "args": {"num_features": sizes[0]}})
        b = copy.deepcopy(template)
        b["output_gain"] = 1.0 if last else template.get("output_gain", 1.0)
        c = {**copy.deepcopy(template["circuit"]), "layers": sizes, "output": "clamped", "name": f"split{n_blocks}_e{k + 1}"}
        c["input_gain"] = template["circuit"]["input_gain"] if k == 0 else 1.0
        c["conductances"] = {**c["conductances"], "seed": 100 + 10 * n_blocks + k}
        if amplifier_gain is not None and len(sizes) > 2:
            c["amplifier_gain"] = [amplifier_gain] * (len(sizes) - 2)
        b["circuit"] = c
        blocks.append(b)
    suffix = f"_amp{amplifier_gain:g}" if amplifier_gain is not None else ""
    return {**{k: v for k, v in base.items() if k != "blocks"}, "name": f"split{n_blocks}{suffix}", "blocks": blocks}


def _epochs(run_dir: Path) -> list[dict]:
    """Per-epoch test accuracy and train loss from a run's metrics.csv."""
    import csv
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{"epoch": int(r["epoch"]), "test_accuracy": float(r["test_accuracy"]),
                 "train_loss": float(r["train_loss"])} for r in csv.DictReader(f)]


def run(name: str, spec: dict | Path, data: str, backend: str = "reference", epochs: int | None = None,
        resume: bool = False, **overrides) -> dict:
    """Train one configuration; the row records its command, accuracies, time, epochs and parameter counts."""
    SPECS.mkdir(parents=True, exist_ok=True)
    if isinstance(spec, dict):
        path = SPECS / f"{name}.toml"
        path.write_text(_toml(spec))
    else:
        path = Path(spec)
    training = read_toml(path).get("training", {})
    tag = "_".join([name, backend] + [k for k, v in overrides.items() if v is True])
    out = ROOT / "build" / "bench_training" / f"{data}_{tag}"
    resume = resume and (out / "checkpoints").is_dir()      # continue an interrupted run of this part
    if out.exists() and not resume:
        import shutil
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {**training, **({"epochs": epochs} if epochs else {}), **overrides}
    cfg = TrainConfig(model=str(path), out=str(out), data=data, backend=backend, **settings)
    t0 = time.perf_counter()
    s = train(cfg, resume=resume, log=lambda m: print(f"  [{tag}] {m}", flush=True))
    flags = " ".join(f"--{k.replace('_', '-')}" for k, v in overrides.items() if v is True)
    rel = path.relative_to(ROOT)
    row = {"name": name, "data": data, "backend": backend, "epochs": s["epochs"],
            "test_accuracy": s["test_accuracy"], "train_accuracy": s["train_accuracy"],
            "seconds": s.get("seconds", time.perf_counter() - t0), "solves": s["solver_stats"]["solves"],
            "failures": s["solver_stats"]["failures"], "spec": str(rel),
            "analog_parameters": s.get("analog_parameters"), "digital_parameters": s.get("digital_parameters"),
            "per_epoch": _epochs(out),
            "command": f"ffebm train {rel} --data {data} --backend {backend}"
                       + (f" --epochs {epochs}" if epochs else "") + (f" {flags}" if flags else "")}
    (out.parent / f"{data}_{tag}.row.json").write_text(json.dumps(row, indent=1))    # survives a crash of the part
    return row


def recorded(run_dir: Path, model: str, label: str, backend: str, flags: str = "") -> dict:
    """A row from a finished ``ffebm train`` run of ``model``'s spec (or a copy that builds the same
    model, checked here parameter for parameter), for runs too long to repeat inside this script."""
    import torch as _torch
    spec_path, data = MODELS[model]
    stored = json.loads((run_dir / "config.json").read_text())
    given = Path(stored["model"])             # relative to where that run was started: look upwards
    theirs_path = next((q for q in [given, *(d / given for d in run_dir.resolve().parents)] if q.is_file()), given)
    ours, theirs = build_model(spec_path).state_dict(), build_model(theirs_path).state_dict()
    if list(ours) != list(theirs) or not all(_torch.equal(ours[k], theirs[k]) for k in ours):
        raise SystemExit(f"{run_dir}: its spec {stored['model']} does not build {spec_path.name}'s model")
    s = json.loads((run_dir / "summary.json").read_text())
    counts = parameter_counts(build_model(spec_path))
    rel = spec_path.relative_to(ROOT)
    return {"name": model, "data": data, "backend": backend, "epochs": s["epochs"], "model": model, "label": label,
            "test_accuracy": s["test_accuracy"], "train_accuracy": s["train_accuracy"], "seconds": s["seconds"],
            "solves": s["solver_stats"]["solves"], "failures": s["solver_stats"]["failures"], "spec": str(rel),
            # runs made before summary.json carried the counts: the same model's, counted here
            "analog_parameters": s.get("analog_parameters", counts["analog"]),
            "digital_parameters": s.get("digital_parameters", counts["digital"]),
            "per_epoch": _epochs(run_dir), "recorded_from": stored["model"],
            "command": f"ffebm train {rel} --data {data} --backend {backend}" + (f" {flags}" if flags else "")}


def ablations(name: str, epochs: int | None, workers: int) -> list[dict]:
    """Trained with ngspice and with the reference, frozen conductances, digital twin: one model."""
    spec_path, data = MODELS[name]
    options = {"backend_options": {"workers": workers}} if workers > 1 else {}
    rows = []
    counts = parameter_counts(build_model(spec_path))
    plan = [("EP, ngspice in the loop", spec_path, "ngspice", options),
            ("EP, reference", spec_path, "reference", {})]
    if counts["digital"]:            # a fully analog DRN frozen is its random initial network: nothing trains
        plan.append(("conductances frozen", spec_path, "reference", {"freeze_analog": True}))
    plan.append(("digital twin, backprop", digital_twin(read_toml(spec_path)), "reference", {}))
    for label, spec, backend, extra in plan:
        r = run(name if not isinstance(spec, dict) else spec["name"], spec, data, backend, epochs, **extra)
        r.update(label=label, model=name)
        rows.append(r)
    return rows


def trajectory_gap(a: dict, b: dict) -> dict:
    """How far two runs' per-epoch figures are apart (ngspice vs reference)."""
    pairs = list(zip(a["per_epoch"], b["per_epoch"]))
    return {"epochs": len(pairs),
            "max_test_accuracy_gap_points": max(100 * abs(x["test_accuracy"] - y["test_accuracy"]) for x, y in pairs),
            "max_train_loss_gap": max(abs(x["train_loss"] - y["train_loss"]) for x, y in pairs)}


def _pct(r: dict) -> str:
    a, d = r.get("analog_parameters"), r.get("digital_parameters")
    if a is None or d is None:
        return "?"
    return f"{a} / {d} ({100 * a / max(a + d, 1):.1f} %)"


#: The row lists of training.json and what identifies a row (two parts may run side by side).
ROW_KEYS = {"splitting": lambda r: (r["blocks"], r["backend"], r.get("amplifier_gain") or 0),
            "ablations": lambda r: (r["model"], r["label"])}


def write(results: dict, keys: tuple[str, ...] = ()) -> None:
    """Write training.json and .md; ``keys``: the parts this run measured, merged into what the file
    holds now (another part may be running beside this one and have written since we read it)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "training.json"
    if keys and path.exists():
        merged = json.loads(path.read_text())
        for k in keys:
            if k in ROW_KEYS and k in results:    # rows: ours replace theirs of the same identity, theirs stay
                ours = {ROW_KEYS[k](r) for r in results[k]}
                merged[k] = sorted([r for r in merged.get(k, []) if ROW_KEYS[k](r) not in ours] + results[k],
                                   key=lambda r: str(ROW_KEYS[k](r)))
            elif k in results:
                merged[k] = results[k]
        results = merged
    path.write_text(json.dumps(results, indent=1))
    m = results["machine"]
    lines = ["# Training benchmark (`benchmarks/bench_training.py`)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM; {m['ngspice']}, torch {m['torch']}. "
             "Seed 0. Other work shared the two cores during these runs: compare accuracies, not seconds.", "",
             "## Does the analog part learn? Trained, conductances frozen, digital twin", "",
             "Parameters: trainable analog (conductances) / digital, analog share. Frozen = "
             "`--freeze-analog`: the conductances keep their initial values, the digital blocks train.", "",
             "| model | data | run | backend | epochs | test acc | train acc | parameters (analog / digital) | seconds | command |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.get("ablations", []):
        lines.append(f"| {r['model']} | {r['data']} | {r['label']} | {r['backend']} | {r['epochs']} | "
                     f"{100 * r['test_accuracy']:.2f}% | {100 * r['train_accuracy']:.2f}% | {_pct(r)} | "
                     f"{r['seconds']:.0f} | `{r['command']}` |")
    lines += ["", "### ngspice in the loop vs the torch reference, epoch by epoch", "",
              "| model | epochs | max test-accuracy gap (points) | max train-loss gap |", "|---|---|---|---|"]
    for name, g in results.get("trajectories", {}).items():
        lines.append(f"| {name} | {g['epochs']} | {g['max_test_accuracy_gap_points']:.2f} | {g['max_train_loss_gap']:.1e} |")
    lines += ["", "## Splitting: one deep resistive network as 1, 2 or 4 energy blocks", "",
              "Four hidden resistive layers between the 64 pixels and the 10 classes, BatchNorm1d between blocks; "
              "widths chosen so that the conductance counts agree within 3 %.", "",
              "| blocks | layers per block | amplifiers | conductances | backend | epochs | test acc | train acc | seconds | command |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.get("splitting", []):
        lines.append(f"| {r['blocks']} | {r['plan']} | {r.get('amplifier_gain') or '-'} | {r['conductances']} | "
                     f"{r['backend']} | {r['epochs']} | {100 * r['test_accuracy']:.2f}% | "
                     f"{100 * r['train_accuracy']:.2f}% | {r['seconds']:.0f} | `{r['command']}` |")
    notes = results.get("notes", [])
    if notes:
        lines += ["", "## Notes", ""] + [f"* {n}" for n in notes]
    history = results.get("history_linear_flagship")
    if history:
        lines += ["", "## Earlier flagship (2026-11-23): a digital Linear in front of each one-layer energy block", "",
                  "`benchmarks/results/specs/digits_ffebm_linear.toml` and the mnist model of that date; freezing "
                  "every conductance cost 0.0 (digits) and 0.4 (mnist-5k) points there.", "",
                  "| data | method | backend | epochs | test acc | train acc | seconds |", "|---|---|---|---|---|---|---|"]
        for r in history:
            lines.append(f"| {r['data']} | {r['label']} | {r['backend']} | {r['epochs']} | "
                         f"{100 * r['test_accuracy']:.2f}% | {100 * r['train_accuracy']:.2f}% | {r['seconds']:.0f} |")
    lines += ["", "Specs of the derived models (twins, splits) are in `benchmarks/results/specs/`. Reproduce a part: "
              "`python benchmarks/bench_training.py --part ablations --model digits_ffebm`, "
              "`--part splitting --ngspice-blocks 2`."]
    (RESULTS / "training.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["ablations", "splitting", "record"], required=True)
    p.add_argument("--run", nargs=3, action="append", metavar=("RUN_DIR", "LABEL", "BACKEND"), default=[],
                   help="record: a finished run of --model's spec (repeatable); LABEL as in the ablations table, "
                        "a frozen run's label must start with 'conductances frozen'")
    p.add_argument("--model", choices=list(MODELS), action="append",
                   help="ablations: the models to run (repeatable; default all four)")
    p.add_argument("--epochs", type=int, default=None, help="override the specs' [training] epochs")
    p.add_argument("--workers", type=int, default=1, help="ngspice workers")
    p.add_argument("--amplifier-gain", type=float, default=None,
                   help="splitting: also run the 1-block network with this gain between its layers")
    p.add_argument("--blocks", type=int, action="append", choices=list(SPLIT_WIDTHS),
                   help="splitting: the splits to train with the reference (repeatable; default 1, 2 and 4)")
    p.add_argument("--resume", action="store_true", help="continue interrupted runs of this part from their checkpoints")
    p.add_argument("--ngspice-blocks", type=int, action="append", default=[],
                   help="splitting: also train this split with ngspice in the loop (repeatable)")
    args = p.parse_args()
    torch.set_num_threads(1)
    path = RESULTS / "training.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if "methods" in results:                         # the 2026-11-23 layout: keep its rows as history
        results["history_linear_flagship"] = results.pop("methods")
        results.pop("splitting", None)
    results["machine"] = machine()
    if args.part == "record":
        (name,) = args.model
        rows = [recorded(Path(d), name, label, backend, "--freeze-analog" if label.startswith("conductances frozen") else "")
                for d, label, backend in args.run]
        results["ablations"] = rows
        by = {r["label"]: r for r in rows}
        if "EP, ngspice in the loop" in by and "EP, reference" in by:
            results.setdefault("trajectories", {})[name] = trajectory_gap(by["EP, ngspice in the loop"], by["EP, reference"])
        write(results, ("machine", "ablations", "trajectories"))
    elif args.part == "ablations":
        for name in args.model or list(MODELS):
            rows = ablations(name, args.epochs, args.workers)
            results["ablations"] = [r for r in results.get("ablations", []) if r["model"] != name] + rows
            results.setdefault("trajectories", {})[name] = trajectory_gap(rows[0], rows[1])
            write(results, ("machine", "ablations", "trajectories"))
    else:
        base = read_toml(MODELS["digits_ffebm"][0])
        runs = [(n, None, "reference") for n in (args.blocks or SPLIT_WIDTHS)]
        runs += [(n, None, "ngspice") for n in args.ngspice_blocks]
        if args.amplifier_gain is not None:
            runs.append((1, args.amplifier_gain, "reference"))
        rows = [r for r in results.get("splitting", [])
                if (r["blocks"], r.get("amplifier_gain"), r["backend"]) not in set(runs)]
        for n, gain, backend in runs:
            spec = split_spec(base, n, gain)
            r = run(spec["name"], spec, "digits", backend, args.epochs, resume=args.resume)
            plan = split_plan(n, SPLIT_WIDTHS[n])
            r.update(blocks=n, plan=" + ".join(str(s) for s in plan), conductances=conductance_count(plan),
                     amplifier_gain=gain)
            rows.append(r)
            results["splitting"] = sorted(rows, key=lambda r: (r["blocks"], r["backend"], r.get("amplifier_gain") or 0))
            write(results, ("machine", "splitting"))


if __name__ == "__main__":
    main()
