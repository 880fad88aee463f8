"""Analog energy blocks as torch modules, and the converters at their boundaries.

``EnergyBlock.forward(u)`` returns the output-node voltages of the block's free
equilibrium (V) for inputs ``u`` (unitless; the sources get ``+-a*u``).
Its backward is a custom autograd function: given ``delta = dL/dV_out`` it runs
equilibrium propagation (or, with ``gradient="implicit"``, the exact implicit
gradient of the reference solver) and returns gradients for the block's
inputs and conductances. ``loss.backward()`` on a chain of torch modules and
energy blocks therefore *is* the ff-EBM training rule: backprop through the
digital blocks, EP through the analog ones.

Parameters are conductances in units of ``conductance_unit_s`` (so an
optimizer sees numbers near 1 rather than 1e-4 S): ``G = weight * unit``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .backends import Backend, get_backend
from .backends.reference import DTYPE, ReferenceBackend
from .circuit import BlockCircuit
from .ep import DEFAULT_BETA_V, ep_gradients, implicit_gradients, solve_failed
from .errors import SpecError

GRADIENTS = ("ep", "implicit")


@dataclass
class SolverStats:
    """What the solvers did for one block: counted for the run's metrics."""

    solves: int = 0
    failures: int = 0

    def as_dict(self) -> dict:
        return {"solves": self.solves, "failures": self.failures}


def _free_equilibrium(block: "EnergyBlock", weights, u: torch.Tensor):
    """(circuit, float64 inputs, free equilibrium) for ``u``; a failed solve raises with its deck."""
    circuit = block.circuit_for(weights)
    u64 = u.detach().to(DTYPE)
    free = block.backend.solve(circuit, u64)
    block.stats.solves += u64.shape[0]
    if not free.ok:
        block.stats.failures += int((~free.converged).sum())
        raise solve_failed(circuit, "free", free, u64)
    return circuit, u64, free


def _block_gradients(block: "EnergyBlock", circuit: BlockCircuit, u64: torch.Tensor, free, delta: torch.Tensor,
                     targets: torch.Tensor | None = None, sample_weights: torch.Tensor | None = None):
    """Gradients through the block for ``delta = dL/dV_out`` (``(B, n_out)``, 1/V).

    ``implicit``: the exact gradient of the reference solver at the free state (solved by
    the reference when the block's backend is another). ``ep``: equilibrium propagation on
    the block's backend, nudged by currents ``-beta*delta`` or, with ``targets``, by the
    resistive nudge towards them (``sample_weights`` scale each sample's cost).
    Returns ``(dL/du, [dL/dweight, ...])`` in the dtypes of the inputs and the parameters.
    """
    if block.gradient == "implicit":
        reference = free if isinstance(block.backend, ReferenceBackend) else ReferenceBackend().solve(circuit, u64)
        grads = implicit_gradients(circuit, u64, reference, delta)
    elif targets is None:
        grads = ep_gradients(circuit, block.backend, u64, free, delta, beta_v=block.beta_v, centered=block.centered)
    else:
        grads = ep_gradients(circuit, block.backend, u64, free, targets=targets, sample_weights=sample_weights,
                             beta_v=block.beta_v, centered=block.centered)
    block.stats.solves += grads.solves
    unit = block.conductance_unit_s
    per_tensor = list(grads.conductances)
    if circuit.has_bias:
        per_tensor += list(grads.bias_pos) + list(grads.bias_neg)
    weights = [(g * unit).to(dtype) for g, dtype in zip(per_tensor, block.weight_dtypes())]
    return grads.inputs, weights


class _EnergyBlockFunction(torch.autograd.Function):
    """Forward: free equilibrium. Backward: EP (or implicit) through the block."""

    @staticmethod
    def forward(ctx, block: "EnergyBlock", u, *weights):
        circuit, u64, free = _free_equilibrium(block, weights, u)
        ctx.block, ctx.circuit, ctx.free, ctx.u64, ctx.in_dtype = block, circuit, free, u64, u.dtype
        return free.output_voltages(circuit).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        d_inputs, d_weights = _block_gradients(ctx.block, ctx.circuit, ctx.u64, ctx.free, grad_out.detach().to(DTYPE))
        return (None, d_inputs.to(ctx.in_dtype), *d_weights)


