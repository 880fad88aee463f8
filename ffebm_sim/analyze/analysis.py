"""``ffebm analyze``: power, settling, energy and conductance tables of a trained ff-EBM, by ngspice.

For every energy block of the model, on ``samples`` inputs drawn from the
data set's test split (seeded) and propagated through the trained chain:

1. **Static power** (:mod:`.phases`, :mod:`.power`): an ngspice operating point
   of the emitted deck per sample, every node read (crossbar internal nodes
   included); every branch's power from :mod:`ffebm_sim.elements` at those
   voltages (wires, mismatch and temperature in the elements), split by kind
   and layer; energy conservation checked against the power the sources
   deliver according to ngspice's own branch currents
   (``power_balance_rel_error``), and the node voltages against the torch
   reference solver. Free phase, and the nudged phases EP runs in training
   (``+beta`` and, when centered, ``-beta``, with the nudge EP would apply
   for that sample's true loss gradient).
2. **Settling** (:mod:`.settling`): ngspice ``tran`` with node capacitances:
   free phase stepped from the previous sample's equilibrium to this one's;
   nudged phases stepped from the free equilibrium.
3. **Energy per inference**: the power the delivering sources supply,
   integrated from the step to the settling time (per sample; mean reported).
4. **Tables** (:mod:`.tables`) and **pictures** (:mod:`.figures`), a
   ``report.md`` and ``analysis.json``.

Options read from the model spec's energy-block entries (and stripped before
the model is built, so a spec that carries them still loads):
``node_capacitance_f``, ``wire_capacitance_f`` (F) and ``device`` (a preset of
:mod:`ffebm_sim.hardware`). Command-line values override them for every block.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..backends.reference import ReferenceBackend
from ..blocks import EnergyBlock, Quantizer
from ..circuit import node_name
from ..data import load_dataset
from ..elements import Elements, law_currents_a
from ..ep import current_nudge_amplitudes, resistive_nudge_conductance_s
from ..errors import SpecError
from ..model import FFEBM, build_model
from ..validate import apply_checkpoint, check_model_data, check_model_memory
from ..netlist import emit_deck
from ..outputs import check_output_dir, dir_mode, user_error, write_marker
from ..progress import Progress
from ..spec import read_toml
from . import figures
from .phases import Phase, solve_phase
from .power import element_powers
from .settling import (DEFAULT_NODE_CAPACITANCE_F, DEFAULT_WIRE_CAPACITANCE_F, SETTLE_FRACTION, BAND_FLOOR_V,
                       check_capacitance, kron_reduced_deck, node_capacitances, simulate_step, slowest_time_constant)
from .spice import dc_sweep
from .tables import block_spec_toml, npz_bytes, read_table, table_csv

#: Keys `ffebm analyze` reads from a model spec's energy-block entry.
ANALYSIS_KEYS = ("node_capacitance_f", "wire_capacitance_f", "device")
DATA_CHOICES = ("digits", "mnist-5k")
WAVEFORM_OUTPUTS = 4


@dataclass
class BlockInfo:
    index: int                      # 1-based among energy blocks
    module: EnergyBlock
    circuit_table: dict             # the block spec as parsed (for the round-trip spec)
    g_min_s: float
    g_max_s: float | None
    adc: Quantizer | None
    node_capacitance_f: float
    wire_capacitance_f: float
    device: str | None


@dataclass
class AnalyzeOptions:
    samples: int = 16
    data: str | None = None
    seed: int = 0
    device: str | None = None
    node_capacitance_f: float | None = None
    wire_capacitance_f: float | None = None
    nudged: bool = True


# ---- the model ---------------------------------------------------------------------------------

def load_for_analysis(model_path: str | Path, checkpoint: str | Path, options: AnalyzeOptions) -> tuple[FFEBM, list[BlockInfo]]:
    """The trained model (reference backend) and, per energy block, what the analysis needs."""
    model_path = Path(model_path)
    spec = read_toml(model_path)
    blocks = spec.get("blocks")
    if not isinstance(blocks, list):
        raise SpecError(f"{model_path}: not a model spec (no [[blocks]]); `ffebm analyze` takes a model spec and a checkpoint")
    spec = dict(spec)
    spec.setdefault("name", model_path.stem)
    entries, stripped = [], []
    for k, entry in enumerate(blocks):
        if isinstance(entry, dict) and entry.get("type") == "energy":
            entry = dict(entry)
            stripped.append({key: entry.pop(key) for key in ANALYSIS_KEYS if key in entry})
            if isinstance(entry.get("circuit"), dict):
                entry["circuit"] = dict(entry["circuit"])
                entry["circuit"].setdefault("name", f"{model_path.stem}_e{k}")   # as `ffebm train` names it
        entries.append(entry)
    spec["blocks"] = entries
    model = build_model(spec, backend="reference", base_dir=model_path.parent)
    apply_checkpoint(model, checkpoint, str(model_path))      # names, shapes, conductances in range
    model.eval()
    layers = list(model.layers)
    energy_entries = [e for e in entries if isinstance(e, dict) and e.get("type") == "energy"]
    infos = []
    for n, (module, entry, extra) in enumerate(zip(model.energy_blocks, energy_entries, stripped), start=1):
        where = f"energy block {n}"
        pos = next(i for i, m in enumerate(layers) if m is module)
        adc = layers[pos + 1] if pos + 1 < len(layers) and isinstance(layers[pos + 1], Quantizer) \
            and layers[pos + 1].kind == "adc" else None
        node_c = options.node_capacitance_f if options.node_capacitance_f is not None else \
            extra.get("node_capacitance_f", DEFAULT_NODE_CAPACITANCE_F)
        wire_c = options.wire_capacitance_f if options.wire_capacitance_f is not None else \
            extra.get("wire_capacitance_f", DEFAULT_WIRE_CAPACITANCE_F)
        device = options.device if options.device is not None else extra.get("device")
        if device is not None and not isinstance(device, str):
            raise SpecError(f"{where}.device: {device!r}; a device preset name")
        if "circuit" in entry:
            table = entry["circuit"]
        else:
            table = dict(read_toml(model_path.parent / entry["spec"]))
            table.setdefault("name", module.template.name)
        infos.append(BlockInfo(n, module, table, module.g_min_s, module.g_max_s, adc,
                               check_capacitance(f"{where}.node_capacitance_f", node_c, allow_zero=False),
                               check_capacitance(f"{where}.wire_capacitance_f", wire_c, allow_zero=True), device))
    if not infos:
        raise SpecError(f"{model_path}: the model has no energy block to analyze")
    if options.device is not None or any(i.device for i in infos):
        from ..hardware import get_device
        for i in infos:
            if i.device:
                get_device(i.device, 0.0, 1.0)          # an unknown preset is a SpecError now, not later
    return model, infos


def block_signals(model: FFEBM, x: torch.Tensor, y: torch.Tensor) -> dict[int, dict]:
    """Per energy block (by id): its inputs ``u`` and ``delta = dL/dV_out`` for the batch (true loss)."""
    captured: dict[int, dict] = {id(b): {} for b in model.energy_blocks}
    handles = []

    def pre(mod, args):
        captured[id(mod)]["u"] = args[0].detach().to(torch.float64).clone()

    def post(mod, args, out):
        if out.requires_grad:
            def store(g, mod=mod):
                captured[id(mod)]["delta"] = (g.detach() * mod.output_gain).to(torch.float64).clone()
            out.register_hook(store)

    for b in model.energy_blocks:
        handles.append(b.register_forward_pre_hook(pre))
        handles.append(b.register_forward_hook(post))
    try:
        with torch.enable_grad():
            loss, _ = model.loss(x, y)
            if loss.requires_grad:
                loss.backward()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    return captured


# ---- one block ---------------------------------------------------------------------------------

def _stats(values) -> dict:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "median": None, "worst": None, "min": None}
    return {"mean": float(v.mean()), "median": float(np.median(v)), "worst": float(v.max()), "min": float(v.min())}


def _integrate(t: np.ndarray, p: np.ndarray, t_end: float) -> float:
    if not np.isfinite(t_end) or t_end <= 0 or len(t) < 2:
        return 0.0 if t_end == 0 else float("nan")
    t_end = min(t_end, float(t[-1]))
    k = int(np.searchsorted(t, t_end))
    tt = np.concatenate([t[:k], [t_end]])
    pp = np.concatenate([p[:k], [np.interp(t_end, t, p)]])
    return float(np.sum(0.5 * (pp[1:] + pp[:-1]) * np.diff(tt)))


def analyze_block(info: BlockInfo, signals: dict, model: FFEBM, y: torch.Tensor, options: AnalyzeOptions,
                  files: dict[str, bytes], log) -> dict:
    """Everything ``ffebm analyze`` reports for one energy block (module docstring); writes into ``files``."""
    circuit = info.module.circuit.as_emitted()
    u = signals["u"].numpy()
    phases = _solve_phases(info, circuit, u, signals, model, y, options, log)
    settling = _settle_phases(info, circuit, u, phases, log)
    summaries = {ph.name: _phase_summary(ph, settling, free=k == 0) for k, ph in enumerate(phases)}
    _write_tables(info, circuit, files)
    pics, iv_rel = _write_figures(info, circuit, phases, settling, files)
    return _block_result(info, circuit, u, phases, settling, summaries, pics, iv_rel)


# ---- operating points -------------------------------------------------------------------------

def _solve_phases(info: BlockInfo, circuit, u, signals, model: FFEBM, y, options: AnalyzeOptions, log) -> list[Phase]:
    """ngspice's operating points: the free phase, then the nudged phases EP applies for each sample's loss gradient."""
    block, name, B = info.module, circuit.name, u.shape[0]
    t0 = time.perf_counter()
    bar = Progress(B * (1 + (0 if not options.nudged else 2 if block.centered else 1)),
                   f"analyze {name}: operating points", unit="samples")
    free = solve_phase("free", circuit, u)
    bar.update(B)
    phases = [free]
    if options.nudged:
        for ph_name, kw in _nudges(info, circuit, free, signals, model, y):
            phases.append(solve_phase(ph_name, circuit, u, **kw))
            bar.update(B)
    bar.close()
    log(f"{name}: operating points of {len(phases)} phase(s) x {B} samples in {time.perf_counter() - t0:.1f} s")
    return phases


def _nudges(info: BlockInfo, circuit, free: Phase, signals, model: FFEBM, y) -> list[tuple[str, dict]]:
    """(phase name, ``solve_phase`` nudge keywords) of the nudged phases training runs for this block."""
    block = info.module
    signs = (+1.0, -1.0) if block.centered else (+1.0,)
    names = {+1.0: "nudged +beta", -1.0: "nudged -beta"}
    if block is model.energy_blocks[-1] and model.loss_kind == "mse" and model.resistive:
        targets = model.target_voltages(y, circuit.n_outputs).numpy()
        out = circuit.layer_slice(circuit.depth)
        beta_s = resistive_nudge_conductance_s(circuit, torch.from_numpy(free.x[:, out]), torch.from_numpy(targets),
                                               block.beta_v)
        return [(names[s], {"g_nudge": s * beta_s, "targets": targets}) for s in signs]
    if "delta" not in signals:
        return []
    delta = signals["delta"].numpy()
    beta = current_nudge_amplitudes(circuit, torch.from_numpy(delta), block.beta_v).numpy()
    return [(names[s], {"currents": -s * beta[:, None] * delta}) for s in signs]


def _reference_dv(circuit, u, free: Phase) -> float:
    """Largest |V_ngspice - V_reference| over the free nodes of the converged samples (V)."""
    ref = ReferenceBackend(ideal_as_clip=False).solve(circuit, torch.from_numpy(u))
    return float(np.nanmax(np.abs(ref.node_voltages_v.numpy() - free.x))) if ref.ok else float("nan")


# ---- settling ---------------------------------------------------------------------------------

@dataclass
class _Settling:
    """Per phase name: per-sample settling, energy, time constants, messages; the worst waveform."""

    results: dict
    worst: dict
    prev_x: np.ndarray          # (B, n_free): where the free phase's transients start
    adc_half_lsb: float | None
    caps: np.ndarray


def _adc_half_lsb(info: BlockInfo) -> float | None:
    adc = info.adc
    if adc is None or not adc.bits:
        return None
    return 0.5 * (adc.hi - adc.lo) / (2 ** adc.bits - 1) / abs(info.module.output_gain)


def _settle_phases(info: BlockInfo, circuit, u, phases: list[Phase], log) -> _Settling:
    """ngspice transients of every sample of every phase (free: from the previous sample; nudged: from free)."""
    B, free, name = u.shape[0], phases[0], circuit.name
    t0 = time.perf_counter()
    caps = node_capacitances(circuit, info.node_capacitance_f, info.wire_capacitance_f)
    prev_x = free.x[(np.arange(B) - 1) % B] if B > 1 else \
        solve_phase("start", circuit, np.zeros_like(u)).x        # one sample: step from the equilibrium at zero input
    out = _Settling({}, {}, prev_x, _adc_half_lsb(info), caps)
    bar = Progress(B * len(phases), f"analyze {name}: settling", unit="transients")
    for k, ph in enumerate(phases):
        r = {"settle": [], "settle_adc": [], "energy": [], "tau": [], "messages": []}
        worst = None
        for b in range(B):
            bar.set(k * B + b)
            start = prev_x[b] if ph is free else free.x[b]
            if ph.messages[b] or not np.isfinite(start).all():
                for key in ("settle", "settle_adc", "energy", "tau"):
                    r[key].append(None)
                r["messages"].append(ph.messages[b] or "start point failed")
                continue
            tr, band, tau, energy = _settle_one(circuit, u[b], ph, b, start, caps, out.adc_half_lsb if ph is free else None)
            if tr.message:
                r["messages"].append(tr.message)
            settled = tr.time_s.size > 0
            r["settle"].append(tr.settling_s if settled else None)
            r["settle_adc"].append(tr.settling_adc_s if settled else None)
            r["energy"].append(energy)
            r["tau"].append(tau)
            key = tr.settling_s if not np.isnan(tr.settling_s) else -1.0      # inf (not settled) is the worst
            if settled and (worst is None or key > worst[0]):
                worst = (key, b, tr, band, ph.x[b])
        out.results[ph.name], out.worst[ph.name] = r, worst
    bar.close()
    log(f"{name}: {B * len(phases)} transients in {time.perf_counter() - t0:.1f} s")
    return out


def _settle_one(circuit, u_b, ph: Phase, b: int, start, caps, adc_half_lsb):
    """One transient: (Transient, band (V), slowest time constant (s), supplied energy to settling (J) or None)."""
    out_slice = circuit.layer_slice(circuit.depth)
    final = ph.x[b]
    move = np.abs(final[out_slice] - start[out_slice])
    if ph.name == "free":
        band = SETTLE_FRACTION * np.maximum(np.abs(final[out_slice]), move)
    else:
        band = np.full(circuit.n_outputs, SETTLE_FRACTION * float(move.max()))
    band = np.maximum(band, BAND_FLOOR_V)
    kw = ph.nudge_kwargs(b)
    deck = kron_reduced_deck(emit_deck(circuit, u_b, control=False, **kw), ph.elements)
    tau = slowest_time_constant(circuit, np.stack([start, final]), caps, ph.g_nudge)
    tr = simulate_step(circuit, deck, start, final, caps, out_slice, band, adc_half_lsb, ph.g_nudge, tau)
    if tr.time_s.size == 0:
        return tr, band, tau, None
    # the crossbar's internal nodes hold no charge: element_powers solves them from the free nodes at each instant
    pw = element_powers(circuit, u_b, tr.node_voltages_v, elements=ph.elements, **kw)
    return tr, band, tau, _integrate(tr.time_s, pw.supplied_w, tr.settling_s)


# ---- summaries --------------------------------------------------------------------------------

def _mean_by_layer(a: np.ndarray | None, good) -> list[float] | None:
    return None if a is None or not good.any() else [float(v) for v in a[good].mean(0)]


def _phase_summary(ph: Phase, settling: _Settling, free: bool) -> dict:
    """One phase's numbers for ``analysis.json``: power (mean over the converged samples), balance, settling, energy."""
    r = settling.results[ph.name]
    good, p = ph.good, ph.power
    any_good = bool(good.any())

    def over(values, how):
        return float(how(values[good])) if any_good else None

    s, e = _stats(r["settle"]), _stats(r["energy"])
    balance = float(ph.balance.max()) if ph.balance.size else None
    out = {
        "samples": int(good.sum()),
        "power_w_mean": over(p.total_w, np.mean), "power_w_median": over(p.total_w, np.median),
        "power_w_max": over(p.total_w, np.max),
        "network_power_w_mean": over(p.network_w, np.mean),
        "absorbed_by_sources_w_mean": over(p.absorbed_w, np.mean),
        "power_by_layer_w_mean": _mean_by_layer(p.layers_w, good),
        "resistors_by_layer_w_mean": _mean_by_layer(p.resistors_w, good),
        "wires_by_layer_w_mean": _mean_by_layer(p.wires_w, good),
        "nonlinear_by_layer_w_mean": _mean_by_layer(p.nonlinear_w, good),
        "bias_by_layer_w_mean": _mean_by_layer(p.bias_w, good),
        "sources_delivered_w_mean": {k: float(v[good].sum(1).mean()) for k, v in p.sources_w.items()} if any_good else {},
        "power_balance_rel_error": balance,
        "power_balance_rel_error_mean": float(ph.balance.mean()) if ph.balance.size else None,
        "tellegen_max_rel": balance,             # the earlier name of power_balance_rel_error
        "settling_s_median": s["median"], "settling_s_worst": s["worst"], "settling_s_mean": s["mean"],
        "energy_j_mean": e["mean"], "energy_j_median": e["median"], "energy_j_worst": e["worst"],
        "tau_max_s_median": _stats(r["tau"])["median"],
        "not_settled": int(sum(1 for v in r["settle"] if v is not None and not np.isfinite(v))),
        "failures": sorted({m for m in list(ph.messages) + r["messages"] if m})[:5],
    }
    if free and settling.adc_half_lsb is not None:
        sa = _stats(r["settle_adc"])
        out.update(settling_adc_s_median=sa["median"], settling_adc_s_worst=sa["worst"],
                   adc_half_lsb_v=settling.adc_half_lsb)
    return out


