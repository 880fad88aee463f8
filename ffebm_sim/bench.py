"""``ffebm bench solvers``: the ngspice path against a naive PySpice loop, ngspice's own
analysis time, the torch reference, two workers, memory over 20,000 solves, and a
digits training epoch, measured side by side in one run.

Register with ``cli.add_command(bench)`` (``from ffebm_sim.bench import bench``).
``benchmarks/bench_solvers.py`` runs the same and writes
``benchmarks/results/solvers.{json,md}``.

An EP sample is three equilibria (free, +beta, -beta) of one input; every
``*_ep_s`` figure is seconds per EP sample. These are measurements, not tests.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import click
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "circuits" / "block_small.toml"
DIGITS = ROOT / "circuits" / "digits_ffebm.toml"
BATCH = 32
#: The issue's targets: (bound, "min" or "max").
TARGETS = {"speedup_vs_naive": (300.0, "min"), "overhead_vs_ngspice": (1.3, "max"),
           "workers2_speedup": (1.6, "min"), "reference_speedup": (20.0, "min"),
           "rss_growth_mb_20k": (20.0, "max"), "digits_epoch_2workers_s": (15.0, "max")}


def _met(value, bound: float, kind: str):
    if value is None:
        return None
    return value >= bound if kind == "min" else value <= bound


# ---- machine ----------------------------------------------------------------------------------

def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gb = round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": ram_gb, "ngspice": _ngspice_version(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            # other processes on the machine while measuring (1, 5, 15 min load averages)
            "loadavg_start": list(os.getloadavg())}


def _ngspice_version() -> str:
    from .backends.session import session
    s = session()
    with s.lock:
        return s.version()


# ---- workloads --------------------------------------------------------------------------------

def _work(circuit, batches: int, batch: int = BATCH, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [(torch.from_numpy(rng.uniform(-1, 1, (batch, circuit.n_inputs))),
             torch.from_numpy(rng.normal(0, 1, (batch, circuit.n_outputs)))) for _ in range(batches)]


def _ep(backend, circuit, u, delta) -> None:
    from .ep import ep_gradients
    free = backend.solve(circuit, u)
    if not free.ok:
        raise RuntimeError(f"benchmark: free phase failed: {free.messages[0]}")
    ep_gradients(circuit, backend, u, free, delta)


def time_ep(backend, circuit, work, repeat: int = 1) -> float:
    """Seconds per EP sample (best of ``repeat`` passes over ``work``)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for u, delta in work:
            _ep(backend, circuit, u, delta)
        best = min(best, time.perf_counter() - t)
    return best / sum(len(u) for u, _ in work)


def _naive_in_child(circuit, samples: int, seed: int) -> tuple[float, float]:
    """(seconds per EP sample, max |dV| vs the reference) of the naive PySpice loop; runs in its own process."""
    from .backends.naive_pyspice import naive_solve
    from .backends.reference import ReferenceBackend
    rng = np.random.default_rng(seed)
    u = rng.uniform(-1, 1, (samples + 1, circuit.n_inputs))
    nudge = 1e-6 * rng.normal(0, 1, (samples + 1, circuit.n_outputs))
    naive_solve(circuit, u[0])                         # PySpice's first-use set-up is not timed
    t = time.perf_counter()
    free = []
    for b in range(1, samples + 1):
        free.append(naive_solve(circuit, u[b]))
        naive_solve(circuit, u[b], nudge[b])
        naive_solve(circuit, u[b], -nudge[b])
    seconds = (time.perf_counter() - t) / samples
    ref = ReferenceBackend().solve(circuit, torch.from_numpy(u[1:])).node_voltages_v.numpy()
    return seconds, float(np.abs(np.array(free) - ref).max())


def naive_ep_s(circuit, samples: int, seed: int = 0) -> tuple[float, float]:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as ex:
        return ex.submit(_naive_in_child, circuit, samples, seed).result()