class EnergyBlock(nn.Module):
    """An analog block: conductances as parameters, equilibria from a backend.

    Args:
        circuit: the block's frozen description (its conductances initialise the parameters).
        backend: a backend name or object (``reference`` or ``ngspice``).
        gradient: ``"ep"`` (equilibrium propagation) or ``"implicit"`` (exact, reference solver).
        beta_v: EP nudge amplitude in volts (see :mod:`ffebm_sim.ep`).
        centered: centered (+-beta) or one-sided (+beta) EP.
        conductance_unit_s: the parameter unit (default: the largest initial conductance).
        g_min_s, g_max_s: the range :meth:`project` keeps conductances in.
        output_gain: digital units per volt of the block's output (the readout's
            full-scale normalisation, e.g. an ADC's 1/V_fullscale): the module
            returns ``output_gain * V_out``. Resistive layers attenuate (every
            node is a weighted mean of its neighbours), so the gain keeps the
            next digital block's inputs near unit scale.
    """

    def __init__(self, circuit: BlockCircuit, backend: str | Backend = "reference", gradient: str = "ep",
                 beta_v: float = DEFAULT_BETA_V, centered: bool = True, conductance_unit_s: float | None = None,
                 g_min_s: float = 0.0, g_max_s: float | None = None, output_gain: float = 1.0):
        super().__init__()
        if gradient not in GRADIENTS:
            raise SpecError(f"gradient: unknown {gradient!r}; valid values are {', '.join(GRADIENTS)}")
        if not (isinstance(beta_v, (int, float)) and beta_v > 0 and np.isfinite(beta_v)):
            raise SpecError(f"beta: {beta_v!r}; the nudge amplitude in volts, a finite number > 0")
        self.template = circuit
        self.backend = get_backend(backend) if isinstance(backend, str) else backend
        self.gradient = gradient
        self.beta_v = float(beta_v)
        self.centered = centered
        if not (isinstance(output_gain, (int, float)) and np.isfinite(output_gain) and output_gain != 0):
            raise SpecError(f"output_gain: {output_gain!r}; digital units per volt, a finite non-zero number")
        self.output_gain = float(output_gain)
        g_all = np.concatenate([np.ravel(g) for g in circuit.conductances])
        self.conductance_unit_s = float(conductance_unit_s or max(float(g_all.max()), 1e-30))
        self.g_min_s = float(g_min_s)
        self.g_max_s = float(g_max_s) if g_max_s is not None else None
        unit = self.conductance_unit_s
        self.weights = nn.ParameterList([nn.Parameter(torch.tensor(np.array(g) / unit, dtype=DTYPE))
                                         for g in circuit.conductances])
        if circuit.has_bias:
            self.bias_pos = nn.ParameterList([nn.Parameter(torch.tensor(np.array(b) / unit, dtype=DTYPE))
                                              for b in circuit.bias_pos])
            self.bias_neg = nn.ParameterList([nn.Parameter(torch.tensor(np.array(b) / unit, dtype=DTYPE))
                                              for b in circuit.bias_neg])
        else:
            self.bias_pos = self.bias_neg = None
        self.stats = SolverStats()

    def all_weights(self) -> list[nn.Parameter]:
        out = list(self.weights)
        if self.bias_pos is not None:
            out += list(self.bias_pos) + list(self.bias_neg)
        return out

    def weight_dtypes(self):
        return [w.dtype for w in self.all_weights()]

    def circuit_for(self, weights=None) -> BlockCircuit:
        """The circuit with the current conductances (S)."""
        weights = self.all_weights() if weights is None else weights
        unit, m = self.conductance_unit_s, self.template.depth
        arrays = [w.detach().to(DTYPE).numpy() * unit for w in weights]
        if self.template.has_bias:
            return self.template.with_conductances(arrays[:m], arrays[m:2 * m], arrays[2 * m:3 * m])
        return self.template.with_conductances(arrays[:m])

    @property
    def circuit(self) -> BlockCircuit:
        return self.circuit_for()

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        v_out = _EnergyBlockFunction.apply(self, u, *self.all_weights())
        return v_out * self.output_gain if self.output_gain != 1.0 else v_out

    @torch.no_grad()
    def project(self) -> None:
        """Clamp conductances back into ``[g_min, g_max]`` (after an optimizer step)."""
        lo = self.g_min_s / self.conductance_unit_s
        hi = None if self.g_max_s is None else self.g_max_s / self.conductance_unit_s
        for w in self.all_weights():
            w.clamp_(min=lo, max=hi)

    def extra_repr(self) -> str:
        return (f"layers={list(self.template.layer_sizes)}, backend={self.backend.name}, gradient={self.gradient}, "
                f"beta_v={self.beta_v:g}, centered={self.centered}, unit={self.conductance_unit_s:g} S, "
                f"output_gain={self.output_gain:g}/V")


