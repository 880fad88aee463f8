"""An energy block flattened once into groups of branches, non-idealities resolved.

One :class:`Elements` holds every element of the physical deck of a
:class:`~ffebm_sim.circuit.BlockCircuit` (what :func:`ffebm_sim.netlist.emit_deck`
writes with ``reduced=False``), as vectorised groups of two-terminal branches
over one global node vector:

    [free nodes (layers 1..m, ``free_node_names`` order) | crossbar internal nodes
     ``r<k>_<i>_<j>``, ``c<k>_<i>_<j>`` (with wires) | amplifier nodes ``a<k>_<j>``, ``ae<k>_<j>``
     (with amplifiers) | input source nodes ``xp<i>``, ``xm<i>``
     | clamp rails ``vhi<k>``, ``vlo<k>`` | bias rails ``vbp``, ``vbm`` | nudge targets
     ``ynudge<j>`` (resistive nudge) | ground ``0``]

The first :attr:`Elements.n_unknown` nodes are the ones a solver (or ngspice)
finds; the others sit at fixed potentials: the sources ``+-a*u``
(:func:`~ffebm_sim.circuit.source_voltages`), the rails, the targets, 0 V.

**Branch convention** (one for every law, as SPICE's): a branch joins terminal
``a`` to terminal ``b``; its voltage is ``v = V[a] - V[b]`` (V) and its current
``i`` (A) flows from ``a`` through the element to ``b``; ``p = v * i`` (W) is the
power it *absorbs*. A source delivers ``-p``. For a voltage source (``a`` its
``+`` node, ``b`` ground) ``i`` is exactly SPICE's branch current ``i(Vname)``,
the opposite of the current it delivers into the network
(:func:`ffebm_sim.backends.base.delivered_from_branch_current`).

Laws (``BranchGroup.law``), each evaluated once here for a whole group:

* ``conductance``: ``i = g * v`` with ``g`` the *actual* conductance (mismatch
  factor applied): the layer resistors, the crossbar line segments
  (``1/wire_resistance_ohm``), the bias conductances, the resistive nudge;
* ``junction``: ngspice's level-1 diode of :mod:`ffebm_sim.devices` with the
  per-device ``IS`` and ``N*Vt`` at the circuit temperature
  (:meth:`BlockCircuit.diode_parameters`) and the circuit's GMIN; ``a`` the
  anode, ``b`` the cathode, as :func:`~ffebm_sim.circuit.clamp_diode_voltage`
  orients the clamps (an ``ideal`` layer is its emitted steep pair);
* ``pwl``: the measured table from the node (``a``) to ground;
* ``vsource``: an independent voltage source, ``+`` at ``a`` (a node no other
  source touches), ``-`` at ground. Its voltage is the node vector's; its
  current is not a function of voltages: either measured (ngspice's
  ``i(V)``) or, by KCL at ``a``, minus the current every other branch draws
  out of ``a``;
* ``isource``: an independent current source (the nudge, ``a`` = ground,
  ``b`` = the output node, so ``i`` is the current pushed *into* the node);
* the bidirectional amplifier after node ``n = n<k>_<j>`` (:mod:`ffebm_sim.amplifier`),
  as its three deck cards: ``vcvs`` (``EA``: ``a`` = ``ae<k>_<j>`` at ``A * V[n]``,
  ``b`` = ground; a voltage-source branch, current measured or by KCL at ``a``),
  ``sense`` (``VA``, 0 V from ``ae`` to ``a<k>_<j>``, the node crossbar k+1 hangs
  on; current measured or by KCL at ``b``: it is ``i_out``) and ``cccs`` (``FA``,
  ``i = i(VA) / A`` from ``n`` to ground). Together they absorb
  ``x * i_out * (1/A - A)``: minus what the amplifier's supply provides
  (:func:`ffebm_sim.amplifier.supply_power_w`), so they are active, neither a
  source's nor a passive branch's power.

**Adding an element** is one local change here: its law in
:func:`law_currents_a` (or, for a branch whose current is not a function of
voltages, in :func:`branch_currents_a`), its groups in :func:`flatten`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .amplifier import back_current, drive_voltage
from .circuit import (BlockCircuit, amplifier_node_name, amplifier_sense_name, amplifier_source_node_name,
                      column_node_name, free_node_names, rail_potentials, row_node_name, source_names, source_node_names,
                      source_voltages)
from .devices import PwlTable, junction_current_and_conductance, pwl_current_and_conductance
from .netlist import nudge_source_name, target_source_name

LAWS = ("conductance", "junction", "pwl", "vsource", "isource", "vcvs", "sense", "cccs")
#: Laws whose current is a branch unknown (ngspice's ``i(name)``), measured or found by KCL.
BRANCH_CURRENT_LAWS = ("vsource", "vcvs", "sense")
#: Laws whose branches dissipate (or store, never supply) energy.
PASSIVE_LAWS = ("conductance", "junction", "pwl")
GROUND = "0"


@dataclass(frozen=True, eq=False)
class BranchGroup:
    """Branches of one kind and one law, vectorised.

    Attributes:
        kind: what the branches are, for reports: ``resistor``, ``wire``, ``bias``,
            ``junction``, ``pwl``, ``nudge_conductance``, ``input``, ``clamp_rail``,
            ``bias_rail``, ``target``, ``nudge_current``.
        law: one of :data:`LAWS`.
        layer: the layer (1..m) the branches belong to, 0 for sources outside any layer.
        a, b: ``(n,)`` int node indices of the two terminals (module docstring).
        g_s: ``(n,)`` conductances (S), law ``conductance``.
        isat_a, vte_v: ``(n,)`` IS (A) and N*Vt (V) at the circuit temperature; ``gmin_s`` (S).
        table: the I-V table, law ``pwl``.
        names: SPICE element names, for sources (``i(<name>)`` is their branch vector).
        gain: the amplifier's voltage gain A (V/V), laws ``vcvs`` and ``cccs``.
        control: ``(n,)`` node indices, law ``vcvs``: the controlling input node.
    """

    kind: str
    law: str
    layer: int
    a: np.ndarray
    b: np.ndarray
    g_s: np.ndarray | None = None
    isat_a: np.ndarray | None = None
    vte_v: np.ndarray | None = None
    gmin_s: float = 0.0
    table: PwlTable | None = None
    names: tuple[str, ...] = ()
    gain: float = 1.0
    control: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(self.a.shape[0])


@dataclass(frozen=True, eq=False)
class Elements:
    """A block's branch groups over one node vector (module docstring).

    Attributes:
        circuit: the circuit flattened.
        node_names: every node's SPICE name, in node-vector order.
        n_free: free nodes (layers 1..m) = the first ``n_free`` entries.
        n_unknown: free plus crossbar internal plus amplifier nodes: the entries a solver finds.
        n_amplifier: the amplifier nodes ``a<k>_<j>``, ``ae<k>_<j>`` at the end of those.
        groups: the branch groups.
        input_nodes: ``(2*n_0,)`` indices of the input source nodes, ``G_1`` row order.
        target_nodes: ``(n_out,)`` indices of the resistive-nudge target nodes (empty without).
        fixed_nodes, fixed_v: the nodes at constant potentials (rails, ground) and their volts.
    """

    circuit: BlockCircuit
    node_names: tuple[str, ...]
    n_free: int
    n_unknown: int
    groups: tuple[BranchGroup, ...]
    input_nodes: np.ndarray
    target_nodes: np.ndarray
    fixed_nodes: np.ndarray
    fixed_v: np.ndarray
    n_amplifier: int = 0
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n_nodes(self) -> int:
        return len(self.node_names)

    def index(self, name: str) -> int:
        if "index" not in self._cache:
            self._cache["index"] = {n: i for i, n in enumerate(self.node_names)}
        return self._cache["index"][name]

    @property
    def n_internal_end(self) -> int:
        """End of the crossbar internal nodes (they are ``n_free:n_internal_end``)."""
        return self.n_unknown - self.n_amplifier

    @property
    def unknown_names(self) -> list[str]:
        """The nodes whose voltages a solver finds (free, then crossbar internal)."""
        return list(self.node_names[:self.n_unknown])

    @property
    def vsource_names(self) -> list[str]:
        """SPICE names of every voltage source, in the order of ``vsource_currents_a``."""
        return [n for g in self.groups if g.law in BRANCH_CURRENT_LAWS for n in g.names]


# ---- flattening ------------------------------------------------------------------------------

class _Nodes:
    def __init__(self):
        self.names: list[str] = []
        self.where: dict[str, int] = {}

    def add(self, name: str) -> int:
        if name not in self.where:
            self.where[name] = len(self.names)
            self.names.append(name)
        return self.where[name]

    def __getitem__(self, name: str) -> int:
        return self.where[name]


def _ints(values) -> np.ndarray:
    return np.asarray(list(values), dtype=np.int64)


def flatten(circuit: BlockCircuit, nudge_conductance_s: float = 0.0) -> Elements:
    """Every element of ``circuit``'s physical deck as :class:`BranchGroup` s.

    ``nudge_conductance_s``: the resistive nudge of a phase (S; 0: none), a
    conductance from each output node to a target source. The nudge current
    sources are always there (0 A in the free phase), as in the deck.
    """
    sizes, m, n0 = circuit.layer_sizes, circuit.depth, circuit.n_inputs
    nodes = _Nodes()
    for name in free_node_names(circuit):
        nodes.add(name)
    n_free = len(nodes.names)
    wires = circuit.has_wires
    actual = circuit.actual_conductances()
    bias = circuit.actual_bias()
    rows_of = {}
    if wires:
        for k in range(1, m + 1):
            rows = 2 * n0 if k == 1 else sizes[k - 1]
            rows += 2 if circuit.has_bias else 0
            rows_of[k] = rows
            for i in range(rows):
                for j in range(sizes[k]):
                    nodes.add(row_node_name(k, i, j))
            for i in range(rows):
                for j in range(sizes[k]):
                    nodes.add(column_node_name(k, i, j))
    for k in circuit.amplified_layers():
        for j in range(sizes[k]):
            nodes.add(amplifier_node_name(k, j))
            nodes.add(amplifier_source_node_name(k, j))
    n_unknown = len(nodes.names)
    n_amplifier = 2 * sum(sizes[k] for k in circuit.amplified_layers())
    input_nodes = _ints(nodes.add(s) for s in source_node_names(n0))
    fixed: dict[str, float] = {}
    diode_layers = [k for k in range(1, m + 1)
                    if circuit.layer_nonlinearity(k) is not None and circuit.layer_nonlinearity(k).kind != "pwl"]
    fixed.update(rail_potentials(circuit))
    for name in fixed:
        nodes.add(name)
    resistive = nudge_conductance_s != 0
    target_nodes = _ints(nodes.add(f"ynudge{j}") for j in range(circuit.n_outputs)) if resistive else _ints([])
    ground = nodes.add(GROUND)
    fixed[GROUND] = 0.0

    groups: list[BranchGroup] = []
    # -- sources --
    groups.append(BranchGroup("input", "vsource", 0, input_nodes, np.full(2 * n0, ground), names=tuple(source_names(n0))))
    for k in diode_layers:
        groups.append(BranchGroup("clamp_rail", "vsource", k, _ints([nodes[f"vhi{k}"], nodes[f"vlo{k}"]]),
                                  np.full(2, ground), names=(f"vhi{k}", f"vlo{k}")))
    if circuit.has_bias:
        groups.append(BranchGroup("bias_rail", "vsource", 0, _ints([nodes["vbp"], nodes["vbm"]]), np.full(2, ground),
                                  names=("vbp", "vbm")))
    out = circuit.layer_slice(m)
    out_nodes = np.arange(out.start, out.stop)
    groups.append(BranchGroup("nudge_current", "isource", m, np.full(len(out_nodes), ground), out_nodes,
                              names=tuple(nudge_source_name(j) for j in range(len(out_nodes)))))
    if resistive:
        groups.append(BranchGroup("target", "vsource", m, target_nodes, np.full(len(out_nodes), ground),
                                  names=tuple(target_source_name(j) for j in range(len(out_nodes)))))
        groups.append(BranchGroup("nudge_conductance", "conductance", m, out_nodes, target_nodes,
                                  g_s=np.full(len(out_nodes), float(nudge_conductance_s))))
    # -- layers --
    for k in range(1, m + 1):
        if k == 1:
            drivers = list(input_nodes)
        elif circuit.amplifier_gain(k - 1) != 1.0:
            drivers = [nodes[amplifier_node_name(k - 1, j)] for j in range(sizes[k - 1])]
            groups += _amplifier_groups(circuit, k - 1, nodes, ground)
        else:
            drivers = list(range(circuit.layer_slice(k - 1).start, circuit.layer_slice(k - 1).stop))
        cols = np.arange(circuit.layer_slice(k).start, circuit.layer_slice(k).stop)
        g = actual[k - 1]
        if wires:
            groups += _crossbar_groups(circuit, k, nodes, drivers, cols, g, bias, rows_of[k])
        else:
            i, j = np.nonzero(g > 0)
            groups.append(BranchGroup("resistor", "conductance", k, _ints(drivers)[i], cols[j], g_s=g[i, j]))
            if bias is not None:
                for rail, gs in (("vbp", bias[0][k - 1]), ("vbm", bias[1][k - 1])):
                    (j,) = np.nonzero(gs > 0)
                    groups.append(BranchGroup("bias", "conductance", k, cols[j], np.full(len(j), nodes[rail]),
                                              g_s=gs[j]))
        groups += _nonlinear_groups(circuit, k, nodes, cols, ground)
    fixed_nodes = _ints(nodes[n] for n in fixed)
    return Elements(circuit, tuple(nodes.names), n_free, n_unknown, tuple(g for g in groups if g.size),
                    input_nodes, target_nodes, fixed_nodes, np.array(list(fixed.values()), dtype=np.float64),
                    n_amplifier)


def _amplifier_groups(circuit, k, nodes, ground) -> list[BranchGroup]:
    """The amplifiers after layer k as ``netlist._amplifier_cards`` writes them: EA, VA, FA per node."""
    n, gain = circuit.layer_sizes[k], circuit.amplifier_gain(k)
    x = np.arange(circuit.layer_slice(k).start, circuit.layer_slice(k).stop)
    ae = _ints(nodes[amplifier_source_node_name(k, j)] for j in range(n))
    a = _ints(nodes[amplifier_node_name(k, j)] for j in range(n))
    sense = tuple(amplifier_sense_name(k, j) for j in range(n))
    return [BranchGroup("amplifier_out", "vcvs", k, ae, np.full(n, ground), names=tuple("e" + s[1:] for s in sense),
                        gain=gain, control=x),
            BranchGroup("amplifier_sense", "sense", k, ae, a, names=sense),
            BranchGroup("amplifier_in", "cccs", k, x, np.full(n, ground), gain=gain)]


def _crossbar_groups(circuit, k, nodes, drivers, cols, g, bias, rows) -> list[BranchGroup]:
    """Layer k as the crossbar ``netlist._crossbar_cards`` writes (see ``BlockCircuit.wire_resistance_ohm``)."""
    n_cols = len(cols)
    if bias is not None:
        g = np.vstack([g, bias[0][k - 1][None, :], bias[1][k - 1][None, :]])
        drivers = drivers + [nodes["vbp"], nodes["vbm"]]
    r = np.array([[nodes[row_node_name(k, i, j)] for j in range(n_cols)] for i in range(rows)], dtype=np.int64)
    c = np.array([[nodes[column_node_name(k, i, j)] for j in range(n_cols)] for i in range(rows)], dtype=np.int64)
    gw = 1.0 / circuit.wire_resistance_ohm
    # row segments: driver -> cross-point 0 -> ... ; column segments: cross-point i -> i+1 -> ... -> the node
    row_prev = np.concatenate([np.asarray(drivers, dtype=np.int64)[:, None], r[:, :-1]], axis=1)
    col_next = np.concatenate([c[1:, :], cols[None, :]], axis=0)
    a = np.concatenate([row_prev.ravel(), c.ravel()])
    b = np.concatenate([r.ravel(), col_next.ravel()])
    out = [BranchGroup("wire", "conductance", k, a, b, g_s=np.full(a.shape, gw))]
    n_dev = rows - (2 if bias is not None else 0)
    for kind, sel in (("resistor", slice(0, n_dev)), ("bias", slice(n_dev, rows))):
        gs = g[sel]
        i, j = np.nonzero(gs > 0)
        if kind == "resistor" or bias is not None:
            out.append(BranchGroup(kind, "conductance", k, r[sel][i, j], c[sel][i, j], g_s=gs[i, j]))
    return out


def _nonlinear_groups(circuit, k, nodes, cols, ground) -> list[BranchGroup]:
    nl = circuit.layer_nonlinearity(k)
    if nl is None:
        return []
    if nl.kind == "pwl":
        return [BranchGroup("pwl", "pwl", k, cols, np.full(len(cols), ground), table=nl.table)]
    params = circuit.diode_parameters(k, nl)
    n = circuit.layer_sizes[k]
    out = []
    for col, (mask, upward) in enumerate(((nl.clamps_up(n), True), (nl.clamps_down(n), False))):
        node, rail = cols[mask], np.full(int(mask.sum()), nodes[f"vhi{k}" if upward else f"vlo{k}"])
        a, b = (node, rail) if upward else (rail, node)      # anode, cathode: circuit.clamp_diode_voltage
        out.append(BranchGroup("junction", "junction", k, a, b, isat_a=params["is_t"][mask, col],
                               vte_v=params["vte"][mask, col], gmin_s=circuit.gmin_s))
    return out


# ---- node voltages ---------------------------------------------------------------------------

def node_voltages(elements: Elements, unknown_v, inputs, nudge_target_v=None) -> np.ndarray:
    """``(B, n_nodes)`` the whole node vector of a batch.

    ``unknown_v``: ``(B, n_unknown)`` voltages of the free, crossbar internal and
    amplifier nodes (as ngspice reports them), or ``(B, n_free)``: the internal
    nodes are then solved from the rest (:func:`solve_internal`; exact, they join
    only linear conductances and hold no charge) and the amplifier nodes are
    ``A * x`` (:func:`ffebm_sim.amplifier.drive_voltage`). ``inputs``: ``(B, n_0)`` or
    ``(n_0,)`` features; ``nudge_target_v``: ``(B, n_out)`` with a resistive nudge.
    """
    x = np.atleast_2d(np.asarray(unknown_v, dtype=np.float64))
    B = x.shape[0]
    u = np.atleast_2d(np.asarray(inputs, dtype=np.float64))
    V = np.zeros((B, elements.n_nodes))
    if x.shape[1] not in (elements.n_free, elements.n_unknown):
        raise ValueError(f"node voltages: {x.shape[1]} columns; expected {elements.n_free} (free) or "
                         f"{elements.n_unknown} (free + crossbar internal)")
    V[:, :x.shape[1]] = x
    V[:, elements.input_nodes] = source_voltages(elements.circuit, np.broadcast_to(u, (B, u.shape[1])))
    V[:, elements.fixed_nodes] = elements.fixed_v
    if len(elements.target_nodes):
        V[:, elements.target_nodes] = np.atleast_2d(np.asarray(nudge_target_v, dtype=np.float64))
    if x.shape[1] < elements.n_unknown:
        V[:, elements.n_free:elements.n_internal_end] = solve_internal(elements, V)
        for g in elements.groups:
            if g.law == "vcvs":
                V[:, g.a] = drive_voltage(V[:, g.control], g.gain)
            elif g.law == "sense":
                V[:, g.b] = V[:, g.a]
    return V


def _internal_network(elements: Elements):
    """(LU of L_II, L_IK, the other nodes' indices, L_KK's diagonal) of the conductances touching the
    crossbar internal nodes (cached). Only linear conductances may touch them."""
    if "internal" in elements._cache:
        return elements._cache["internal"]
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import splu
    lo, hi = elements.n_free, elements.n_internal_end
    rows, cols, vals = [], [], []
    for g in elements.groups:
        touches = ((g.a >= lo) & (g.a < hi)) | ((g.b >= lo) & (g.b < hi))
        if not touches.any():
            continue
        if g.law != "conductance":
            raise ValueError(f"crossbar internal nodes touch a '{g.law}' branch; only conductances are linear")
        a, b, gs = g.a[touches], g.b[touches], g.g_s[touches]
        for p, q, sign in ((a, a, 1.0), (b, b, 1.0), (a, b, -1.0), (b, a, -1.0)):
            rows.append(p)
            cols.append(q)
            vals.append(sign * gs)
    L = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(elements.n_nodes, elements.n_nodes)).tocsr()
    inner = np.arange(lo, hi)
    outer = np.setdiff1d(np.arange(elements.n_nodes), inner)
    elements._cache["internal"] = (splu(L[inner][:, inner].tocsc()), L[inner][:, outer].tocsc(), outer,
                                   L[outer][:, outer].diagonal())
    return elements._cache["internal"]


def _internal_map(elements: Elements) -> tuple[np.ndarray, np.ndarray]:
    """(the nodes the internal network touches, ``X = L_II^-1 L_IT``), so internal = ``-X @ V_T`` (cached)."""
    if "internal_map" not in elements._cache:
        lu, l_ik, outer, _ = _internal_network(elements)
        used = np.unique(l_ik.nonzero()[1])
        elements._cache["internal_map"] = (outer[used], lu.solve(l_ik[:, used].toarray()))
    return elements._cache["internal_map"]


def solve_internal(elements: Elements, V: np.ndarray) -> np.ndarray:
    """``(B, n_internal_end - n_free)``: the crossbar internal nodes' voltages that satisfy KCL there,
    given every other node of ``V``: ``x_I = -L_II^-1 L_IT x_T`` over the conductances (sparse LU once)."""
    if elements.n_internal_end == elements.n_free:
        return np.zeros((V.shape[0], 0))
    terminals, X = _internal_map(elements)
    return -(V[:, terminals] @ X.T)


def kron_couplings(elements: Elements) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The crossbar internal nodes eliminated exactly (Kron reduction of the linear lines and devices):
    ``(a, b, g)``, every pair of remaining nodes with at least one free node that the crossbars couple,
    and its equivalent conductance (S). ``Y = L_KK - L_KI L_II^-1 L_IK`` is again a Laplacian (its
    off-diagonal entries are ``-g <= 0``), so the pairs are resistors. Pairs of fixed nodes (source to
    source) are left out: they load ideal sources only and move no node."""
    if elements.n_internal_end == elements.n_free:
        return _ints([]), _ints([]), np.zeros(0)
    if "kron" in elements._cache:
        return elements._cache["kron"]
    lu, l_ik, outer, diag = _internal_network(elements)
    used = np.unique(l_ik.nonzero()[1])
    nodes, X = _internal_map(elements)
    Y = np.diag(diag[used]) - l_ik[:, used].toarray().T @ X
    i, j = np.triu_indices(len(used), 1)
    g = -Y[i, j]
    keep = (g >= 1e-30) & ((nodes[i] < elements.n_free) | (nodes[j] < elements.n_free))
    elements._cache["kron"] = (nodes[i][keep], nodes[j][keep], g[keep])
    return elements._cache["kron"]