def _non_idealities(circuit) -> dict:
    mm = circuit.mismatch
    return {"wire_resistance_ohm": circuit.wire_resistance_ohm, "temperature_c": circuit.temperature_c,
            "mismatch": None if mm is None else {"conductance_sigma": mm.conductance_sigma, "is_sigma": mm.is_sigma,
                                                 "n_sigma": mm.n_sigma, "seed": int(mm.seed)}}


def _block_result(info: BlockInfo, circuit, u, phases, settling: _Settling, summaries, pics, iv_rel) -> dict:
    fs = summaries["free"]
    nudged = [summaries[ph.name] for ph in phases[1:]]
    training_energy = None
    if nudged and fs["energy_j_mean"] is not None and all(n["energy_j_mean"] is not None for n in nudged):
        training_energy = fs["energy_j_mean"] + sum(n["energy_j_mean"] for n in nudged)
    balances = [s["power_balance_rel_error"] for s in summaries.values() if s["power_balance_rel_error"] is not None]
    name = circuit.name
    return {
        "name": name, "index": info.index, "layers": list(circuit.layer_sizes),
        "nonlinearity": [None if circuit.layer_nonlinearity(k) is None else circuit.layer_nonlinearity(k).kind
                         for k in range(1, circuit.depth + 1)],
        "resistors": int(sum(int((np.asarray(g) > 0).sum()) for g in circuit.conductances)),
        "non_idealities": _non_idealities(circuit),
        "nodes_solved": phases[0].elements.n_unknown,
        "samples": u.shape[0],
        "node_capacitance_f": info.node_capacitance_f, "wire_capacitance_f": info.wire_capacitance_f,
        "node_capacitance_f_mean": float(settling.caps.mean()),
        # the headline numbers (free phase = inference)
        "power_w_mean": fs["power_w_mean"],
        "settling_s_median": fs["settling_s_median"],
        "settling_s_worst": fs["settling_s_worst"],
        "energy_j_per_inference": fs["energy_j_mean"],
        "energy_j_per_training_sample": training_energy,
        "power_balance_rel_error": max(balances) if balances else None,
        "reference_max_abs_dv_v": _reference_dv(circuit, u, phases[0]),
        "iv_max_rel_diff": iv_rel,
        "device": info.device, "adc_half_lsb_v": settling.adc_half_lsb,
        "phases": summaries,
        "tables": {"csv": f"tables/{name}.csv", "npz": f"tables/{name}.npz", "spec": f"tables/{name}.toml"},
        "figures": pics,
    }