def rss_growth_mb(circuit, solves: int = 20_000, warmup: int = 960) -> dict:
    """Resident memory growth (MB) of this process over ``solves`` ngspice solves, EP triples with the
    conductances changed every batch (a reload per batch, as in training)."""
    import psutil

    from .backends.ngspice import NgspiceBackend
    proc = psutil.Process()
    backend = NgspiceBackend(reduced=True)
    rng = np.random.default_rng(5)
    base = [np.asarray(g) for g in circuit.conductances]

    def run(n):
        done = 0
        while done < n:
            c = circuit.with_conductances([g * rng.uniform(0.9, 1.1, g.shape) for g in base])
            (u, delta), = _work(c, 1, seed=int(rng.integers(1 << 30)))
            _ep(backend, c, u, delta)
            done += 3 * len(u)
        return done
    run(warmup)
    gc.collect()
    before = proc.memory_info().rss
    t = time.perf_counter()
    done = run(solves)
    gc.collect()
    return {"rss_growth_mb": (proc.memory_info().rss - before) / 2 ** 20, "solves": done,
            "seconds": time.perf_counter() - t}


def digits_epoch_s(workers: int, batch: int = BATCH, seed: int = 0) -> dict:
    """Seconds of one digits training epoch (forward + EP backward + Adam step over the 1437
    training samples, batches of 32) of ``circuits/digits_ffebm.toml`` on ngspice with ``workers``."""
    from .backends.ngspice import NgspiceBackend
    from .data import load_dataset
    from .model import build_model
    data = load_dataset("digits")
    backend = NgspiceBackend(reduced=True, workers=workers)
    try:
        model = build_model(DIGITS, backend=backend, seed=seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        n = len(data.x_train)
        backend.engine                                   # start the workers before timing
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        t = time.perf_counter()
        total, correct = 0.0, 0
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            optimizer.zero_grad(set_to_none=True)
            loss, pred = model.loss(data.x_train[idx], data.y_train[idx])
            loss.backward()
            optimizer.step()
            model.project()
            total += float(loss.detach()) * len(idx)
            correct += int((pred == data.y_train[idx]).sum())
        seconds = time.perf_counter() - t
    finally:
        backend.close()
    return {"seconds": seconds, "samples": n, "train_loss": total / n, "train_accuracy": correct / n,
            "solves": model.solver_stats()["solves"]}


def _wide_block(n_in: int, hidden: int, n_out: int, seed: int):
    from .spec import block_from_dict
    return block_from_dict({"name": f"block_{n_in}_{hidden}_{n_out}", "layers": [n_in, hidden, n_out],
                            "input_gain": 2.0, "nonlinearity": {"kind": "double", "v_off": 0.0,
                                                                "diode": {"is": 1e-8, "n": 1.0}},
                            "conductances": {"low": 0.0, "high": 1e-4 * 64 / n_in, "seed": seed}})


def chunk_costs(circuit, n: int, repeat: int = 20) -> dict:
    """Milliseconds one sweep job of ``n`` samples spends in each step (one process, reduced
    deck, best of ``repeat``): formatting the sweep deck (Python), ngspice parsing it (and
    parsing only its fixed part: the deck without the swept sources), the ``dc`` command,
    ngspice's own analysis time (``rusage``) for it, and reading the vectors plus
    ``destroy``/``remcirc``."""
    from .backends.deckedit import sweep_deck, sweep_template
    from .backends.jobs import sweep_samples
    from .backends.ngspice import NgspiceBackend
    from .backends.session import session
    s = session()
    u, _ = _work(circuit, 1, batch=n, seed=5)[0]
    job = NgspiceBackend(reduced=True, chunk=n).jobs(circuit, u, None)[0][0]
    fixed_only = sweep_template(job.deck, job.deck_digest, job.sources).fixed + "\n.end\n"
    best: dict = {}

    def keep(name, seconds):
        best[name] = min(best.get(name, float("inf")), 1e3 * seconds)
    with s.lock:
        for _ in range(repeat):
            t0 = time.perf_counter()
            deck = sweep_deck(job.deck, job.sources, job.values, job.deck_digest)
            t1 = time.perf_counter()
            s.load(deck)
            t2 = time.perf_counter()
            a0 = s.analysis_seconds()
            t3 = time.perf_counter()
            failure = sweep_samples(s, n)
            t4 = time.perf_counter()
            a1 = s.analysis_seconds()
            t5 = time.perf_counter()
            s.read_arrays(list(job.vectors), n)
            s.unload()
            t6 = time.perf_counter()
            if failure:
                raise RuntimeError(f"benchmark: sweep failed: {failure}")
            keep("format_ms", t1 - t0)
            keep("parse_ms", t2 - t1)
            keep("dc_command_ms", t4 - t3)
            keep("analysis_ms", a1 - a0)
            keep("read_unload_ms", t6 - t5)
            t7 = time.perf_counter()
            s.load(fixed_only)
            keep("parse_fixed_part_ms", time.perf_counter() - t7)
            s.unload()
    return {"samples": n, **best}


def method_table(blocks: dict, batches: int) -> list[dict]:
    """Per block: seconds per EP sample with alter+op and with the DC sweep (one worker, reduced deck,
    chunks of 16), and ngspice's own analysis time for each."""
    from .backends.jobs import SWEEP_MIN_SAMPLES
    from .backends.ngspice import NgspiceBackend
    from .backends.reference import ReferenceBackend
    rows = []
    for name, c in blocks.items():
        work = _work(c, batches, seed=1)
        row = {"block": name, "layers": list(c.layer_sizes)}
        for method in ("op", "sweep"):
            b = NgspiceBackend(reduced=True, method=method)
            _ep(b, c, *work[0])
            row[f"{method}_ep_s"] = time_ep(b, c, work)
            m = NgspiceBackend(reduced=True, method=method, measure=True)
            _ep(m, c, *work[0])
            m.analysis_s = 0.0
            time_ep(m, c, work)
            row[f"{method}_analysis_ep_s"] = m.analysis_s / sum(len(u) for u, _ in work)
        row["auto"] = "sweep" if BATCH // 2 >= SWEEP_MIN_SAMPLES else "op"
        ref = ReferenceBackend()
        row["reference_ep_s"] = time_ep(ref, c, _work(c, 1, batch=128, seed=2), repeat=2)
        rows.append(row)
    return rows


# ---- the whole run ----------------------------------------------------------------------------

def run_solvers(quick: bool = False, log=lambda msg: None) -> dict:
    """The solver benchmark; a progress line every few seconds names the step running (ffebm_sim.progress)."""
    from .progress import Progress
    bar = Progress(7 if quick else 9, "bench solvers", unit="steps")

    def step(msg):
        if bar.postfix:            # the step before this one is done
            bar.update(1)
        bar.set_postfix(now=msg)
        log(msg)
    try:
        return _run_solvers(quick, step)
    finally:
        bar.close()


def _run_solvers(quick: bool, log) -> dict:
    from .backends.jobs import DEFAULT_CHUNK
    from .backends.ngspice import NgspiceBackend
    from .backends.reference import ReferenceBackend
    from .model import build_model
    from .spec import load_block
    # One torch thread, as `ffebm` itself runs: idle OpenMP threads of the parent spin and
    # take the cores the ngspice workers need (2 threads made 2 workers no faster than 1).
    torch.set_num_threads(1)
    small = load_block(SMALL)
    batches = 4 if quick else 12
    out: dict = {"machine": machine(), "quick": quick, "block": small.name, "layers": list(small.layer_sizes),
                 "batch": BATCH, "chunk": DEFAULT_CHUNK, "deck": "reduced", "method": "auto"}
    r: dict = {}
    log("naive PySpice loop")
    r["naive_pyspice_ep_s"], out["naive_max_abs_dv_volts"] = naive_ep_s(small, 3 if quick else 8)
    work = _work(small, batches)
    log("ngspice, one worker")
    one = NgspiceBackend(reduced=True)
    _ep(one, small, *work[0])
    r["ngspice_ep_s"] = time_ep(one, small, work, repeat=1 if quick else 3)
    measured = NgspiceBackend(reduced=True, measure=True)
    _ep(measured, small, *work[0])
    measured.analysis_s = 0.0
    time_ep(measured, small, work)
    r["ngspice_analysis_ep_s"] = measured.analysis_s / sum(len(u) for u, _ in work)
    log("reference, batch 128")
    ref = ReferenceBackend()
    ref_work = _work(small, 2 if quick else 4, batch=128, seed=3)
    _ep(ref, small, *ref_work[0])
    r["reference_ep_s"] = time_ep(ref, small, ref_work, repeat=1 if quick else 3)
    log("two workers")
    two = NgspiceBackend(reduced=True, workers=2)
    try:
        _ep(two, small, *work[0])
        t1 = time_ep(one, small, work, repeat=2)
        t2 = time_ep(two, small, work, repeat=2)
    finally:
        two.close()
    r["workers2_ep_s"] = t2
    r["workers2_speedup"] = t1 / t2
    if quick:
        r["rss_growth_mb_20k"] = None
    else:
        log("memory over 20,000 solves")
        rss = rss_growth_mb(small)
        r["rss_growth_mb_20k"] = rss["rss_growth_mb"]
        out["rss"] = rss
    log("digits epoch, 2 workers")
    epoch2 = digits_epoch_s(2)
    r["digits_epoch_2workers_s"] = epoch2["seconds"]
    out["digits_epoch_2workers"] = epoch2
    if not quick:
        log("digits epoch, 1 worker")
        epoch1 = digits_epoch_s(1)
        r["digits_epoch_1worker_s"] = epoch1["seconds"]
        out["digits_epoch_1worker"] = epoch1
    r["speedup_vs_naive"] = r["naive_pyspice_ep_s"] / r["ngspice_ep_s"]
    r["overhead_vs_ngspice"] = r["ngspice_ep_s"] / r["ngspice_analysis_ep_s"]
    r["reference_speedup"] = r["ngspice_ep_s"] / r["reference_ep_s"]
    out["results"] = r
    out["targets"] = {k: {"target": f"{'>=' if kind == 'min' else '<='} {bound:g}", "value": r.get(k),
                          "met": _met(r.get(k), bound, kind)} for k, (bound, kind) in TARGETS.items()}
    log("where a chunk's time goes")
    out["chunk_costs"] = [chunk_costs(small, n) for n in (16, 32, 64)]
    log("alter+op vs DC sweep per block size")
    blocks = {"block_small": small}
    digits = build_model(DIGITS, backend="reference")
    for k, b in enumerate(digits.energy_blocks):
        blocks[f"digits_e{k + 1}"] = b.circuit
    if not quick:
        blocks["block_128_64_10"] = _wide_block(128, 64, 10, seed=7)
        blocks["block_256_128_10"] = _wide_block(256, 128, 10, seed=8)
    out["methods"] = method_table(blocks, 2 if quick else 4)
    from .bench_reference import run_reference
    out["reference_solver"] = run_reference(quick, log)      # layered vs dense reference (issue 16)
    out["machine"]["loadavg_end"] = list(os.getloadavg())
    return out


def markdown(report: dict) -> str:
    m, r = report["machine"], report["results"]

    def f(x, unit=""):
        if x is None:
            return "skipped (--quick)"
        if abs(x) >= 100:
            return f"{x:,.0f}{unit}"
        return f"{x:.3g}{unit}"
    lines = [
        "# Solver benchmark (`ffebm bench solvers`)", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM; {m['ngspice']}, torch {m['torch']}, "
        f"Python {m['python']}. Load average (1 min) at start {m['loadavg_start'][0]:.2f}, "
        f"at end {m.get('loadavg_end', [float('nan')])[0]:.2f} (other work on the machine slows every figure).", "",
        f"Block `{report['block']}` (layers {report['layers']}), EP sample = free, +beta, -beta equilibria; "
        f"ngspice path: reduced deck, method `{report['method']}`, batches of {report['batch']}, "
        f"chunks of {report['chunk']}." + (" Quick run." if report["quick"] else ""), "",
        "| quantity | value |", "|---|---|",
        f"| naive PySpice loop (new `Circuit` + `operating_point()` per solve), s per EP sample | {f(r['naive_pyspice_ep_s'])} |",
        f"| ngspice path, one worker, s per EP sample | {f(r['ngspice_ep_s'])} |",
        f"| ngspice's own analysis time (`rusage`), s per EP sample | {f(r['ngspice_analysis_ep_s'])} |",
        f"| torch reference at batch 128, s per EP sample | {f(r['reference_ep_s'])} |",
        f"| speedup_vs_naive (naive / ngspice path) | {f(r['speedup_vs_naive'], 'x')} |",
        f"| overhead_vs_ngspice (ngspice path / analysis time) | {f(r['overhead_vs_ngspice'], 'x')} |",
        f"| reference_speedup (ngspice path / reference) | {f(r['reference_speedup'], 'x')} |",
        f"| workers2_speedup (throughput 2 workers / 1) | {f(r['workers2_speedup'], 'x')} |",
        f"| rss_growth_mb_20k (one worker, 20,000 solves) | {f(r['rss_growth_mb_20k'], ' MB')} |",
        f"| digits epoch, ngspice, 2 workers | {f(r['digits_epoch_2workers_s'], ' s')} |",
    ]
    if "digits_epoch_1worker_s" in r:
        lines.append(f"| digits epoch, ngspice, 1 worker | {f(r['digits_epoch_1worker_s'], ' s')} |")
    if report.get("targets"):
        lines += ["", "Targets of the speed issue:", "", "| figure | target | value | met |", "|---|---|---|---|"]
        for name, t in report["targets"].items():
            met = "skipped" if t["met"] is None else ("yes" if t["met"] else "**no**")
            lines.append(f"| {name} | {t['target']} | {f(t['value'])} | {met} |")
    if report.get("chunk_costs"):
        lines += ["", "## Where one sweep job's time goes (block_small, one process, ms per job, best of 20)", "",
                  "| samples | format deck (Python) | ngspice parses it | of which the fixed part | `dc` command | "
                  "its analysis (`rusage`) | read + destroy + remcirc | job / analysis |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in report["chunk_costs"]:
            rest = c["format_ms"] + c["parse_ms"] + (c["dc_command_ms"] - c["analysis_ms"]) + c["read_unload_ms"]
            lines.append(f"| {c['samples']} | {c['format_ms']:.2f} | {c['parse_ms']:.2f} | {c['parse_fixed_part_ms']:.2f} | "
                         f"{c['dc_command_ms']:.2f} | {c['analysis_ms']:.2f} | {c['read_unload_ms']:.2f} | "
                         f"{1 + rest / c['analysis_ms']:.2f} |")
    lines += ["", f"Naive loop agrees with the reference to {report['naive_max_abs_dv_volts']:.1e} V. "
              "A digits epoch: forward + EP backward + Adam step over the 1437 training samples of "
              "sklearn digits in batches of 32 (`ffebm_sim.model.build_model`).", "",
              "## alter+op vs DC sweep, per block size (one worker, reduced deck, s per EP sample)", "",
              "| block | layers | alter+op | its analysis | DC sweep | its analysis | reference (batch 128) | auto picks |",
              "|---|---|---|---|---|---|---|---|"]
    for row in report["methods"]:
        lines.append(f"| {row['block']} | {row['layers']} | {f(row['op_ep_s'])} | {f(row['op_analysis_ep_s'])} | "
                     f"{f(row['sweep_ep_s'])} | {f(row['sweep_analysis_ep_s'])} | {f(row['reference_ep_s'])} | "
                     f"{row['auto']} |")
    if report.get("reference_solver"):
        from .bench_reference import markdown as reference_markdown
        lines += [""] + reference_markdown(report["reference_solver"])
    lines += ["", f"Reproduce: `{report.get('command', 'ffebm bench solvers')}`.", ""]
    return "\n".join(lines)


def write_results(report: dict, directory: Path) -> tuple[Path, Path]:
    from .outputs import atomic_write_bytes
    directory.mkdir(parents=True, exist_ok=True)
    j, md = directory / "solvers.json", directory / "solvers.md"
    atomic_write_bytes(j, (json.dumps(report, indent=1) + "\n").encode(), fsync=False)
    atomic_write_bytes(md, markdown(report).encode(), fsync=False)
    return j, md


def check_results_dir(directory: Path) -> None:
    """Before the benchmark runs: ``--out`` must be (or be creatable as) a writable directory."""
    from .errors import SpecError
    from .outputs import check_output_file, probe_writable
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise SpecError(f"--out: {directory} is a file; give a directory")
    probe = directory if directory.is_dir() else directory.parent
    for name in ("solvers.json", "solvers.md"):
        if directory.is_dir():
            check_output_file(directory / name, "--out")
    if not probe.is_dir():
        raise SpecError(f"--out: {probe}: no such directory; create it first")
    probe_writable(probe, "--out", probe)


@click.group()
def bench():
    """Benchmarks (measurements, not tests)."""


@bench.command()
@click.option("--quick", is_flag=True, help="Fewer repeats, skip the 20,000-solve memory run and the larger blocks.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (default: a Markdown table).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write solvers.json and solvers.md into this directory.")
def solvers(quick, as_json, out_dir):
    """ngspice path vs naive PySpice, ngspice's own analysis time, torch reference, 2 workers, memory, digits epoch."""
    if out_dir is not None:
        check_results_dir(out_dir)          # before minutes of measuring, not after
    report = run_solvers(quick, log=lambda msg: click.echo(f"[bench] {msg}", err=True))
    report["command"] = "ffebm bench solvers" + (" --quick" if quick else "") + (" --json" if as_json else "")
    if out_dir is not None:
        write_results(report, out_dir)
    click.echo(json.dumps(report, indent=1) if as_json else markdown(report))
