"""The physics of an energy block as interactions between its layers, each term written once.

Every solver (:mod:`ffebm_sim.backends.reference`, dense and layered), EP's energy
partials and the implicit gradient (:mod:`ffebm_sim.ep`) and the settling analysis
(:mod:`ffebm_sim.analyze.settling`) use these objects; no other module writes a
KCL, bias or drop term.

Unknowns are the free-node voltages ``x = [x_1 | ... | x_m]`` (layers 1..m, V).
The current leaving every free node (A) is

    r(x) = r_lin(x) + f(x),      r_lin(x) = L x - b,

a sum over the block's interactions, as in rain's energy-based-learning
(``DenseResistive``): each owns its energy term, the currents it draws out of
the nodes it touches (the gradient of that term) and its parameter gradient.

* :class:`Coupling`, crossbar k between its row drivers ``v`` (the input
  sources ``[+a*u, -a*u]`` for k = 1, else layer k-1 or the amplifier outputs
  ``A*x_{k-1}``, :mod:`ffebm_sim.amplifier`) and its columns ``x_k``. Without
  wires its devices have the *actual* conductances ``G`` (mismatch factors
  applied), the drop across device ``(i, j)`` is ``A v_i - x_j`` and its energy
  ``G_ij * drop**2 / 2`` (J); the currents are

      leaving column j:      x_j * sum_i G_ij - sum_i G_ij * A v_i
      leaving row driver i:  (A v_i * sum_j G_ij - sum_j G_ij x_j) / A   (the CCCS draws i_out / A)

  With wire resistance the crossbar is its exact Kron reduction
  (:mod:`ffebm_sim.crossbar`): the same form with dense self blocks and the bias
  rails' constant currents.
* :class:`Ties`, conductances from a layer's nodes to fixed potentials: layer k's
  bias ``g_+``, ``g_-`` to the rails ``+-V_b`` (drops ``x - V_b``, ``x + V_b``), the
  resistive nudge ``beta`` to the targets ``y``; energy ``g * drop**2 / 2``.
* the nonlinear groups (:class:`DiodeGroup`, :class:`PwlGroup`, the hard bounds of
  an ``ideal`` layer), with the laws of :mod:`ffebm_sim.devices`.

Layers are bipartite (no conductance inside a layer, wires aside), so ``L`` is
block tridiagonal: per layer a *self* block (a diagonal, kept as a vector; a dense
matrix with wires) and between adjacent layers the coupling blocks ``-forward^T``
(``dr_k/dx_{k-1}``) and ``-backward`` (``dr_{k-1}/dx_k``). ``r_lin`` is evaluated
from these blocks, never from a dense ``L`` (:meth:`LayeredNetwork.dense_laplacian`
builds one for dense solvers and eigenvalue analyses).

**Amplifiers** make ``L`` unsymmetric; the layer weights ``w_k``
(``BlockCircuit.domain_weights``) make ``W L`` symmetric and ``W r`` the gradient
of the weighted co-content

    E_w(x) = x^T (W L) x / 2 - (W b)^T x + sum_i w_i C_i(x)
           = sum_i w_i x_i (r_lin,i(x) - b_i) / 2 + sum_i w_i C_i(x),

(:meth:`LayeredNetwork.energy`), convex, minimised at the operating point.
Without amplifiers ``W = I``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .amplifier import back_current, drive_voltage
from .circuit import BlockCircuit, bias_rails_v, clamp_diode_voltage, clamp_node_current
from .crossbar import crossbars
from .devices import (DiodeModel, junction_cocontent, junction_law, pwl_cocontent,
                      pwl_current_and_conductance)
from .recent import RecentByIdentity

DTYPE = torch.float64
#: Resistive nudge conductances whose per-network constants :meth:`LayeredNetwork.cached` keeps.
NUDGES_CACHED = 4


def _tensor(array) -> torch.Tensor:
    """A float64 tensor copy of a (read-only) circuit array."""
    return torch.from_numpy(np.array(array, dtype=np.float64))


def _block_row(self_block: torch.Tensor | None, x: torch.Tensor | None, products, constant,
               absolute: bool = False):
    """One block row of ``r_lin``: ``S x - sum_j y_j @ M_j + c`` (A), ``S`` a self block (a vector:
    elementwise; a matrix: a product; None or ``x`` None: left out), ``products`` the pairs
    ``(y_j, M_j)`` of the neighbours, ``c`` the constant currents (None: left out). ``absolute``:
    the arguments are magnitudes (``|S|``, ``|x|``, ``|y_j|``, ``|M_j|``) and the products are added,
    ``|S| |x| + sum |y_j| @ |M_j|``: the magnitudes of the currents meeting at each node (the
    convergence test's scale). Accumulated in place, each product fused into the row (``addmm_``;
    a row of a large layer is megabytes: every fresh array of that size costs page faults)."""
    r = None
    if self_block is not None and x is not None:
        r = x * self_block if self_block.dim() == 1 else x @ self_block
    for y, M in products:
        if r is None:
            r = y @ M if absolute else (y @ M).neg_()
        else:
            r = r.addmm_(y, M, alpha=1.0 if absolute else -1.0)
    if constant is None or absolute:
        return 0.0 if r is None else r
    return constant if r is None else r.add_(constant)


# ---- the linear interactions -------------------------------------------------------------

@dataclass(frozen=True)
class _AbsBlocks:
    """A coupling's ``|forward|`` and ``|backward^T|`` (:meth:`LayeredNetwork.current_scale`)."""

    forward: torch.Tensor
    backward_t: torch.Tensor


