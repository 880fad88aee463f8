"""Circuit -> SPICE deck text. The deck is the contract between this toolkit,
ngspice and a designer's own flow.

Two forms of the same block:

* **physical**: every input voltage source ``V(+-i) = +-a*u_i`` and every
  first-layer resistor, exactly the hardware;
* **reduced**: the source-driven input layer replaced, per first-layer node
  ``j``, by its exact Norton equivalent: a conductance ``sum_i G1[i,j]`` to
  ground and a current source ``sum_i G1[i,j]*V_i`` into the node. Node
  voltages of layers 1..m are the same; the sparse-matrix work on ``2*n_0``
  source nodes disappears.

Plain SPICE3 cards: R, D, V, I, B, X with ``.subckt`` from ``circuits/ffebm.lib``
(inlined so the deck runs alone) and ``.model`` cards from the circuit's
device parameters. With ``control=True`` a ``.control`` block runs ``op`` and
``print all`` so ``ngspice -b deck.cir`` prints every node voltage and source
current (17 digits) and exits 0; backends load the deck without it and drive the analysis themselves.

Formats (``dialect=``, :mod:`ffebm_sim.dialects`): the body is written here once
for every format; the options, temperature, analysis/print and PWL-element cards
come from the dialect (``ngspice``, the default, is the deck above byte for byte).
:func:`emit_subckt` writes the same body as a placeable ``.subckt`` library and a
testbench that drives its ports (:class:`_Cards` splits network from supplies).

Non-idealities (issue 6), written only when the circuit has them, so decks of
ideal circuits are unchanged:

* **temperature**: ``.options temp=T tnom=27``; junction ``.model`` cards keep
  their 27 C parameters and ngspice applies IS(T), N*Vt(T) (defaults XTI=3, EG=1.11);
* **mismatch**: every resistor is written with its actual conductance
  ``G*factor`` (its ohms ``1/(G*factor)``); with IS/N mismatch every diode is a
  ``D`` card with its own ``.model`` (``dk<k>_<j>u`` / ``dk<k>_<j>d``);
* **wire resistance**: every layer is a crossbar (see ``BlockCircuit``):
  row segments ``RWR<k>_<i>_<j>`` (into cross-point j of row i), column
  segments ``RWC<k>_<i>_<j>`` (out of cross-point (i, j) towards the node),
  devices between ``r<k>_<i>_<j>`` and ``c<k>_<i>_<j>``. The per-node Norton
  reduction is not exact with resistive lines, so ``reduced=True`` writes the
  physical deck (and says so in its header).

Amplifiers between layers (``BlockCircuit.amplifier_gains``; see
``ffebm_sim.amplifier`` and docs/amplifier.md), after node ``j`` of layer ``k``
with gain ``A``: the VCVS ``EA<k>_<j> ae<k>_<j> 0 n<k>_<j> 0 A``, the zero-volt
current sense ``VA<k>_<j> ae<k>_<j> a<k>_<j> DC 0`` (its branch current is the
current ``i_out`` delivered into crossbar k+1, whose resistors hang on
``a<k>_<j>``) and the CCCS ``FA<k>_<j> n<k>_<j> 0 VA<k>_<j> 1/A``, which draws
``i_out/A`` out of ``n<k>_<j>``. Reduced decks keep them (only layer 1 is reduced).

Element names (a backend alters them, so they are written once here):
``vxp<i>``/``vxm<i>`` input sources, ``in1_<j>`` Norton currents (reduced),
``inudge<j>`` nudge currents, ``vy<j>`` resistive-nudge targets.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from . import __version__
from .circuit import (BlockCircuit, Nonlinearity, amplifier_node_name, amplifier_sense_name,
                      amplifier_source_node_name, column_node_name, free_node_names, node_name, rail_potentials, row_node_name, source_names,
                      source_node_names, source_voltages)
from .devices import DEFAULT_EG_EV, DEFAULT_XTI, NOMINAL_TEMPERATURE_C
from .devices import DiodeModel
from .dialects import SPICE_TOLERANCES, Dialect, continued, get_dialect, num
from .numerics import fixed_order_matmul

LIBRARY_PATH = Path(__file__).resolve().parent.parent / "circuits" / "ffebm.lib"

#: ngspice options every deck carries: tight tolerances so decks agree with the
#: reference to ~1e-12 V, and the junction GMIN the reference models.
SOLVER_OPTIONS = SPICE_TOLERANCES


def nudge_source_name(j: int) -> str:
    return f"inudge{j}"


def target_source_name(j: int) -> str:
    return f"vy{j}"


def norton_source_name(j: int) -> str:
    return f"in1_{j}"


def norton_currents_a(g1: np.ndarray, v_src: np.ndarray) -> np.ndarray:
    """Norton currents of the source-driven input layer, ``I_j = sum_i G1[i,j] * V_i`` (A).

    ``v_src``: ``(B, 2*n_0)`` or ``(2*n_0,)`` source voltages (V) as
    :func:`~ffebm_sim.circuit.source_voltages` writes them, ``[+a*u, -a*u]`` (the second
    half the exact negation of the first); ``g1``: the deck's first-layer conductances
    ``(2*n_0, n_1)`` (S). Each node ``j`` of layer 1 sees the sources as this current into
    it beside a conductance ``sum_i G1[i,j]`` to ground. With the pair of sources of input
    ``i`` at ``+-a*u_i`` the sum is ``sum_i (G1[i,j] - G1[n_0+i,j]) * a*u_i``: half the
    terms. Summed in a fixed order (:func:`fixed_order_matmul`), so a sample's deck is the
    same bit for bit alone or in any batch, on any CPU kernel, on any worker.
    """
    v_src = np.asarray(v_src, dtype=np.float64)
    n0 = g1.shape[0] // 2
    plus = v_src[..., :n0]
    if 2 * n0 != g1.shape[0] or v_src.shape[-1] != g1.shape[0] or not np.array_equal(v_src[..., n0:], -plus):
        raise ValueError(f"norton_currents_a: source voltages of shape {v_src.shape} are not [+a*u, -a*u] "
                         f"for a first layer of {g1.shape[0]} rows")
    return fixed_order_matmul(plus, g1[:n0] - g1[n0:])


def _library() -> dict[str, str]:
    """Subcircuit bodies of circuits/ffebm.lib by name (text between .subckt and .ends)."""
    subckts, current, lines = {}, None, []
    for line in LIBRARY_PATH.read_text().splitlines():
        words = line.split()
        if words and words[0].lower() == ".subckt":
            current, lines = words[1], [line]
        elif current is not None:
            lines.append(line)
            if words and words[0].lower() == ".ends":
                subckts[current] = "\n".join(lines)
                current = None
    return subckts


class _Models:
    """Distinct device models and the subcircuits built on them, numbered in order of use."""

    def __init__(self, dialect: Dialect):
        self.dialect = dialect
        self.diodes: list[DiodeModel] = []
        self.tables: list = []
        self.cards: list[str] = []
        self.library = _library()

    def diode(self, model: DiodeModel, subckt: str) -> str:
        key = (model.saturation_current_a, model.emission_coefficient)
        keys = [(d.saturation_current_a, d.emission_coefficient) for d in self.diodes]
        if key not in keys:
            self.diodes.append(model)
            keys.append(key)
            self.cards.append(f".model dclamp{len(keys) - 1} D(IS={num(key[0])} N={num(key[1])})")
        m = keys.index(key)
        return self._subckt(subckt, f"{subckt}{m}", {"DCLAMP": f"dclamp{m}"})

    def table(self, table) -> str:
        if table not in self.tables:
            self.tables.append(table)
        m = self.tables.index(table)
        name = f"pwl_element{m}"
        if not any(c.startswith(f".subckt {name} ") for c in self.cards):
            # The subcircuit's terminal and name from circuits/ffebm.lib, its element card from the dialect.
            header = self.library["pwl_element"].splitlines()[0].replace(".subckt pwl_element", f".subckt {name}", 1)
            self.cards.append("\n".join([header.rstrip(), *self.dialect.pwl_element(table), f".ends {name}"]))
        return name

    def _subckt(self, base: str, name: str, replacements: dict[str, str]) -> str:
        header = f".subckt {name} "
        if any(c.startswith(header) for c in self.cards):
            return name
        text = self.library[base]
        for old, new in replacements.items():
            text = text.replace(old, new)
        lines = [line.rstrip() for line in text.splitlines()]
        lines[0] = lines[0].replace(f".subckt {base}", f".subckt {name}", 1)
        lines[-1] = f".ends {name}"
        self.cards.append("\n".join(lines))
        return name


class _Cards:
    """The deck's cards in order, split into the network (what a placed block contains) and
    its supplies (input and rail sources, nudges: what a testbench drives). In a standalone
    deck both go into one list, in emission order."""

    def __init__(self, split: bool):
        self.network: list[str] = []
        self.supplies: list[str] = []
        self.rails: list[str] = []
        self.nudge: list[str] = []
        self.split = split

    def net(self, *lines: str) -> None:
        self.network.extend(lines)

    def src(self, *lines: str) -> None:
        (self.supplies if self.split else self.network).extend(lines)

    def rail(self, line: str) -> None:
        """A DC rail source ``V<name> <node> 0 DC <v>``: a supply, and its node a port of the block."""
        self.rails.append(line.split()[1])
        self.src(line)


def _header(circuit: BlockCircuit, form: str, dialect: Dialect, command: str | None, reduced_requested: bool) -> list[str]:
    sizes = circuit.layer_sizes
    out = [
        f"* ffebm-sim {__version__} energy block '{circuit.name}', {form}",
        f"* layers: {sizes[0]} inputs (x2 sources, gain {num(circuit.input_gain_v)} V/unit) -> "
        + " -> ".join(str(s) for s in sizes[1:]),
        "* free nodes n<layer>_<index>; conductances G in siemens are written as resistances 1/G in ohms;",
        "* zero conductances are open circuits and are not written.",
    ]
    out += dialect.header
    if command:
        out.append(f"* regenerate: {command}")
    if circuit.has_amplifiers:
        stages = ", ".join(f"{num(circuit.amplifier_gain(k))} V/V after layer {k}" for k in circuit.amplified_layers())
        out.append(f"* amplifiers: {stages}; bidirectional (forward VCVS E, backward CCCS F of gain 1/A), "
                   "see docs/amplifier.md")
    return out + _nonideal_header(circuit, reduced_requested)


def _option_cards(circuit: BlockCircuit, dialect: Dialect) -> list[str]:
    temp = "27" if circuit.temperature_c == NOMINAL_TEMPERATURE_C else num(circuit.temperature_c)
    return ["", "* ---- analysis options: tight tolerances, junction GMIN and temperature the reference solver models ----",
            *dialect.option_cards(circuit.gmin_s, temp), ""]


def emit_deck(circuit: BlockCircuit, inputs=None, *, reduced: bool = False, control: bool = True,
              nudge_currents_a=None, nudge_conductance_s: float = 0.0, nudge_target_v=None,
              command: str | None = None, dialect: "str | Dialect" = "ngspice") -> str:
    """The SPICE deck of ``circuit`` for one input vector.

    Args:
        inputs: ``(n_0,)`` input features (default zeros); sources get ``+-a*u``.
        reduced: write the Norton-reduced input layer instead of the sources.
        control: append the analysis cards (ngspice: the ``.control`` block that runs
            ``op`` and prints; other formats: ``.op`` and their print card).
        nudge_currents_a: ``(n_out,)`` currents into the output nodes (A), default 0.
        nudge_conductance_s, nudge_target_v: the resistive nudge (S, V), if any.
        command: the command line that regenerates this deck, recorded in its header.
        dialect: the deck format (:mod:`ffebm_sim.dialects`), ``"ngspice"`` by default.
    """
    dialect = get_dialect(dialect)
    models = _Models(dialect)
    cards = _block_cards(circuit, inputs, reduced, models, _Cards(split=False), nudge_currents_a,
                         nudge_conductance_s, nudge_target_v)
    reduced_used = reduced and not circuit.has_wires
    form = "reduced (Norton-equivalent input layer)" if reduced_used else "physical"
    out = _header(circuit, f"{form} deck", dialect, command, reduced) + _option_cards(circuit, dialect)
    if models.cards:
        out.append("* ---- device models and subcircuits (from circuits/ffebm.lib) ----")
        out += models.cards
        out.append("")
    out += cards.network
    if control:
        sources = [] if reduced_used else [s.upper() for s in source_names(circuit.n_inputs)]
        out += [""] + dialect.analysis_cards(free_node_names(circuit), sources)
    out += ["", ".end", ""]
    return "\n".join(out)


def subckt_name(circuit: BlockCircuit) -> str:
    """The block's subcircuit name: its circuit name as a SPICE identifier."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", circuit.name or "block")
    return name if name[0].isalpha() else f"b_{name}"


