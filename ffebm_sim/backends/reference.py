"""The torch reference solver: batched float64 layer sweeps and Newton on the block's KCL.

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
safeguarded by a backtracking (Armijo) line search on ``E``; the full step is accepted
without evaluating ``E`` where an upper bound of its change from convexity already passes
(:func:`_line_search`).

**Amplifiers** (``ffebm_sim.amplifier``) between layers k and k+1 make ``L``
unsymmetric: the amplifier output nodes are eliminated (``v(a) = A x_k``), so
crossbar k+1 contributes ``diag(G.sum(1))`` and ``-G/A`` to layer k's rows (the
CCCS draws ``i_out/A``) and ``diag(G.sum(0))``, ``-A G^T`` to layer k+1's. The
rows scaled by the domain weights ``w`` (``BlockCircuit.node_weights``) are
symmetric: ``W r`` is the gradient of the weighted co-content
``E_w = x^T (W L) x / 2 - (W b)^T x + sum w_i C_i(x)``, convex, whose minimiser
is the same operating point. Newton solves ``(W J) dx = -W r`` (Cholesky) and
line-searches on ``E_w``; convergence is judged on the physical currents ``r``.
Without amplifiers ``W = I`` and nothing changes. The terms of ``L``, ``b`` and
``f`` are the interactions of :mod:`ffebm_sim.interactions`, written there once.
A negative resistive nudge (EP's mirror phase) can make ``E_w`` concave along an output whose
table or junction does not conduct; a Newton step that is then not a descent direction is
replaced by the step of the Hessian without that nudge (:func:`concave_shift`), which is.
The ``ideal`` nonlinearity is the hard clip ``-v_off <= x <= v_off`` (no junction
at all), handled by projected Newton: nodes at a bound whose gradient points
outward are held there.

**Layered** (the default, ``solver="layered"``): layers are bipartite, so ``W J``
is block tridiagonal and each Newton step is a block elimination
(:mod:`ffebm_sim.backends.blocktri`), never a ``(B, N, N)`` array; before Newton,
exact layer sweeps (:func:`layer_sweeps`) solve ``ideal`` networks to the
tolerance and bring junction networks within a step or two of it. ``solver="dense"``
is the former dense Newton, kept as the oracle the layered solver is tested
against. The line search, the convergence test and the warm starts are the same.

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
from .blocktri import block_solve
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
    """One batch to solve: the network (with the resistive nudge, if any) and ``b`` ``(B, N)``,
    the currents the sources, rails, targets and nudge current sources push in (A)."""

    net: LayeredNetwork
    b: torch.Tensor


class _Dense:
    """The linear algebra of the dense oracle: ``L`` as one ``(N, N)`` matrix, ``W J`` as
    ``(B, N, N)`` (Cholesky). Kept to test the layered path against."""

    def __init__(self, problem: Problem):
        net = problem.net
        self.net = net
        self.L_t = net.dense_laplacian().T
        self.abs_l = self.L_t.abs()
        H = self.L_t.T if net.node_weights is None else net.weighted(self.L_t)      # (W L)^T = W L
        self.H = H if net.node_weights is None else 0.5 * (H + H.T)  # symmetric by construction; removes the rounding

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.L_t

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs() @ self.abs_l

    def step(self, df: torch.Tensor, held: torch.Tensor | None, g_w: torch.Tensor) -> torch.Tensor:
        J = self.H + torch.diag_embed(self.net.weighted(df))     # W J: symmetric
        if held is not None:
            # Held nodes: identity rows/columns, zero step.
            keep = (~held).to(DTYPE)
            J = J * keep[:, :, None] * keep[:, None, :] + torch.diag_embed(held.to(DTYPE))
        return _spd_solve(J, g_w)

    def linear_start(self, b: torch.Tensor) -> torch.Tensor:
        N = b.shape[1]
        eye = torch.eye(N, dtype=DTYPE, device=b.device)
        return torch.linalg.solve(self.L_t.T + 1e-30 * eye, b.T).T if N else b.clone()


class _Layered:
    """The layered linear algebra (:mod:`ffebm_sim.backends.blocktri`): ``L x`` from the
    interactions' blocks, Newton steps by block elimination; no ``(N, N)`` array."""

    def __init__(self, problem: Problem):
        self.net = problem.net

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.linear_currents(x, None)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.current_scale(x)

    def step(self, df: torch.Tensor, held: torch.Tensor | None, g_w: torch.Tensor) -> torch.Tensor:
        return block_solve(self.net, df, held, g_w)

    def linear_start(self, b: torch.Tensor) -> torch.Tensor:
        return block_solve(self.net, torch.zeros_like(b), None, self.net.weighted(b))