# ---- tables -----------------------------------------------------------------------------------

def _write_tables(info: BlockInfo, circuit, files: dict[str, bytes]) -> None:
    """The conductance table (CSV), its npz and the block spec that rebuilds the trained block."""
    name = circuit.name
    device = None
    if info.device:
        from ..hardware import get_device
        g_hi = info.g_max_s if info.g_max_s is not None else max(float(np.max(g)) for g in circuit.conductances)
        if not g_hi > info.g_min_s:
            raise SpecError(f"{name}: device range [{info.g_min_s}, {g_hi}] S is empty; set g_max in the energy block entry")
        device = get_device(info.device, info.g_min_s, g_hi)
    csv_text = table_csv(info.module.circuit, device)
    files[f"tables/{name}.csv"] = csv_text.encode()
    with tempfile.TemporaryDirectory() as tmp:       # the npz is built from the CSV: what a user gets back
        (Path(tmp) / "t.csv").write_text(csv_text)
        arrays = read_table(Path(tmp) / "t.csv")
    files[f"tables/{name}.npz"] = npz_bytes(arrays)
    files[f"tables/{name}.toml"] = block_spec_toml(
        info.circuit_table, f"{name}.npz",
        f"{name}: block spec with the trained conductances (written by ffebm analyze).\n"
        f"ffebm netlist tables/{name}.toml -o {name}.cir   # a standalone deck").encode()


