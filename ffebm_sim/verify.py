"""Cross-check the backends on one block: the agreement a designer can trust.

``verify_block`` draws seeded random inputs (uniform in [-1, 1]) and, with
``nudge``, random output nudges, then solves the same circuit three ways:

* ``reference``: the torch solver on the circuit the deck describes (for
  ``ideal`` layers: the steep junctions actually emitted);
* ``ngspice-physical``: libngspice on the physical deck;
* ``ngspice-reduced``: libngspice on the Norton-reduced deck;

and reports the largest node-voltage difference over every pair. For blocks
with amplifiers the amplifier output nodes ``a<k>_<j>`` count too: ngspice's
voltages there against the reference's ``A * x``. For blocks
with ``ideal`` layers it also reports how far the hard clip (the reference's
ideal-diode limit) is from the emitted steep junctions.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from .backends import Equilibrium, Nudge, ReferenceBackend
from .amplifier import port_quantities
from .circuit import BlockCircuit, amplifier_output_node_names, clamp_diode_voltage, output_conductance_s

#: The agreement ``ffebm verify`` requires between any two solvers, volts.
AGREEMENT_TOLERANCE_V = 1e-9


def nudge_scale_a(circuit: BlockCircuit, volts: float = 0.1) -> float:
    """A current that moves an output node by about ``volts``: mean output conductance times volts."""
    return volts * output_conductance_s(circuit)


def random_nudge(circuit: BlockCircuit, batch: int, rng: np.random.Generator) -> Nudge:
    """Random output nudge of the circuit's mode, scaled to move outputs by ~0.1 V."""
    if circuit.nudge == "resistive":
        g = output_conductance_s(circuit)
        return Nudge(conductance_s=g, target_v=torch.from_numpy(rng.uniform(-1, 1, (batch, circuit.n_outputs))))
    return Nudge(currents_a=torch.from_numpy(rng.normal(0, nudge_scale_a(circuit), (batch, circuit.n_outputs))))


