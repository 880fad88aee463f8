"""Linear algebra of a layered network: its block-tridiagonal Jacobian and exact layer sweeps.

Layers are bipartite (:mod:`ffebm_sim.interactions`): the weighted Jacobian
``W J = W (L + diag(f'(x)))`` is block tridiagonal, with per layer the symmetric
self block ``D_k = w_k (S_k + diag(f'_k))`` (diagonal without wires) and between
layers k-1 and k the block ``U_k = -w_{k-1} backward_k = (-w_k forward_k^T)^T``.
:func:`block_solve` solves ``(W J) dx = g`` by block elimination (the block
Cholesky of a tridiagonal matrix)

    T_1 = D_1,   T_k = D_k - U_k^T T_{k-1}^-1 U_k,     y_1 = g_1,   y_k = g_k - U_k^T T_{k-1}^-1 y_{k-1},
    dx_m = T_m^-1 y_m,   dx_{k-1} = T_{k-1}^-1 (y_{k-1} - U_k dx_k),

the layers ordered so that a diagonal block comes first (it is inverted
elementwise; the Schur complements are dense, of one layer's size: ``10 x 10``
for the output layer of a ``[784, 100, 10]`` block). Memory and work are
``B * sum_k n_{k-1} n_k max(n_{k-1}, n_k)``, never ``B * N * N``.

Nodes held at a bound (projected Newton) get identity rows and columns.
"""

from __future__ import annotations

import torch

from ..interactions import LayeredNetwork


class _Inverse:
    """``T^-1`` applied to right-hand sides, ``T`` a batch of diagonals ``(B, n)`` or SPD matrices
    ``(B, n, n)`` (Cholesky; a matrix it cannot factor, e.g. of a floating node, by LU)."""

    def __init__(self, T: torch.Tensor):
        self.diagonal = T.dim() == 2
        if self.diagonal:
            # a zero diagonal entry is a floating node: a unit step there, the caller reports it; a
            # negative one (a negative resistive nudge larger than the node's own conductance) is a
            # pivot like any other
            self.d = torch.where(T != 0, T, torch.ones_like(T))
            return
        # Singular means a pivot within n * eps of the block's largest entry: a floating pair (two
        # nodes tied only to each other) factors to an exact 0 on one CPU and to a rounding residue
        # on another (MKL's AVX-512 kernels: Cholesky succeeds with L_22^2 ~ 1e-21 S, LU divides
        # by a rounded reciprocal), which would be a 1e15 V step. Tested as pivots, on every CPU.
        n = T.shape[-1]
        tiny = (n * torch.finfo(T.dtype).eps) * T.abs().amax((-2, -1))
        self.chol, info = torch.linalg.cholesky_ex(T)
        singular = (info == 0) & (self.chol.diagonal(dim1=-2, dim2=-1).square() <= tiny[:, None]).any(-1)
        self.bad = (info != 0).nonzero().flatten()
        if len(self.bad):
            # not positive definite (e.g. under a negative resistive nudge): LU
            lu, pivots, lu_info = torch.linalg.lu_factor_ex(T[self.bad])
            singular[self.bad] = (lu.diagonal(dim1=-2, dim2=-1).abs() <= tiny[self.bad, None]).any(-1) | (lu_info != 0)
            self.lu = (lu, pivots)
        # NaN steps there: the caller reports the samples (a floating node), the others solve as before
        self.singular = singular.nonzero().flatten()

    def __call__(self, Y: torch.Tensor) -> torch.Tensor:
        """``T^-1 Y`` for ``Y`` ``(B, n)`` or ``(B, n, c)``."""
        vector = Y.dim() == 2
        if self.diagonal:
            return Y / (self.d if vector else self.d[:, :, None])
        Z = Y.unsqueeze(-1) if vector else Y
        out = torch.cholesky_solve(Z, self.chol)
        if len(self.bad):
            out[self.bad] = torch.linalg.lu_solve(*self.lu, Z[self.bad])
        if len(self.singular):
            out[self.singular] = torch.nan
        return out.squeeze(-1) if vector else out


def _as_matrix(D: torch.Tensor) -> torch.Tensor:
    return torch.diag_embed(D) if D.dim() == 2 else D