# ---- figures ----------------------------------------------------------------------------------

def _write_figures(info: BlockInfo, circuit, phases: list[Phase], settling: _Settling,
                   files: dict[str, bytes]) -> tuple[dict, float | None]:
    """(the figures' paths, the I-V sweep's largest relative difference from the element law)."""
    name, free = circuit.name, phases[0]
    pics = {"conductances": f"figures/{name}_conductances.png", "node_voltages": f"figures/{name}_node_voltages.png"}
    files[pics["conductances"]] = figures.conductance_histograms(name, list(info.module.circuit.conductances),
                                                                 info.g_max_s)
    layer_v = [free.x[free.good][:, circuit.layer_slice(k)] for k in range(1, circuit.depth + 1)]
    files[pics["node_voltages"]] = figures.node_voltage_histograms(name, layer_v)
    iv = _iv_figures(circuit, free.elements, layer_v, files)
    pics["iv"] = iv["files"]
    panels = [_settling_panel(circuit, ph, free, settling) for ph in phases if settling.worst.get(ph.name) is not None]
    if panels:
        pics["settling"] = f"figures/{name}_settling.png"
        files[pics["settling"]] = figures.settling_waveforms(name, panels)
    return pics, iv["max_rel_diff"]


def _settling_panel(circuit, ph: Phase, free_phase: Phase, settling: _Settling) -> dict:
    """The worst sample's output waveforms of one phase (the outputs that move most)."""
    out_slice = circuit.layer_slice(circuit.depth)
    _, b, tr, band, final = settling.worst[ph.name]
    free = ph is free_phase
    start = settling.prev_x[b] if free else free_phase.x[b]
    moves = np.abs(final[out_slice] - start[out_slice])
    cols = np.argsort(-moves)[:WAVEFORM_OUTPUTS]
    return {"title": f"{ph.name}, worst sample ({b})", "t": tr.time_s,
            "v": tr.node_voltages_v[:, out_slice][:, cols], "final": final[out_slice][cols],
            "band": band[cols], "settle": tr.settling_s, "labels": [node_name(circuit.depth, int(j)) for j in cols],
            "offset": None if free else start[out_slice][cols]}