@dataclass(frozen=True, eq=False)
class Coupling:
    """Crossbar k: rows (its drivers, ``v``: sources or layer k-1) to columns (layer k, ``x``).

    Its currents (A): leaving the rows ``S_rows v - x @ backward^T + c_rows``, leaving the
    columns ``S_cols x - v @ forward + c_cols`` (:meth:`LayeredNetwork.layer_currents`).

    Attributes (tensors, S):
        k: the crossbar (1..m).
        self_rows: ``(rows,)`` or ``(rows, rows)``: ``d(row currents)/dv``.
        self_cols: ``(cols,)`` or ``(cols, cols)``: ``d(column currents)/dx``.
        forward: ``(rows, cols)``: ``-d(column currents)/dv`` transposed.
        backward: ``(rows, cols)``: ``-d(row currents)/dx``.
        constants: ``(rows,)``, ``(cols,)`` constant currents (the bias rails, with wires), or None.
        g: the device conductances ``(rows, cols)`` (without wires), for the drops.
        gain: the drive gain ``A`` (1.0 without an amplifier).
    """

    k: int
    self_rows: torch.Tensor
    self_cols: torch.Tensor
    forward: torch.Tensor
    backward: torch.Tensor
    constants: tuple[torch.Tensor, torch.Tensor] | None = None
    g: torch.Tensor | None = None
    gain: float = 1.0
    backward_t: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        # row-major ``backward^T``: the products with it are GEMMs without a transposed operand
        object.__setattr__(self, "backward_t", self.backward.T.contiguous())

    def contrasted_partials(self, v_a: torch.Tensor, x_a: torch.Tensor, v_b: torch.Tensor, x_b: torch.Tensor,
                            w: torch.Tensor) -> torch.Tensor:
        """``(rows, cols)`` ``sum_s w_s (drop_a**2 - drop_b**2) / 2`` over the batch, for two states
        ``a``, ``b`` (EP's nudged phases) and per-sample weights ``w`` ``(B,)``. As
        ``(d_a - d_b)(d_a + d_b) / 2`` with ``d = A v_i - x_j``, expanded into batch products:
        ``(Dv_i - Dx_j)(Sv_i - Sx_j)`` (``D``, ``S``: differences and sums of the two states), so
        no ``(B, rows, cols)`` array is formed and the small difference is taken first. The two
        cross terms are one product over ``2B`` (``[wDv, Sv]^T [Sx, wDx]``) and the rest is added
        in place: a large input layer's ``(rows, cols)`` is megabytes, and each fresh one costs."""
        drive = (lambda v: v) if self.gain == 1.0 else (lambda v: drive_voltage(v, self.gain))
        dx, sx = x_a - x_b, x_a + x_b
        wdx = w[:, None] * dx
        if v_a is v_b:
            # the same rows in both states (crossbar 1's sources: EP's phases share the inputs):
            # Dv = 0, so only ``Sv^T (w Dx)`` and the columns' term remain, a product over B
            cross = drive(v_a + v_b).T @ wdx
            return cross.sub_((wdx * sx).sum(0)[None, :]).mul_(-0.5)
        dv, sv = drive(v_a - v_b), drive(v_a + v_b)
        wdv = w[:, None] * dv
        rows_term, cols_term = (wdv * sv).sum(0), (wdx * sx).sum(0)
        cross = torch.cat([wdv, sv]).T @ torch.cat([sx, wdx])
        return cross.sub_(rows_term[:, None]).sub_(cols_term[None, :]).mul_(-0.5)

    def to(self, device) -> "Coupling":
        move = lambda t: None if t is None else t.to(device)
        constants = None if self.constants is None else tuple(move(c) for c in self.constants)
        return Coupling(self.k, move(self.self_rows), move(self.self_cols), move(self.forward), move(self.backward),
                        constants, move(self.g), self.gain)