def emit_subckt(circuit: BlockCircuit, inputs=None, *, library_file: str, command: str | None = None,
                dialect: "str | Dialect" = "ngspice", nudge_currents_a=None, nudge_conductance_s: float = 0.0,
                nudge_target_v=None) -> tuple[str, str]:
    """The block as a placeable subcircuit: ``(library, testbench)`` texts.

    The library holds the device models, the helper subcircuits and
    ``.subckt NAME <inputs> <outputs> <rails>``: ports are the input source nodes
    ``xp<i>`` then ``xm<i>`` (drive them with ``+-a*u_i``), the output nodes
    ``n<m>_<j>``, then the DC rails the block needs (bias rails ``vbp``/``vbm``, clamp
    rails ``vhi<k>``/``vlo<k>``). The testbench ``.include``s ``library_file``
    (a path relative to the testbench), drives the ports with the sources the
    standalone deck has, places the block as ``XBLOCK``, adds the output nudge and
    runs the dialect's analysis, printing the outputs and input-source currents.
    Only the physical form is placeable (a reduced deck bakes the inputs into the block).
    """
    dialect = get_dialect(dialect)
    models = _Models(dialect)
    cards = _block_cards(circuit, inputs, False, models, _Cards(split=True), nudge_currents_a,
                         nudge_conductance_s, nudge_target_v)
    n0, m = circuit.n_inputs, circuit.depth
    name = subckt_name(circuit)
    outputs = [node_name(m, j) for j in range(circuit.n_outputs)]
    ports = source_node_names(n0) + outputs + cards.rails
    lib = _header(circuit, f"subcircuit {name} (physical)", dialect, command, False)
    lib += ["* ports: inputs " + " ".join(source_node_names(n0)[:2]) + (" ..." if n0 > 1 else "")
            + f" ({2 * n0} nodes, xp<i> = +a*u_i, xm<i> = -a*u_i), outputs " + " ".join(outputs[:2])
            + (" ..." if len(outputs) > 2 else "") + f" ({len(outputs)}), rails " + (" ".join(cards.rails) or "none"),
            "* no analysis here: place the block with X<name> <ports> " + name
            + " and drive its ports (the testbench shows how)", ""]
    if models.cards:
        lib += ["* ---- device models and subcircuits (from circuits/ffebm.lib) ----", *models.cards, ""]
    lib += continued(f".subckt {name}", ports) + cards.network + [f".ends {name}", ""]
    bench = _header(circuit, f"testbench of subcircuit {name} in {library_file}", dialect, command, False)
    bench += ["", dialect.include_card(library_file)] + _option_cards(circuit, dialect)
    bench += cards.supplies + ["", f"* ---- the block: {len(ports)} ports ----"] + continued("XBLOCK", ports + [name])
    if cards.nudge:
        bench += [""] + cards.nudge
    bench += [""] + dialect.analysis_cards(outputs, [s.upper() for s in source_names(n0)]) + ["", ".end", ""]
    return "\n".join(lib), "\n".join(bench)