SOLVERS = ("layered", "dense")


def torch_device(name) -> torch.device:
    """The torch device ``name`` (None: the CPU), checked: ``cuda`` needs a CUDA device here.

    The layered solver is device-generic (every tensor of a solve lives on this device;
    results come back on the CPU). A GPU pays off for large batches of large blocks
    (docs/speed.md: batches of thousands, hidden layers of hundreds to thousands);
    at batch 128 of a ``[784, 100, 10]`` block the CPU is as fast.
    """
    if name is None:
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise SpecError(f"device: {name!r} is not a torch device; cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(f"device: {name!r} asked, but no CUDA device is available here "
                        "(torch.cuda.is_available() is False); use cpu")
    if device.type not in ("cpu", "cuda"):
        raise SpecError(f"device: {name!r}; the reference solver runs on cpu or cuda")
    return device


class ReferenceBackend(Backend):
    """Torch, float64, batched. See the module docstring for the equations.

    Args:
        abstol_a, reltol: convergence tolerance on the KCL residual (A, -).
        max_iterations: Newton iterations before a sample is declared failed.
        ideal_as_clip: solve ``ideal`` layers as the hard clip (True) or as the
            steep diode pair an emitted deck contains (False).
        solver: ``layered`` (block elimination and layer sweeps, the default) or ``dense``
            (one ``(N, N)`` Jacobian per sample: the oracle the layered solver is tested against).
        device: a torch device (``cpu``, ``cuda``) to solve on; results come back on the CPU.
    """

    name = "reference"

    def __init__(self, abstol_a: float = 1e-15, reltol: float = 1e-12, max_iterations: int = 200,
                 ideal_as_clip: bool = True, solver: str = "layered", device=None):
        if solver not in SOLVERS:
            raise SpecError(f"reference solver: {solver!r}; one of {', '.join(SOLVERS)}")
        self.abstol_a = abstol_a
        self.reltol = reltol
        self.max_iterations = max_iterations
        self.ideal_as_clip = ideal_as_clip
        self.solver = solver
        self.device = torch_device(device)
        self._inputs = None          # (network, inputs, v_src, b) of the last request: _fixed_currents

    def _fixed_currents(self, circuit: BlockCircuit, net: LayeredNetwork, u: torch.Tensor, nudged: bool):
        """``(v_src, b)`` of the inputs ``u`` on the network without a nudge. EP's nudged request repeats
        the free phase's inputs (``[u; u]``): when a ``nudged`` request's ``u`` is the last request's
        inputs stacked ``k`` times (compared exactly), their rows are reused, the same bits, without
        the products over the sources (on a ``[784, 100, 10]`` block a ``(B, 1568) @ (1568, 100)``
        GEMM). A free request always computes them (and is what a benchmark of it times)."""
        last = self._inputs
        if nudged and last is not None and last[0] is net and len(last[1]):
            _, u0, v0, b0 = last
            k, rest = divmod(u.shape[0], u0.shape[0])
            if k and not rest and torch.equal(u.view(k, *u0.shape), u0.expand(k, *u0.shape)):
                return v0.repeat(k, 1), b0.repeat(k, 1)
        v_src = source_voltages(circuit, u)
        b = net.fixed_currents(v_src)
        self._inputs = (net, u.clone(), v_src, b.clone())
        return v_src, b

    def solve(self, circuit: BlockCircuit, inputs, nudge: Nudge | None = None,
              start: torch.Tensor | None = None) -> Equilibrium:
        u = check_batch(circuit, inputs, nudge).to(self.device)
        net = network(circuit, self.ideal_as_clip, self.device)
        v_src, b = self._fixed_currents(circuit, net, u, nudge is not None)
        B, N = u.shape[0], circuit.n_free
        if nudge is not None and nudge.conductance_s != 0:
            net = net.with_nudge(float(nudge.conductance_s), torch.as_tensor(nudge.target_v, dtype=DTYPE).to(self.device))
            b[:, net.out_slice] -= net.nudge.constant          # the targets' currents g * y
        if nudge is not None and nudge.currents_a is not None:
            b[:, net.out_slice] += torch.as_tensor(nudge.currents_a, dtype=DTYPE).to(self.device)
        if start is not None and tuple(start.shape) != (B, N):
            raise SpecError(f"start: shape {tuple(start.shape)}, expected ({B}, {N})")
        problem = Problem(net, b)
        algebra = (_Dense if self.solver == "dense" else _Layered)(problem)
        # Under a negative resistive nudge the energy need not be convex (concave_shift): more than
        # one equilibrium (an ideal output pushed to either bound); both solvers then take the same
        # projected Newton path from the warm start, coordinate descent might pick another one.
        sweep = self.solver == "layered" and _sweepable(net) and concave_shift(net) is None
        if start is not None and not bool(torch.isfinite(start).all()):
            start = None                                          # a failed phase's NaNs: start cold
        x = self._start(problem, algebra, None if start is None else start.to(self.device), cold_zero=sweep)
        if sweep:
            x = (layer_sweeps(net, b, x, JUNCTION_SWEEP_TOLERANCE, JUNCTION_MAX_SWEEPS) if net.diodes
                 else layer_sweeps(net, b, x))
        x, df, converged, iterations, residual = self._newton(problem, algebra, x)
        messages = [("" if c else f"reference: KCL residual {r:.3g} A after {iterations} Newton iterations; "
                     "raise max_iterations or check the conductances")
                    for c, r in zip(converged.tolist(), residual.tolist())]
        # A node with no conductance at all (and no junction GMIN) floats: no unique answer. (A
        # negative resistive nudge is not counted against the node's own conductance.)
        shift = concave_shift(net)
        floating = (_diagonal(net) + df + (0.0 if shift is None else shift)) <= 0
        if floating.any():
            names = free_node_names(circuit)
            for k in floating.any(1).nonzero().flatten().tolist():
                node = names[int(floating[k].nonzero()[0])]
                messages[k] = (f"reference: node {node} floats (no conductance connects it); "
                               "give it a non-zero conductance")
            converged = converged & ~floating.any(1)
        src = net.source_currents(v_src, x)
        cpu = lambda t: t.cpu()
        return Equilibrium(cpu(x), cpu(src), cpu(converged), tuple(messages), iterations)

    @staticmethod
    def _start(problem: Problem, algebra, start: torch.Tensor | None, cold_zero: bool = False) -> torch.Tensor:
        """The first iterate: a warm start (e.g. the free state of a nudged phase, usually one or
        two iterations from the answer) as given; else 0 V (``cold_zero``, for layer sweeps) or the
        linear network (junctions open) with every conducting junction's voltage brought down to
        ``N Vt ln(1 + G_i (x_i - rail) / IS)``: the junction carrying all the current the node's
        conductances ``G_i`` would push at the rail, an upper bound. Newton on the convex
        exponential then starts at or beyond the answer, where it converges without overshoot,
        and exp() stays representable."""
        net, b = problem.net, problem.b
        if start is not None:
            x = start.to(DTYPE).clone()
        elif cold_zero:
            x = torch.zeros_like(b)
        else:
            x = torch.nan_to_num(algebra.linear_start(b), nan=0.0, posinf=1.0, neginf=-1.0)
            if net.diodes:
                g_node = _diagonal(net)
                for g in net.diodes:
                    xv = x[:, g.nodes]
                    excess = (xv - g.rail_v if g.upward else g.rail_v - xv).clamp(min=0.0)
                    vd = g.vte * torch.log1p(excess * g_node[g.nodes] / g.isat)
                    x[:, g.nodes] = (torch.minimum(xv, g.rail_v + vd) if g.upward
                                     else torch.maximum(xv, g.rail_v - vd))
        return torch.maximum(torch.minimum(x, net.upper), net.lower)

    def _converged(self, net: LayeredNetwork, algebra, x: torch.Tensor, r_abs: torch.Tensor,
                   other: torch.Tensor) -> torch.Tensor:
        """``(B,)`` the convergence test ``|r_i| <= abstol_a + reltol * s_i`` (module docstring), ``s_i =
        (|L| |x|)_i + other_i``. First against the bound ``(|L| 1)_i max_j |x_j| >= (|L| |x|)_i``
        (one product less): a sample that fails there fails the test; only if some sample passes
        is ``|L| |x|`` formed."""
        if not x.shape[1]:
            return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        row_abs = net.cached("row_abs", lambda: algebra.scale(torch.ones(1, net.n_free, dtype=DTYPE,
                                                                            device=net.device)))
        base = torch.add(self.abstol_a, other, alpha=self.reltol)           # abstol_a + reltol * other
        coarse = torch.addcmul(base, row_abs, x.abs().amax(1, keepdim=True), value=(1.0 + 1e-12) * self.reltol)
        maybe = (r_abs <= coarse).all(1)
        if not bool(maybe.any()):
            return maybe
        return maybe & (r_abs <= base.add_(algebra.scale(x), alpha=self.reltol)).all(1)

    def _newton(self, problem: Problem, algebra, x: torch.Tensor):
        """Projected Newton on ``W r = 0`` with a line search on ``E_w`` (module docstring). The
        point a line search accepts comes with its currents and energy: one evaluation of the
        nonlinear elements per iteration."""
        net, b = problem.net, problem.b
        B, N = b.shape
        converged = torch.zeros(B, dtype=torch.bool, device=b.device)
        abs_b = b.abs()
        state = _State.at(net, algebra, b, x, energy=False)
        it = 0
        for it in range(1, self.max_iterations + 1):
            x, f = state.x, state.f
            r = state.r                           # physical currents leaving each node (A)
            held = None
            r_free = r
            if net.has_bounds:
                held = ((x >= net.upper) & (r < 0)) | ((x <= net.lower) & (r > 0))
                r_free = torch.where(held, torch.zeros_like(r), r)
            r_abs = r_free.abs()
            converged = ok = self._converged(net, algebra, x, r_abs, abs_b + f.abs())
            if bool(ok.all()):
                break
            active = ~ok
            g_w = net.weighted(r_free)           # the gradient of E_w
            if bool(active.all()):               # skip the row gathers in the common case
                dx = _descent_step(net, algebra, state.df, held, g_w)
                state = _line_search(net, algebra, b, state, g_w, dx)
            else:
                h = None if held is None else held[active]
                dx = _descent_step(net, algebra, state.df[active], h, g_w[active])
                state.put(active, _line_search(net, algebra, b[active], state.rows(active), g_w[active], dx))
        residual = r_abs.amax(1) if N else torch.zeros(B, dtype=DTYPE, device=b.device)
        return state.x, state.df, converged, it, residual


