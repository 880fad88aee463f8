"""``report.md``: the analysis as a designer reads it."""

from __future__ import annotations


def _si(x, unit: str, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    if x != x:
        return "n/a"
    if x in (float("inf"), float("-inf")):
        return "not settled"
    if x == 0:
        return f"0 {unit}"
    for scale, prefix in ((1e-18, "a"), (1e-15, "f"), (1e-12, "p"), (1e-9, "n"), (1e-6, "u"), (1e-3, "m"),
                          (1.0, ""), (1e3, "k"), (1e6, "M")):
        if abs(x) < 1000 * scale:
            return f"{x / scale:.{digits}g} {prefix}{unit}"
    return f"{x:.{digits}g} {unit}"


def report_markdown(a: dict) -> str:
    L = []
    L.append(f"# Circuit analysis: {a['model']}")
    L.append("")
    L.append(f"Model spec `{a['model_spec']}`, checkpoint `{a['checkpoint']}`; {a['samples']} test inputs of "
             f"`{a['data']}` (seed {a['seed']}), propagated through the trained chain. Every number below comes "
             f"from ngspice on the emitted decks (operating points and transients); the torch reference solver "
             f"only cross-checks the node voltages.")
    L.append("")
    t = a["totals"]
    L.append("## Summary")
    L.append("")
    L.append("| block | layers | resistors | power (mean) | settling median | settling worst | energy / inference | energy / training sample |")
    L.append("|---|---|---|---|---|---|---|---|")
    for b in a["blocks"]:
        L.append(f"| {b['name']} | {' -> '.join(map(str, b['layers']))} | {b['resistors']} | {_si(b['power_w_mean'], 'W')} | "
                 f"{_si(b['settling_s_median'], 's')} | {_si(b['settling_s_worst'], 's')} | "
                 f"{_si(b['energy_j_per_inference'], 'J')} | {_si(b['energy_j_per_training_sample'], 'J')} |")
    L.append(f"| **all blocks** | | | {_si(t['power_w_mean'], 'W')} | {_si(t['settling_s_median_chain'], 's')} (chain) | "
             f"{_si(t['settling_s_worst_chain'], 's')} (chain) | {_si(t['energy_j_per_inference'], 'J')} | "
             f"{_si(t['energy_j_per_training_sample'], 'J')} |")
    L.append("")
    L.append("*Power*: dissipated in resistors and junctions plus what sinking sources absorb (= what the "
             "delivering sources supply), at the DC equilibrium, mean over the samples. *Settling*: the time after "
             "the inputs step from the previous sample until every output node stays within 1% of its DC value "
             "(or of its step, when larger). *Energy per inference*: the supplied power integrated over that "
             "window. *Training sample*: free plus nudged phases (EP's cost), each integrated over its own "
             "settling window. Chain figures add the blocks (they settle one after another).")
    L.append("")
    for b in a["blocks"]:
        L += _block(b)
    L.append("## Definitions and assumptions")
    L.append("")
    L.append("- Node capacitance per free node plus half of the per-cell wire capacitance of every resistor "
             "touching it (spec keys `node_capacitance_f`, `wire_capacitance_f` in the energy-block entry, or "
             "`--node-capacitance`/`--wire-capacitance`); no junction capacitance in the diode model; ideal "
             "voltage sources (the drivers' output impedance and the ADC's sampling are not modelled).")
    L.append("- Transients start at the previous equilibrium (`.ic`, `uic`) with an ideal step of the sources at t = 0.")
    L.append("- Nudged phases use the nudge EP applies in training for each sample's true loss gradient "
             "(`beta` from the spec); their settling band is 1% of the largest output displacement the nudge causes.")
    L.append("- Conductance tables: `tables/<block>.csv` (every cell, S and ohms; with `--device`, the nominal "
             "SET pulse count from reset); `tables/<block>.npz` and `tables/<block>.toml` rebuild the block: "
             "`ffebm netlist tables/<block>.toml -o block.cir`.")
    L.append("")
    return "\n".join(L)


def _block(b: dict) -> list[str]:
    L = [f"## {b['name']}", ""]
    L.append(f"Layers {' -> '.join(map(str, b['layers']))} (inputs drive two sources each), nonlinearity per layer "
             f"{', '.join(str(k) for k in b['nonlinearity'])}, {b['resistors']} resistors. Node capacitance "
             f"{_si(b['node_capacitance_f'], 'F')} + wire {_si(b['wire_capacitance_f'], 'F')}/cell "
             f"(mean {_si(b['node_capacitance_f_mean'], 'F')} per node). ngspice vs reference solver: "
             f"max |dV| = {_si(b['reference_max_abs_dv_v'], 'V')}." + _non_ideal_text(b.get("non_idealities")))
    L.append("")
    L.append("| phase | power mean | median | max | by layer (mean) | settling median | worst | energy mean | power balance |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for name, p in b["phases"].items():
        layers = ", ".join(_si(v, "W") for v in (p["power_by_layer_w_mean"] or []))
        tel = "n/a" if p["power_balance_rel_error"] is None else f"{p['power_balance_rel_error']:.1e}"
        L.append(f"| {name} | {_si(p['power_w_mean'], 'W')} | {_si(p['power_w_median'], 'W')} | {_si(p['power_w_max'], 'W')} | "
                 f"{layers} | {_si(p['settling_s_median'], 's')} | {_si(p['settling_s_worst'], 's')} | "
                 f"{_si(p['energy_j_mean'], 'J')} | {tel} |")
    L.append("")
    f = b["phases"]["free"]
    src = ", ".join(f"{k} {_si(v, 'W')}" for k, v in f["sources_delivered_w_mean"].items())
    L.append(f"Free phase: resistors {', '.join(_si(v, 'W') for v in f['resistors_by_layer_w_mean'] or [])} and "
             f"nonlinear elements {', '.join(_si(v, 'W') for v in f['nonlinear_by_layer_w_mean'] or [])} per layer; "
             f"net delivered by source group: {src}; absorbed by sinking sources "
             f"{_si(f['absorbed_by_sources_w_mean'], 'W')}. Slowest linearised time constant (median) "
             f"{_si(f['tau_max_s_median'], 's')}. Power balance: worst relative difference between the power "
             f"ngspice's sources deliver (their branch currents) and what the branches absorb (the element laws at "
             f"ngspice's node voltages, {b.get('nodes_solved', 'all')} nodes).")
    if "settling_adc_s_median" in f:
        L.append(f"To the ADC's half LSB ({_si(f['adc_half_lsb_v'], 'V')}): median {_si(f['settling_adc_s_median'], 's')}, "
                 f"worst {_si(f['settling_adc_s_worst'], 's')}.")
    for name, p in b["phases"].items():
        if p["failures"] or p["not_settled"]:
            L.append(f"**{name}**: {p['not_settled']} sample(s) not settled; failures: {'; '.join(p['failures']) or 'none'}.")
    L.append("")
    figs = b["figures"]
    L.append(f"![settling]({figs['settling']})" if "settling" in figs else "")
    L.append("")
    L.append(f"![conductances]({figs['conductances']})")
    L.append("")
    for path in figs.get("iv", []):
        L.append(f"![I-V]({path})")
        L.append("")
    if b.get("iv_max_rel_diff") is not None:
        L.append(f"I-V swept by ngspice on the emitted subcircuit; the `ffebm_sim.devices` law differs by at most "
                 f"{b['iv_max_rel_diff']:.1e} of the largest current swept.")
        L.append("")
    L.append(f"![node voltages]({figs['node_voltages']})")
    L.append("")
    t = b["tables"]
    L.append(f"Tables: [`{t['csv']}`]({t['csv']}), [`{t['npz']}`]({t['npz']}), [`{t['spec']}`]({t['spec']})"
             + (f"; device preset `{b['device']}`." if b.get("device") else "."))
    L.append("")
    return L


def _non_ideal_text(n: dict | None) -> str:
    if not n:
        return ""
    parts = []
    if n["wire_resistance_ohm"]:
        parts.append(f"crossbar wires {n['wire_resistance_ohm']:g} ohm per segment")
    if n["mismatch"]:
        m = n["mismatch"]
        parts.append(f"mismatch (seed {m['seed']}; sigma G {m['conductance_sigma']:g}, IS {m['is_sigma']:g}, N {m['n_sigma']:g})")
    if n["temperature_c"] != 27.0:
        parts.append(f"{n['temperature_c']:g} C")
    return f" Non-idealities, in every figure: {', '.join(parts)}." if parts else ""
