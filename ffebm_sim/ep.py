"""Gradients through one energy block: equilibrium propagation and the exact implicit gradient.

Both return the same :class:`BlockGradients` for a loss ``L`` whose gradient
with respect to the output voltages is ``delta = dL/dV_out`` (per sample).

**Equilibrium propagation** (Scellier & Bengio 2017; centered as in Laborieux et al.
2021). The block's energy depends on a conductance only through the voltage drop across it:
``dE/dG_ij = (V_i - V_j)**2 / 2``; on a bias conductance to rail ``V_r``:
``(V_j - V_r)**2 / 2``; on a source voltage: the current the source delivers
into the network. Nudging sample ``b`` with the current ``-beta_b*delta_b``
into the output nodes and differencing these partials gives

    centered:   dL/dtheta ~= sum_b (dE/dtheta(+beta_b) - dE/dtheta(-beta_b)) / (2*beta_b)
    one-sided:  dL/dtheta ~= sum_b (dE/dtheta(+beta_b) - dE/dtheta(0)) / beta_b

and for the doubled input ``dL/du_i = a*(dL/dV(+i) - dL/dV(-i))``. Centered
EP errs by O(beta**2), one-sided by O(beta).

**Choice of beta.** ``beta_v`` is a voltage: sample ``b`` gets
``beta_b = beta_v * g_out / max_j |delta_bj|`` (A*V), with ``g_out`` the mean
total conductance at an output node, so the largest nudge current
``beta_b*|delta|`` moves an output node by about ``beta_v`` volts whatever the
loss scale. Default 1e-3 V: four decades above the solvers' ~1e-13 V
precision (noise ~1e-10 relative) and small enough that the O(beta**2) bias
stays near 1e-6 relative on the example blocks (see ``ffebm gradcheck --plot``).

**Resistive nudge** (MSE with targets ``y`` on the last block): a conductance
``+-beta_s`` from each output to a source at ``y`` adds ``beta_s*l_b`` with
``l_b = ||V_b - y_b||**2 / 2`` to the energy, so the same differences divided
by ``2*beta_s`` give ``dl_b/dtheta``; ``beta_s = beta_v * g_out / max|V - y|``.

**Non-idealities.** Parameters are the *programmed* conductances ``G``; with
mismatch the hardware conducts ``G*f`` (``f`` the element's factor), so
``dE/dG = f * dV**2 / 2``. With wire resistance (crossbars) ``dV`` is the drop
across the device between its own cross-point nodes, not between the line
ends: :func:`~ffebm_sim.crossbar.crossbar_drops` recovers it exactly
from the terminal (free-node and source) voltages of either backend, the
crossbar's internal nodes being linear. Source partials stay the currents the
sources deliver.

**Amplifiers** (``ffebm_sim.amplifier``, docs/amplifier.md). The equilibrium
minimises the weighted co-content ``E_w = sum_d w_d E_d`` (``w_d``:
``BlockCircuit.domain_weights``), and the current nudge at the output enters it
as ``w_out * beta * L``; EP therefore differentiates ``E_w / w_out``: every
partial of a parameter in domain ``d`` is scaled by ``w_d / w_out``, and the drop
across a device of crossbar ``k+1`` after an amplifier of gain ``A`` is
``A*x_k - x_{k+1}`` (the amplifier's output node drives it). The input sources
sit in the first domain (``w = 1``): their partials are the delivered currents
over ``w_out``. The same holds for the resistive nudge (its cost term lives in
the output domain).

**Implicit gradient** (the reference, "BP" for this circuit): at the
equilibrium the KCL residual ``r(x, theta) = 0``; with ``J = dr/dx`` and the
adjoint ``lambda = J^{-T} dL/dx``, ``dL/dtheta = -lambda^T dr/dtheta``. ``J`` is
symmetric without amplifiers; with them it is not (``W J`` is), and the
transposed system is solved. Nodes held at an ideal clip's bound do not move
(``lambda = 0`` there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .backends.base import Backend, Equilibrium, Nudge, source_voltages
from .backends.blocktri import block_solve
from .circuit import BlockCircuit, output_conductance_s
from .crossbar import crossbar_drops
from .interactions import DTYPE, layered_network, network

DEFAULT_BETA_V = 1e-3


@dataclass
class BlockGradients:
    """dL/d(parameters) summed over the batch, and dL/d(inputs) per sample.

    ``conductances`` in 1/S (per siemens), ``inputs`` per unit input.
    """

    conductances: list[torch.Tensor]
    bias_pos: list[torch.Tensor] | None
    bias_neg: list[torch.Tensor] | None
    inputs: torch.Tensor
    solves: int = 0
    failures: int = 0


class SolveFailed(RuntimeError):
    """Equilibria did not converge (after every retry the backend has).

    Attributes:
        block: the circuit's name; ``phase``: ``free``, ``+beta nudged`` or ``-beta nudged``;
        samples: the rows that failed, in the batch given to the block (blocks keep the
            batch order, so they are rows of the model's batch too); ``sample`` the first;
        reason: the backend's message for the first; ``deck``: a stand-alone physical
            deck of that sample (inputs and nudge as DC sources, ``.control`` running
            ``op``), for ``ngspice -b``.
    """

    def __init__(self, block: str, phase: str, samples: tuple[int, ...], reason: str, deck: str = ""):
        super().__init__(f"block '{block}', {phase} phase, sample {samples[0]}{and_more(samples)}: {reason}")
        self.block, self.phase, self.samples, self.reason, self.deck = block, phase, tuple(samples), reason, deck
        self.sample = self.samples[0]

    def __reduce__(self):
        return SolveFailed, (self.block, self.phase, self.samples, self.reason, self.deck)


def and_more(samples) -> str:
    """`` (and N more)`` after the first of several failed samples, else ''."""
    return f" (and {len(samples) - 1} more)" if len(samples) > 1 else ""


def solve_failed(circuit: BlockCircuit, phase: str, eq: Equilibrium, inputs: torch.Tensor,
                 nudge: Nudge | None = None, rows: torch.Tensor | None = None) -> SolveFailed:
    """The error for the failed samples of ``eq`` (solved from ``inputs`` and ``nudge``;
    ``rows`` maps its samples to the block's batch rows when only some were solved)."""
    from .netlist import emit_deck
    failed = (~eq.converged).nonzero().flatten().tolist()
    b = failed[0]
    samples = tuple(failed if rows is None else (int(rows[i]) for i in failed))
    kw = {}
    if nudge is not None:
        if nudge.currents_a is not None:
            kw["nudge_currents_a"] = nudge.currents_a[b].detach().numpy()
        if nudge.conductance_s != 0:
            kw.update(nudge_conductance_s=nudge.conductance_s, nudge_target_v=nudge.target_v[b].detach().numpy())
    deck = emit_deck(circuit.as_emitted(), inputs[b].detach().to(DTYPE).numpy(), control=True, **kw)
    return SolveFailed(circuit.name, phase, samples, eq.messages[b], deck)


def current_nudge_amplitudes(circuit: BlockCircuit, delta: torch.Tensor, beta_v: float) -> torch.Tensor:
    """Per-sample amplitude ``beta_b`` (A per unit of ``delta``) of the nudge current ``-beta_b*delta_b``.

    ``beta_b = beta_v * G_out / max_j |delta_bj|``: the largest nudge current of sample ``b``
    is ``beta_v * G_out``, which moves an output node by about ``beta_v`` volts whatever
    the loss's scale (``G_out``: :func:`output_conductance_s`). A sample with ``delta_b = 0``
    needs no nudge: ``beta_b = 0``. ``delta``: ``(B, n_out)``; returns ``(B,)``.
    """
    scale = delta.abs().amax(1)
    active = scale > 0
    return torch.where(active, beta_v * output_conductance_s(circuit) / torch.where(active, scale, torch.ones_like(scale)),
                       torch.zeros_like(scale))


def resistive_nudge_conductance_s(circuit: BlockCircuit, output_v: torch.Tensor, targets: torch.Tensor,
                                  beta_v: float) -> float:
    """The resistive nudge's conductance ``beta`` (S) to the targets, for the whole batch.

    ``beta = beta_v * G_out / max |V_out - y|``: the nudge moves the output with the largest
    error by about ``beta_v`` volts. ``output_v``, ``targets``: ``(B, n_out)`` (V); samples
    whose output is NaN (a failed solve, in ``ffebm analyze``) do not count.
    """
    err = float((output_v - targets).abs().nan_to_num(0.0).amax())
    return beta_v * output_conductance_s(circuit) / max(err, 1e-12)


def ep_energy_scales(circuit: BlockCircuit) -> np.ndarray:
    """``w_k / w_out`` per layer k (1..m): the factor on the energy partials of layer k's
    domain (crossbar k, layer k's bias) in the energy ``E_w / w_out`` EP differentiates.
    All ones without amplifiers."""
    w = circuit.domain_weights()
    return w / w[-1]


def contrasted_partials(circuit: BlockCircuit, inputs: torch.Tensor, eq_a: Equilibrium, eq_b: Equilibrium,
                        weights: torch.Tensor):
    """``sum_b w_b (dE/dtheta(a) - dE/dtheta(b))`` of two phases ``a``, ``b`` of the same inputs: per
    conductance (factor times) the voltage drops squared / 2, contracted over the batch without a
    ``(B, rows, cols)`` array (:meth:`~ffebm_sim.interactions.Coupling.contrasted_partials`); and per
    sample ``w_b (I_src(a) - I_src(b))``. With amplifiers, of ``E_w / w_out`` (each times
    :func:`ep_energy_scales`). Returns ``(d_g, d_bp, d_bn, d_src)``."""
    v_src = source_voltages(circuit, inputs)
    m = circuit.depth
    d_bp = d_bn = None
    if circuit.has_wires:
        # the drops across the devices between their own cross-point nodes (small blocks: per sample)
        drops = [crossbar_drops(circuit, v_src, eq.node_voltages_v) for eq in (eq_a, eq_b)]
        n_rows = [2 * circuit.n_inputs] + list(circuit.layer_sizes[1:-1])
        wk = weights[:, None, None]
        both = [(wk * 0.5 * (da ** 2 - db ** 2)).sum(0) for da, db in zip(*drops)]
        d_g = [both[k][:n_rows[k]] for k in range(m)]
        if circuit.has_bias:
            d_bp, d_bn = [both[k][-2] for k in range(m)], [both[k][-1] for k in range(m)]
    else:
        net = network(circuit)
        la, lb = ([v_src] + net.layers(eq.node_voltages_v) for eq in (eq_a, eq_b))
        d_g = [c.contrasted_partials(la[k - 1], la[k], lb[k - 1], lb[k], weights)
               for k, c in enumerate(net.couplings, start=1)]
        if circuit.has_bias:
            d_bp, d_bn = map(list, zip(*(bias.contrasted_partials(la[k], lb[k], weights)
                                        for k, bias in enumerate(net.biases, start=1))))
    if circuit.mismatch is not None and circuit.mismatch.conductance_sigma > 0:
        d_g = [d * torch.tensor(circuit.conductance_factors(k)) for k, d in enumerate(d_g, start=1)]
        if circuit.has_bias:
            f = [circuit.bias_factors(k) for k in range(1, m + 1)]
            d_bp = [d * torch.tensor(fk[0]) for d, fk in zip(d_bp, f)]
            d_bn = [d * torch.tensor(fk[1]) for d, fk in zip(d_bn, f)]
    src = weights[:, None] * (eq_a.source_currents_a - eq_b.source_currents_a)
    if circuit.has_amplifiers:
        scale = [float(s) for s in ep_energy_scales(circuit)]
        d_g = [d * s for d, s in zip(d_g, scale)]
        if circuit.has_bias:
            d_bp = [d * s for d, s in zip(d_bp, scale)]
            d_bn = [d * s for d, s in zip(d_bn, scale)]
        src = src * scale[0]
    return d_g, d_bp, d_bn, src


def _check(eq: Equilibrium, circuit: BlockCircuit, phase: str, inputs, nudge: Nudge, rows) -> None:
    if not eq.ok:
        raise solve_failed(circuit, phase, eq, inputs, nudge, rows)


def ep_gradients(circuit: BlockCircuit, backend: Backend, inputs: torch.Tensor, free: Equilibrium,
                 delta: torch.Tensor | None = None, *, targets: torch.Tensor | None = None,
                 sample_weights: torch.Tensor | None = None, beta_v: float = DEFAULT_BETA_V,
                 centered: bool = True) -> BlockGradients:
    """EP estimate of the gradient (see the module docstring).

    Give ``delta`` (B, n_out) for the current nudge, or ``targets`` (B, n_out)
    for the resistive nudge of the loss ``sum_b w_b * ||V_b - y_b||**2 / 2``
    with ``sample_weights`` ``w_b`` (default 1).
    """
    inputs = inputs.to(DTYPE)
    B = inputs.shape[0]
    if targets is None:
        delta = delta.to(DTYPE)
        beta = current_nudge_amplitudes(circuit, delta, beta_v)
        active = beta > 0                                    # samples with no error need no nudge

        def nudge(sign: float, idx) -> Nudge:
            return Nudge(currents_a=-sign * beta[idx, None] * delta[idx])
        weights = torch.ones(B, dtype=DTYPE)
    else:
        targets = targets.to(DTYPE)
        beta_s = resistive_nudge_conductance_s(circuit, free.output_voltages(circuit), targets, beta_v)
        active = torch.ones(B, dtype=torch.bool)
        beta = torch.full((B,), beta_s, dtype=DTYPE)

        def nudge(sign: float, idx) -> Nudge:
            return Nudge(conductance_s=sign * beta_s, target_v=targets[idx])
        weights = torch.ones(B, dtype=DTYPE) if sample_weights is None else sample_weights.to(DTYPE)

    idx = active.nonzero().flatten()
    zero_grads = BlockGradients([torch.zeros(g.shape, dtype=DTYPE) for g in circuit.conductances],
                                None if not circuit.has_bias else [torch.zeros(b.shape, dtype=DTYPE) for b in circuit.bias_pos],
                                None if not circuit.has_bias else [torch.zeros(b.shape, dtype=DTYPE) for b in circuit.bias_neg],
                                torch.zeros_like(inputs))
    if len(idx) == 0:
        return zero_grads
    u = inputs[idx]
    nudge_plus, nudge_minus = nudge(+1.0, idx), nudge(-1.0, idx)
    # The nudged phases relax from the free state (as the circuit does): a solver may start there.
    start = free.node_voltages_v[idx]
    if centered and targets is None:
        # Current nudges leave the circuit the same in both phases: one solve request of
        # 2k samples (+beta rows, then -beta rows) keeps every worker busy and halves the
        # per-request costs.
        both = Nudge(currents_a=torch.cat([nudge_plus.currents_a, nudge_minus.currents_a]))
        eq = backend.solve(circuit, torch.cat([u, u]), both, start=torch.cat([start, start]))
        plus, minus = eq.rows(slice(0, len(idx))), eq.rows(slice(len(idx), None))
    else:
        plus = backend.solve(circuit, u, nudge_plus, start=start)
        minus = backend.solve(circuit, u, nudge_minus, start=start) if centered else None
    _check(plus, circuit, "+beta nudged", u, nudge_plus, idx)
    if centered:
        _check(minus, circuit, "-beta nudged", u, nudge_minus, idx)
        denom = 2.0 * beta[idx]
    else:
        minus = Equilibrium(free.node_voltages_v[idx], free.source_currents_a[idx], free.converged[idx])
        denom = beta[idx]
    d_g, d_bp, d_bn, d_vsrc = contrasted_partials(circuit, u, plus, minus, weights[idx] / denom)
    out = zero_grads
    out.conductances = d_g
    if circuit.has_bias:
        out.bias_pos, out.bias_neg = d_bp, d_bn
    n0 = circuit.n_inputs
    out.inputs[idx] = circuit.input_gain_v * (d_vsrc[:, :n0] - d_vsrc[:, n0:])
    out.solves = (2 if centered else 1) * len(idx)
    return out


def kcl_residual(circuit: BlockCircuit, conductances, bias_pos, bias_neg, x: torch.Tensor,
                 v_src: torch.Tensor) -> torch.Tensor:
    """The linear (parameter-dependent) part of the KCL residual, differentiable in every argument.

    Current leaving each free node through resistors, amplifier inputs (the CCCS
    draws ``i_out/A``) and bias conductances (A): ``r_lin`` of
    :mod:`ffebm_sim.interactions`, built from the given *actual* conductances (no
    wires); the nonlinear elements do not depend on the parameters and are left out.
    """
    bias = None if bias_pos is None else (bias_pos, bias_neg)
    return layered_network(circuit, conductances=conductances, bias=bias).linear_currents(x, v_src)


def adjoint(net, x: torch.Tensor, delta: torch.Tensor, dense: bool = False) -> torch.Tensor:
    """``(B, N)`` the adjoint ``lambda = J^-T dL/dx`` at the equilibrium ``x`` (``dL/dx`` is ``delta`` on
    the outputs), ``J = L + diag(f'(x))``; nodes held at an ideal clip's bound get ``lambda = 0``.

    ``W J`` is symmetric (``W`` the domain weights, all 1 without amplifiers), so
    ``J^T = W J W^-1`` and ``lambda = W (W J)^-1 dL/dx``: the layered block elimination of the
    solver (:func:`~ffebm_sim.backends.blocktri.block_solve`); ``dense``: one ``(N, N)`` solve per
    sample (the oracle it is tested against)."""
    _, df, _ = net.nonlinear(x)
    B, N = x.shape
    g = torch.zeros(B, N, dtype=DTYPE)
    g[:, net.out_slice] = delta.to(DTYPE)
    held = None
    if net.has_bounds:
        held = (x >= net.upper) | (x <= net.lower)
        g = g * (~held)
    if not dense:
        return net.weighted(block_solve(net, df, held, g))
    J = net.dense_laplacian() + torch.diag_embed(df)
    if held is not None:
        keep = (~held).to(DTYPE)
        J = J * keep[:, :, None] * keep[:, None, :] + torch.diag_embed(held.to(DTYPE))
    return torch.linalg.solve(J.transpose(-1, -2), g.unsqueeze(-1)).squeeze(-1)


def implicit_gradients(circuit: BlockCircuit, inputs: torch.Tensor, free: Equilibrium,
                       delta: torch.Tensor) -> BlockGradients:
    """Exact dL/dtheta of the circuit at the (reference) equilibrium ``free``."""
    inputs = inputs.to(DTYPE)
    x = free.node_voltages_v.to(DTYPE)
    net = network(circuit, ideal_as_clip=True)
    lam = adjoint(net, x, delta)
    if circuit.has_wires:
        return _implicit_crossbar(circuit, inputs, x, lam, net)
    factors = [torch.tensor(circuit.conductance_factors(k)) for k in range(1, circuit.depth + 1)]
    bias_f = [circuit.bias_factors(k) for k in range(1, circuit.depth + 1)] if circuit.has_bias else None
    params = [torch.tensor(np.array(c), dtype=DTYPE, requires_grad=True) for c in circuit.conductances]
    bp = bn = None
    if circuit.has_bias:
        bp = [torch.tensor(np.array(c), dtype=DTYPE, requires_grad=True) for c in circuit.bias_pos]
        bn = [torch.tensor(np.array(c), dtype=DTYPE, requires_grad=True) for c in circuit.bias_neg]
    with torch.enable_grad():       # also when called from an autograd backward
        u = inputs.clone().requires_grad_(True)
        # the hardware conducts programmed * factor (mismatch); autograd carries the factor
        actual = [p * f for p, f in zip(params, factors)]
        abp = abn = None
        if bp:
            abp = [p * torch.tensor(f[0]) for p, f in zip(bp, bias_f)]
            abn = [p * torch.tensor(f[1]) for p, f in zip(bn, bias_f)]
        r = kcl_residual(circuit, actual, abp, abn, x, source_voltages(circuit, u))
        leaves = params + (bp or []) + (bn or []) + [u]
        grads = torch.autograd.grad(-(lam * r).sum(), leaves)
    m = circuit.depth
    return BlockGradients(list(grads[:m]),
                          list(grads[m:2 * m]) if bp else None,
                          list(grads[2 * m:3 * m]) if bp else None,
                          grads[-1])


def _implicit_crossbar(circuit: BlockCircuit, inputs: torch.Tensor, x: torch.Tensor, lam: torch.Tensor,
                       net) -> BlockGradients:
    """Implicit gradient with crossbars: dL/dG_ij = -f_ij * sum_b (lambda_r - lambda_c)(V_r - V_c)
    at the device's own cross-point nodes. The adjoint of the internal (linear) nodes follows
    from the free nodes' adjoint as voltages do (fixed terminals: sources and rails at 0)."""
    m = circuit.depth
    v_src = source_voltages(circuit, inputs)
    xd = crossbar_drops(circuit, v_src, x)
    ld = crossbar_drops(circuit, torch.zeros_like(v_src), lam, rails_v=(0.0, 0.0))
    n_rows = [2 * circuit.n_inputs] + list(circuit.layer_sizes[1:-1])
    prod = [-(a * b).sum(0) for a, b in zip(ld, xd)]
    g = [prod[k][:n_rows[k]] * torch.tensor(circuit.conductance_factors(k + 1)) for k in range(m)]
    bp = bn = None
    if circuit.has_bias:
        f = [circuit.bias_factors(k) for k in range(1, m + 1)]
        bp = [prod[k][-2] * torch.tensor(f[k][0]) for k in range(m)]
        bn = [prod[k][-1] * torch.tensor(f[k][1]) for k in range(m)]
    # dL/dV_src = -lambda^T dr/dV_src; the sources drive layer 1 only: dr_1/dV_src = -forward^T
    d_vsrc = lam[:, net.slices[0]] @ net.couplings[0].forward.T
    n0 = circuit.n_inputs
    return BlockGradients(g, bp, bn, circuit.input_gain_v * (d_vsrc[:, :n0] - d_vsrc[:, n0:]))