@dataclass
class _State:
    """An iterate and what the solver needs there: ``L x``, the residual ``r = L x - b + f``, ``f``,
    ``f'`` and the energy ``E_w`` (None until asked for)."""

    x: torch.Tensor
    lx: torch.Tensor
    r: torch.Tensor
    f: torch.Tensor
    df: torch.Tensor
    e: torch.Tensor | None

    @classmethod
    def at(cls, net: LayeredNetwork, algebra, b: torch.Tensor, x: torch.Tensor, energy: bool = True) -> "_State":
        """The state at ``x``; ``energy=False``: ``e`` is left to :meth:`energy` (most iterates
        never need it: :func:`_line_search`)."""
        lx = algebra.apply(x)
        f, df, e = net.nonlinear(x, energy=energy)
        r = (lx - b).add_(f)
        return cls(x, lx, r, f, df, net.quadratic_energy(x, lx - b, b) + e if energy else None)

    def energy(self, net: LayeredNetwork, b: torch.Tensor) -> torch.Tensor:
        if self.e is None:
            self.e = net.quadratic_energy(self.x, self.lx - b, b) + net.nonlinear(self.x, energy=True, currents=False)[2]
        return self.e

    def rows(self, idx) -> "_State":
        return _State(self.x[idx], self.lx[idx], self.r[idx], self.f[idx], self.df[idx],
                      None if self.e is None else self.e[idx])

    def put(self, idx, other: "_State") -> None:
        """Rows ``idx`` from ``other``; the energies are kept only if both states have them."""
        for name in ("x", "lx", "r", "f", "df"):
            getattr(self, name)[idx] = getattr(other, name)
        if self.e is not None and other.e is not None:
            self.e[idx] = other.e
        else:
            self.e = None