def _block_cards(circuit: BlockCircuit, inputs, reduced: bool, models: _Models, cards: _Cards,
                 nudge_currents_a, nudge_conductance_s: float, nudge_target_v) -> _Cards:
    """Every card of the block's body, in deck order, into ``cards`` (network or supplies)."""
    sizes = circuit.layer_sizes
    n0, m = sizes[0], circuit.depth
    u = np.zeros(n0) if inputs is None else np.asarray(inputs, dtype=np.float64).reshape(n0)
    v_src = source_voltages(circuit, u)
    wires = circuit.has_wires
    reduced = reduced and not wires
    actual = circuit.actual_conductances()
    g1 = actual[0]
    if reduced:
        cards.net("* ---- input layer, reduced: per layer-1 node, Norton conductance sum_i G1[i,j] and current sum_i G1[i,j]*V_i ----")
        g_sum = g1.sum(0)
        i_norton = norton_currents_a(g1, v_src)
        for j in range(sizes[1]):
            if g_sum[j] > 0:
                cards.net(f"RN1_{j} {node_name(1, j)} 0 {num(1.0 / g_sum[j])}")
            cards.net(f"{norton_source_name(j).upper()} 0 {node_name(1, j)} DC {num(i_norton[j])}")
    else:
        cards.src("* ---- input sources: V(+i) = +a*u_i, V(-i) = -a*u_i ----")
        for name, node, v in zip(source_names(n0), source_node_names(n0), v_src):
            cards.src(f"{name.upper()} {node} 0 DC {num(v)}")
        cards.src("")
        if wires:
            cards.net(*_crossbar_cards(circuit, 1, actual[0]))
        else:
            cards.net(f"* ---- layer 1 resistors: {2 * n0} source nodes x {sizes[1]} nodes ----")
            for s, src in enumerate(source_node_names(n0)):
                for j in range(sizes[1]):
                    if g1[s, j] > 0:
                        cards.net(f"R1_{src}_{j} {src} {node_name(1, j)} {num(1.0 / g1[s, j])}")
    for k in range(2, m + 1):
        g = actual[k - 1]
        cards.net("")
        if wires:
            cards.net(*_crossbar_cards(circuit, k, g))
            continue
        gain = circuit.drive_gain(k)
        if gain != 1.0:
            cards.net(*_amplifier_cards(k - 1, sizes[k - 1], gain), "")
        driver = amplifier_node_name if gain != 1.0 else node_name
        via = f", driven by the amplifier outputs a{k - 1}_<i>" if gain != 1.0 else ""
        cards.net(f"* ---- layer {k} resistors: {sizes[k - 1]} x {sizes[k]}{via} ----")
        columns = [node_name(k, j) for j in range(sizes[k])]
        # Python floats: the same IEEE quotients as numpy's, without a numpy scalar per device
        for i, row in enumerate(np.asarray(g, dtype=np.float64).tolist()):
            row_node = driver(k - 1, i)
            cards.net(*(f"R{k}_{i}_{j} {row_node} {columns[j]} {num(1.0 / gij)}" for j, gij in enumerate(row) if gij > 0))
    if circuit.has_bias:
        vb = circuit.bias_voltage_v
        bias_pos, bias_neg = circuit.actual_bias()
        comment = (f"* ---- bias: conductances to the +{num(vb)} V / -{num(vb)} V rails ----" if not wires else
                   f"* ---- bias rails +{num(vb)} V / -{num(vb)} V: they drive the last two rows of every crossbar above ----")
        cards.src("", comment)
        rails = rail_potentials(circuit)
        for rail in ("vbp", "vbm"):
            cards.rail(f"{rail.upper()} {rail} 0 DC {num(rails[rail])}")
        if cards.split:
            cards.net("", comment.replace("rails", "rails (ports vbp, vbm)", 1))
        if not wires:
            for k in range(1, m + 1):
                for rail, gs in (("vbp", bias_pos[k - 1]), ("vbm", bias_neg[k - 1])):
                    for j, g in enumerate(gs):
                        if g > 0:
                            cards.net(f"RB{k}_{rail[-1]}{j} {node_name(k, j)} {rail} {num(1.0 / g)}")
    for k in range(1, m + 1):
        nl = circuit.layer_nonlinearity(k)
        if nl is not None:
            cards.net("")
            _nonlinearity_cards(k, sizes[k], nl, models, cards,
                                circuit.diode_parameters(k, nl) if circuit.has_diode_mismatch else None)
    nudge = ["", f"* ---- nudge on the {sizes[-1]} output nodes: current into each node (0 A in the free phase) ----"]
    i_n = np.zeros(sizes[-1]) if nudge_currents_a is None else np.asarray(nudge_currents_a, dtype=np.float64).reshape(-1)
    for j in range(sizes[-1]):
        nudge.append(f"{nudge_source_name(j).upper()} 0 {node_name(m, j)} DC {num(i_n[j])}")
    if nudge_conductance_s != 0:
        y = np.asarray(nudge_target_v, dtype=np.float64).reshape(-1)
        nudge.append(f"* resistive nudge: conductance {num(nudge_conductance_s)} S from each output to its target")
        for j in range(sizes[-1]):
            nudge.append(f"RNUDGE{j} {node_name(m, j)} ynudge{j} {num(1.0 / nudge_conductance_s)}")
            nudge.append(f"{target_source_name(j).upper()} ynudge{j} 0 DC {num(y[j])}")
    # The nudge belongs to the testbench of a placed block, after the block itself.
    cards.nudge = nudge[1:] if cards.split else []
    if not cards.split:
        cards.net(*nudge)
    return cards


