"""The torch reference solver: batched float64 Newton on the block's KCL.

Unknowns are the free-node voltages ``x`` (layers 1..m). The current leaving
every free node is

    r(x) = L x - b + f(x)

* ``L``: the conductance (Laplacian) matrix among free nodes plus, on its
  diagonal, every conductance to a fixed potential (input sources, bias
  rails, the resistive nudge);
* ``b``: the currents those fixed potentials and the nudge current sources
  push in: ``G_1^T v_src + g_pos*V_b - g_neg*V_b + g_nudge*y + I_nudge``;
* ``f(x)``: the nonlinear elements of ``ffebm_sim.devices`` (diodes to the
  clamp rails with ngspice's equations and GMIN, PWL tables).

``r`` is the gradient of the convex energy (co-content)
``E(x) = x^T L x / 2 - b^T x + sum C(x)``; the operating point is its unique
minimiser. Newton steps ``J dx = -r`` with ``J = L + diag(f'(x))`` are
safeguarded by a backtracking (Armijo) line search on ``E``.

**Amplifiers** (``ffebm_sim.amplifier``) between layers k and k+1 make ``L``
unsymmetric: the amplifier output nodes are eliminated (``v(a) = A x_k``), so
crossbar k+1 contributes ``diag(G.sum(1))`` and ``-G/A`` to layer k's rows (the
CCCS draws ``i_out/A``) and ``diag(G.sum(0))``, ``-A G^T`` to layer k+1's. The
rows scaled by the domain weights ``w`` (``BlockCircuit.node_weights``) are
symmetric: ``W r`` is the gradient of the weighted co-content
``E_w = x^T (W L) x / 2 - (W b)^T x + sum w_i C_i(x)``, convex, whose minimiser
is the same operating point. Newton solves ``(W J) dx = -W r`` (Cholesky) and
line-searches on ``E_w``; convergence is judged on the physical currents ``r``.
Without amplifiers ``W = I`` and nothing changes. The ``ideal``
nonlinearity is the hard clip ``-v_off <= x <= v_off`` (no junction at all),
handled by projected Newton: nodes at a bound whose gradient points outward
are held there.

Converged means, at every free node, ``|r_i| <= abstol_a + reltol * s_i``
where ``s_i`` is the sum of the magnitudes of the currents meeting at that
node (the SPICE-style mix of absolute and relative current tolerance):
defaults ``abstol_a = 1e-15 A`` and ``reltol = 1e-12``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..amplifier import back_current, drive_voltage
from ..circuit import BlockCircuit, clamp_diode_voltage, clamp_node_current, free_node_names
from ..devices import (DiodeModel, junction_cocontent, junction_current_and_conductance, pwl_cocontent,
                       pwl_current_and_conductance)
from ..errors import SpecError
from .base import Backend, Equilibrium, Nudge, check_batch, delivered_through_input_layer, source_voltages

DTYPE = torch.float64


@dataclass(frozen=True)
class _DiodeGroup:
    nodes: torch.Tensor      # free-node indices
    rail_v: float            # the rail's potential
    upward: bool             # True: node -> rail (clamps from above); False: rail -> node
    model: DiodeModel        # the nominal junction (27 C, no mismatch)
    isat: torch.Tensor       # (len(nodes),) IS at the circuit temperature, per diode (A)
    vte: torch.Tensor        # (len(nodes),) N*Vt at the circuit temperature, per diode (V)


@dataclass(frozen=True)
class _PwlGroup:
    nodes: torch.Tensor
    table: object


@dataclass(frozen=True)
class _Network:
    """The linear algebra of one circuit, independent of the batch."""

    laplacian: torch.Tensor            # (N, N) the KCL matrix: r = x @ laplacian.T - b + f (symmetric without amplifiers)
    g_in: torch.Tensor                 # (2*n0, n1)
    bias_current: torch.Tensor         # (N,) pushed in by the bias rails
    out_slice: slice
    diodes: tuple[_DiodeGroup, ...]
    pwls: tuple[_PwlGroup, ...]
    lower: torch.Tensor                # (N,) hard bounds (ideal), -inf if none
    upper: torch.Tensor
    has_bounds: bool
    # With wire resistance (crossbars), from the Kron-reduced terminal matrices:
    src_coupling: torch.Tensor | None = None   # (2*n0, N): b += v_src @ src_coupling
    src_self: torch.Tensor | None = None       # (2*n0, 2*n0): source currents = v_src @ src_self
    src_const: torch.Tensor | None = None      # (2*n0,)        + src_const (bias rails)
    crossbars: tuple = ()                       # per layer: :class:`Crossbar`
    # With amplifiers: the domain weight of every free node and the symmetric W L.
    weights: torch.Tensor | None = None         # (N,), None = all 1
    energy_matrix: torch.Tensor | None = None   # (N, N) W L, None = laplacian

    @property
    def hessian_matrix(self) -> torch.Tensor:
        """``W L`` (symmetric): the quadratic part of the weighted co-content ``E_w``."""
        return self.laplacian if self.energy_matrix is None else self.energy_matrix

    def weighted(self, r: torch.Tensor) -> torch.Tensor:
        """``W r`` for ``(..., N)`` node quantities (currents -> gradient of ``E_w``)."""
        return r if self.weights is None else r * self.weights


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A float64 tensor copy of a (read-only) circuit array."""
    return torch.from_numpy(np.array(array, dtype=np.float64))