def _diagonal(net: LayeredNetwork) -> torch.Tensor:
    """``(N,)`` the diagonal of ``L``: each node's total conductance to its neighbours and fixed potentials."""
    return net.cached("diagonal", lambda: torch.cat([blk if blk.dim() == 1 else torch.diagonal(blk)
                                                     for blk in net.self_blocks()]))


def _sweepable(net: LayeredNetwork) -> bool:
    """Layer sweeps apply: every layer's self block diagonal (no wires) and positive, and every
    node's own problem solvable in closed form (a clip, a junction, nothing; a table has none).
    A negative resistive nudge larger than a node's own conductance makes that node's quadratic
    concave: its minimiser along the node is then not a weighted mean (Newton alone handles it)."""
    return net.cached("sweepable", lambda: not net.wires and not net.pwls
                      and all(bool((blk > 0).all()) for blk in net.self_blocks()))


#: Layer sweeps stop when no node moved by more than this fraction of the largest node voltage
#: (about the convergence test's 1e-12 relative current); Newton then checks and finishes.
SWEEP_TOLERANCE = 1e-12
MAX_SWEEPS = 40
#: With junctions the sweeps are a warm start for Newton (which converges quadratically near
#: the answer): they stop earlier.
JUNCTION_SWEEP_TOLERANCE = 1e-4
JUNCTION_MAX_SWEEPS = 3