def verify_block(circuit: BlockCircuit, samples: int = 20, nudge: bool = False, seed: int = 0,
                 include_ngspice: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    inputs = torch.from_numpy(rng.uniform(-1.0, 1.0, (samples, circuit.n_inputs)))
    phases = {"free": None}
    if nudge:
        phases["nudged"] = random_nudge(circuit, samples, rng)
    solvers = {"reference": ReferenceBackend(ideal_as_clip=False)}
    if include_ngspice:
        from .backends.ngspice import NgspiceBackend
        solvers["ngspice-physical"] = NgspiceBackend(reduced=False)
        solvers["ngspice-reduced"] = NgspiceBackend(reduced=True)
    max_dv = max_di = 0.0
    failures: list[str] = []
    per_phase = {}
    conducting = 0.0
    emitted = circuit.as_emitted()
    from .progress import Progress
    bar = Progress(samples * len(phases) * len(solvers), f"verify {circuit.name}", unit="solves")
    try:
        for phase, nudge_elems in phases.items():
            results = {name: _solve(s, emitted, inputs, nudge_elems, bar) for name, s in solvers.items()}
            max_dv, max_di, conducting = _compare(phase, results, emitted, failures, per_phase, max_dv, max_di,
                                                  conducting)
            if emitted.has_amplifiers and include_ngspice:
                dv = _amplifier_outputs_dv(solvers, emitted, inputs, nudge_elems, results["reference"], failures)
                per_phase[phase]["max_abs_amplifier_dv_volts"] = dv
                max_dv = max(max_dv, dv)
    finally:
        bar.close()
    return _report(circuit, samples, phases, solvers, inputs, emitted, max_dv, max_di, per_phase, conducting,
                   failures)


def _solve(solver, circuit: BlockCircuit, inputs: torch.Tensor, nudge: Nudge | None, bar) -> Equilibrium:
    """``solver.solve``; ngspice in pieces of its chunk (the same jobs it would run), so the
    progress moves during a long solve of a large block."""
    step = getattr(solver, "chunk", None) if solver.name == "ngspice" else None
    B = inputs.shape[0]
    if not step or B <= step:
        eq = solver.solve(circuit, inputs, nudge)
        bar.update(B)
        return eq
    parts = []
    for s in range(0, B, step):
        rows = list(range(s, min(s + step, B)))
        parts.append(solver.solve(circuit, inputs[rows], None if nudge is None else nudge.rows(rows)))
        bar.update(len(rows))
    return Equilibrium(torch.cat([e.node_voltages_v for e in parts]), torch.cat([e.source_currents_a for e in parts]),
                       torch.cat([e.converged for e in parts]), tuple(m for e in parts for m in e.messages),
                       sum(e.iterations for e in parts))


def _compare(phase, results, emitted, failures, per_phase, max_dv, max_di, conducting):
    """Fold one phase's results into the running maxima (failures and per_phase are filled in)."""
    for name, eq in results.items():
        failures.extend(f"{name} {phase} sample {b}: {m}" for b, m in enumerate(eq.messages) if m)
    dv = di = 0.0
    for (_, a), (_, b) in itertools.combinations(results.items(), 2):
        dv = max(dv, float((a.node_voltages_v - b.node_voltages_v).abs().max()))
        di = max(di, float((a.source_currents_a - b.source_currents_a).abs().max()))
    per_phase[phase] = {"max_abs_dv_volts": dv, "max_abs_di_amps": di}
    max_dv, max_di = max(max_dv, dv), max(max_di, di)
    conducting = max(conducting, _conducting_fraction(emitted, results["reference"].node_voltages_v))
    return max_dv, max_di, conducting


def _amplifier_outputs_dv(solvers, circuit: BlockCircuit, inputs, nudge, reference: Equilibrium, failures) -> float:
    """Largest difference (V) between ngspice's amplifier output nodes ``a<k>_<j>`` and the
    reference's ``A * x`` (the reference eliminates those nodes), over the ngspice solvers."""
    from dataclasses import replace
    from .backends.jobs import run_job
    names = tuple(amplifier_output_node_names(circuit))
    want = torch.cat([v_out for *_, v_out, _ in port_quantities(circuit, reference.node_voltages_v)], 1)
    dv = 0.0
    for name, solver in solvers.items():
        if name == "reference":
            continue
        jobs, _ = solver.jobs(circuit, inputs, nudge)
        results = [run_job(replace(job, vectors=names)) for job in jobs]
        failures.extend(f"{name} amplifier outputs: {m}" for r in results for m in r.messages if m)
        got = torch.from_numpy(np.concatenate([r.values for r in results]))
        dv = max(dv, float((got - want).abs().max()))
    return dv


def _report(circuit, samples, phases, solvers, inputs, emitted, max_dv, max_di, per_phase, conducting, failures):
    report = {
        "block": circuit.name,
        "layers": list(circuit.layer_sizes),
        "samples": samples,
        "phases": list(phases),
        "backends": list(solvers),
        "max_abs_dv_volts": max_dv if not failures else float("nan"),
        "max_abs_di_amps": max_di if not failures else float("nan"),
        "per_phase": per_phase,
        "tolerance_volts": AGREEMENT_TOLERANCE_V,
        "nonlinear_active_fraction": conducting,
        "failures": failures[:10],
    }
    if circuit.has_ideal:
        clip = ReferenceBackend(ideal_as_clip=True)
        steep = ReferenceBackend(ideal_as_clip=False)
        report["ideal_vs_emitted_dv_volts"] = max(
            float((clip.solve(circuit, inputs, n).node_voltages_v - steep.solve(emitted, inputs, n).node_voltages_v).abs().max())
            for n in phases.values())
    report["ok"] = not failures and max_dv <= AGREEMENT_TOLERANCE_V
    return report


def _conducting_fraction(circuit: BlockCircuit, volts: torch.Tensor, threshold_a: float = 1e-7) -> float:
    """Share of (sample, nonlinear element) pairs carrying more than ``threshold_a``:
    is the nonlinearity exercised at all? (Diodes: forward current; tables: |current|.)"""
    from .devices import diode_current, pwl_current_and_conductance
    from .interactions import network
    net = network(circuit, ideal_as_clip=False)
    on = total = 0
    for g in net.diodes:
        x = volts[:, g.nodes]
        vd = clamp_diode_voltage(x, g.rail_v, g.upward)
        on += int((diode_current(vd, g.model) > threshold_a).sum())
        total += vd.numel()
    for g in net.pwls:
        i, _ = pwl_current_and_conductance(volts[:, g.nodes], g.table)
        on += int((i.abs() > threshold_a).sum())
        total += i.numel()
    return on / total if total else 0.0


def verify_gnucap(circuit: BlockCircuit, samples: int = 5, nudge: bool = False, seed: int = 0,
                  reduced: bool = False) -> dict:
    """gnucap against ngspice and the reference on ``samples`` seeded random inputs.

    Every sample is written as a ``gnucap``-format deck (the ``spice3`` deck; for
    ``pwl`` layers with gnucap's own PWL element, :mod:`ffebm_sim.dialects`) and run
    through ``gnucap -b`` (:func:`ffebm_sim.gnucap.run_gnucap`); ngspice solves the
    same decks through its backend, the reference the circuit they describe.
    ``reduced``: the Norton-reduced decks for gnucap and ngspice (the same node
    voltages; gnucap's parser is quadratic in the element count, so a block with
    thousands of input resistors takes minutes in its physical form).
    The report's ``ok`` says whether gnucap agrees with both within
    :func:`ffebm_sim.gnucap.agreement_tolerance_v` (its models differ from SPICE3's:
    docs/formats.md) and ngspice with the reference within ``AGREEMENT_TOLERANCE_V``.
    """
    from .backends.ngspice import NgspiceBackend
    from .circuit import free_node_names
    from .gnucap import GnucapFailed, agreement_tolerance_v, run_gnucap
    from .netlist import emit_deck
    rng = np.random.default_rng(seed)
    inputs = torch.from_numpy(rng.uniform(-1.0, 1.0, (samples, circuit.n_inputs)))
    nudge_elems = random_nudge(circuit, samples, rng) if nudge else None
    emitted = circuit.as_emitted()
    reference = ReferenceBackend(ideal_as_clip=False).solve(emitted, inputs, nudge_elems).node_voltages_v
    ngspice = NgspiceBackend(reduced=reduced).solve(emitted, inputs, nudge_elems).node_voltages_v
    names = free_node_names(circuit)
    _check_gnucap_size(emit_deck(circuit, inputs[0].numpy(), reduced=reduced, control=False), reduced)
    got, failures = [], []
    for b in range(samples):
        deck = emit_deck(circuit, inputs[b].numpy(), reduced=reduced, dialect="gnucap", **_nudge_cards(nudge_elems, b))
        try:
            printed = run_gnucap(deck)
            got.append([printed[f"v({n})"] for n in names])
        except GnucapFailed as e:          # one sample; the others are still compared
            failures.append(f"sample {b}: {e}")
            got.append([float("nan")] * len(names))
    gnucap = torch.tensor(got, dtype=torch.float64)
    ran = ~torch.isnan(gnucap[:, 0])
    tolerance = agreement_tolerance_v(circuit.temperature_c)

    def worst(a, b):
        return float((a[ran] - b[ran]).abs().max()) if ran.any() else float("nan")
    dv = {"gnucap_vs_ngspice": worst(gnucap, ngspice), "gnucap_vs_reference": worst(gnucap, reference),
          "ngspice_vs_reference": float((ngspice - reference).abs().max())}
    return {"block": circuit.name, "layers": list(circuit.layer_sizes), "samples": samples,
            "phases": ["nudged" if nudge else "free"], "deck": "reduced" if reduced and not circuit.has_wires else "physical",
            "temperature_c": circuit.temperature_c, "max_abs_dv_volts": dv, "tolerance_volts": tolerance,
            "ngspice_tolerance_volts": AGREEMENT_TOLERANCE_V, "failures": failures,
            "ok": not failures and max(dv["gnucap_vs_ngspice"], dv["gnucap_vs_reference"]) <= tolerance
            and dv["ngspice_vs_reference"] <= AGREEMENT_TOLERANCE_V}


#: Element cards above which gnucap takes minutes to read a deck: its parser is quadratic in the
#: element count (measured: 9060 elements 0.9 s, 230400 did not finish in 600 s).
GNUCAP_MAX_ELEMENTS = 50_000


def _check_gnucap_size(deck: str, reduced: bool) -> None:
    n = sum(1 for line in deck.splitlines() if line[:1].isalpha())
    if n > GNUCAP_MAX_ELEMENTS:
        from .errors import SpecError
        hint = "pass --reduced (the same node voltages)" if not reduced else "verify a smaller block"
        raise SpecError(f"--simulator gnucap: the deck has {n} elements; gnucap reads it in about "
                        f"{(n / 9060) ** 2:.0f} s per sample (quadratic in the element count); {hint}")


def _nudge_cards(nudge: Nudge | None, b: int) -> dict:
    """emit_deck's nudge arguments for sample ``b`` of ``nudge``."""
    if nudge is None:
        return {}
    if nudge.currents_a is not None:
        return {"nudge_currents_a": nudge.currents_a[b].numpy()}
    return {"nudge_conductance_s": float(nudge.conductance_s), "nudge_target_v": nudge.target_v[b].numpy()}