def plain_coupling(k: int, g: torch.Tensor, gain: float = 1.0) -> Coupling:
    """Crossbar k without wires from its actual conductances ``g`` (rows, cols); differentiable in ``g``.

    The rows see ``A v`` (the VCVS, :func:`~ffebm_sim.amplifier.drive_voltage`); of the current
    ``i_out`` they deliver, the CCCS draws ``i_out / A`` out of layer k-1
    (:func:`~ffebm_sim.amplifier.back_current`): the terms of the module docstring.
    """
    return Coupling(k, g.sum(1), g.sum(0), drive_voltage(g, gain), back_current(g, gain), g=g, gain=gain)


def wired_coupling(k: int, xb, n_rows: int, rail_v: torch.Tensor | None) -> Coupling:
    """Crossbar k with wires from its Kron reduction ``xb`` (:class:`~ffebm_sim.crossbar.Crossbar`):
    ``n_rows`` real drivers, then (with a bias) the two rail rows at ``rail_v`` = ``[+V_b, -V_b]``."""
    y = torch.from_numpy(xb.y)
    d, c = slice(0, n_rows), slice(xb.rows, xb.rows + xb.cols)
    constants = None
    if rail_v is not None:
        rails = slice(n_rows, xb.rows)
        constants = (y[d, rails] @ rail_v, y[c, rails] @ rail_v)
    return Coupling(k, y[d, d].contiguous(), y[c, c].contiguous(), -y[d, c].contiguous(), -y[d, c].contiguous(),
                    constants)