#: Newton iterations on ``w + ln w = L`` in :func:`junction_minimiser` (the sweeps are Newton's warm start).
LAMBERT_ITERATIONS = 4


@dataclass(frozen=True)
class _NodeJunctions:
    """One layer's clamp junctions as :func:`junction_minimiser` uses them, per node ``(n,)``: the
    rails ``up`` (node -> rail; ``+inf`` where none) and ``down`` (rail -> node; ``-inf``), their
    midpoint, and per orientation (``(up, down)``) the constants of the node's problem with its
    self conductance ``d``, ``g = d + GMIN``, ``A = g N Vt``:

        p = d / A,   q = IS / A + ln(IS / A),   N Vt,   GMIN / g,   IS / g.

    ``same``: both orientations' constants agree at every node (one junction model, no
    mismatch): one set serves both."""

    up: torch.Tensor
    down: torch.Tensor
    mid: torch.Tensor
    consts: tuple
    same: bool


def _node_junctions(net: LayeredNetwork, k: int, d: torch.Tensor) -> _NodeJunctions | None:
    """:class:`_NodeJunctions` of layer k (0-based) with self conductances ``d``, or None without junctions."""
    sl = net.slices[k]
    n = sl.stop - sl.start
    groups = [g for g in net.diodes if sl.start <= int(g.nodes[0]) < sl.stop]
    if not groups:
        return None
    gmin = groups[0].model.gmin_s
    dg = d + gmin
    rails, consts = [], []
    for upward in (True, False):
        rail = torch.full((n,), torch.inf if upward else -torch.inf, dtype=DTYPE, device=net.device)
        isat = torch.full((n,), torch.nan, dtype=DTYPE, device=net.device)
        vte = torch.full((n,), torch.nan, dtype=DTYPE, device=net.device)
        for g in groups:
            if g.upward == upward:
                local = g.nodes - sl.start
                rail[local], isat[local], vte[local] = g.rail_v, g.isat, g.vte
        a = dg * vte
        rails.append(rail)
        consts.append((d / a, isat / a + torch.log(isat / a), vte, gmin / dg, isat / dg))
    # where a node has one orientation only, the other's constants are that one's (unused, finite)
    has = [torch.isfinite(r) for r in rails]
    consts = [tuple(torch.where(has[i], c, o) for c, o in zip(consts[i], consts[1 - i])) for i in (0, 1)]
    same = all(bool(torch.equal(u, v)) for u, v in zip(*consts))
    return _NodeJunctions(rails[0], rails[1], 0.5 * (rails[0] + rails[1]), consts[0] if same else tuple(consts), same)