def jacobian_blocks(net: LayeredNetwork, df: torch.Tensor, held: torch.Tensor | None):
    """``(D, U, keep)``: per layer the weighted self block ``(B, n_k)`` (diagonal) or ``(B, n_k, n_k)``
    (identity rows and columns at the held nodes), for k = 2..m the coupling ``U_k`` ``(n_{k-1}, n_k)``
    shared by the batch, and per layer ``(B, n_k)`` 1.0 at the free and 0.0 at the held nodes
    (None without held nodes): the coupling of sample b is ``keep_{k-1} U_k keep_k``."""
    w, U = net.cached("blocktri", lambda: _couplings(net))
    keep = [None] * net.depth if held is None else [(~h).to(df.dtype) for h in net.layers(held)]
    D = []
    for k, (blk, d) in enumerate(zip(net.self_blocks(), net.layers(df))):
        if blk.dim() == 1:
            Dk = w[k] * (blk + d)
            if keep[k] is not None:
                Dk = torch.where(keep[k] > 0, Dk, torch.ones_like(Dk))
        else:
            Dk = w[k] * (blk + torch.diag_embed(d))
            if keep[k] is not None:
                Dk = Dk * keep[k][:, :, None] * keep[k][:, None, :] + torch.diag_embed(1.0 - keep[k])
        D.append(Dk)
    return D, U, keep


def _couplings(net: LayeredNetwork):
    """The layer weights and the couplings ``U_k = -w_{k-1} backward_k`` (per network)."""
    w = net.layer_weights.tolist()
    return w, [-w[k - 1] * net.couplings[k].backward for k in range(1, net.depth)]


def _order(D: list[torch.Tensor]) -> bool:
    """Eliminate from the output layer back (True) when that is cheaper: the first layer
    eliminated should be diagonal, the Schur complements small."""
    sizes = [d.shape[1] for d in D]
    forward = sum(n ** 3 for n in sizes[1:]) + (0 if D[0].dim() == 2 else sizes[0] ** 3)
    backward = sum(n ** 3 for n in sizes[:-1]) + (0 if D[-1].dim() == 2 else sizes[-1] ** 3)
    return backward < forward


def _masked(v: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return v if keep is None else v * keep


def _schur(inv: _Inverse, U: torch.Tensor, kp, kc, y: torch.Tensor):
    """``(S, q)`` = ``(U_b^T T^-1 U_b, U_b^T T^-1 y)`` with ``U_b = diag(kp) U diag(kc)`` per sample."""
    B = y.shape[0]
    if inv.diagonal:
        # T^-1 diagonal: one GEMM over the batch, (B * n_c, n_p) @ (n_p, n_c)
        s = _masked(1.0 / inv.d, kp)
        S = ((U.T[None, :, :] * s[:, None, :]).reshape(-1, U.shape[0]) @ U).reshape(B, U.shape[1], U.shape[1])
        q = (y * s) @ U
    else:
        Ub = U.expand(B, *U.shape) if kp is None else kp[:, :, None] * U
        Z = inv(Ub)
        S = Ub.transpose(-1, -2) @ Z
        q = (inv(y)[:, None, :] @ Ub).squeeze(1)
    if kc is not None:
        S = kc[:, :, None] * S * kc[:, None, :]
        q = q * kc
    return S, q


def block_solve(net: LayeredNetwork, df: torch.Tensor, held: torch.Tensor | None, g: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` ``dx`` with ``(W J) dx = g`` (``g`` zero at the held nodes), module docstring."""
    D, U, keep = jacobian_blocks(net, df, held)
    gl = net.layers(g)
    reverse = _order(D)
    if reverse:
        # reverse the layers: the couplings become U_k^T
        D, gl, keep = D[::-1], gl[::-1], keep[::-1]
        U = [u.T for u in U[::-1]]
    m = len(D)
    inverses, ys = [], []
    T, y = D[0], gl[0]
    for k in range(1, m + 1):
        inverses.append(_Inverse(T))
        ys.append(y)
        if k == m:
            break
        S, q = _schur(inverses[-1], U[k - 1], keep[k - 1], keep[k], y)
        T = _as_matrix(D[k]) - S
        y = gl[k] - q
    dx = [None] * m
    dx[-1] = inverses[-1](ys[-1])
    for k in range(m - 1, 0, -1):
        back = _masked(_masked(dx[k], keep[k]) @ U[k - 1].T, keep[k - 1])
        dx[k - 1] = inverses[k - 1](ys[k - 1] - back)
    return torch.cat(dx[::-1] if reverse else dx, 1)