# ---- currents and powers ---------------------------------------------------------------------

def _torch(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def law_currents_a(elements: Elements, V: np.ndarray, nudge_currents_a=None) -> list[np.ndarray | None]:
    """Per group, ``(B, n)`` branch currents (A, ``a`` -> ``b``) from the laws; ``None`` for voltage sources.

    ``nudge_currents_a``: ``(B, n_out)`` current each nudge source pushes into its output node (default 0).
    """
    B = V.shape[0]
    out: list[np.ndarray | None] = []
    for g in elements.groups:
        v = V[:, g.a] - V[:, g.b]
        if g.law == "conductance":
            out.append(v * g.g_s)
        elif g.law == "junction":
            i, _ = junction_current_and_conductance(_torch(v), _torch(g.isat_a), _torch(g.vte_v), g.gmin_s)
            out.append(i.numpy())
        elif g.law == "pwl":
            i, _ = pwl_current_and_conductance(_torch(v), g.table)
            out.append(i.numpy())
        elif g.law == "isource":
            i = np.zeros((B, g.size)) if nudge_currents_a is None else nudge_currents_a
            out.append(np.broadcast_to(np.atleast_2d(np.asarray(i, dtype=np.float64)), (B, g.size)).copy())
        elif g.law in BRANCH_CURRENT_LAWS or g.law == "cccs":
            out.append(None)                      # branch unknowns, and the CCCS that follows its sense: later
        else:                                     # pragma: no cover - a law added to LAWS but not here
            raise ValueError(f"branch law {g.law!r} has no current")
    return out


def _incidence(elements: Elements, n: int, g: BranchGroup):
    """Sparse ``(n_branches, n_nodes)`` incidence of group ``n``: +1 at ``a``, -1 at ``b`` (cached)."""
    key = ("incidence", n)
    if key not in elements._cache:
        from scipy.sparse import coo_matrix
        rows = np.concatenate([np.arange(g.size), np.arange(g.size)])
        vals = np.concatenate([np.ones(g.size), -np.ones(g.size)])
        elements._cache[key] = coo_matrix((vals, (rows, np.concatenate([g.a, g.b]))),
                                          shape=(g.size, elements.n_nodes)).tocsc()
    return elements._cache[key]


def leaving_currents_a(elements: Elements, currents: list[np.ndarray | None]) -> np.ndarray:
    """``(B, n_nodes)``: the net current (A) the given branches draw out of every node (KCL residual)."""
    B = next(c.shape[0] for c in currents if c is not None)    # the nudge sources are always there
    out = np.zeros((B, elements.n_nodes))
    for n, (g, i) in enumerate(zip(elements.groups, currents)):
        if i is not None:
            out += np.asarray((_incidence(elements, n, g).T @ i.T).T)
    return out


def branch_currents_a(elements: Elements, V: np.ndarray, nudge_currents_a=None,
                      vsource_currents_a=None) -> list[np.ndarray]:
    """Per group, ``(B, n)`` branch currents (A): the laws, and for the branch-current unknowns
    (:data:`BRANCH_CURRENT_LAWS`) either ``vsource_currents_a`` (``(B, n_vs)``, SPICE's
    ``i(name)``, :attr:`Elements.vsource_names` order) or KCL: at a voltage source's or VCVS's
    ``a`` node, ``i = -(current every other branch draws out of it)``; at an amplifier sense's
    ``b`` node (the crossbar side, found first), ``i = +(what the crossbar draws)``. The
    amplifiers' CCCS then carry ``i(sense) / A``."""
    currents = law_currents_a(elements, V, nudge_currents_a)
    unknown = [n for n, g in enumerate(elements.groups) if g.law in BRANCH_CURRENT_LAWS]
    if vsource_currents_a is not None:
        measured = np.atleast_2d(np.asarray(vsource_currents_a, dtype=np.float64))
        start = 0
        for n in unknown:
            currents[n] = measured[:, start:start + elements.groups[n].size]
            start += elements.groups[n].size
    else:
        # the senses first: the other unknowns' nodes (a VCVS's ae) see them
        for law in ("sense", "vsource", "vcvs"):
            leaving = leaving_currents_a(elements, currents)
            for n in unknown:
                g = elements.groups[n]
                if g.law == law:
                    currents[n] = leaving[:, g.b] if law == "sense" else -leaving[:, g.a]
    for n, g in enumerate(elements.groups):
        if g.law == "cccs":
            sense = next(i for i, s in zip(currents, elements.groups) if s.law == "sense" and s.layer == g.layer)
            currents[n] = back_current(sense, g.gain)
    return currents


def branch_power_w(elements: Elements, V: np.ndarray, nudge_currents_a=None, vsource_currents_a=None) -> list[np.ndarray]:
    """Per group, ``(B, n)`` power absorbed by every branch, ``p = (V[a] - V[b]) * i`` (W).

    Positive: the branch absorbs (a resistor, a junction); a source that delivers
    has ``p < 0``. Arguments as :func:`branch_currents_a`. With every current from
    the laws and KCL, ``sum p`` over all branches is ``sum_n V_n * r_n`` over the
    unknown nodes' KCL residuals ``r_n`` (Tellegen): 0 at an exact equilibrium.
    """
    currents = branch_currents_a(elements, V, nudge_currents_a, vsource_currents_a)
    return [(V[:, g.a] - V[:, g.b]) * i for g, i in zip(elements.groups, currents)]


def power_balance_rel_error(elements: Elements, powers: list[np.ndarray]) -> np.ndarray:
    """``(B,)`` energy conservation: ``|P_delivered - P_absorbed| / sum |p|`` over the passive branches.

    ``P_delivered = -sum p`` over the sources, ``P_absorbed = sum p`` over the passive
    branches (:data:`PASSIVE_LAWS`), so the numerator is ``|sum p|`` over every branch.
    The scale is what the passive branches absorb (each counted by magnitude, so a
    negative nudge conductance in a ``-beta`` phase does not shrink it).
    """
    total = sum(p.sum(1) for p in powers)
    scale = sum(np.abs(p).sum(1) for g, p in zip(elements.groups, powers) if g.law in PASSIVE_LAWS)
    return np.abs(total) / np.maximum(scale, 1e-300)