def _nonideal_header(circuit: BlockCircuit, reduced_requested: bool) -> list[str]:
    """Header comments naming the non-idealities (none for an ideal circuit)."""
    if circuit.is_ideal_hardware:
        return []
    lines = ["* non-idealities:"]
    if circuit.has_wires:
        lines.append(f"*   wire resistance {num(circuit.wire_resistance_ohm)} ohm per line segment: every layer is a "
                     "crossbar, rows r<k>_<i>_<j>, columns c<k>_<i>_<j>")
        if reduced_requested:
            lines.append("*   (reduced form requested: the per-node Norton reduction is not exact with resistive lines, "
                         "so this is the physical deck)")
    mm = circuit.mismatch
    if mm is not None and (mm.conductance_sigma > 0 or circuit.has_diode_mismatch):
        lines.append(f"*   mismatch (seed {mm.seed}, log-normal): conductance sigma {num(mm.conductance_sigma)}, "
                     f"IS sigma {num(mm.is_sigma)}, N sigma {num(mm.n_sigma)}; resistors are written with their "
                     "actual conductance G*factor")
    if circuit.temperature_c != NOMINAL_TEMPERATURE_C:
        lines.append(f"*   temperature {num(circuit.temperature_c)} C (TNOM 27 C): junction .model cards hold 27 C values; "
                     f"ngspice applies IS(T) = IS*(T/Tnom)^(XTI/N)*exp(-EG/(N*Vt(T))*(1-T/Tnom)), XTI={num(DEFAULT_XTI)}, "
                     f"EG={num(DEFAULT_EG_EV)} (defaults), and N*Vt(T)")
    return lines


