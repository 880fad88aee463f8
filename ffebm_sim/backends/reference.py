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
Without amplifiers ``W = I`` and nothing changes. The terms of ``L``, ``b`` and ``f`` are the interactions of
:mod:`ffebm_sim.interactions`, written there once. The ``ideal``
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

import torch

from ..circuit import BlockCircuit, free_node_names
from ..errors import SpecError
from ..interactions import DTYPE, LayeredNetwork, network
from .base import Backend, Equilibrium, Nudge, check_batch, source_voltages


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


@dataclass(frozen=True, eq=False)
class Problem:
    """One batch to solve: the network, the currents pushed in and the resistive nudge.

    ``b`` ``(B, N)``: sources, rails and nudge currents (A); ``nudge_g`` the resistive nudge's
    conductance (S) from every output node to its target (its ``g*y`` is in ``b``).
    """

    net: LayeredNetwork
    b: torch.Tensor
    nudge_g: float = 0.0

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` ``L x`` with the nudge conductance (A)."""
        r = self.net.linear_currents(x, None)
        if self.nudge_g:
            out = self.net.out_slice
            r[:, out] += self.nudge_g * x[:, out]
        return r

    def dense_laplacian(self) -> torch.Tensor:
        L = self.net.dense_laplacian()
        if self.nudge_g:
            idx = torch.arange(self.net.out_slice.start, self.net.out_slice.stop, device=L.device)
            L[idx, idx] += self.nudge_g
        return L


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
        net = network(circuit, self.ideal_as_clip)
        v_src = source_voltages(circuit, u)
        B, N = u.shape[0], circuit.n_free
        b = net.fixed_currents(v_src)
        nudge_g = 0.0
        if nudge is not None:
            if nudge.currents_a is not None:
                b[:, net.out_slice] += torch.as_tensor(nudge.currents_a, dtype=DTYPE)
            if nudge.conductance_s != 0:
                nudge_g = float(nudge.conductance_s)
                b[:, net.out_slice] += nudge_g * torch.as_tensor(nudge.target_v, dtype=DTYPE)
        if start is not None and tuple(start.shape) != (B, N):
            raise SpecError(f"start: shape {tuple(start.shape)}, expected ({B}, {N})")
        problem = Problem(net, b, nudge_g)
        x, converged, iterations, residual = self._newton(problem, start)
        messages = [("" if c else f"reference: KCL residual {r:.3g} A after {iterations} Newton iterations; "
                     "raise max_iterations or check the conductances")
                    for c, r in zip(converged.tolist(), residual.tolist())]
        # A node with no conductance at all (and no junction GMIN) floats: no unique answer.
        _, df, _ = net.nonlinear(x)
        floating = (self._diagonal(problem) + df) <= 0
        if floating.any():
            names = free_node_names(circuit)
            for k in floating.any(1).nonzero().flatten().tolist():
                node = names[int(floating[k].nonzero()[0])]
                messages[k] = (f"reference: node {node} floats (no conductance connects it); "
                               "give it a non-zero conductance")
            converged = converged & ~floating.any(1)
        messages = tuple(messages)
        src = net.source_currents(v_src, x)
        return Equilibrium(x, src, converged, messages, iterations)

    @staticmethod
    def _diagonal(problem: Problem) -> torch.Tensor:
        """``(N,)`` the diagonal of ``L`` (with the nudge conductance)."""
        d = torch.cat([blk if blk.dim() == 1 else torch.diagonal(blk) for blk in problem.net.self_blocks()])
        if problem.nudge_g:
            d = d.clone()
            d[problem.net.out_slice] += problem.nudge_g
        return d

    def _start(self, problem: Problem, start: torch.Tensor | None, L: torch.Tensor | None = None) -> torch.Tensor:
        """The first iterate: a warm start, or the linear network (diodes open) pulled inside the rails."""
        net, b = problem.net, problem.b
        N = b.shape[1]
        if start is not None and bool(torch.isfinite(start).all()):
            # A warm start (e.g. the free state of a nudged phase): usually one or two iterations.
            x = start.to(DTYPE).clone()
        else:
            L = problem.dense_laplacian() if L is None else L
            eye = torch.eye(N, dtype=DTYPE, device=b.device)
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
        return torch.maximum(torch.minimum(x, net.upper), net.lower)

    def _newton(self, problem: Problem, start: torch.Tensor | None = None):
        """Dense projected Newton on ``W r = 0`` with a line search on ``E_w``."""
        net, b = problem.net, problem.b
        B, N = b.shape
        L = problem.dense_laplacian()
        H = L if net.node_weights is None else net.weighted(L.T).T     # W L, symmetric
        if net.node_weights is not None:
            H = 0.5 * (H + H.T)                 # symmetric by construction; this removes the rounding
        x = self._start(problem, start, L)
        converged = torch.zeros(B, dtype=torch.bool)
        residual = torch.full((B,), torch.inf, dtype=DTYPE)
        L_t = L.T
        abs_l = L_t.abs()
        it = 0
        for it in range(1, self.max_iterations + 1):
            f, df, _ = net.nonlinear(x)
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
            lin = lambda z: z @ L_t
            if every:
                x = _line_search(net, lin, b, x, g_w, -_spd_solve(J, g_w))
            else:
                dx = -_spd_solve(J, g_w[active])
                x[active] = _line_search(net, lin, b[active], x[active], g_w[active], dx)
        return x, converged, it, residual


def _line_search(net: LayeredNetwork, apply, b, x, grad, dx):
    """Backtracking (Armijo) on the weighted co-content ``E_w`` along ``dx``; the projection onto
    the bounds is part of the trial point. ``apply(x)``: ``L x`` (A)."""
    energy = lambda z, bz: net.energy(z, apply(z) - bz, bz)
    e0 = energy(x, b)
    slope = (grad * dx).sum(1)                 # < 0 for a descent direction
    t = torch.ones(x.shape[0], dtype=DTYPE, device=x.device)
    pending = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    x_new = x.clone()
    slack = 1e-13 * e0.abs() + 1e-300
    for _ in range(60):
        trial = x[pending] + t[pending, None] * dx[pending]
        trial = torch.maximum(torch.minimum(trial, net.upper), net.lower)
        e1 = energy(trial, b[pending])
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
