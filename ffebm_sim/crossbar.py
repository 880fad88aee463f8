"""A crossbar with resistive lines, reduced exactly to its terminals (Kron reduction).

With ``wire_resistance_ohm > 0`` (``BlockCircuit.has_wires``) layer k's devices sit
at the cross-points of row and column lines whose segments have conductance
``1/wire_resistance_ohm``. The internal (cross-point) nodes join only linear
conductances and hold no charge, so they are eliminated exactly: the crossbar
becomes a conductance matrix ``y`` among its terminals (the row drivers: the
input sources or layer k-1, then the bias rails; and the column nodes: layer k),
and every internal node voltage and device drop is a fixed linear map of the
terminal voltages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .circuit import BlockCircuit, bias_rails_v
from .recent import RecentByIdentity


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


_CROSSBARS = RecentByIdentity(6)


def crossbars(circuit: BlockCircuit) -> tuple[Crossbar, ...]:
    """Every layer's :class:`Crossbar` (cached for the last few circuits: EP solves one circuit 3 times)."""
    return _CROSSBARS.get(circuit, None, lambda: tuple(crossbar(circuit, k) for k in range(1, circuit.depth + 1)))


def terminal_voltages(circuit: BlockCircuit, v_src: torch.Tensor, x: torch.Tensor,
                      rails_v: tuple[float, float] | None = None) -> torch.Tensor:
    """(B, N + 2*n0 [+ 2]) the global vector [free nodes, sources, +rail, -rail] of a batch
    (rails at ``rails_v``, default the circuit's, :func:`~ffebm_sim.circuit.bias_rails_v`)."""
    parts = [x, v_src]
    if circuit.has_bias:
        rails = bias_rails_v(circuit) if rails_v is None else rails_v
        parts.append(torch.tensor([list(rails)], dtype=x.dtype).expand(x.shape[0], 2))
    return torch.cat(parts, 1)


def crossbar_drops(circuit: BlockCircuit, v_src: torch.Tensor, x: torch.Tensor,
                   rails_v: tuple[float, float] | None = None) -> list[torch.Tensor]:
    """Per layer, (B, rows, cols) voltage across each crossbar device (row node minus column node).

    With a bias, rows ``-2`` and ``-1`` are the + and - rail rows. Exact: the
    internal nodes are a linear network fixed by the terminal voltages.
    """
    t = terminal_voltages(circuit, v_src, x, rails_v)
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