def _iv_figures(circuit, elements: Elements, layer_v, files) -> dict:
    """The nonlinearity of each layer, swept by ngspice on the emitted element of node 0, beside its element law."""
    out = {"files": [], "max_rel_diff": None}
    seen = set()
    for k in range(1, circuit.depth + 1):
        nl = circuit.layer_nonlinearity(k)
        if nl is None or (repr(nl) in seen and not circuit.has_diode_mismatch):
            continue
        seen.add(repr(nl))
        sweep = _iv_deck(emit_deck(circuit, control=False), k)
        x = layer_v[k - 1]
        lo_v, hi_v = _iv_range(nl, x)
        node = node_name(k, 0)
        data = dc_sweep(sweep, "vffebm_iv", lo_v, hi_v, (hi_v - lo_v) / 600, [node, "vffebm_iv#branch"])
        if data is None:
            continue
        v, i_spice = data[:, 0], -data[:, 1]           # current the source pushes into the element
        i_law = _element_current(elements, node, v)
        rel = float(np.max(np.abs(i_spice - i_law)) / max(float(np.max(np.abs(i_spice))), 1e-300))
        out["max_rel_diff"] = rel if out["max_rel_diff"] is None else max(out["max_rel_diff"], rel)
        v_range = (float(np.min(x)), float(np.max(x))) if x.size else None
        path = f"figures/{circuit.name}_iv_layer{k}.png"
        files[path] = figures.iv_curve(circuit.name, k, nl.kind, v, i_spice, i_law, v_range)
        out["files"].append(path)
    return out