@dataclass(frozen=True)
class Crossbar:
    """One layer's crossbar, reduced to its terminals.

    Terminals: the row drivers then the column nodes; ``terminals`` gives each
    one's index in the global vector ``[free nodes (N), sources (2*n0), +rail, -rail]``.
    ``y`` (T, T) is the Kron-reduced conductance matrix; ``drop`` (rows*cols, T)
    maps terminal voltages to the voltage across each device (row node minus
    column node), row-major over ``(i, j)``; ``internal`` (2*rows*cols, T) to
    every internal node's voltage (row nodes, then column nodes, row-major).
    """

    rows: int
    cols: int
    terminals: np.ndarray
    y: np.ndarray
    drop: np.ndarray
    internal: np.ndarray


def _crossbar_devices(circuit: BlockCircuit, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(actual device conductances (rows, cols), global index of each row driver) of layer k's crossbar."""
    n_free, n0 = circuit.n_free, circuit.n_inputs
    g = circuit.actual_conductances()[k - 1]
    if k == 1:
        drivers = n_free + np.arange(2 * n0)
    else:
        s = circuit.layer_slice(k - 1)
        drivers = np.arange(s.start, s.stop)
    if circuit.has_bias:
        bp, bn = circuit.actual_bias()
        g = np.vstack([g, bp[k - 1][None, :], bn[k - 1][None, :]])
        drivers = np.concatenate([drivers, n_free + 2 * n0 + np.arange(2)])
    return g, drivers


def _one_blas_thread():
    """A small banded solve: BLAS threads only spin (and on a shared machine, slow it 10x)."""
    try:
        from threadpoolctl import threadpool_limits
        return threadpool_limits(1, user_api="blas")
    except ImportError:                  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib
        return contextlib.nullcontext()


def crossbar(circuit: BlockCircuit, k: int) -> Crossbar:
    """Kron reduction of layer k's crossbar (see :class:`Crossbar`).

    The internal nodes' conductance matrix ``L_II`` is symmetric positive
    definite (every internal node reaches a terminal through the lines) and,
    numbered cross-point by cross-point along the shorter side, banded with
    half-bandwidth ``2*min(rows, cols)``: a banded Cholesky (LAPACK ``pbtrf``)
    solves ``L_II X = L_IT`` for all terminals at once.
    """
    from scipy.linalg import solveh_banded
    a, drivers = _crossbar_devices(circuit, k)
    m, n = a.shape
    s = circuit.layer_slice(k)
    terminals = np.concatenate([drivers, np.arange(s.start, s.stop)])
    gw = 1.0 / circuit.wire_resistance_ohm
    # banded numbering: cross-point (i, j) -> 2*cell (row node) and 2*cell + 1 (column node)
    cell = np.arange(m)[:, None] * n + np.arange(n)[None, :] if n <= m else \
        np.arange(m)[:, None] + np.arange(n)[None, :] * m
    band = 2 * min(m, n)
    r_idx, c_idx = 2 * cell, 2 * cell + 1
    n_int = 2 * m * n
    t_row = n_int + np.arange(m)
    t_col = n_int + m + np.arange(n)
    p = np.concatenate([t_row, r_idx[:, :-1].ravel(), c_idx[:-1, :].ravel(), c_idx[-1, :], r_idx.ravel()])
    q = np.concatenate([r_idx[:, 0], r_idx[:, 1:].ravel(), c_idx[1:, :].ravel(), t_col, c_idx.ravel()])
    g = np.concatenate([np.full(m + m * (n - 1) + (m - 1) * n + n, gw), a.ravel()])
    # L_II in LAPACK's upper banded storage: ab[band + i - j, j] = L[i, j], i <= j
    ab = np.zeros((band + 1, n_int))
    internal = (p < n_int) & (q < n_int)
    lo, hi = np.minimum(p[internal], q[internal]), np.maximum(p[internal], q[internal])
    np.add.at(ab, (band + lo - hi, hi), -g[internal])
    for ends in (p, q):
        inside = ends < n_int
        np.add.at(ab[band], ends[inside], g[inside])
    # L_IT (internal x terminals) and L_TT
    t_count = m + n
    l_it = np.zeros((n_int, t_count))
    l_tt = np.zeros((t_count, t_count))
    for u_, v_ in ((p, q), (q, p)):
        sel = (u_ < n_int) & (v_ >= n_int)
        np.add.at(l_it, (u_[sel], v_[sel] - n_int), -g[sel])
        sel_t = v_ >= n_int
        np.add.at(l_tt, (v_[sel_t] - n_int, v_[sel_t] - n_int), g[sel_t])
    with _one_blas_thread():
        # internal = -x @ terminals (banded numbering)
        x = solveh_banded(ab, l_it, check_finite=False)
    y = l_tt - l_it.T @ x
    y = 0.5 * (y + y.T)
    rows = np.concatenate([r_idx.ravel(), c_idx.ravel()])   # back to (row nodes, column nodes), row-major
    x = x[rows]
    drop = -(x[:m * n] - x[m * n:])                    # row node minus column node per device
    return Crossbar(m, n, terminals, y, drop, -x)


_CROSSBAR_CACHE: list[tuple[BlockCircuit, tuple[Crossbar, ...]]] = []


def crossbars(circuit: BlockCircuit) -> tuple[Crossbar, ...]:
    """Every layer's :class:`Crossbar` (cached for the last few circuits: EP solves one circuit 3 times)."""
    for c, xs in _CROSSBAR_CACHE:
        if c is circuit:
            return xs
    xs = tuple(crossbar(circuit, k) for k in range(1, circuit.depth + 1))
    _CROSSBAR_CACHE.insert(0, (circuit, xs))
    del _CROSSBAR_CACHE[6:]
    return xs


def terminal_voltages(circuit: BlockCircuit, v_src: torch.Tensor, x: torch.Tensor,
                      rail_v: float | None = None) -> torch.Tensor:
    """(B, N + 2*n0 [+ 2]) the global vector [free nodes, sources, +rail, -rail] of a batch
    (rails at +-``rail_v``, default the circuit's bias voltage)."""
    parts = [x, v_src]
    if circuit.has_bias:
        vb = circuit.bias_voltage_v if rail_v is None else rail_v
        parts.append(torch.tensor([[vb, -vb]], dtype=x.dtype).expand(x.shape[0], 2))
    return torch.cat(parts, 1)


def crossbar_drops(circuit: BlockCircuit, v_src: torch.Tensor, x: torch.Tensor,
                   rail_v: float | None = None) -> list[torch.Tensor]:
    """Per layer, (B, rows, cols) voltage across each crossbar device (row node minus column node).

    With a bias, rows ``-2`` and ``-1`` are the + and - rail rows. Exact: the
    internal nodes are a linear network fixed by the terminal voltages.
    """
    t = terminal_voltages(circuit, v_src, x, rail_v)
    out = []
    for xb in crossbars(circuit):
        d = t[:, torch.from_numpy(xb.terminals)] @ torch.from_numpy(xb.drop).T
        out.append(d.reshape(-1, xb.rows, xb.cols))
    return out


def crossbar_node_voltages(circuit: BlockCircuit, v_src: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, (B, 2, rows, cols): the row-node and column-node voltages of every cross-point
    (``r<k>_<i>_<j>``, ``c<k>_<i>_<j>`` in a deck)."""
    t = terminal_voltages(circuit, v_src, x)
    return [(t[:, torch.from_numpy(xb.terminals)] @ torch.from_numpy(xb.internal).T).reshape(-1, 2, xb.rows, xb.cols)
            for xb in crossbars(circuit)]


def build_network(circuit: BlockCircuit, ideal_as_clip: bool = True) -> _Network:
    """Assemble ``L``, the bias currents and the element groups of ``circuit``."""
    n = circuit.n_free
    L = torch.zeros(n, n, dtype=DTYPE)
    sizes = circuit.layer_sizes
    actual = circuit.actual_conductances()
    g_in = _tensor(actual[0])
    bias_current = torch.zeros(n, dtype=DTYPE)
    src_coupling = src_self = src_const = None
    xbars: tuple = ()
    if circuit.has_wires:
        xbars = crossbars(circuit)
        n_src = 2 * circuit.n_inputs
        size = n + n_src + (2 if circuit.has_bias else 0)
        M = np.zeros((size, size))
        for xb in xbars:
            M[np.ix_(xb.terminals, xb.terminals)] += xb.y
        L = torch.from_numpy(np.ascontiguousarray(M[:n, :n]))
        src_coupling = torch.from_numpy(np.ascontiguousarray(-M[n:n + n_src, :n]))
        src_self = torch.from_numpy(np.ascontiguousarray(M[n:n + n_src, n:n + n_src]))
        src_const = torch.zeros(n_src, dtype=DTYPE)
        if circuit.has_bias:
            vb = circuit.bias_voltage_v
            rails = np.array([vb, -vb])
            bias_current = torch.from_numpy(-M[:n, n + n_src:] @ rails)
            src_const = torch.from_numpy(M[n:n + n_src, n + n_src:] @ rails)
    else:
        s1 = circuit.layer_slice(1)
        L[s1, s1] += torch.diag(g_in.sum(0))
        for k in range(2, circuit.depth + 1):
            g = _tensor(actual[k - 1])
            gain = circuit.drive_gain(k)       # 1.0: a plain wire, the terms below are then exact G
            a, b = circuit.layer_slice(k - 1), circuit.layer_slice(k)
            # crossbar k sees A*x_{k-1}; layer k-1 gives it i_out, of which the CCCS draws i_out/A
            L[a, a] += torch.diag(g.sum(1))
            L[b, b] += torch.diag(g.sum(0))
            L[a, b] -= back_current(g, gain)
            L[b, a] -= drive_voltage(g.T, gain)
        if circuit.has_bias:
            vb = circuit.bias_voltage_v
            bias_pos, bias_neg = circuit.actual_bias()
            for k in range(1, circuit.depth + 1):
                gp, gn = _tensor(bias_pos[k - 1]), _tensor(bias_neg[k - 1])
                s = circuit.layer_slice(k)
                L[s, s] += torch.diag(gp + gn)
                bias_current[s] += gp * vb - gn * vb
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
            pwls.append(_PwlGroup(idx, nl.table))
            continue
        if nl.kind == "ideal" and ideal_as_clip:
            lower[idx], upper[idx] = -nl.v_off_v, nl.v_off_v
            continue
        model = DiodeModel(nl.emitted_diode.saturation_current_a, nl.emitted_diode.emission_coefficient, circuit.gmin_s)
        params = circuit.diode_parameters(k, nl)
        up, down = nl.clamps_up(sizes[k]), nl.clamps_down(sizes[k])
        for col, (mask, upward) in enumerate(((up, True), (down, False))):
            if mask.any():
                diodes.append(_DiodeGroup(idx[torch.from_numpy(mask)], nl.clamp_rail_v(upward), upward, model,
                                          torch.from_numpy(np.ascontiguousarray(params["is_t"][mask, col])),
                                          torch.from_numpy(np.ascontiguousarray(params["vte"][mask, col]))))
    weights = energy = None
    if circuit.has_amplifiers:
        weights = torch.from_numpy(circuit.node_weights())
        energy = weights[:, None] * L
        energy = 0.5 * (energy + energy.T)       # symmetric by construction; this removes the rounding
    return _Network(L, g_in, bias_current, circuit.layer_slice(circuit.depth), tuple(diodes), tuple(pwls),
                    lower, upper, bool(torch.isfinite(lower).any()), src_coupling, src_self, src_const, xbars,
                    weights, energy)


def source_currents(net: _Network, circuit: BlockCircuit, v_src: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, 2*n0) current each input source delivers into the network (A)."""
    if net.src_coupling is not None:
        return v_src @ net.src_self + net.src_const - x @ net.src_coupling.T
    return delivered_through_input_layer(net.g_in, v_src, x[:, circuit.layer_slice(1)])


def _nonlinear(net: _Network, x: torch.Tensor, energy: bool = False):
    """f(x), f'(x) (physical currents, A and S) and, when ``energy``, the co-content sum
    weighted by the nodes' domain weights (the nonlinear part of ``E_w``)."""
    f = torch.zeros_like(x)
    df = torch.zeros_like(x)
    e = torch.zeros(x.shape[0], dtype=x.dtype)

    def weighted(c, nodes):
        return c if net.weights is None else c * net.weights[nodes]
    for g in net.diodes:
        xv = x[:, g.nodes]
        vd = clamp_diode_voltage(xv, g.rail_v, g.upward)
        i, gd = junction_current_and_conductance(vd, g.isat, g.vte, g.model.gmin_s)
        f[:, g.nodes] += clamp_node_current(i, g.upward)
        df[:, g.nodes] += gd
        if energy:
            e = e + weighted(junction_cocontent(vd, g.isat, g.vte, g.model.gmin_s), g.nodes).sum(1)
    for g in net.pwls:
        xv = x[:, g.nodes]
        i, gd = pwl_current_and_conductance(xv, g.table)
        f[:, g.nodes] += i
        df[:, g.nodes] += gd
        if energy:
            e = e + weighted(pwl_cocontent(xv, g.table), g.nodes).sum(1)
    return f, df, e


def _energy(net: _Network, H: torch.Tensor, b_w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The weighted co-content ``E_w`` (J; without amplifiers the co-content ``E``), from the
    symmetric ``H = W L`` and the weighted currents ``b_w = W b``."""
    _, _, e = _nonlinear(net, x, energy=True)
    return 0.5 * torch.einsum("bi,ij,bj->b", x, H, x) - (b_w * x).sum(1) + e


def _spd_solve(J: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``J^-1 r`` for a batch of Jacobians. ``J`` is the Hessian of the (strictly convex)
    energy, symmetric positive definite: Cholesky, about twice as fast as LU; a matrix it
    cannot factor (a floating node) falls back to LU."""
    chol, info = torch.linalg.cholesky_ex(J)
    dx = torch.cholesky_solve(r.unsqueeze(-1), chol).squeeze(-1)
    bad = info != 0
    if bad.any():
        dx[bad] = torch.linalg.solve(J[bad], r[bad].unsqueeze(-1)).squeeze(-1)
    return dx


class ReferenceBackend(Backend):
    """Torch, float64, batched. See the module docstring for the equations.

    Args:
        abstol_a, reltol: convergence tolerance on the KCL residual (A, -).
        max_iterations: Newton iterations before a sample is declared failed.
        ideal_as_clip: solve ``ideal`` layers as the hard clip (True) or as the
            steep diode pair an emitted deck contains (False).
    """

    name = "reference"

    def __init__(self, abstol_a: float = 1e-15, reltol: float = 1e-12, max_iterations: int = 200,
                 ideal_as_clip: bool = True):
        self.abstol_a = abstol_a
        self.reltol = reltol
        self.max_iterations = max_iterations
        self.ideal_as_clip = ideal_as_clip

    def solve(self, circuit: BlockCircuit, inputs, nudge: Nudge | None = None,
              start: torch.Tensor | None = None) -> Equilibrium:
        u = check_batch(circuit, inputs, nudge)
        net = build_network(circuit, self.ideal_as_clip)
        v_src = source_voltages(circuit, u)
        B, N = u.shape[0], circuit.n_free
        L, H = net.laplacian, net.hessian_matrix
        b = torch.zeros(B, N, dtype=DTYPE)
        if net.src_coupling is not None:
            b += v_src @ net.src_coupling
        else:
            b[:, circuit.layer_slice(1)] += v_src @ net.g_in
        b += net.bias_current
        if nudge is not None:
            if nudge.currents_a is not None:
                b[:, net.out_slice] += torch.as_tensor(nudge.currents_a, dtype=DTYPE)
            if nudge.conductance_s != 0:
                idx = torch.arange(net.out_slice.start, net.out_slice.stop)
                L = L.clone()
                L[idx, idx] += nudge.conductance_s
                if net.energy_matrix is None:
                    H = L
                else:
                    H = H.clone()
                    H[idx, idx] += net.weights[idx] * nudge.conductance_s
                b[:, net.out_slice] += nudge.conductance_s * torch.as_tensor(nudge.target_v, dtype=DTYPE)
        if start is not None and tuple(start.shape) != (B, N):
            raise SpecError(f"start: shape {tuple(start.shape)}, expected ({B}, {N})")
        x, converged, iterations, residual = self._newton(net, L, H, b, start)
        messages = [("" if c else f"reference: KCL residual {r:.3g} A after {iterations} Newton iterations; "
                     "raise max_iterations or check the conductances")
                    for c, r in zip(converged.tolist(), residual.tolist())]
        # A node with no conductance at all (and no junction GMIN) floats: no unique answer.
        _, df, _ = _nonlinear(net, x)
        floating = (torch.diagonal(L) + df) <= 0
        if floating.any():
            names = free_node_names(circuit)
            for k in floating.any(1).nonzero().flatten().tolist():
                node = names[int(floating[k].nonzero()[0])]
                messages[k] = (f"reference: node {node} floats (no conductance connects it); "
                               "give it a non-zero conductance")
            converged = converged & ~floating.any(1)
        messages = tuple(messages)
        src = source_currents(net, circuit, v_src, x)
        return Equilibrium(x, src, converged, messages, iterations)

    def _newton(self, net: _Network, L: torch.Tensor, H: torch.Tensor, b: torch.Tensor,
                start: torch.Tensor | None = None):
        """Newton on ``W r = 0`` (``L`` the KCL matrix, ``H = W L`` symmetric, ``b`` physical)."""
        B, N = b.shape
        b_w = net.weighted(b)
        eye = torch.eye(N, dtype=DTYPE)
        if start is not None and bool(torch.isfinite(start).all()):
            # A warm start (e.g. the free state of a nudged phase): usually one or two iterations.
            x = start.to(DTYPE).clone()
        else:
            # Start from the linear network (diodes open) pulled inside the clamp rails.
            x = torch.linalg.solve(L + 1e-30 * eye, b.T).T if N else b.clone()
            x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
        for g in net.diodes:
            # A few thermal voltages past the rail: the junction conducts there, but
            # exp() stays small, so Newton starts where the model is well scaled.
            rail_margin = 10.0 * g.vte
            if g.upward:
                x[:, g.nodes] = torch.minimum(x[:, g.nodes], g.rail_v + rail_margin)
            else:
                x[:, g.nodes] = torch.maximum(x[:, g.nodes], g.rail_v - rail_margin)
        x = torch.maximum(torch.minimum(x, net.upper), net.lower)
        active = torch.ones(B, dtype=torch.bool)
        converged = torch.zeros(B, dtype=torch.bool)
        residual = torch.full((B,), torch.inf, dtype=DTYPE)
        # L^T: the KCL matrix is unsymmetric with amplifiers (without, L itself: the same numbers)
        L_t = L if net.energy_matrix is None else L.T
        abs_l = L_t.abs()
        it = 0
        for it in range(1, self.max_iterations + 1):
            f, df, _ = _nonlinear(net, x)
            r = x @ L_t - b + f                   # physical currents leaving each node (A)
            held = torch.zeros_like(x, dtype=torch.bool)
            if net.has_bounds:
                held = ((x >= net.upper) & (r < 0)) | ((x <= net.lower) & (r > 0))
            r_free = torch.where(held, torch.zeros_like(r), r)
            scale = x.abs() @ abs_l + b.abs() + f.abs()
            ok = (r_free.abs() <= self.abstol_a + self.reltol * scale).all(1)
            residual = r_free.abs().amax(1) if N else torch.zeros(B, dtype=DTYPE)
            converged = ok
            active = ~ok
            if not active.any():
                break
            every = bool(active.all())          # skip the row gathers in the common case
            wdf = net.weighted(df)
            J = H + torch.diag_embed(wdf if every else wdf[active])     # W J: symmetric
            if net.has_bounds:
                # Held nodes: identity rows/columns, zero step.
                h = held if every else held[active]
                keep = (~h).to(DTYPE)
                J = J * keep[:, :, None] * keep[:, None, :] + torch.diag_embed(h.to(DTYPE))
            g_w = net.weighted(r_free)           # the gradient of E_w
            if every:
                x = self._line_search(net, H, b_w, x, g_w, -_spd_solve(J, g_w))
            else:
                dx = -_spd_solve(J, g_w[active])
                x[active] = self._line_search(net, H, b_w[active], x[active], g_w[active], dx)
        return x, converged, it, residual

    def _line_search(self, net, L, b, x, grad, dx):
        """Backtracking on the energy; the projection onto the bounds is part of the trial point."""
        e0 = _energy(net, L, b, x)
        slope = (grad * dx).sum(1)                 # < 0 for a descent direction
        t = torch.ones(x.shape[0], dtype=DTYPE)
        pending = torch.ones(x.shape[0], dtype=torch.bool)
        x_new = x.clone()
        slack = 1e-13 * e0.abs() + 1e-300
        for _ in range(60):
            trial = x[pending] + t[pending, None] * dx[pending]
            trial = torch.maximum(torch.minimum(trial, net.upper), net.lower)
            e1 = _energy(net, L, b[pending], trial)
            accept = e1 <= e0[pending] + 1e-4 * t[pending] * slope[pending] + slack[pending]
            accept &= torch.isfinite(e1)
            idx = pending.nonzero().squeeze(1)
            x_new[idx[accept]] = trial[accept]
            pending[idx[accept]] = False
            if not pending.any():
                break
            t[pending] *= 0.5
        # Samples whose search failed take the shortest step tried (roundoff regime).
        if pending.any():
            trial = x[pending] + t[pending, None] * dx[pending]
            x_new[pending] = torch.maximum(torch.minimum(trial, net.upper), net.lower)
        return x_new