def junction_minimiser(m: torch.Tensor, j: _NodeJunctions) -> torch.Tensor:
    """The node voltages minimising ``d (x - m)^2 / 2 + C(x)``, ``C`` the co-content of the node's
    clamp junctions with GMIN (constants in ``j``, :class:`_NodeJunctions`). Where a node is driven
    past a rail by ``e = s (m - rail) > 0`` (``s = +1`` up, ``-1`` down) that junction conducts and
    ``d (x - m) + IS (exp(s (x - rail) / N Vt) - 1) + GMIN (x - rail) = 0`` is solved with Lambert's W:
    with ``y = s (x - rail) / N Vt``, ``A y + IS e^y = c`` (``c = d e + IS``) gives ``y = c/A - W``,
    ``W + ln W = L = ln(IS/A) + c/A = p e + q``, and ``x = m - s (N Vt W + (GMIN e - IS) / g)``; ``W``
    by Newton on ``w + ln w = L`` (``w <- w (1 + L - ln w) / (1 + w)``) from ``L - ln L`` (``L > 1``)
    or ``e^L``. Elsewhere the junctions carry at most IS and ``m`` is kept. The reverse-biased
    junction is left out: the sweeps are Newton's warm start, Newton finishes."""
    e_up, e_down = m - j.up, j.down - m
    e = torch.maximum(e_up, e_down)             # the drive past the nearer rail (V)
    if j.same:
        p, q, vte, gmin_g, isat_g = j.consts
    else:
        upward = e_up > e_down
        p, q, vte, gmin_g, isat_g = (torch.where(upward, u, w) for u, w in zip(*j.consts))
    big = torch.addcmul(q, e, p)
    w = torch.where(big > 1.0, big - torch.log(big), torch.exp(big))   # log of L <= 1 unused
    big1 = big.add_(1.0)
    for _ in range(LAMBERT_ITERATIONS):
        w = w.mul(big1 - torch.log(w)).div_(w + 1.0)
    pull = torch.addcmul(torch.addcmul(-isat_g, e, gmin_g), w, vte)
    return torch.where(e > 0, m - torch.copysign(pull, m - j.mid), m)