def _iv_range(nl, x) -> tuple[float, float]:
    """Sweep limits (V): up to ~10 mA through one junction, or just past the node voltages seen, whichever is wider."""
    if nl.kind == "pwl":
        return min(nl.table.voltages_v) - 0.1, max(nl.table.voltages_v) + 0.1
    reach = float(np.max(np.abs(x))) + 0.02 if x.size else 0.0
    d = nl.emitted_diode
    lim = abs(nl.v_off_v) + d.vte * math.log(1e-2 / d.saturation_current_a)
    cap = abs(nl.v_off_v) + d.vte * math.log(1.0 / d.saturation_current_a)      # ~1 A: never beyond
    return -max(lim, min(reach, cap)), max(lim, min(reach, cap))


def _iv_deck(deck: str, k: int) -> str:
    """The emitted deck's options, models and layer-k rails plus node 0's element(s), driven by ``vffebm_iv``."""
    keep, in_models = [], False
    own = (f"vhi{k} ", f"vlo{k} ", f"x{k}_0 ", f"du{k}_0 ", f"dd{k}_0 ")     # subcircuit, or mismatched D cards
    for line in deck.splitlines():
        low = line.strip().lower()
        if low.startswith(".options"):
            keep.append(line)
        elif low.startswith("* ---- device models"):
            in_models = True
        elif in_models:
            if not low:
                in_models = False
            else:
                keep.append(line)
        elif low.startswith(own):
            keep.append(line)
    return "\n".join([f"* I-V of layer {k}'s nonlinear element"] + keep +
                     [f"VFFEBM_IV {node_name(k, 0)} 0 DC 0", ".end", ""])