@dataclass(frozen=True, eq=False)
class Ties:
    """Conductances from layer k's nodes to fixed potentials: ``g_i`` (S; ``(n,)`` or a scalar)
    to ``v_i`` (V; a number or ``(B, n)``). The bias is ``g_pos`` to ``+V_b`` and ``g_neg`` to
    ``-V_b``; the resistive nudge ``beta`` to the targets ``y``. Energy ``g * drop**2 / 2``."""

    k: int
    conductances: tuple
    potentials: tuple

    def drops(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The voltage across each conductance (V): ``x - v_i``."""
        return tuple(x - v for v in self.potentials)

    @property
    def self_block(self):
        return sum(self.conductances)

    @property
    def constant(self):
        """The current the potentials push in, negated: ``-sum_i g_i v_i`` (A)."""
        return -sum(g * v for g, v in zip(self.conductances, self.potentials))

    def conductance_partials(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``dE/dg_i = drop_i**2 / 2`` (V^2)."""
        return tuple(0.5 * d ** 2 for d in self.drops(x))

    def contrasted_partials(self, x_a: torch.Tensor, x_b: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per conductance, ``sum_s w_s (dE/dg(a) - dE/dg(b))`` over the batch (two states, weights ``(B,)``)."""
        return tuple((w[:, None] * (a - b)).sum(0)
                     for a, b in zip(self.conductance_partials(x_a), self.conductance_partials(x_b)))

    def to(self, device) -> "Ties":
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t
        return Ties(self.k, tuple(map(move, self.conductances)), tuple(map(move, self.potentials)))


def bias_ties(k: int, g_pos: torch.Tensor, g_neg: torch.Tensor, rails_v: tuple[float, float]) -> Ties:
    """Layer k's bias: ``g_pos`` to the positive rail, ``g_neg`` to the negative one, at
    ``rails_v`` (V; :func:`~ffebm_sim.circuit.bias_rails_v`)."""
    return Ties(k, (g_pos, g_neg), tuple(rails_v))


# ---- the nonlinear elements ----------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class DiodeGroup:
    """Clamp diodes of one orientation in one layer (:func:`~ffebm_sim.circuit.clamp_diode_voltage`)."""

    nodes: torch.Tensor      # free-node indices
    rail_v: float            # the rail's potential
    upward: bool             # True: node -> rail (clamps from above); False: rail -> node
    model: DiodeModel        # the nominal junction (27 C, no mismatch)
    isat: torch.Tensor       # (len(nodes),) IS at the circuit temperature, per diode (A)
    vte: torch.Tensor        # (len(nodes),) N*Vt at the circuit temperature, per diode (V)

    def to(self, device) -> "DiodeGroup":
        return DiodeGroup(self.nodes.to(device), self.rail_v, self.upward, self.model, self.isat.to(device),
                          self.vte.to(device))


@dataclass(frozen=True, eq=False)
class PwlGroup:
    nodes: torch.Tensor
    table: object

    def to(self, device) -> "PwlGroup":
        return PwlGroup(self.nodes.to(device), self.table)


def nonlinear_groups(circuit: BlockCircuit, ideal_as_clip: bool = True):
    """``(diodes, pwls, lower, upper)``: the nonlinear groups and the hard bounds (``-inf``/``inf``
    where none) of every free node. ``ideal_as_clip``: an ``ideal`` layer is the hard clip
    ``-v_off <= x <= v_off`` (True) or the steep diode pair its deck contains (False)."""
    n = circuit.n_free
    lower = torch.full((n,), -torch.inf, dtype=DTYPE)
    upper = torch.full((n,), torch.inf, dtype=DTYPE)
    diodes, pwls = [], []
    for k in range(1, circuit.depth + 1):
        nl = circuit.layer_nonlinearity(k)
        if nl is None:
            continue
        s = circuit.layer_slice(k)
        idx = torch.arange(s.start, s.stop)
        if nl.kind == "pwl":
            pwls.append(PwlGroup(idx, nl.table))
            continue
        if nl.kind == "ideal" and ideal_as_clip:
            lower[idx], upper[idx] = -nl.v_off_v, nl.v_off_v
            continue
        model = DiodeModel(nl.emitted_diode.saturation_current_a, nl.emitted_diode.emission_coefficient, circuit.gmin_s)
        params = circuit.diode_parameters(k, nl)
        size = circuit.layer_sizes[k]
        for col, (mask, upward) in enumerate(((nl.clamps_up(size), True), (nl.clamps_down(size), False))):
            if mask.any():
                diodes.append(DiodeGroup(idx[torch.from_numpy(mask)], nl.clamp_rail_v(upward), upward, model,
                                         torch.from_numpy(np.ascontiguousarray(params["is_t"][mask, col])),
                                         torch.from_numpy(np.ascontiguousarray(params["vte"][mask, col]))))
    return tuple(diodes), tuple(pwls), lower, upper


# ---- the network ---------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class LayeredNetwork:
    """A block's interactions over the free-node vector (module docstring).

    Attributes:
        sizes: ``(n_1, ..., n_m)``; slices: each layer's slice of the free-node vector.
        couplings: crossbar k at index k-1.
        biases: layer k's bias :class:`Ties` (None without, or with wires, where the rails are rows
            of the crossbars); nudge: the resistive nudge's :class:`Ties` on layer m, or None.
        layer_weights: ``(m,)`` the domain weights ``w_k`` (all 1 without amplifiers).
        diodes, pwls, lower, upper: the nonlinear groups and the hard bounds.
    """

    sizes: tuple[int, ...]
    slices: tuple[slice, ...]
    couplings: tuple[Coupling, ...]
    biases: tuple[Ties | None, ...]
    layer_weights: torch.Tensor
    diodes: tuple[DiodeGroup, ...]
    pwls: tuple[PwlGroup, ...]
    lower: torch.Tensor
    upper: torch.Tensor
    amplified: bool = False
    wires: bool = False
    nudge: Ties | None = None
    #: :meth:`cached`'s store, shared with the nudged copies (:meth:`with_nudge`)
    _cache: dict = field(default_factory=dict, repr=False)
    #: this network's own (what depends on the nudge's targets: :meth:`constants`)
    _own: dict = field(default_factory=dict, repr=False)

    @property
    def n_free(self) -> int:
        return sum(self.sizes)

    @property
    def depth(self) -> int:
        return len(self.sizes)

    @property
    def out_slice(self) -> slice:
        return self.slices[-1]

    @property
    def has_bounds(self) -> bool:
        return self.cached("has_bounds", lambda: bool(torch.isfinite(self.lower).any()))

    def cached(self, key: str, build):
        """``build()``, computed once per network and resistive nudge conductance (a solver's
        per-network constants; the network is immutable). A network and its nudged copies
        (:meth:`with_nudge`) share this store, keyed by the nudge's conductance: nothing built here
        may depend on the nudge's targets (only :meth:`constants` does; it is kept per copy). At
        most :data:`NUDGES_CACHED` conductances are kept besides the network's own."""
        beta = None if self.nudge is None else float(self.nudge.conductances[0])
        entries = self._cache.setdefault(beta, {})
        if key not in entries:
            entries[key] = build()
            others = [k for k in self._cache if k is not None]
            if len(others) > NUDGES_CACHED:
                del self._cache[others[0]]
        return entries[key]

    @property
    def device(self):
        return self.lower.device

    @property
    def node_weights(self) -> torch.Tensor | None:
        """``(N,)`` every free node's domain weight, None when all are 1."""
        if not self.amplified:
            return None
        return self.cached("node_weights", lambda: torch.repeat_interleave(self.layer_weights,
                                                                            torch.tensor(self.sizes, device=self.device)))

    def weighted(self, r: torch.Tensor) -> torch.Tensor:
        """``W r`` for ``(..., N)`` node quantities (currents -> gradient of ``E_w``)."""
        w = self.node_weights
        return r if w is None else r * w

    def layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x[:, s] for s in self.slices]

    def ties(self, k: int) -> list[Ties]:
        """The :class:`Ties` on layer k (1..m)."""
        out = [] if self.biases[k - 1] is None else [self.biases[k - 1]]
        return out + ([self.nudge] if self.nudge is not None and k == self.depth else [])

    def with_nudge(self, conductance_s: float, target_v: torch.Tensor) -> "LayeredNetwork":
        """The network with the resistive nudge: ``conductance_s`` from every output node to ``target_v``."""
        return replace(self, nudge=Ties(self.depth, (conductance_s,), (target_v,)), _own={})

    # -- the linear part, from the interactions --

    def self_blocks(self) -> list[torch.Tensor]:
        """Per layer, the self block of ``L``: ``(n_k,)`` (a diagonal) or ``(n_k, n_k)`` with wires."""
        return self.cached("self", self._self_blocks)

    def _self_blocks(self) -> list[torch.Tensor]:
        out = []
        for k in range(1, self.depth + 1):
            block = self.couplings[k - 1].self_cols
            if k < self.depth:
                block = block + self.couplings[k].self_rows
            for tie in self.ties(k):
                s = tie.self_block
                if block.dim() == 2:
                    s = torch.diag(s.expand(block.shape[0]) if isinstance(s, torch.Tensor) else
                                   torch.full((block.shape[0],), float(s), dtype=block.dtype, device=block.device))
                block = block + s
            out.append(block)
        return out

    def constants(self) -> list:
        """Per layer, the constant currents of ``r_lin`` (rails, nudge targets; A), or None."""
        if "constants" in self._own:
            return self._own["constants"]
        out = []
        for k in range(1, self.depth + 1):
            c = [t.constant for t in self.ties(k)]
            if self.couplings[k - 1].constants is not None:
                c.append(self.couplings[k - 1].constants[1])
            if k < self.depth and self.couplings[k].constants is not None:
                c.append(self.couplings[k].constants[0])
            out.append(sum(c) if c else None)
        self._own["constants"] = out
        return out

    def layer_row(self, k: int, x_layers: list[torch.Tensor], v_src: torch.Tensor | None,
                  own: bool = True) -> torch.Tensor:
        """``(B, n_k)`` layer k's (1..m) part of :meth:`layer_currents`; ``own=False``: without its
        own nodes' term ``S_k x_k`` (what its neighbours and the fixed potentials draw)."""
        products = self._neighbours(k, x_layers, v_src, self.couplings)
        constant = self.constants()[k - 1] if v_src is not None else None
        return _block_row(self.self_blocks()[k - 1] if own else None, x_layers[k - 1], products, constant)

    def _neighbours(self, k: int, x_layers, v_src, blocks) -> list:
        """Layer k's products ``(y_j, M_j)``: its drivers (layer k-1, or ``v_src`` for k = 1 when given)
        through ``blocks[k-1].forward``, layer k+1 through ``blocks[k].backward_t``."""
        products = []
        if k >= 2:
            products.append((x_layers[k - 2], blocks[k - 1].forward))
        elif v_src is not None:
            products.append((v_src, blocks[0].forward))
        if k < self.depth:
            products.append((x_layers[k], blocks[k].backward_t))
        return products

    def layer_currents(self, x_layers: list[torch.Tensor], v_src: torch.Tensor | None) -> list[torch.Tensor]:
        """Per layer, ``(B, n_k)`` the current the linear interactions draw out of its nodes (A):
        ``r_lin`` of the module docstring, the input sources at ``v_src`` and the rails and
        targets at their potentials; ``v_src = None``: ``L x`` alone (every fixed potential at
        0 V)."""
        return [self.layer_row(k, x_layers, v_src) for k in range(1, self.depth + 1)]

    def linear_currents(self, x: torch.Tensor, v_src: torch.Tensor | None) -> torch.Tensor:
        """``(B, N)`` ``r_lin(x) = L x - b`` (A); ``v_src = None``: ``L x``."""
        return torch.cat(self.layer_currents(self.layers(x), v_src), 1)

    def current_scale(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` ``|L| |x|``: the magnitudes of the linear currents meeting at each node (A)
        (:func:`_block_row`; the blocks' magnitudes built once per network)."""
        selfs, blocks = self.cached("abs_blocks", lambda: (
            [blk.abs() for blk in self.self_blocks()],
            [_AbsBlocks(c.forward.abs(), c.backward_t.abs()) for c in self.couplings]))
        ax = self.layers(x.abs())
        return torch.cat([_block_row(selfs[k - 1], ax[k - 1], self._neighbours(k, ax, None, blocks), None, True)
                          for k in range(1, self.depth + 1)], 1)

    def fixed_currents(self, v_src: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` ``b = -r_lin(0)``: the currents the sources and rails push into the free nodes (A)."""
        zeros = torch.zeros(v_src.shape[0], self.n_free, dtype=v_src.dtype, device=v_src.device)
        out = []
        for k, (c, z) in enumerate(zip(self.constants(), self.layers(zeros)), start=1):
            out.append(z - _block_row(None, None, [(v_src, self.couplings[0].forward)] if k == 1 else [], c))
        return torch.cat(out, 1)

    def source_currents(self, v_src: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``(B, 2*n0)`` current each input source delivers into the network (A): crossbar 1's row currents."""
        c = self.couplings[0]
        return _block_row(c.self_rows, v_src, [(x[:, self.slices[0]], c.backward_t)],
                          None if c.constants is None else c.constants[0], False)

    def dense_laplacian(self) -> torch.Tensor:
        """``(N, N)`` the KCL matrix ``L`` assembled from the blocks (symmetric without amplifiers)."""
        n = self.n_free
        L = torch.zeros(n, n, dtype=DTYPE, device=self.device)
        for k, (s, block) in enumerate(zip(self.slices, self.self_blocks()), start=1):
            L[s, s] += torch.diag(block) if block.dim() == 1 else block
            if k >= 2:
                c, p = self.couplings[k - 1], self.slices[k - 2]
                L[p, s] -= c.backward
                L[s, p] -= c.forward.T
        return L

    # -- the nonlinear part --

    def _junctions(self):
        """Every clamp junction of the network in one row, so the junction law runs once per call:
        ``(nodes, slope, offset, IS, N*Vt, weights, GMIN)``, each ``(M,)`` over the M junctions.
        A junction's voltage is affine in its node's, ``vd = slope * x + offset``, and the current it
        draws out of its node is ``slope * i`` (``slope = +-1``); both read off
        :func:`~ffebm_sim.circuit.clamp_diode_voltage` and :func:`~ffebm_sim.circuit.clamp_node_current`,
        where the orientation is written."""
        return self.cached("junctions", self._junction_row)

    def _junction_row(self):
        cat = lambda ts: torch.cat(ts) if ts else None
        dev = self.device
        nodes, slope, offset = [], [], []
        for g in self.diodes:
            n = len(g.nodes)
            at0 = clamp_diode_voltage(0.0, g.rail_v, g.upward)
            sign = clamp_diode_voltage(1.0, 0.0, g.upward)       # +-1: vd = sign * x + at0 exactly
            if sign != clamp_node_current(1.0, g.upward):       # pragma: no cover - the conventions agree
                raise ValueError("clamp orientation: voltage and node current disagree")
            nodes.append(g.nodes)
            slope.append(torch.full((n,), sign, dtype=DTYPE, device=dev))
            offset.append(torch.full((n,), at0, dtype=DTYPE, device=dev))
        w = self.node_weights
        gmins = {g.model.gmin_s for g in self.diodes}
        idx = cat(nodes)
        return (idx, cat(slope), cat(offset), cat([g.isat for g in self.diodes]),
                cat([g.vte for g in self.diodes]), None if w is None or not self.diodes else w[idx],
                gmins.pop() if len(gmins) == 1 else None)

    def _junction_voltages(self, x: torch.Tensor):
        """``(vd, nodes, slope, IS, N*Vt, weights, GMIN)``: ``vd`` ``(B, M)`` every junction's voltage (V)."""
        idx, slope, offset, isat, vte, wd, gmin = self._junctions()
        if gmin is None:                    # pragma: no cover - one circuit has one GMIN
            raise ValueError("diode groups with different GMIN")
        return torch.addcmul(offset, x.index_select(1, idx), slope), idx, slope, isat, vte, wd, gmin

    def nonlinear(self, x: torch.Tensor, energy: bool = False, currents: bool = True):
        """``f(x)``, ``f'(x)`` (physical currents, A and S) and, when ``energy``, the co-content
        sum weighted by the nodes' domain weights (the nonlinear part of ``E_w``, J; else None).
        ``currents=False``: the energy alone (``f``, ``f'`` None)."""
        if not currents:
            return None, None, self._cocontent(x)
        f = torch.zeros_like(x)
        df = torch.zeros_like(x)
        e = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device) if energy else None
        w = self.node_weights
        if self.diodes:
            vd, idx, slope, isat, vte, wd, gmin = self._junction_voltages(x)
            i, gd, c = junction_law(vd, isat, vte, gmin, energy)
            f.index_add_(1, idx, i.mul_(slope))
            df.index_add_(1, idx, gd)
            if energy:
                e = e + (c if wd is None else c * wd).sum(1)
        for g in self.pwls:
            xv = x[:, g.nodes]
            i, gd = pwl_current_and_conductance(xv, g.table)
            f[:, g.nodes] += i
            df[:, g.nodes] += gd
            if energy:
                c = pwl_cocontent(xv, g.table)
                e = e + (c if w is None else c * w[g.nodes]).sum(1)
        return f, df, e

    def _cocontent(self, x: torch.Tensor) -> torch.Tensor:
        """``(B,)`` the nonlinear part of ``E_w`` alone (:meth:`nonlinear`)."""
        e = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        if self.diodes:
            vd, _, _, isat, vte, wd, gmin = self._junction_voltages(x)
            c = junction_cocontent(vd, isat, vte, gmin)
            e = e + (c if wd is None else c * wd).sum(1)
        w = self.node_weights
        for g in self.pwls:
            c = pwl_cocontent(x[:, g.nodes], g.table)
            e = e + (c if w is None else c * w[g.nodes]).sum(1)
        return e

    def quadratic_energy(self, x: torch.Tensor, r_lin: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``(B,)`` the linear elements' part of ``E_w`` (J), given ``r_lin = L x - b`` at ``x`` (nudge
        terms included in both) and ``b``: ``sum w x (r_lin - b) / 2 = x^T W L x / 2 - (W b)^T x``."""
        return 0.5 * (self.weighted(x * (r_lin - b))).sum(1)

    def energy(self, x: torch.Tensor, r_lin: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``(B,)`` the weighted co-content ``E_w`` (J) at ``x``: :meth:`quadratic_energy` plus
        ``sum w C(x)`` of the nonlinear elements."""
        _, _, e = self.nonlinear(x, energy=True)
        return self.quadratic_energy(x, r_lin, b) + e

    def to(self, device) -> "LayeredNetwork":
        """The same network with every tensor on ``device``."""
        move = lambda items: tuple(None if i is None else i.to(device) for i in items)
        return LayeredNetwork(self.sizes, self.slices, move(self.couplings), move(self.biases),
                              self.layer_weights.to(device), move(self.diodes), move(self.pwls),
                              self.lower.to(device), self.upper.to(device), self.amplified, self.wires,
                              None if self.nudge is None else self.nudge.to(device))