def _crossbar_cards(circuit: BlockCircuit, k: int, g: np.ndarray) -> list[str]:
    """Layer k as a crossbar with resistive row and column lines (see ``BlockCircuit.wire_resistance_ohm``)."""
    sizes = circuit.layer_sizes
    rw = num(circuit.wire_resistance_ohm)
    if k == 1:
        drivers, labels = source_node_names(sizes[0]), source_node_names(sizes[0])
        names = [f"R1_{src}_{{j}}" for src in labels]
    else:
        drivers = [node_name(k - 1, i) for i in range(sizes[k - 1])]
        names = [f"R{k}_{i}_{{j}}" for i in range(sizes[k - 1])]
    if circuit.has_bias:
        bias_pos, bias_neg = circuit.actual_bias()
        g = np.vstack([g, bias_pos[k - 1][None, :], bias_neg[k - 1][None, :]])
        drivers = drivers + ["vbp", "vbm"]
        names = names + [f"RB{k}_p{{j}}", f"RB{k}_m{{j}}"]
    rows, cols = g.shape
    lines = [f"* ---- layer {k} crossbar: {rows} rows x {cols} columns, {rw} ohm per line segment ----",
             "* rows enter from their drivers at cross-point 0; columns leave from their last cross-point to the layer's node"]
    for i in range(rows):
        for j in range(cols):
            prev = drivers[i] if j == 0 else row_node_name(k, i, j - 1)
            lines.append(f"RWR{k}_{i}_{j} {prev} {row_node_name(k, i, j)} {rw}")
    for i in range(rows):
        for j in range(cols):
            nxt = node_name(k, j) if i == rows - 1 else column_node_name(k, i + 1, j)
            lines.append(f"RWC{k}_{i}_{j} {column_node_name(k, i, j)} {nxt} {rw}")
    for i in range(rows):
        for j in range(cols):
            if g[i, j] > 0:
                lines.append(f"{names[i].format(j=j)} {row_node_name(k, i, j)} {column_node_name(k, i, j)} {num(1.0 / g[i, j])}")
    return lines