def _sweep_plan(net: LayeredNetwork):
    """The per-network constants of :func:`layer_sweeps`: the self blocks, the bounds per layer,
    the junctions, per layer (in sweep order) ``1 / S_k`` and the neighbour blocks divided by
    ``S_k``, and the layer updated last."""
    m = net.depth
    blocks = net.self_blocks()
    inv_d = [1.0 / d for d in blocks]
    lower, upper = net.layers(net.lower[None, :]), net.layers(net.upper[None, :])
    junctions = [_node_junctions(net, k, blocks[k]) for k in range(m)]
    steps = []
    for k in range(m):
        terms = []
        if k >= 1:
            terms.append((k - 1, net.couplings[k].forward * inv_d[k]))
        if k + 1 < m:
            terms.append((k + 1, net.couplings[k + 1].backward_t * inv_d[k]))
        steps.append((k, inv_d[k], terms))
    order = [step for parity in (0, 1) for step in steps[parity::2]]
    return blocks, lower, upper, junctions, order, order[-1][0]


def layer_sweeps(net: LayeredNetwork, b: torch.Tensor, x: torch.Tensor, tolerance: float = SWEEP_TOLERANCE,
                 max_sweeps: int = MAX_SWEEPS) -> torch.Tensor:
    """Exact block coordinate descent on ``E_w`` (Scellier 2024, "A fast algorithm to simulate
    nonlinear resistive networks"): the odd layers, then the even ones. With its neighbours
    fixed a layer's nodes are independent (bipartite layers) and each one's minimiser is the
    weighted mean of its neighbours and fixed potentials,

        m_k = (b_k + x_{k-1} @ forward_k + x_{k+1} @ backward_{k+1}^T) / S_k

    (the block row of :mod:`ffebm_sim.interactions` set to zero, ``S_k`` the diagonal self
    block; the domain weights scale the whole row and drop out), clipped to its bounds (the
    exact minimiser of a convex quadratic on an interval), or moved by its conducting junction
    (:func:`junction_minimiser`). The divisions are folded into the blocks once. Stops when a
    sweep moves no node of the layer updated last by more than ``tolerance`` times that
    layer's largest ``|x|`` (its neighbours have then settled too: it is their weighted mean),
    or after ``max_sweeps``; the Newton iteration that follows checks the KCL test."""
    blocks, lower, upper, junctions, steps, last = net.cached("sweeps", lambda: _sweep_plan(net))
    xl = net.layers(x)
    order = [(k, b[:, net.slices[k]] * inv, terms) for k, inv, terms in steps]
    for _ in range(max_sweeps):
        for k, base, terms in order:
            new = base
            for j, M in terms:
                new = torch.addmm(new, xl[j], M)
            new = torch.clamp(new, lower[k], upper[k])
            if junctions[k] is not None:
                new = junction_minimiser(new, junctions[k])
            if k == last:
                moved, size = torch.linalg.vector_norm(new - xl[k], float("inf")), new.abs().max()
            xl[k].copy_(new)
        if float(moved) <= tolerance * float(size):
            break
    return x


def concave_shift(net: LayeredNetwork) -> torch.Tensor | None:
    """``(N,)`` what makes the energy's Hessian positive definite everywhere, or None where it
    already is: ``|beta|`` at the output nodes under a negative resistive nudge ``beta < 0``.

    Every other term of ``W J`` is a Laplacian with positive ties, a junction or a monotone table
    (:mod:`ffebm_sim.devices`): positive (semi)definite. The negative nudge (EP's mirror phase)
    subtracts ``w_out |beta|`` at the outputs; where the output's own table or junction does not
    conduct and its path to the fixed potentials is weaker than ``|beta|`` the energy is concave
    along the output and the Hessian indefinite. Adding ``|beta|`` back gives the Hessian of the
    network without the nudge."""
    if net.nudge is None:
        return None
    beta = float(net.nudge.conductances[0])
    if beta >= 0:
        return None

    def shift():
        out = torch.zeros(net.n_free, dtype=DTYPE, device=net.device)
        out[net.out_slice] = -beta
        return out
    return net.cached("concave_shift", shift)


