"""The one contract every solver of an energy block fulfils.

``solve(circuit, inputs, nudge, start=None) -> Equilibrium``

* ``inputs``: ``(B, n_0)`` input features (unitless; sources get ``+-a*u``).
* ``nudge``: what is attached to the output nodes (see :class:`Nudge`), or
  ``None`` for the free phase.
* returns the free-node voltages (V), the current each input source delivers
  into the network (A) and a per-sample status.

Sign convention (written here once; README, 'The circuit'): ``source_currents_a``
is the current a source *delivers into the network* through its ``+``
terminal. That is ``dE/dV_src`` of the block's energy, so EP's input gradient
is a difference of these. ngspice's branch current ``i(Vname)`` flows into the
``+`` terminal through the source, the opposite sign; the ngspice backend
negates it (:func:`delivered_from_branch_current`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..circuit import BlockCircuit, source_voltages  # noqa: F401  (re-exported for the backends)
from ..errors import SpecError


@dataclass(frozen=True)
class Nudge:
    """Elements on the output nodes during a nudged phase.

    Attributes:
        currents_a: ``(B, n_out)`` current injected *into* each output node (A);
            EP's nudge is ``-beta * dL/dV_out``.
        conductance_s: for the resistive nudge, a conductance (S) from each output
            node to a source at ``target_v``; 0 means none. Negative values are
            the mirror (-beta) phase of centered EP: small against the node's
            own conductance, the circuit stays well posed.
        target_v: ``(B, n_out)`` target voltages of the resistive nudge (V).
    """

    currents_a: torch.Tensor | None = None
    conductance_s: float = 0.0
    target_v: torch.Tensor | None = None

    def __post_init__(self):
        if not math.isfinite(self.conductance_s):
            raise SpecError(f"nudge conductance: {self.conductance_s!r} is not finite; siemens")
        if self.conductance_s != 0 and self.target_v is None:
            raise SpecError("nudge: a resistive nudge needs target voltages")

    def rows(self, index) -> "Nudge":
        """The nudge of the samples ``index`` (a list or tensor of batch rows)."""
        def pick(t):
            return None if t is None else t[index]
        return Nudge(pick(self.currents_a), self.conductance_s, pick(self.target_v))


@dataclass(frozen=True)
class Equilibrium:
    """A batch of DC operating points.

    Attributes:
        node_voltages_v: ``(B, n_free)`` voltages of layers 1..m, in order.
        source_currents_a: ``(B, 2*n_0)`` current delivered into the network by
            each input source, in ``G_1`` row order.
        converged: ``(B,)`` bool.
        messages: per sample, ``""`` when converged, else what went wrong and
            what to try.
        iterations: Newton iterations (reference) or analyses run (ngspice).
    """

    node_voltages_v: torch.Tensor
    source_currents_a: torch.Tensor
    converged: torch.Tensor
    messages: tuple[str, ...] = ()
    iterations: int = 0

    @property
    def ok(self) -> bool:
        return bool(self.converged.all())

    def rows(self, index) -> "Equilibrium":
        """The equilibria of the samples ``index`` (a slice, list or tensor of batch rows)."""
        messages = self.messages
        if messages:
            picked = range(len(messages))[index] if isinstance(index, slice) else torch.as_tensor(index).tolist()
            messages = tuple(messages[i] for i in picked)
        return Equilibrium(self.node_voltages_v[index], self.source_currents_a[index], self.converged[index],
                           messages, self.iterations)

    def output_voltages(self, circuit: BlockCircuit) -> torch.Tensor:
        return self.node_voltages_v[:, circuit.layer_slice(circuit.depth)]



def delivered_from_branch_current(branch_current_a: torch.Tensor) -> torch.Tensor:
    """SPICE ``i(V)`` (into ``+``, through the source) -> current delivered into the network."""
    return -branch_current_a


def check_batch(circuit: BlockCircuit, inputs, nudge: Nudge | None) -> torch.Tensor:
    """Validate shapes and values of a solve request; returns float64 inputs."""
    x = torch.as_tensor(inputs, dtype=torch.float64)
    if x.ndim == 1:
        x = x.unsqueeze(0)
    if x.ndim != 2 or x.shape[1] != circuit.n_inputs:
        raise SpecError(f"inputs: shape {tuple(x.shape)} does not fit the block; expected (batch, {circuit.n_inputs})")
    if not torch.isfinite(x).all():
        raise SpecError("inputs: contain NaN or inf; finite numbers only")
    if nudge is not None:
        for name in ("currents_a", "target_v"):
            t = getattr(nudge, name)
            if t is not None:
                if tuple(t.shape) != (x.shape[0], circuit.n_outputs):
                    raise SpecError(f"nudge {name}: shape {tuple(t.shape)}, expected ({x.shape[0]}, {circuit.n_outputs})")
                if not torch.isfinite(t).all():
                    raise SpecError(f"nudge {name}: contain NaN or inf; finite numbers only")
    return x


class Backend:
    """Base class: a named solver of the contract above."""

    name = "backend"

    def solve(self, circuit: BlockCircuit, inputs, nudge: Nudge | None = None,
              start: torch.Tensor | None = None) -> Equilibrium:
        """``start``: ``(B, n_free)`` node voltages to start from (V), e.g. the free state
        for a nudged phase. A hint: a solver may ignore it, and the answer does not depend
        on it beyond the solver's tolerance."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the backend holds (worker processes, a cluster connection); the
        backend may be used again afterwards. Default: nothing to release."""

    def convergence_stats(self) -> dict:
        """Samples each of the backend's retries made converge so far, by retry name, and
        ``failed``: samples that failed every retry. Default: no retries, ``{}``."""
        return {}