def _amplifier_cards(k: int, n: int, gain: float) -> list[str]:
    """The amplifiers after the n nodes of layer k (see the module docstring)."""
    lines = [f"* ---- amplifiers after layer {k}: v(a{k}_<j>) = {num(gain)} * v(n{k}_<j>) (E), output current "
             f"sensed by VA{k}_<j>, 1/{num(gain)} of it drawn out of n{k}_<j> (F) ----"]
    for j in range(n):
        x, a, e, sense = node_name(k, j), amplifier_node_name(k, j), amplifier_source_node_name(k, j), \
            amplifier_sense_name(k, j).upper()
        lines += [f"EA{k}_{j} {e} 0 {x} 0 {num(gain)}", f"{sense} {e} {a} DC 0",
                  f"FA{k}_{j} {x} 0 {sense} {num(1.0 / gain)}"]
    return lines


def _nonlinearity_cards(k: int, n: int, nl: Nonlinearity, models: _Models, cards: _Cards,
                        per_diode: dict | None = None) -> None:
    cards.net(f"* ---- layer {k} nonlinearity: {nl.kind} ----")
    if nl.kind == "pwl":
        sub = models.table(nl.table)
        cards.net(*(f"X{k}_{j} {node_name(k, j)} {sub}" for j in range(n)))
        return
    d = nl.emitted_diode
    if nl.kind == "ideal":
        cards.net(f"* ideal diodes approximated by a steep junction (IS={num(d.saturation_current_a)} A, "
                  f"N={num(d.emission_coefficient)}); the reference solver's hard clip at +-{num(nl.v_off_v)} V",
                  "* differs from this deck by about the junction's forward drop (tested in tests/test_agreement.py)")
    if cards.split:
        cards.src("", f"* ---- clamp rails of layer {k}: +-{num(nl.v_off_v)} V ----")
    for rail, upward in ((f"vhi{k}", True), (f"vlo{k}", False)):
        cards.rail(f"{rail.upper()} {rail} 0 DC {num(nl.clamp_rail_v(upward))}")
    up, down = nl.clamps_up(n), nl.clamps_down(n)
    if per_diode is not None:
        cards.net("* diode mismatch: every junction has its own .model (IS, N at 27 C)")
        for j in range(n):
            for col, on, card, nodes in ((0, up[j], "DU", f"{node_name(k, j)} vhi{k}"),
                                         (1, down[j], "DD", f"vlo{k} {node_name(k, j)}")):
                if on:
                    model = f"dk{k}_{j}{'u' if col == 0 else 'd'}"
                    models.cards.append(f".model {model} D(IS={num(per_diode['is'][j, col])} N={num(per_diode['n'][j, col])})")
                    cards.net(f"{card}{k}_{j} {nodes} {model}")
        return
    both = models.diode(d, "clamp_double") if (up & down).any() else None
    only_up = models.diode(d, "clamp_up") if (up & ~down).any() else None
    only_down = models.diode(d, "clamp_down") if (~up & down).any() else None
    for j in range(n):
        if up[j] and down[j]:
            cards.net(f"X{k}_{j} {node_name(k, j)} vhi{k} vlo{k} {both}")
        elif up[j]:
            cards.net(f"X{k}_{j} {node_name(k, j)} vhi{k} {only_up}")
        elif down[j]:
            cards.net(f"X{k}_{j} {node_name(k, j)} vlo{k} {only_down}")