def _element_current(elements: Elements, node: str, v: np.ndarray) -> np.ndarray:
    """Current (A) the nonlinear elements (junctions, PWL) of ``node`` draw out of it at node voltage ``v``,
    by the element laws (per-device IS and N*Vt at the circuit temperature)."""
    n = elements.index(node)
    V = np.zeros((len(v), elements.n_nodes))
    V[:, elements.fixed_nodes] = elements.fixed_v
    V[:, n] = v
    total = np.zeros(len(v))
    for g, i in zip(elements.groups, law_currents_a(elements, V)):
        if g.law in ("junction", "pwl"):
            total += i[:, g.a == n].sum(1) - i[:, g.b == n].sum(1)
    return total



# ---- the whole model ---------------------------------------------------------------------------

def analyze_model(model_path, checkpoint, options: AnalyzeOptions, log=lambda m: None) -> tuple[dict, dict[str, bytes]]:
    """Run the analysis; returns (analysis dict, {relative path: file bytes}) without writing anything."""
    if not (isinstance(options.samples, int) and 1 <= options.samples <= 10_000):
        raise SpecError(f"--samples: {options.samples!r}; an integer in 1..10000")
    model, infos = load_for_analysis(model_path, checkpoint, options)
    data_name = options.data or ("digits" if model.input_size in (None, 64) else "mnist-5k")
    if data_name not in DATA_CHOICES:
        raise SpecError(f"--data: {data_name!r}; valid data sets are {', '.join(DATA_CHOICES)}")
    data = load_dataset(data_name)
    check_model_data(model, data, str(model_path))
    n = min(options.samples, len(data.x_test))
    # block_signals solves every block for all n samples at once (reference solver)
    check_model_memory(model, n, "--samples", options.samples, "reference", "implicit")
    if n < options.samples:
        log(f"--samples {options.samples}: the {data_name} test split has {n} samples; using all {n}")
    idx = torch.randperm(len(data.x_test), generator=torch.Generator().manual_seed(options.seed))[:n]
    x, y = data.x_test[idx], data.y_test[idx]
    signals = block_signals(model, x, y)
    files: dict[str, bytes] = {}
    t0 = time.perf_counter()
    blocks = [analyze_block(info, signals[id(info.module)], model, y, options, files, log) for info in infos]
    totals = {
        "power_w_mean": _sum([b["power_w_mean"] for b in blocks]),
        "energy_j_per_inference": _sum([b["energy_j_per_inference"] for b in blocks]),
        "settling_s_median_chain": _sum([b["settling_s_median"] for b in blocks]),
        "settling_s_worst_chain": _sum([b["settling_s_worst"] for b in blocks]),
        "energy_j_per_training_sample": _sum([b["energy_j_per_training_sample"] for b in blocks]),
    }
    analysis = {
        "model": model.name, "model_spec": str(model_path), "checkpoint": str(checkpoint),
        "data": data_name, "samples": n, "seed": options.seed, "authority": "ngspice (libngspice via PySpice)",
        "settle_fraction": SETTLE_FRACTION, "nudged_phases": options.nudged,
        "blocks": blocks, "totals": totals, "seconds": time.perf_counter() - t0,
    }
    files["analysis.json"] = (json.dumps(_clean(analysis), indent=1) + "\n").encode()
    from .report import report_markdown
    files["report.md"] = report_markdown(analysis).encode()
    return analysis, files