class _ResistiveLoss(torch.autograd.Function):
    """MSE of the last block's outputs with the resistive nudge in backward."""

    @staticmethod
    def forward(ctx, block: EnergyBlock, u, targets, *weights):
        circuit, u64, free = _free_equilibrium(block, weights, u)
        v = free.output_voltages(circuit)
        y = targets.detach().to(DTYPE)
        ctx.block, ctx.circuit, ctx.free, ctx.u64, ctx.y, ctx.v, ctx.in_dtype = block, circuit, free, u64, y, v, u.dtype
        return ((v - y) ** 2).mean().to(u.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        B, n = ctx.y.shape
        scale = float(grad_loss) * 2.0 / (B * n)            # d mean((v-y)^2) = 2/(B n) * sum_b dl_b, l_b = |v_b-y_b|^2/2
        d_inputs, d_weights = _block_gradients(ctx.block, ctx.circuit, ctx.u64, ctx.free, scale * (ctx.v - ctx.y),
                                               targets=ctx.y, sample_weights=torch.full((B,), scale, dtype=DTYPE))
        return (None, d_inputs.to(ctx.in_dtype), None, *d_weights)


def resistive_mse(block: EnergyBlock, u: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean((V_out - y)**2)`` of ``block`` whose backward nudges with a conductance to ``y``."""
    return _ResistiveLoss.apply(block, u, targets, *block.all_weights())


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lo, hi, levels):
        step = (hi - lo) / (levels - 1)
        return torch.round((x.clamp(lo, hi) - lo) / step) * step + lo

    @staticmethod
    def backward(ctx, g):
        return g, None, None, None


class Quantizer(nn.Module):
    """A DAC or ADC: clip to ``[lo, hi]`` and round to ``2**bits`` levels in forward;
    straight-through (identity) in backward.

    ``bits=None`` only clips (a converter with more resolution than matters),
    again with the gradient passed straight through.
    """

    def __init__(self, lo: float, hi: float, bits: int | None = None, kind: str = "dac"):
        super().__init__()
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise SpecError(f"{kind}.range: [{lo}, {hi}]; need finite lo < hi")
        if bits is not None and not (isinstance(bits, int) and 1 <= bits <= 32):
            raise SpecError(f"{kind}.bits: {bits!r}; an integer in 1..32")
        self.lo, self.hi, self.bits, self.kind = float(lo), float(hi), bits, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2 ** self.bits if self.bits else None
        if levels is None:
            return x + (x.clamp(self.lo, self.hi) - x).detach()
        return _StraightThrough.apply(x, self.lo, self.hi, levels)

    def extra_repr(self) -> str:
        return f"{self.kind}, range=[{self.lo:g}, {self.hi:g}], bits={self.bits}"
