"""One validation of a command's whole configuration, before anything is written or allocated.

Every command (``netlist``, ``solve``, ``verify``, ``gradcheck``, ``train``,
``analyze``) goes through the same checks, in this order:

1. the spec (:mod:`ffebm_sim.spec`, :mod:`ffebm_sim.model`): keys, types and
   ranges, named as the user wrote them (``blocks[1].g_min``, ``training.epochs``);
   the conductance matrices' size is estimated (:func:`check_memory`) before
   they are drawn, a model's digital modules are sized on torch's ``meta``
   device before they are built;
2. the options (flags such as ``--beta``, ``--batch``; :func:`check_beta`);
3. the data (:mod:`ffebm_sim.data` validates its files) and the model's fit
   to it (:func:`check_model_data`: input size, output count, batch size);
4. a checkpoint's fit to the model (:func:`apply_checkpoint`, the one path for
   every command: tensor names and shapes, conductances inside the block's
   ``[g_min, g_max]``);
5. the memory the dense structures take at the chosen batch size
   (:func:`check_solver_memory`: the reference solver's ``B x N x N``
   Jacobians, ngspice's matrices, a deck's text) against what the machine has.

Each failure is one :class:`~ffebm_sim.errors.SpecError` line: field, value
(a plain Python literal), what is allowed.

**Checkpoint conductances outside ``[g_min, g_max]`` are refused, not clipped.**
Training projects every conductance into the range after each step, so a
value outside it means the checkpoint is not of this spec (or was edited); a
deck a designer fabricates must carry exactly the trained values, and a
silently clipped one would not be the network that was trained or checked.

**The bound on beta** (:func:`beta_limit_v`) is EP's linear regime: the nudge
moves the output nodes by about ``beta`` volts (see :mod:`ffebm_sim.ep`), and
the centered estimate errs by ``O((beta / V_nl)**2)`` where ``V_nl`` is the
voltage over which the block's elements stop being linear. For a junction that
is ``N * Vt`` (25.9 mV at 27 C for N = 1: the current changes e-fold); for
blocks without junctions (linear, ideal clip, pwl tables) it is a tenth of the
input gain (the volts a unit input drives). Measured with ``ffebm gradcheck``
on ``benchmarks/results/specs/digits_ffebm_linear.toml`` (batch 16): max relative error 2.6e-6 at the
spec default 1e-3 V, 2.6e-4 at 1e-2 V, 2.6e-2 (FAIL) at 0.1 V, 0.95 at 4 V;
the bound there is 25.9 mV.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import SpecError, plain

GIB = 2 ** 30
FLOAT = 8                           # float64 bytes
#: Copies of a block's conductances while a model is built (drawn array, frozen copy, parameter).
CONDUCTANCE_COPIES = 3
#: Dense B x N x N arrays alive at once in a reference Newton step (J, diag_embed, masks, Cholesky).
JACOBIAN_COPIES = 4
#: Text of one resistor card in a deck (measured: about 41 bytes).
DECK_BYTES_PER_ELEMENT = 48
#: ngspice's in-memory instance and matrix entries per resistor (generous).
NGSPICE_BYTES_PER_ELEMENT = 400
#: Share of the available memory a command may plan to use.
MEMORY_FRACTION = 0.8


def available_bytes() -> int | None:
    """Memory this process may still use: MemAvailable, capped by a cgroup limit (None: unknown)."""
    limits = []
    try:
        import psutil
        limits.append(int(psutil.virtual_memory().available))
    except Exception:  # noqa: BLE001 - psutil is optional
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
        except (OSError, ValueError, IndexError):
            pass
    try:
        raw = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if raw != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            limits.append(int(raw) - used)
    except (OSError, ValueError):
        pass
    override = os.environ.get("FFEBM_MEMORY_BYTES")      # tests and batch systems: an explicit budget
    if override:
        try:
            limits.append(int(float(override)))
        except ValueError:
            pass
    return min(limits) if limits else None


def gib(n: float) -> str:
    return f"{n / GIB:.3g} GiB" if n >= GIB / 10 else f"{n / 2 ** 20:.3g} MiB"


def check_memory(parts: list[tuple[str, float]], field: str, value, advice: str) -> None:
    """Refuse when the estimated ``parts`` ((what, bytes)) exceed what the machine has."""
    total = float(sum(b for _, b in parts))
    have = available_bytes()
    if have is None or total <= MEMORY_FRACTION * have:
        return
    what = ", ".join(f"{name} {gib(b)}" for name, b in parts if b >= total / 100)
    raise SpecError(f"{field}: {plain(value)} needs about {gib(total)} ({what}), more than "
                    f"{int(100 * MEMORY_FRACTION)}% of the {gib(have)} this machine has available; {advice}")


def conductance_count(layers, bias: bool = False) -> int:
    layers = [int(n) for n in layers]
    n = 2 * layers[0] * layers[1] + sum(a * b for a, b in zip(layers[1:], layers[2:]))
    return n + (2 * sum(layers[1:]) if bias else 0)


def conductance_parts(layers, bias: bool = False, copies: int = CONDUCTANCE_COPIES) -> list[tuple[str, float]]:
    return [("conductance matrices", float(conductance_count(layers, bias)) * FLOAT * copies)]


def solver_parts(circuit, batch: int, backends=("reference",), deck: bool = False) -> list[tuple[str, float]]:
    """Estimated bytes of the dense structures a command builds for ``circuit`` at ``batch`` samples."""
    n = float(circuit.n_free)
    elements = float(conductance_count(circuit.layer_sizes, circuit.has_bias))
    parts = conductance_parts(circuit.layer_sizes, circuit.has_bias, copies=2)
    if "reference" in backends:
        parts.append(("the reference solver's N x N matrices", 3 * FLOAT * n * n))
        if circuit.has_wires:
            m = n + 2 * circuit.n_inputs + 2
            parts.append(("the crossbar admittance matrix", FLOAT * m * m))
        if batch:
            parts.append((f"its dense {batch} x {int(n)} x {int(n)} Jacobians", JACOBIAN_COPIES * FLOAT * batch * n * n))
    if "ngspice" in backends:
        parts.append(("ngspice's circuit", NGSPICE_BYTES_PER_ELEMENT * elements))
    if deck or "ngspice" in backends:
        parts.append(("the deck text", DECK_BYTES_PER_ELEMENT * elements))
    return parts


def check_solver_memory(circuit, batch: int, field: str, value, backends=("reference",), deck: bool = False) -> None:
    check_memory(solver_parts(circuit, batch, backends, deck), field, value,
                 "use fewer samples per batch or smaller layers (a digital front block, or --backend ngspice "
                 "for large blocks)")


def check_model_memory(model, rows: int, field: str, value, backend: str = "reference",
                       gradient: str = "ep", data_bytes: float = 0.0) -> None:
    """The dense structures of every energy block of ``model`` for solves of ``rows`` samples
    (EP solves a batch's +beta and -beta phases together: 2 x batch), plus the data."""
    parts: list[tuple[str, float]] = []
    if data_bytes:
        parts.append(("the data set", float(data_bytes)))
    for b in model.energy_blocks:
        reference = backend == "reference" or gradient == "implicit"
        backends = (("reference",) if reference else ()) + (("ngspice",) if backend == "ngspice" else ())
        for name, size in solver_parts(b.template, rows, backends):
            parts.append((f"{b.template.name}: {name}", size))
    check_memory(parts, field, value, "use a smaller batch or smaller energy blocks")


# ---- options ----------------------------------------------------------------------------------

def beta_limit_v(circuit) -> tuple[float, str]:
    """The largest EP nudge (V) inside the block's linear regime, and why (see the module docstring)."""
    from .devices import thermal_voltage_v
    limits = []
    for k in range(1, circuit.depth + 1):
        nl = circuit.layer_nonlinearity(k)
        if nl is not None and nl.kind in ("double", "single"):
            n = nl.emitted_diode.emission_coefficient
            limits.append((n * thermal_voltage_v(circuit.temperature_c),
                           f"N*Vt of its junctions (N = {plain(n)}), the scale over which a diode's current "
                           "changes e-fold"))
    if limits:
        return min(limits)
    return 0.1 * abs(circuit.input_gain_v), "a tenth of its input_gain (the volts a unit input drives)"


def check_beta(beta, circuit, field: str, hint: str | None = None) -> None:
    """``beta`` (V) must be finite, > 0 and inside EP's linear regime of ``circuit``."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.floating, np.integer)) \
            or not np.isfinite(beta) or beta <= 0:
        raise SpecError(f"{field}: {plain(beta)}; the nudge amplitude in volts, a finite number > 0")
    limit, why = beta_limit_v(circuit)
    if float(beta) > limit:
        default = f"; {hint}" if hint else ""
        raise SpecError(f"{field}: {plain(float(beta))} V is outside EP's linear regime of block '{circuit.name}': "
                        f"the nudge must stay below {limit:.3g} V, {why} (the gradient error grows as beta**2; "
                        f"check with `ffebm gradcheck`){default}")


def check_positive_int(value, field: str, upper: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1 \
            or (upper is not None and value > upper):
        allowed = f"an integer in 1..{upper}" if upper is not None else "an integer >= 1"
        raise SpecError(f"{field}: {plain(value)}; {allowed}")
    return int(value)


# ---- model and data ---------------------------------------------------------------------------

def model_output_count(model) -> int | None:
    """The last dimension of the model's output (None when it has no input size)."""
    if model.input_size is None:
        return None
    from .blocks import EnergyBlock
    import torch
    h = torch.zeros(2, model.input_size, dtype=torch.float64)
    with torch.no_grad():
        for m in model.layers:
            h = torch.zeros(2, m.template.n_outputs, dtype=torch.float64) if isinstance(m, EnergyBlock) else m(h)
    return int(h.shape[-1])


def check_model_data(model, dataset, model_label: str, field: str = "--data") -> None:
    """The model's input size and output count against the data set's features and classes."""
    if model.input_size is not None and model.input_size != dataset.n_features:
        raise SpecError(f"{field}: {dataset.name} has {dataset.n_features} features per sample, model "
                        f"'{model.name}' ({model_label}) takes input_size = {model.input_size}; choose a data set "
                        f"with {model.input_size} features or a model for {dataset.n_features}")
    n_out = model_output_count(model)
    if n_out is not None and n_out != dataset.n_classes:
        raise SpecError(f"{field}: {dataset.name} has {dataset.n_classes} classes, model '{model.name}' "
                        f"({model_label}) has {n_out} outputs; the last block needs one output per class")


# ---- checkpoints ------------------------------------------------------------------------------

#: Relative slack on [g_min, g_max]: projection and the unit conversion round in the last bits.
RANGE_SLACK = 1e-9


def check_state(model, state: dict, source: str, model_label: str) -> None:
    """Refuse a state dict that is not of ``model`` (names, shapes) or holds conductances out of range."""
    import torch
    if not isinstance(state, dict):
        raise SpecError(f"--checkpoint: {source}: not an ffebm checkpoint (its model state is not a table of tensors)")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lacks {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        if extra:
            parts.append(f"has {extra[0]!r}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
        raise SpecError(f"--checkpoint: {source} is not a checkpoint of model '{model.name}' ({model_label}): it "
                        f"{' and '.join(parts)}; give a checkpoint written by `ffebm train` with this spec")
    for k, t in own.items():
        v = state[k]
        if not isinstance(v, torch.Tensor):
            raise SpecError(f"--checkpoint: {source}: {k!r} is not a tensor; not an ffebm checkpoint")
        if tuple(v.shape) != tuple(t.shape):
            raise SpecError(f"--checkpoint: {source} is not a checkpoint of model '{model.name}' ({model_label}): "
                            f"{k!r} has shape {tuple(v.shape)}, the spec gives {tuple(t.shape)}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise SpecError(f"--checkpoint: {source}: {k!r} holds NaN or inf; a checkpoint of finite parameters")
    prefixes = {id(m): name for name, m in model.named_modules()}
    for n, block in enumerate(model.energy_blocks, start=1):
        prefix = prefixes[id(block)]
        unit = block.conductance_unit_s
        lo, hi = block.g_min_s, block.g_max_s
        for name, _ in block.named_parameters():
            key = f"{prefix}.{name}"
            g = state[key].detach().to(torch.float64) * unit
            tol_lo = lo - RANGE_SLACK * max(abs(lo), unit)
            bad = g < tol_lo
            if hi is not None:
                bad = bad | (g > hi + RANGE_SLACK * max(abs(hi), unit))
            if bool(bad.any()):
                idx = [int(i) for i in bad.nonzero()[0]]
                rng = f"[{plain(lo)}, {plain(hi)}] S" if hi is not None else f">= {plain(lo)} S"
                raise SpecError(
                    f"--checkpoint: {source}: energy block {n} ('{block.template.name}') {name} holds "
                    f"{plain(float(g[tuple(idx)]))} S at {idx}, outside the block's g_min..g_max {rng}; refused, "
                    "not clipped (training keeps every conductance in range, so this is another spec's or an "
                    f"edited checkpoint); give a checkpoint of this spec or widen {key_of(block)}.g_min/g_max")


def key_of(block) -> str:
    """The spec path of an energy block (``blocks[1]``), or its circuit's name."""
    return getattr(block, "spec_key", None) or f"energy block '{block.template.name}'"


def apply_checkpoint(model, checkpoint: str | Path, model_label: str) -> dict:
    """Load ``checkpoint`` into ``model`` after :func:`check_state`; returns the checkpoint's state."""
    from .checkpoint import load_checkpoint_file
    state = load_checkpoint_file(checkpoint)
    check_state(model, state["model"], str(checkpoint), model_label)
    model.load_state_dict(state["model"])
    return state
