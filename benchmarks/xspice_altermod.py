"""Could a sweep job skip re-parsing its deck? The XSPICE ``pwl`` code model with ``altermod``.

The DC-sweep path (``ffebm_sim/backends/deckedit.py``) writes each chunk's
changing sources as behavioural ``pwl`` sources of the sweep voltage; ngspice
cannot ``alter`` a behavioural source, so every chunk is a new deck to parse.
The alternative measured here keeps one circuit loaded: each changing source is
an XSPICE ``pwl`` code model driven by the sweep voltage (``A... %v(ffebm_sweep)
%id(plus minus) MODEL``), and a chunk's values go in with ``altermod MODEL
y_array = [ ... ]`` before the ``dc`` command. Each sample sits on a flat
plateau of the table (breakpoints at k +- 0.25), so the code model's corner
smoothing never touches a sample.

Writes ``benchmarks/results/xspice_altermod.{json,md}``: per chunk of
``block_small``, the time of the altermod commands, of the ``dc`` command, and
of the current path (format + parse + dc + read + unload), and the largest
voltage difference between the two. Usage::

    python benchmarks/xspice_altermod.py [--samples 16] [--repeat 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ffebm_sim.bench import SMALL, _work, machine  # noqa: E402
from ffebm_sim.backends.deckedit import sweep_template  # noqa: E402
from ffebm_sim.backends.jobs import run_job, sweep_samples  # noqa: E402
from ffebm_sim.backends.ngspice import NgspiceBackend  # noqa: E402
from ffebm_sim.backends.session import session  # noqa: E402
from ffebm_sim.spec import load_block  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CODEMODEL_DIRS = ("/usr/lib/x86_64-linux-gnu/ngspice", "/usr/lib/ngspice", "/usr/local/lib/ngspice")


def _analog_cm() -> str:
    for d in CODEMODEL_DIRS:
        p = Path(d) / "analog.cm"
        if p.is_file():
            return str(p)
    raise SystemExit("xspice_altermod: analog.cm (ngspice's XSPICE code models) not found in " + ", ".join(CODEMODEL_DIRS))


def resident_deck(job, n: int) -> tuple[str, list[str]]:
    """The job's deck with every changing source an XSPICE pwl of the sweep voltage (values 0)."""
    fixed, cards = sweep_template(job.deck, job.deck_digest, job.sources)
    xs = " ".join(f"{k - 0.25!r} {k + 0.25!r}" for k in range(n))
    zeros = " ".join(["0 0"] * n)
    out, models = [fixed], []
    for k, (name, plus, minus) in sorted(cards.items()):
        port = "%vd" if name[0] in "vV" else "%id"
        out.append(f"A_{name} %v(ffebm_sweep) {port}({plus} {minus}) m_{name}")
        out.append(f".model m_{name} pwl(x_array=[{xs}] y_array=[{zeros}])")
        models.append(f"m_{name}")
    out += ["VFFEBM_SWEEP ffebm_sweep 0 DC 0", ".end", ""]
    return "\n".join(out), models


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = args.samples
    circuit = load_block(SMALL)
    u, _ = _work(circuit, 1, batch=n, seed=5)[0]
    job = NgspiceBackend(reduced=True, chunk=n).jobs(circuit, u, None)[0][0]
    s = session()
    with s.lock:
        s.command(f"codemodel {_analog_cm()}")
        deck, models = resident_deck(job, n)
        s.load(deck)
        altermod, dc = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            for model, col in zip(models, job.values.T.tolist()):
                s.command(f"altermod {model} y_array = [ " + " ".join(f"{v!r} {v!r}" for v in col) + " ]")
            t1 = time.perf_counter()
            failure = sweep_samples(s, n)
            t2 = time.perf_counter()
            if failure:
                raise SystemExit(f"xspice_altermod: the resident sweep failed: {failure}")
            resident = s.read_arrays(list(job.vectors), n)
            s.destroy_plots()
            altermod.append(t1 - t0)
            dc.append(t2 - t1)
        s.unload()
    current = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        result = run_job(job)
        current.append(time.perf_counter() - t)
    dv = float(np.abs(resident - result.values).max())
    out = {"machine": machine(), "block": "block_small", "samples": n, "changing_sources": len(models),
           "altermod_ms": 1e3 * statistics.median(altermod),
           "altermod_each_us": 1e6 * statistics.median(altermod) / len(models),
           "resident_dc_ms": 1e3 * statistics.median(dc),
           "resident_job_ms": 1e3 * (statistics.median(altermod) + statistics.median(dc)),
           "current_job_ms": 1e3 * statistics.median(current), "max_abs_dv_volts": dv,
           "command": "python benchmarks/xspice_altermod.py" + (f" --samples {n}" if n != 16 else "")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "xspice_altermod.json").write_text(json.dumps(out, indent=1) + "\n")
    m = out["machine"]
    md = ["# Resident circuit with XSPICE pwl + altermod vs the per-chunk sweep deck", "",
          f"Machine: {m['cpu']}, {m['cores']} cores; {m['ngspice']}. Block `block_small`, one chunk of {n} samples, "
          f"{len(models)} changing sources, medians of {args.repeat}.", "",
          "| quantity | value |", "|---|---|",
          f"| altermod commands per chunk | {out['altermod_ms']:.2f} ms ({out['altermod_each_us']:.0f} us each) |",
          f"| dc sweep of the resident circuit | {out['resident_dc_ms']:.2f} ms |",
          f"| resident job (altermod + dc) | {out['resident_job_ms']:.2f} ms |",
          f"| current job (format + parse + dc + read + unload) | {out['current_job_ms']:.2f} ms |",
          f"| largest voltage difference between the two | {dv:.1e} V |", "",
          f"Reproduce: `{out['command']}`.", ""]
    (RESULTS / "xspice_altermod.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