def layered_network(circuit: BlockCircuit, ideal_as_clip: bool = True, conductances=None, bias=None) -> LayeredNetwork:
    """The interactions of ``circuit``.

    ``conductances`` (a list of ``(rows, cols)`` tensors) and ``bias`` (``(pos, neg)`` lists of
    ``(n_k,)`` tensors): the *actual* conductances to use instead of the circuit's (for
    differentiating the residual in them; without wires only). Built networks of the
    circuit's own conductances are cached (:func:`network`).
    """
    m = circuit.depth
    sizes = tuple(circuit.layer_sizes[1:])
    slices = tuple(circuit.layer_slice(k) for k in range(1, m + 1))
    biases: list[Ties | None] = [None] * m
    if circuit.has_wires:
        if conductances is not None or bias is not None:
            raise ValueError("layered_network: conductances/bias given for a circuit with wires "
                             "(its Kron-reduced crossbars are built from the circuit's own)")
        rail_v = torch.tensor(bias_rails_v(circuit), dtype=DTYPE) if circuit.has_bias else None
        n_rows = [2 * circuit.n_inputs] + list(sizes[:-1])
        couplings = tuple(wired_coupling(k, xb, n_rows[k - 1], rail_v)
                          for k, xb in enumerate(crossbars(circuit), start=1))
    else:
        if conductances is None:
            conductances = [_tensor(g) for g in circuit.actual_conductances()]
        couplings = tuple(plain_coupling(k, g, circuit.drive_gain(k)) for k, g in enumerate(conductances, start=1))
        if circuit.has_bias:
            if bias is None:
                pos, neg = circuit.actual_bias()
                bias = ([_tensor(p) for p in pos], [_tensor(q) for q in neg])
            biases = [bias_ties(k, bias[0][k - 1], bias[1][k - 1], bias_rails_v(circuit)) for k in range(1, m + 1)]
    diodes, pwls, lower, upper = nonlinear_groups(circuit, ideal_as_clip)
    return LayeredNetwork(sizes, slices, couplings, tuple(biases), _tensor(circuit.domain_weights()), diodes, pwls,
                          lower, upper, circuit.has_amplifiers, circuit.has_wires)


_NETWORKS = RecentByIdentity(8)


def network(circuit: BlockCircuit, ideal_as_clip: bool = True, device=None) -> LayeredNetwork:
    """:func:`layered_network` of the circuit's own conductances on ``device`` (default CPU),
    cached for the last few circuits (EP solves one circuit three times, then differentiates it)."""
    device = torch.device("cpu") if device is None else torch.device(device)

    def build() -> LayeredNetwork:
        net = layered_network(circuit, ideal_as_clip)
        return net if device.type == "cpu" else net.to(device)
    return _NETWORKS.get(circuit, (ideal_as_clip, device), build)
