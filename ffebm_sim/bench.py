"""``ffebm bench solvers``: the ngspice path against a naive PySpice loop, ngspice's own
analysis time, the torch reference, two workers, memory over 20,000 solves, a digits
training epoch, the same figures on the ``[784, 100, 10]`` DRN block of
``circuits/drn_mnist.toml`` and one mnist-5k epoch of that DRN with each backend,
measured side by side in one run.

The machine may be shared: ratios are measured within one run, alternatives
interleaved round by round (median of rounds), and each block's figures carry
the load average seen while they were measured.

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
DRN_MNIST = ROOT / "circuits" / "drn_mnist.toml"
BATCH = 32
#: The issue's targets: (bound, "min" or "max").
TARGETS = {"speedup_vs_naive": (300.0, "min"), "overhead_vs_ngspice": (1.3, "max"),
           "workers2_speedup": (1.6, "min"), "reference_speedup": (20.0, "min"),
           "rss_growth_mb_20k": (20.0, "max"), "digits_epoch_2workers_s": (15.0, "max")}
#: The issue's targets on the DRN block and its mnist-5k epoch (keys of ``report["drn"]``).
DRN_TARGETS = {"overhead_vs_ngspice": (1.3, "max"), "workers2_speedup": (1.6, "min"),
               "reference_speedup": (20.0, "min"), "epoch_ngspice_2workers_s": (20.0, "max"),
               "epoch_reference_s": (3.0, "max")}


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


class TimedSolves:
    """A backend whose ``solve`` calls are timed (``seconds``): the solver's share of an EP sample."""

    def __init__(self, backend):
        self.backend, self.seconds = backend, 0.0
        self.name = backend.name

    def solve(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return self.backend.solve(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t


def interleaved(runs: dict, rounds: int) -> dict:
    """Median seconds of each callable of ``runs``, called in turn round after round (the order
    rotated every round), so a change of load on a shared machine hits all of them alike."""
    names = list(runs)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - t)
    return {name: float(np.median(t)) for name, t in times.items()}


def block_figures(circuit, batches: int, rounds: int, ref_batches: int) -> dict:
    """One block's figures, seconds per EP sample (batches of :data:`BATCH`): the ngspice path on
    one worker (and the part of it spent in the solves), ngspice's own analysis time, the torch
    reference at batch 128, two workers against one (interleaved rounds), with their ratios and
    the 1-minute load average before and after."""
    from .backends.ngspice import NgspiceBackend
    from .backends.reference import ReferenceBackend
    load = [os.getloadavg()[0]]
    work = _work(circuit, batches)
    samples = sum(len(u) for u, _ in work)
    one, measured = NgspiceBackend(reduced=True), NgspiceBackend(reduced=True, measure=True)
    two = NgspiceBackend(reduced=True, workers=2)
    ref = ReferenceBackend()
    ref_work = _work(circuit, ref_batches, batch=128, seed=3)
    timed = TimedSolves(one)
    try:
        for b in (one, measured, two, ref):
            _ep(b, circuit, *(ref_work if b is ref else work)[0])          # load decks, start workers
        measured.analysis_s = 0.0
        time_ep(measured, circuit, work)
        t = interleaved({"one": lambda: time_ep(one, circuit, work), "two": lambda: time_ep(two, circuit, work),
                         "timed": lambda: time_ep(timed, circuit, work)}, rounds)
        ref_s = interleaved({"ref": lambda: time_ep(ref, circuit, ref_work)}, max(1, rounds - 1))["ref"]
    finally:
        two.close()
    load.append(os.getloadavg()[0])
    r = {"ngspice_ep_s": t["one"] / samples, "ngspice_solves_ep_s": timed.seconds / rounds / samples,
         "ngspice_analysis_ep_s": measured.analysis_s / samples, "workers2_ep_s": t["two"] / samples,
         "reference_ep_s": ref_s / sum(len(u) for u, _ in ref_work)}
    r["overhead_vs_ngspice"] = r["ngspice_ep_s"] / r["ngspice_analysis_ep_s"]
    r["solves_overhead_vs_ngspice"] = r["ngspice_solves_ep_s"] / r["ngspice_analysis_ep_s"]
    r["workers2_speedup"] = t["one"] / t["two"]
    r["reference_speedup"] = r["ngspice_ep_s"] / r["reference_ep_s"]
    return {"layers": list(circuit.layer_sizes), "batches": batches, "rounds": rounds, "loadavg_1min": load, **r}


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


def epoch_s(spec: Path, dataset: str, backend="ngspice", workers: int = 1, batch: int = BATCH,
            seed: int = 0) -> dict:
    """Seconds of one training epoch of the model ``spec`` on ``dataset``'s training split:
    forward + EP backward + Adam step (the spec's ``lr`` and ``lr_analog``) per batch, then the
    projection onto ``[g_min, g_max]``; ``backend`` ``ngspice`` (reduced deck, ``workers``
    processes) or ``reference``."""
    import tomllib

    from .backends.ngspice import NgspiceBackend
    from .data import load_dataset
    from .model import build_model
    data = load_dataset(dataset)
    training = tomllib.loads(Path(spec).read_text()).get("training", {})
    solver = NgspiceBackend(reduced=True, workers=workers) if backend == "ngspice" else backend
    try:
        model = build_model(spec, backend=solver, seed=seed)
        groups = [{"params": model.analog_parameters(), "lr": training.get("lr_analog", 3e-2)}]
        if model.digital_parameters():
            groups.append({"params": model.digital_parameters(), "lr": training.get("lr", 1e-3)})
        optimizer = torch.optim.Adam(groups)
        n = len(data.x_train)
        if backend == "ngspice":
            solver.engine                                # start the workers before timing
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        load = [os.getloadavg()[0]]
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
        load.append(os.getloadavg()[0])
    finally:
        if backend == "ngspice":
            solver.close()
    return {"seconds": seconds, "samples": n, "train_loss": total / n, "train_accuracy": correct / n,
            "solves": model.solver_stats()["solves"], "backend": backend, "workers": workers,
            "loadavg_1min": load}


def digits_epoch_s(workers: int, batch: int = BATCH, seed: int = 0) -> dict:
    """:func:`epoch_s` of ``circuits/digits_ffebm.toml`` on sklearn digits (1437 training
    samples) with ngspice on ``workers`` processes."""
    return epoch_s(DIGITS, "digits", "ngspice", workers, batch, seed)


def _wide_block(n_in: int, hidden: int, n_out: int, seed: int):
    from .spec import block_from_dict
    return block_from_dict({"name": f"block_{n_in}_{hidden}_{n_out}", "layers": [n_in, hidden, n_out],
                            "input_gain": 2.0, "nonlinearity": {"kind": "double", "v_off": 0.0,
                                                                "diode": {"is": 1e-8, "n": 1.0}},
                            "conductances": {"low": 0.0, "high": 1e-4 * 64 / n_in, "seed": seed}})


class Laps:
    """Best (smallest) milliseconds of named steps over repeated runs: ``start()``, then
    ``lap(name)`` after each step (``lap()`` restarts the clock without recording)."""

    def __init__(self):
        self.best: dict[str, float] = {}
        self._t = time.perf_counter()

    def keep(self, name: str, seconds: float) -> None:
        self.best[name] = min(self.best.get(name, float("inf")), 1e3 * seconds)

    def start(self) -> None:
        self._t = time.perf_counter()

    def lap(self, name: str | None = None) -> None:
        now = time.perf_counter()
        if name:
            self.keep(name, now - self._t)
        self._t = now

    def analysis(self, session, run, name: str):
        """``run()`` (an analysis command on ``session``) timed as ``name``, and ngspice's own
        analysis time for it (``rusage``) as ``analysis_ms``; returns what ``run`` returns."""
        a0 = session.analysis_seconds()
        self.lap()
        failure = run()
        self.lap(name)
        self.keep("analysis_ms", session.analysis_seconds() - a0)
        self.lap()
        return failure


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
    laps = Laps()
    with s.lock:
        for _ in range(repeat):
            laps.start()
            deck = sweep_deck(job.deck, job.sources, job.values, job.deck_digest)
            laps.lap("format_ms")
            s.load(deck)
            laps.lap("parse_ms")
            failure = laps.analysis(s, lambda: sweep_samples(s, n), "dc_command_ms")
            s.read_arrays(list(job.vectors), n)
            s.unload()
            laps.lap("read_unload_ms")
            if failure:
                raise RuntimeError(f"benchmark: sweep failed: {failure}")
            s.load(fixed_only)
            laps.lap("parse_fixed_part_ms")
            s.unload()
    return {"samples": n, **laps.best}


#: (method, samples per job) compared per block; ("auto", None) is what the backend runs by default
#: (the method ``auto`` picks, jobs of :func:`~ffebm_sim.backends.jobs.chunk_size`).
VARIANTS = (("op", 16), ("sweep", 16), ("tran", 16), ("tran", 32), ("auto", None))


def _variant(method: str, chunk: int | None) -> str:
    return f"{method}/{chunk or 'default'}"


def method_table(blocks: dict, batches: int, rounds: int = 3) -> list[dict]:
    """Per block: seconds per EP sample with each method and job size of :data:`VARIANTS` (one
    worker, reduced deck; interleaved rounds, median), ngspice's own analysis time for each
    (one pass with ``measure``), the torch reference at batch 128, and what ``auto`` picks."""
    from .backends.ngspice import NgspiceBackend
    from .backends.reference import ReferenceBackend
    rows = []
    for name, c in blocks.items():
        work = _work(c, batches, seed=1)
        samples = sum(len(u) for u, _ in work)
        row = {"block": name, "layers": list(c.layer_sizes), "loadavg_1min": [os.getloadavg()[0]]}
        runs = {}
        for method, chunk in VARIANTS:
            b = NgspiceBackend(reduced=True, method=method, chunk=chunk)
            _ep(b, c, *work[0])
            runs[_variant(method, chunk)] = (lambda b=b: time_ep(b, c, work))
            m = NgspiceBackend(reduced=True, method=method, chunk=chunk, measure=True)
            _ep(m, c, *work[0])
            m.analysis_s = 0.0
            time_ep(m, c, work)
            row[f"{_variant(method, chunk)}_analysis_ep_s"] = m.analysis_s / samples
        for key, seconds in interleaved(runs, rounds).items():
            row[f"{key}_ep_s"] = seconds / samples
        row["auto"] = NgspiceBackend(reduced=True).jobs(c, work[0][0], None)[0][0].method
        row["fastest"] = min(runs, key=lambda k: row[f"{k}_ep_s"])
        ref = ReferenceBackend()
        row["reference_ep_s"] = time_ep(ref, c, _work(c, 1, batch=128, seed=2), repeat=2)
        row["loadavg_1min"].append(os.getloadavg()[0])
        rows.append(row)
    return rows


def tran_costs(circuit, n: int, repeat: int = 20) -> dict:
    """Milliseconds one ``tran`` job of ``n`` samples spends in each step (one process, reduced deck,
    resident circuit already loaded, best of ``repeat``): giving every source its values (the PWL
    path: one rawfile written and ``load`` ed, one ``alter @SRC[pwl] = vector`` per source), the
    ``tran`` command, ngspice's own analysis time (``rusage``) for it (the best over both paths),
    reading the vectors and destroying the plots; and the same with the ``EXTERNAL`` sources
    (``external_*``, when :mod:`.backends.extsrc` builds: what jobs then run)."""
    from .backends.deckedit import pwl_rawfile, pwl_vector, resident_deck
    from .backends.jobs import tran_samples
    from .backends.ngspice import NgspiceBackend
    from .backends.session import session
    s = session()
    works = [_work(circuit, 1, batch=n, seed=5 + k)[0][0] for k in range(2)]
    jobs = [NgspiceBackend(reduced=True, chunk=n).jobs(circuit, u, None)[0][0] for u in works]
    laps = Laps()
    with s.lock:
        deck, dg = resident_deck(jobs[0].deck, jobs[0].deck_digest, jobs[0].sources)
        s.load(deck, dg)
        for r in range(repeat):
            job = jobs[r % 2]                   # alternate, so every source's values change
            laps.start()
            s.set_pwls(list(job.sources), pwl_rawfile(job.values), [pwl_vector(k) for k in range(len(job.sources))],
                       [tuple(c) for c in job.values.T.tolist()])
            laps.lap("alter_ms")
            failure = laps.analysis(s, lambda: tran_samples(s, n), "tran_command_ms")
            s.read_arrays(["time"] + list(job.vectors), s.vector_length("time"))
            s.destroy_plots()
            laps.lap("read_destroy_ms")
            if failure:
                raise RuntimeError(f"benchmark: tran failed: {failure}")
        s.unload()
        table = s.external_table()          # the path jobs take when the C extension builds
        if table is not None:
            deck, dg = resident_deck(jobs[0].deck, jobs[0].deck_digest, jobs[0].sources, external=True)
            s.load(deck, dg)
            table.set_names(jobs[0].sources)
            for r in range(repeat):
                job = jobs[r % 2]
                laps.start()
                table.set_values(job.values)
                laps.lap("external_values_ms")
                failure = laps.analysis(s, lambda: tran_samples(s, n), "external_tran_command_ms")
                s.read_arrays(["time"] + list(job.vectors), s.vector_length("time"))
                s.destroy_plots()
                laps.lap("external_read_destroy_ms")
                if table.clear_values() or failure:
                    raise RuntimeError(f"benchmark: tran with EXTERNAL sources failed: {failure or 'a value missed'}")
            s.unload()
    return {"samples": n, **laps.best}


# ---- the whole run ----------------------------------------------------------------------------

#: The steps of :func:`run_solvers`, in order (the progress line's total); ``full``: not run with ``--quick``.
#: The reference-solver section (:mod:`.bench_reference`) is one step: its own messages show as
#: what that step is doing, not as steps.
STEPS = (("naive", False), ("small", False), ("drn", False), ("memory", True), ("digits2", False),
         ("digits1", True), ("drn_epoch_ngspice", True), ("drn_epoch_reference", True), ("costs", False),
         ("methods", False), ("reference", False))


def solver_steps(quick: bool) -> list[str]:
    """The names of the steps :func:`run_solvers` runs (``--quick`` or not)."""
    return [name for name, full in STEPS if not (quick and full)]


def run_solvers(quick: bool = False, log=lambda msg: None) -> dict:
    """The solver benchmark; a progress line every few seconds names the step running (ffebm_sim.progress)."""
    from .progress import Progress
    names = solver_steps(quick)
    bar = Progress(len(names), "bench solvers", unit="steps")
    started: list[str] = []

    def step(name, msg):
        if name != (names + [None])[len(started)]:
            raise RuntimeError(f"bench: step {name!r} is not step {len(started) + 1} of {names}")
        started.append(name)
        if bar.postfix:            # the step before this one is done
            bar.update(1)
        bar.set_postfix(now=msg)
        log(msg)

    def within(msg):               # what the running step is doing (no new step)
        bar.set_postfix(now=msg)
        log(msg)
    try:
        out = _run_solvers(quick, step, within)
        bar.update(1)              # the last step is done
        return out
    finally:
        bar.close()


def drn_block():
    """The energy block of ``circuits/drn_mnist.toml`` (``[784, 100, 10]``, 1568 sources)."""
    from .model import build_model
    return build_model(DRN_MNIST, backend="reference").energy_blocks[0].circuit


def _run_solvers(quick: bool, log, within=lambda msg: None) -> dict:
    """The measurements; ``log(step, message)`` starts each step of :data:`STEPS`, ``within(message)``
    says what the reference section is doing."""
    from .backends.jobs import DEFAULT_CHUNK, LARGE_CHUNK
    from .model import build_model
    from .spec import load_block
    # One torch thread, as `ffebm` itself runs: idle OpenMP threads of the parent spin and
    # take the cores the ngspice workers need (2 threads made 2 workers no faster than 1).
    torch.set_num_threads(1)
    small, drn = load_block(SMALL), drn_block()
    out: dict = {"machine": machine(), "quick": quick, "block": small.name, "layers": list(small.layer_sizes),
                 "batch": BATCH, "chunk": f"{DEFAULT_CHUNK} or {LARGE_CHUNK} (`jobs.chunk_size`)", "deck": "reduced",
                 "method": "auto"}
    r: dict = {}
    log("naive", "naive PySpice loop")
    r["naive_pyspice_ep_s"], out["naive_max_abs_dv_volts"] = naive_ep_s(small, 3 if quick else 8)
    log("small", "block_small: one worker, analysis time, reference, two workers")
    figures = block_figures(small, batches=4 if quick else 12, rounds=2 if quick else 3, ref_batches=2 if quick else 4)
    out["small"] = figures
    for key in ("ngspice_ep_s", "ngspice_analysis_ep_s", "reference_ep_s", "workers2_ep_s", "workers2_speedup"):
        r[key] = figures[key]
    log("drn", "drn_mnist [784, 100, 10]: one worker, analysis time, reference, two workers")
    out["drn"] = {"block": drn.name, **block_figures(drn, batches=2 if quick else 4, rounds=2 if quick else 3,
                                                     ref_batches=1 if quick else 2)}
    if quick:
        r["rss_growth_mb_20k"] = None
    else:
        log("memory", "memory over 20,000 solves")
        rss = rss_growth_mb(small)
        r["rss_growth_mb_20k"] = rss["rss_growth_mb"]
        out["rss"] = rss
    log("digits2", "digits epoch, 2 workers")
    epoch2 = digits_epoch_s(2)
    r["digits_epoch_2workers_s"] = epoch2["seconds"]
    out["digits_epoch_2workers"] = epoch2
    if not quick:
        log("digits1", "digits epoch, 1 worker")
        epoch1 = digits_epoch_s(1)
        r["digits_epoch_1worker_s"] = epoch1["seconds"]
        out["digits_epoch_1worker"] = epoch1
        log("drn_epoch_ngspice", "drn_mnist epoch on mnist-5k, ngspice, 2 workers")
        out["drn_epoch_ngspice_2workers"] = epoch_s(DRN_MNIST, "mnist-5k", "ngspice", workers=2)
        log("drn_epoch_reference", "drn_mnist epoch on mnist-5k, reference")
        out["drn_epoch_reference"] = epoch_s(DRN_MNIST, "mnist-5k", "reference")
        out["drn"]["epoch_ngspice_2workers_s"] = out["drn_epoch_ngspice_2workers"]["seconds"]
        out["drn"]["epoch_reference_s"] = out["drn_epoch_reference"]["seconds"]
    r["speedup_vs_naive"] = r["naive_pyspice_ep_s"] / r["ngspice_ep_s"]
    r["overhead_vs_ngspice"] = r["ngspice_ep_s"] / r["ngspice_analysis_ep_s"]
    r["reference_speedup"] = r["ngspice_ep_s"] / r["reference_ep_s"]
    out["results"] = r
    out["targets"] = _targets(TARGETS, r)
    out["drn_targets"] = _targets(DRN_TARGETS, out["drn"])
    log("costs", "where a job's time goes")
    out["chunk_costs"] = [chunk_costs(small, n) for n in (16, 32, 64)]
    out["tran_costs"] = [{"block": "block_small", **tran_costs(small, n)} for n in (16, 32)] + \
        [{"block": drn.name, **tran_costs(drn, n, repeat=5 if quick else 10)} for n in (16, 32)]
    log("methods", "methods and job sizes per block size")
    blocks = {"block_small": small}
    digits = build_model(DIGITS, backend="reference")
    for k, b in enumerate(digits.energy_blocks):
        blocks[f"digits_e{k + 1}"] = b.circuit
    if not quick:
        blocks["block_128_64_10"] = _wide_block(128, 64, 10, seed=7)
        blocks["block_256_128_10"] = _wide_block(256, 128, 10, seed=8)
    blocks[drn.name] = drn
    out["methods"] = method_table(blocks, 2 if quick else 4, rounds=2 if quick else 3)
    from .bench_reference import run_reference
    log("reference", "the reference solver, layered vs dense")
    out["reference_solver"] = run_reference(quick, within)      # layered vs dense reference (issue 16)
    out["machine"]["loadavg_end"] = list(os.getloadavg())
    return out


def _targets(targets: dict, figures: dict) -> dict:
    return {k: {"target": f"{'>=' if kind == 'min' else '<='} {bound:g}", "value": figures.get(k),
                "met": _met(figures.get(k), bound, kind)} for k, (bound, kind) in targets.items()}


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
        lines += _target_rows(report["targets"], f)
    if report.get("drn"):
        lines += _block_lines(report, f)
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
    if report.get("tran_costs"):
        lines += ["", "## Where one `tran` job's time goes (resident circuit loaded, one process, ms per job, best of 10-20)", "",
                  "| block | samples | values in (PWL: rawfile `load` + `alter @SRC[pwl] = vector`; EXTERNAL: the C table) | "
                  "`tran` command | its analysis (`rusage`, best of both) | "
                  "read + destroy | job / analysis |", "|---|---|---|---|---|---|---|"]
        for c in report["tran_costs"]:
            for how, prefix, values in (("PWL + alter", "", "alter_ms"), ("EXTERNAL", "external_", "external_values_ms")):
                if values not in c:
                    continue
                steps = (c[values], c[prefix + "tran_command_ms"], c[prefix + "read_destroy_ms"])
                lines.append(f"| {c['block']} | {c['samples']} | {how}: {steps[0]:.2f} | {steps[1]:.2f} | "
                             f"{c['analysis_ms']:.2f} | {steps[2]:.2f} | {sum(steps) / max(c['analysis_ms'], 1e-9):.2f} |")
    lines += ["", f"Naive loop agrees with the reference to {report['naive_max_abs_dv_volts']:.1e} V. "
              "A digits epoch: forward + EP backward + Adam step over the 1437 training samples of "
              "sklearn digits in batches of 32 (`ffebm_sim.model.build_model`).", "",
              "## Methods and job sizes per block size (one worker, reduced deck, s per EP sample)", "",
              "Method/samples per job (`auto/default`: what the backend runs, the method `auto` picks in jobs "
              "of `jobs.chunk_size`: 16 for the free phase's 32 samples, 32 for the nudged request's 64); in "
              "parentheses ngspice's own analysis time. Interleaved rounds, median; load average (1 min) before "
              "and after each block.", "",
              "| block | layers | " + " | ".join(_variant(m, n) for m, n in VARIANTS) +
              " | reference (batch 128) | fastest | auto picks | load |",
              "|---|---|" + "---|" * (len(VARIANTS) + 4)]
    for row in report["methods"]:
        cells = [f"{f(row.get(_variant(m, n) + '_ep_s'))} ({f(row.get(_variant(m, n) + '_analysis_ep_s'))})"
                 for m, n in VARIANTS]
        load = "-".join(f"{x:.1f}" for x in row.get("loadavg_1min", []))
        lines.append(f"| {row['block']} | {row['layers']} | " + " | ".join(cells) +
                     f" | {f(row['reference_ep_s'])} | {row.get('fastest', '')} | {row['auto']} | {load} |")
    if report.get("reference_solver"):
        from .bench_reference import markdown as reference_markdown
        lines += [""] + reference_markdown(report["reference_solver"])
    lines += ["", f"Reproduce: `{report.get('command', 'ffebm bench solvers')}`.", ""]
    return "\n".join(lines)


def _target_rows(targets: dict, f) -> list[str]:
    rows = []
    for name, t in targets.items():
        met = "skipped" if t["met"] is None else ("yes" if t["met"] else "**no**")
        rows.append(f"| {name} | {t['target']} | {f(t['value'])} | {met} |")
    return rows


def _block_lines(report: dict, f) -> list[str]:
    """The per-block table (block_small and the DRN block) and the DRN's mnist-5k epochs."""
    blocks = [("block_small", report.get("small")), (report["drn"].get("block", "drn"), report["drn"])]
    blocks = [(name, b) for name, b in blocks if b]
    rows = [("ngspice path, one worker, s per EP sample", "ngspice_ep_s", ""),
            ("of which in the three solves", "ngspice_solves_ep_s", ""),
            ("ngspice's own analysis time, s per EP sample", "ngspice_analysis_ep_s", ""),
            ("two workers, s per EP sample", "workers2_ep_s", ""),
            ("torch reference at batch 128, s per EP sample", "reference_ep_s", ""),
            ("overhead_vs_ngspice (EP sample / analysis time)", "overhead_vs_ngspice", "x"),
            ("solves_overhead_vs_ngspice (the solves / analysis time)", "solves_overhead_vs_ngspice", "x"),
            ("workers2_speedup (interleaved rounds)", "workers2_speedup", "x"),
            ("reference_speedup (ngspice path / reference)", "reference_speedup", "x")]
    lines = ["", "## block_small and the DRN block of `circuits/drn_mnist.toml`", "",
             "Batches of 32, reduced deck, method `auto`; EP sample = free, +beta, -beta and the EP arithmetic "
             "(energy partials) in the parent. Load average (1 min) before-after each block's measurements.", "",
             "| quantity | " + " | ".join(f"{name} {b['layers']}" for name, b in blocks) + " |",
             "|---|" + "---|" * len(blocks)]
    for label, key, unit in rows:
        lines.append(f"| {label} | " + " | ".join(f(b.get(key), unit) for _, b in blocks) + " |")
    lines.append("| load average | " + " | ".join("-".join(f"{x:.1f}" for x in b["loadavg_1min"]) for _, b in blocks) + " |")
    epochs = [(label, report[key]) for key, label in (("drn_epoch_ngspice_2workers", "ngspice, 2 workers"),
                                                       ("drn_epoch_reference", "reference")) if report.get(key)]
    if epochs:
        lines += ["", "One mnist-5k epoch of `circuits/drn_mnist.toml` (4000 training images, batches of 32, "
                  "forward + EP backward + Adam step):", "", "| backend | seconds | train accuracy | load average |",
                  "|---|---|---|---|"]
        lines += [f"| {label} | {e['seconds']:.1f} | {100 * e['train_accuracy']:.1f} % | "
                  f"{'-'.join(f'{x:.1f}' for x in e['loadavg_1min'])} |" for label, e in epochs]
    if report.get("drn_targets"):
        lines += ["", "Targets on the DRN block:", "", "| figure | target | value | met |", "|---|---|---|---|"]
        lines += _target_rows(report["drn_targets"], f)
    return lines


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