def _descent_step(net: LayeredNetwork, algebra, df: torch.Tensor, held, g_w: torch.Tensor) -> torch.Tensor:
    """The Newton step ``-(W J)^-1 g_w``, or, for the samples where it is not a descent direction
    of ``E_w`` (an indefinite Hessian under a negative resistive nudge, :func:`concave_shift`), the
    step of the shifted, positive definite Hessian, which is one: the line search then decreases
    ``E_w`` instead of stalling at its shortest step (Newton from the free state of a circuit whose
    output sat in a table's flat part stopped there after 200 iterations). Near a minimum the
    Hessian is positive definite and the plain Newton step is kept (quadratic convergence)."""
    dx = -algebra.step(df, held, g_w)
    shift = concave_shift(net)
    if shift is None:
        return dx
    uphill = ~((g_w * dx).sum(1) < 0)           # not a descent direction (NaN included)
    if bool(uphill.any()):
        idx = uphill.nonzero().flatten()
        dx[idx] = -algebra.step(df[idx] + shift, None if held is None else held[idx], g_w[idx])
    return dx


def _line_search(net: LayeredNetwork, algebra, b, state: _State, grad, dx) -> _State:
    """Backtracking (Armijo) on the weighted co-content ``E_w`` along ``dx`` from ``state``; the
    projection onto the bounds is part of the trial point. Returns the accepted points' states.

    The full step is tried first, and accepted without evaluating ``E_w`` where an upper bound
    of the energy change already passes the test: along the actual step ``s = x_1 - x_0`` the
    quadratic part changes by exactly ``s^T W (r_lin(x_0) + r_lin(x_1)) / 2`` and each convex
    co-content by at most ``w_i f_i(x_1) s_i`` (``C(x_0) >= C(x_1) + C'(x_1)(x_0 - x_1)``), so

        E_w(x_1) - E_w(x_0) <= s^T W (r(x_1) - L s / 2),      L s = L x_1 - L x_0.

    Near the answer this is about ``-s^T L s / 2``, well below Armijo's ``1e-4 g^T dx``; where it
    is not (a junction conducting thousands of times its node's conductance, far from the
    answer), the energies are compared as usual."""
    x = state.x
    slope = (grad * dx).sum(1)                 # < 0 for a descent direction
    trial = _State.at(net, algebra, b, torch.maximum(torch.minimum(x + dx, net.upper), net.lower), energy=False)
    s = trial.x - x
    bound = net.weighted(s * trial.r.add(trial.lx - state.lx, alpha=-0.5)).sum(1)
    accept = bound <= 1e-4 * slope
    if bool(accept.all()):                      # the full Newton step: the common case
        return trial
    e0 = state.energy(net, b)
    slack = 1e-13 * e0.abs() + 1e-300
    e1 = trial.energy(net, b)
    accept = accept | ((e1 <= e0 + 1e-4 * slope + slack) & torch.isfinite(e1))
    if bool(accept.all()):
        return trial
    t = torch.ones(x.shape[0], dtype=DTYPE, device=x.device)
    new = trial
    pending = ~accept
    for _ in range(59):
        t[pending] *= 0.5
        idx = pending.nonzero().squeeze(1)
        z = torch.maximum(torch.minimum(x[idx] + t[idx, None] * dx[idx], net.upper), net.lower)
        tried = _State.at(net, algebra, b[idx], z)
        ok = (tried.e <= e0[idx] + 1e-4 * t[idx] * slope[idx] + slack[idx]) & torch.isfinite(tried.e)
        new.put(idx[ok], tried.rows(ok))
        pending[idx[ok]] = False
        if not pending.any():
            return new
        last = (idx, tried)
    # Samples whose search failed take the shortest step tried (roundoff regime).
    idx, tried = last
    still = pending[idx]
    new.put(idx[still], tried.rows(still))
    return new