def _sum(values):
    return None if any(v is None for v in values) else float(sum(values))


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return _clean(x.item())
    return x


# ---- writing -----------------------------------------------------------------------------------

def write_outputs(out: str | Path, files: dict[str, bytes], force: bool = False, inputs=()) -> Path:
    """Write every file into a fresh directory next to ``out``, then rename it into place.

    The output policy of :mod:`ffebm_sim.outputs`: an existing non-empty ``out`` is
    refused unless ``force`` and it is an earlier ``ffebm analyze`` output (its
    marker); it is then replaced only once the new directory is complete. ``out``
    may not be or contain an input (``inputs``).
    """
    out = Path(out)
    check_out_dir(out, force, inputs)
    parent = out.parent
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".tmp"))
        for rel, data in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        write_marker(tmp, "analyze")
        os.chmod(tmp, dir_mode())
        old = None
        if out.exists():
            if any(out.iterdir()):
                old = out.with_name(f".{out.name}.old.{os.getpid()}")
                os.replace(out, old)
            else:
                out.rmdir()
        os.replace(tmp, out)
        tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise user_error(e, out) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def check_out_dir(out: Path, force: bool, inputs=()) -> None:
    """Refuse (one line) an ``--out`` that analyze may not write, before any simulation."""
    check_output_dir(out, "--out", "analyze", inputs=inputs, force=force)
