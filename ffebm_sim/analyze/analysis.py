"""``ffebm analyze``: power, settling, energy and conductance tables of a trained ff-EBM, by ngspice.

For every energy block of the model, on ``samples`` inputs drawn from the
data set's test split (seeded) and propagated through the trained chain:

1. **Static power** (:mod:`.power`): ngspice ``op`` of the emitted deck per
   sample, every element's power from the node voltages, split by layer;
   checked against the power the sources deliver according to ngspice's own
   branch currents (Tellegen), and the node voltages against the torch
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
from ..circuit import clamp_diode_voltage, clamp_node_current, node_name
from ..data import load_dataset
from ..devices import DiodeModel, diode_current, pwl_current_and_conductance
from ..ep import current_nudge_amplitudes, resistive_nudge_conductance_s
from ..errors import SpecError
from ..model import FFEBM, build_model
from ..validate import apply_checkpoint, check_model_data, check_model_memory
from ..netlist import emit_deck
from ..outputs import check_output_dir, dir_mode, user_error, write_marker
from ..progress import Progress
from ..spec import read_toml
from . import figures
from .power import element_powers
from .settling import (DEFAULT_NODE_CAPACITANCE_F, DEFAULT_WIRE_CAPACITANCE_F, SETTLE_FRACTION, BAND_FLOOR_V,
                       check_capacitance, node_capacitances, simulate_step, slowest_time_constant)
from .spice import dc_sweep, operating_points
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


class _Phase:
    """The samples of one phase of one block: ngspice operating points and the nudge that made them."""

    def __init__(self, name, x, power, tellegen, messages, currents=None, g_nudge=0.0, targets=None):
        self.name, self.x, self.power, self.tellegen, self.messages = name, x, power, tellegen, messages
        self.currents, self.g_nudge, self.targets = currents, g_nudge, targets

    def nudge_kwargs(self, b=None):
        sel = (lambda a: a) if b is None else (lambda a: a[b])
        kw = {}
        if self.currents is not None:
            kw["nudge_currents_a"] = sel(self.currents)
        if self.g_nudge:
            kw["nudge_conductance_s"] = self.g_nudge
            kw["nudge_target_v"] = sel(self.targets)
        return kw


def _phase(name, circuit, u, currents=None, g_nudge=0.0, targets=None) -> _Phase:
    op = operating_points(circuit, u, currents, g_nudge, targets)
    kw = {"nudge_currents_a": currents} if currents is not None else {}
    if g_nudge:
        kw.update(nudge_conductance_s=g_nudge, nudge_target_v=targets)
    good = np.array([m == "" for m in op.messages])
    x = np.where(good[:, None], op.node_voltages_v, 0.0)
    power = element_powers(circuit, u, x, **kw)
    net = power.network_w
    tellegen = np.abs(net - np.where(good, op.source_power_w, net)) / np.maximum(np.abs(net), 1e-300)
    return _Phase(name, np.where(good[:, None], op.node_voltages_v, np.nan), power, tellegen[good], op.messages,
                  currents, g_nudge, targets)


def analyze_block(info: BlockInfo, signals: dict, model: FFEBM, y: torch.Tensor, options: AnalyzeOptions,
                  files: dict[str, bytes], log) -> dict:
    block = info.module
    circuit = block.circuit.as_emitted()
    name = circuit.name
    if not getattr(circuit, "is_ideal_hardware", True):
        # Element powers, capacitances and tables here use the nominal conductances, 27 C junctions and
        # no line resistance; a circuit with non-idealities would be reported wrongly, so refuse it.
        raise SpecError(f"{name}: has non-idealities (wire resistance, mismatch or temperature); "
                        "`ffebm analyze` models ideal hardware only for now; remove them from the block spec")
    u = signals["u"].numpy()
    B = u.shape[0]
    n_out = circuit.n_outputs
    out_slice = circuit.layer_slice(circuit.depth)
    caps = node_capacitances(circuit, info.node_capacitance_f, info.wire_capacitance_f)
    t0 = time.perf_counter()
    ops = Progress(B * (1 + (0 if not options.nudged else 2 if block.centered else 1)),
                   f"analyze {name}: operating points", unit="samples")
    free = _phase("free", circuit, u)
    ops.update(B)
    ref = ReferenceBackend(ideal_as_clip=False).solve(circuit, torch.from_numpy(u))
    ref_dv = float(np.nanmax(np.abs(ref.node_voltages_v.numpy() - free.x))) if ref.ok else float("nan")
    phases = [free]

    # ---- nudged phases: the nudge EP applies for this sample's loss gradient ----
    last = block is model.energy_blocks[-1]
    resistive = last and model.loss_kind == "mse" and model.resistive
    if options.nudged:
        signs = (+1.0, -1.0) if block.centered else (+1.0,)
        if resistive:
            targets = model.target_voltages(y, n_out).numpy()
            beta_s = resistive_nudge_conductance_s(circuit, torch.from_numpy(free.x[:, out_slice]),
                                                   torch.from_numpy(targets), block.beta_v)
            for sign in signs:
                phases.append(_phase("nudged +beta" if sign > 0 else "nudged -beta", circuit, u,
                                     g_nudge=sign * beta_s, targets=targets))
                ops.update(B)
        elif "delta" in signals:
            delta = signals["delta"].numpy()
            beta = current_nudge_amplitudes(circuit, torch.from_numpy(delta), block.beta_v).numpy()
            for sign in signs:
                phases.append(_phase("nudged +beta" if sign > 0 else "nudged -beta", circuit, u,
                                     currents=-sign * beta[:, None] * delta))
                ops.update(B)
    ops.close()
    log(f"{name}: operating points of {len(phases)} phase(s) x {B} samples in {time.perf_counter() - t0:.1f} s")

    # ---- settling ----
    t0 = time.perf_counter()
    adc_half_lsb = None
    if info.adc is not None and info.adc.bits:
        adc_half_lsb = 0.5 * (info.adc.hi - info.adc.lo) / (2 ** info.adc.bits - 1) / abs(block.output_gain)
    prev_x = free.x[(np.arange(B) - 1) % B] if B > 1 else None
    if B == 1:      # one sample: step from the equilibrium at zero input
        prev_x = operating_points(circuit, np.zeros_like(u)).node_voltages_v
    results = {}
    worst_waves = {}
    bar = Progress(B * len(phases), f"analyze {name}: settling", unit="transients")
    for k, ph in enumerate(phases):
        settle, settle_adc, energy, taus, msgs = [], [], [], [], []
        worst = None
        for b in range(B):
            bar.set(k * B + b)
            if ph.messages[b] or (ph is free and not np.isfinite(prev_x[b]).all()) or \
                    (ph is not free and free.messages[b]):
                settle.append(None); settle_adc.append(None); energy.append(None); taus.append(None)
                msgs.append(ph.messages[b] or "start point failed")
                continue
            start = prev_x[b] if ph is free else free.x[b]
            final = ph.x[b]
            if ph is free:
                band = SETTLE_FRACTION * np.maximum(np.abs(final[out_slice]), np.abs(final[out_slice] - start[out_slice]))
            else:
                band = np.full(n_out, SETTLE_FRACTION * float(np.abs(final[out_slice] - start[out_slice]).max()))
            band = np.maximum(band, BAND_FLOOR_V)
            kw = ph.nudge_kwargs(b)
            deck = emit_deck(circuit, u[b], control=False, **kw)
            tau = slowest_time_constant(circuit, np.stack([start, final]), caps, ph.g_nudge)
            tr = simulate_step(circuit, deck, start, final, caps, out_slice, band,
                               adc_half_lsb if ph is free else None, ph.g_nudge, tau)
            if tr.message:
                msgs.append(tr.message)
            if tr.time_s.size == 0:
                settle.append(None); settle_adc.append(None); energy.append(None); taus.append(tau)
                continue
            pw = element_powers(circuit, u[b][None, :], tr.node_voltages_v,
                                **{k: (np.broadcast_to(v, (len(tr.time_s), n_out)) if isinstance(v, np.ndarray) else v)
                                   for k, v in kw.items()})
            e = _integrate(tr.time_s, pw.supplied_w, tr.settling_s)
            settle.append(tr.settling_s); settle_adc.append(tr.settling_adc_s); energy.append(e); taus.append(tau)
            key = tr.settling_s if not np.isnan(tr.settling_s) else -1.0      # inf (not settled) is the worst
            if worst is None or key > worst[0]:
                worst = (key, b, tr, band, final)
        results[ph.name] = {"settle": settle, "settle_adc": settle_adc, "energy": energy, "tau": taus, "messages": msgs}
        worst_waves[ph.name] = worst
    bar.close()
    log(f"{name}: {sum(len(r['settle']) for r in results.values())} transients in {time.perf_counter() - t0:.1f} s")

    # ---- the summary of the block ----
    def phase_summary(ph):
        r = results[ph.name]
        good = [m == "" for m in ph.messages]
        p = ph.power
        s = _stats(r["settle"])
        e = _stats(r["energy"])
        out = {
            "samples": int(sum(good)),
            "power_w_mean": float(p.total_w[good].mean()) if any(good) else None,
            "power_w_median": float(np.median(p.total_w[good])) if any(good) else None,
            "power_w_max": float(p.total_w[good].max()) if any(good) else None,
            "network_power_w_mean": float(p.network_w[good].mean()) if any(good) else None,
            "absorbed_by_sources_w_mean": float(p.absorbed_w[good].mean()) if any(good) else None,
            "power_by_layer_w_mean": [float(v) for v in p.layers_w[good].mean(0)] if any(good) else None,
            "resistors_by_layer_w_mean": [float(v) for v in p.resistors_w[good].mean(0)] if any(good) else None,
            "nonlinear_by_layer_w_mean": [float(v) for v in p.nonlinear_w[good].mean(0)] if any(good) else None,
            "bias_by_layer_w_mean": [float(v) for v in p.bias_w[good].mean(0)] if any(good) else None,
            "sources_delivered_w_mean": {k: float(v[good].sum(1).mean()) for k, v in p.sources_w.items()} if any(good) else {},
            "tellegen_max_rel": float(ph.tellegen.max()) if ph.tellegen.size else None,
            "settling_s_median": s["median"], "settling_s_worst": s["worst"], "settling_s_mean": s["mean"],
            "energy_j_mean": e["mean"], "energy_j_median": e["median"], "energy_j_worst": e["worst"],
            "tau_max_s_median": _stats(r["tau"])["median"],
            "not_settled": int(sum(1 for v in r["settle"] if v is not None and not np.isfinite(v))),
            "failures": sorted({m for m in list(ph.messages) + r["messages"] if m})[:5],
        }
        if ph is free and adc_half_lsb is not None:
            sa = _stats(r["settle_adc"])
            out.update(settling_adc_s_median=sa["median"], settling_adc_s_worst=sa["worst"], adc_half_lsb_v=adc_half_lsb)
        return out

    summaries = {ph.name: phase_summary(ph) for ph in phases}
    fs = summaries["free"]
    nudged = [summaries[ph.name] for ph in phases[1:]]
    training_energy = None
    if nudged and fs["energy_j_mean"] is not None and all(n["energy_j_mean"] is not None for n in nudged):
        training_energy = fs["energy_j_mean"] + sum(n["energy_j_mean"] for n in nudged)

    # ---- tables ----
    device = None
    if info.device:
        from ..hardware import get_device
        g_hi = info.g_max_s if info.g_max_s is not None else max(float(np.max(g)) for g in circuit.conductances)
        if not g_hi > info.g_min_s:
            raise SpecError(f"{name}: device range [{info.g_min_s}, {g_hi}] S is empty; set g_max in the energy block entry")
        device = get_device(info.device, info.g_min_s, g_hi)
    csv_text = table_csv(block.circuit, device)
    files[f"tables/{name}.csv"] = csv_text.encode()
    with tempfile.TemporaryDirectory() as tmp:       # the npz is built from the CSV: what a user gets back
        (Path(tmp) / "t.csv").write_text(csv_text)
        arrays = read_table(Path(tmp) / "t.csv")
    files[f"tables/{name}.npz"] = npz_bytes(arrays)
    files[f"tables/{name}.toml"] = block_spec_toml(
        info.circuit_table, f"{name}.npz",
        f"{name}: block spec with the trained conductances (written by ffebm analyze).\n"
        f"ffebm netlist tables/{name}.toml -o {name}.cir   # a standalone deck").encode()

    # ---- pictures ----
    pics = {}
    pics["conductances"] = f"figures/{name}_conductances.png"
    files[pics["conductances"]] = figures.conductance_histograms(name, list(block.circuit.conductances), info.g_max_s)
    good = np.array([m == "" for m in free.messages])
    layer_v = [free.x[good][:, circuit.layer_slice(k)] for k in range(1, circuit.depth + 1)]
    pics["node_voltages"] = f"figures/{name}_node_voltages.png"
    files[pics["node_voltages"]] = figures.node_voltage_histograms(name, layer_v)
    iv = _iv_figures(circuit, layer_v, files)
    pics["iv"] = iv["files"]
    panels = []
    for ph in phases:
        w = worst_waves.get(ph.name)
        if w is None:
            continue
        _, b, tr, band, final = w
        start = prev_x[b] if ph is free else free.x[b]
        moves = np.abs(final[out_slice] - start[out_slice])
        cols = np.argsort(-moves)[:WAVEFORM_OUTPUTS]
        panels.append({"title": f"{ph.name}, worst sample ({b})", "t": tr.time_s,
                       "v": tr.node_voltages_v[:, out_slice][:, cols], "final": final[out_slice][cols],
                       "band": band[cols], "settle": tr.settling_s, "labels": [node_name(circuit.depth, int(j)) for j in cols],
                       "offset": None if ph is free else start[out_slice][cols]})
    if panels:
        pics["settling"] = f"figures/{name}_settling.png"
        files[pics["settling"]] = figures.settling_waveforms(name, panels)

    return {
        "name": name, "index": info.index, "layers": list(circuit.layer_sizes),
        "nonlinearity": [None if circuit.layer_nonlinearity(k) is None else circuit.layer_nonlinearity(k).kind
                         for k in range(1, circuit.depth + 1)],
        "resistors": int(sum(int((np.asarray(g) > 0).sum()) for g in circuit.conductances)),
        "samples": B,
        "node_capacitance_f": info.node_capacitance_f, "wire_capacitance_f": info.wire_capacitance_f,
        "node_capacitance_f_mean": float(caps.mean()),
        # the headline numbers (free phase = inference)
        "power_w_mean": fs["power_w_mean"],
        "settling_s_median": fs["settling_s_median"],
        "settling_s_worst": fs["settling_s_worst"],
        "energy_j_per_inference": fs["energy_j_mean"],
        "energy_j_per_training_sample": training_energy,
        "reference_max_abs_dv_v": ref_dv,
        "iv_max_rel_diff": iv["max_rel_diff"],
        "device": info.device, "adc_half_lsb_v": adc_half_lsb,
        "phases": summaries,
        "tables": {"csv": f"tables/{name}.csv", "npz": f"tables/{name}.npz", "spec": f"tables/{name}.toml"},
        "figures": pics,
    }


def _iv_figures(circuit, layer_v, files) -> dict:
    """The nonlinearity of each layer, swept by ngspice on the emitted subcircuit."""
    out = {"files": [], "max_rel_diff": None}
    seen = {}
    for k in range(1, circuit.depth + 1):
        nl = circuit.layer_nonlinearity(k)
        if nl is None:
            continue
        key = repr(nl)
        if key in seen:
            continue
        seen[key] = k
        deck = emit_deck(circuit, control=False)
        sweep = _iv_deck(deck, k)
        x = layer_v[k - 1]
        reach = float(np.max(np.abs(x))) + 0.02 if x.size else 0.0
        if nl.kind != "pwl":
            # up to ~10 mA through one junction, or just past the node voltages seen, whichever is wider
            d = nl.emitted_diode
            lim = abs(nl.v_off_v) + d.vte * math.log(1e-2 / d.saturation_current_a)
            cap = abs(nl.v_off_v) + d.vte * math.log(1.0 / d.saturation_current_a)      # ~1 A: never beyond
            lo_v, hi_v = -max(lim, min(reach, cap)), max(lim, min(reach, cap))
        else:
            lo_v, hi_v = min(nl.table.voltages_v) - 0.1, max(nl.table.voltages_v) + 0.1
        node = node_name(k, 0)
        data = dc_sweep(sweep, "vffebm_iv", lo_v, hi_v, (hi_v - lo_v) / 600, [node, "vffebm_iv#branch"])
        if data is None:
            continue
        v, i_spice = data[:, 0], -data[:, 1]           # current the source pushes into the element
        i_law = _element_current(circuit, nl, v, k)
        rel = float(np.max(np.abs(i_spice - i_law)) / max(float(np.max(np.abs(i_spice))), 1e-300))
        out["max_rel_diff"] = rel if out["max_rel_diff"] is None else max(out["max_rel_diff"], rel)
        v_range = (float(np.min(x)), float(np.max(x))) if x.size else None
        path = f"figures/{circuit.name}_iv_layer{k}.png"
        files[path] = figures.iv_curve(circuit.name, k, nl.kind, v, i_spice, i_law, v_range)
        out["files"].append(path)
    return out


def _iv_deck(deck: str, k: int) -> str:
    """The emitted deck's options, models and layer-k rails plus one element, driven by ``vffebm_iv``."""
    lines = deck.splitlines()
    keep, in_models = [], False
    for line in lines:
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
        elif low.startswith((f"vhi{k} ", f"vlo{k} ")) or low.startswith(f"x{k}_0 "):
            keep.append(line)
    return "\n".join([f"* I-V of layer {k}'s nonlinear element"] + keep +
                     [f"VFFEBM_IV {node_name(k, 0)} 0 DC 0", ".end", ""])


def _element_current(circuit, nl, v: np.ndarray, k: int) -> np.ndarray:
    vt = torch.from_numpy(np.ascontiguousarray(v))
    if nl.kind == "pwl":
        i, _ = pwl_current_and_conductance(vt, nl.table)
        return i.numpy()
    d = nl.emitted_diode
    model = DiodeModel(d.saturation_current_a, d.emission_coefficient, circuit.gmin_s)
    n = circuit.layer_sizes[k]
    i = torch.zeros_like(vt)
    for upward, present in ((True, nl.clamps_up(n)[0]), (False, nl.clamps_down(n)[0])):
        if present:
            i = i + clamp_node_current(diode_current(clamp_diode_voltage(vt, nl.clamp_rail_v(upward), upward), model),
                                       upward)
    return i.numpy()


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
