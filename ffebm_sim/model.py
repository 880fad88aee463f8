"""An ff-EBM from a model spec: digital torch blocks and analog energy blocks in a chain.

A model spec (see ``circuits/digits_ffebm.toml``)::

    name = "digits_ffebm"
    input_size = 64

    [loss]
    kind = "cross_entropy"     # or "mse"
    logit_scale = 20.0         # cross-entropy: logits = logit_scale * V_out (1/V)
    # mse: targets = { on = 0.1, off = -0.1 } (V); nudge = "current" | "resistive"

    [[blocks]]                 # any torch.nn module by name, with its arguments
    type = "Linear"
    args = { in_features = 64, out_features = 32 }

    [[blocks]]
    type = "energy"            # an analog energy block
    beta = 1e-3                # EP nudge amplitude, V
    g_min = 0.0                # S, projection range after each update
    g_max = 2e-4
    output_gain = 10.0         # digital units per volt of the block's output
    dac = { range = [-1.0, 1.0], bits = 8 }     # optional, before the block
    adc = { range = [-0.5, 0.5], bits = 8 }     # optional, after the block
    [blocks.circuit]           # a block spec (see ffebm_sim.spec), or: spec = "block.toml"
    layers = [32, 32, 16]
    ...

The last block's output feeds the loss (an energy block's output voltages, or
a digital readout's output).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backends import Backend, get_backend
from .blocks import EnergyBlock, Quantizer, resistive_mse
from .ep import DEFAULT_BETA_V
from .errors import SpecError, plain
from .spec import _check_keys, _number, block_from_dict, load_block, read_toml
from .validate import check_beta

MODEL_KEYS = {"name", "input_size", "loss", "blocks", "training"}
LOSS_KEYS = {"kind", "logit_scale", "targets", "nudge"}
# node/wire capacitance and the device preset are read by `ffebm analyze` (settling, pulse counts)
ENERGY_KEYS = {"type", "beta", "centered", "g_min", "g_max", "output_gain", "dac", "adc", "circuit", "spec",
               "node_capacitance_f", "wire_capacitance_f", "device"}
DIGITAL_KEYS = {"type", "args"}
LOSSES = ("cross_entropy", "mse")


def _torch_module(where: str, entry: dict, device: str | None = None) -> nn.Module:
    entry = _check_keys(where, entry, DIGITAL_KEYS)
    name = entry["type"]
    cls = getattr(nn, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)) or name.startswith("_"):
        raise SpecError(f"{where}.type: {name!r} is neither 'energy' nor a torch.nn module "
                        "(e.g. Linear, Conv2d, BatchNorm1d, ReLU, Tanh, Flatten)")
    args = entry.get("args", {})
    if not isinstance(args, (list, dict)):
        raise SpecError(f"{where}.args: {args!r}; a table of keyword arguments or a list of positional ones")
    try:
        if device is not None:             # sizing only: parameters without storage
            with torch.device(device):
                return cls(*args) if isinstance(args, list) else cls(**args)
        return cls(*args) if isinstance(args, list) else cls(**args)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise SpecError(f"{where} ({name}): bad arguments {args!r}: {' '.join(str(e).split())}") from None


def _converter(where: str, table: Any, kind: str) -> Quantizer:
    table = _check_keys(where, table, {"range", "bits"})
    rng = table.get("range")
    if not (isinstance(rng, list) and len(rng) == 2):
        raise SpecError(f"{where}.range: {rng!r}; a list [lo, hi] of numbers")
    lo, hi = (_number(f"{where}.range", x, "numbers") for x in rng)
    return Quantizer(lo, hi, table.get("bits"), kind)


class FFEBM(nn.Module):
    """A chain of digital modules and energy blocks with its loss.

    ``forward(x)`` gives the last block's output; ``loss(x, y)`` the training
    loss (cross-entropy on ``logit_scale * V_out``, or MSE to one-hot target
    voltages, with the resistive nudge when the spec asks for it).
    """

    def __init__(self, layers: list[nn.Module], loss: dict, name: str = "ffebm", input_size: int | None = None):
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.name = name
        self.input_size = input_size
        self.loss_kind = loss.get("kind", "cross_entropy")
        self.logit_scale = float(loss.get("logit_scale", 1.0))
        targets = loss.get("targets", {"on": 0.1, "off": -0.1})
        self.target_on, self.target_off = float(targets.get("on", 0.1)), float(targets.get("off", -0.1))
        self.resistive = loss.get("nudge", "current") == "resistive"

    @property
    def energy_blocks(self) -> list[EnergyBlock]:
        return [m for m in self.layers if isinstance(m, EnergyBlock)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self(x)
        return out * self.logit_scale if self.loss_kind == "cross_entropy" else out

    def target_voltages(self, y: torch.Tensor, n: int) -> torch.Tensor:
        onehot = nn.functional.one_hot(y, n).to(torch.float64)
        return self.target_off + (self.target_on - self.target_off) * onehot

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss, predictions) for inputs ``x`` and class labels ``y``."""
        if self.loss_kind == "mse" and self.resistive:
            *front, last = list(self.layers)
            h = x
            for m in front:
                h = m(h)
            with torch.no_grad():
                out = last(h)          # the free phase, for the predictions
            loss = resistive_mse(last, h, self.target_voltages(y, out.shape[1]))
            return loss, out.argmax(1)
        out = self(x)
        if self.loss_kind == "cross_entropy":
            return nn.functional.cross_entropy(out * self.logit_scale, y), out.argmax(1)
        return nn.functional.mse_loss(out, self.target_voltages(y, out.shape[1])), out.argmax(1)

    def project(self) -> None:
        for b in self.energy_blocks:
            b.project()

    def analog_parameters(self) -> list[nn.Parameter]:
        """The conductances of every energy block, in block order: each block's layer
        conductances, then its bias conductances if it has any (:meth:`EnergyBlock.all_weights`)."""
        return [p for b in self.energy_blocks for p in b.all_weights()]

    def digital_parameters(self) -> list[nn.Parameter]:
        """Every other module's parameters (Linear, Conv2d, BatchNorm's affine ones, ...), in
        :meth:`parameters` order. Buffers (BatchNorm's running statistics) are not parameters."""
        analog = {id(p) for p in self.analog_parameters()}
        return [p for p in self.parameters() if id(p) not in analog]

    def solver_stats(self) -> dict:
        return {"solves": sum(b.stats.solves for b in self.energy_blocks),
                "failures": sum(b.stats.failures for b in self.energy_blocks)}



def parameter_counts(model: FFEBM) -> dict[str, int]:
    """The model's parameters by kind, in scalars: ``analog``, the conductances of its energy
    blocks (layer and bias conductances, :meth:`FFEBM.analog_parameters`), and ``digital``,
    every other module's parameters (:meth:`FFEBM.digital_parameters`).

    These are what training can change; buffers (BatchNorm's running statistics) are
    state, not parameters, and are not counted. The counts describe the model, not a
    run: a run that freezes a kind (``train --freeze-analog``/``--freeze-digital``)
    reports the same counts and says which kind it froze.
    """
    return {"analog": sum(p.numel() for p in model.analog_parameters()),
            "digital": sum(p.numel() for p in model.digital_parameters())}


def build_model(spec: str | Path | dict, backend: str | Backend = "reference", gradient: str = "ep",
                beta_v: float | None = None, centered: bool | None = None, seed: int = 0,
                base_dir: str | Path | None = None, default_name: str = "ffebm") -> FFEBM:
    """Build an :class:`FFEBM` from a model spec path or parsed dict.

    ``seed`` seeds the digital blocks' initialisation (torch); energy blocks
    take their conductances from their block specs (seeded there).
    """
    if not isinstance(spec, dict):
        path = Path(spec)
        base_dir = path.parent if base_dir is None else base_dir
        default_name = path.stem
        spec = read_toml(path)
        source = str(path)
    else:
        source = "model spec"
    base_dir = Path(base_dir or ".")
    if isinstance(spec, dict) and "blocks" not in spec and "layers" in spec:
        raise SpecError(f"{source}: is a block spec (layers, "
                        "conductances, ...); this command needs a model spec: name, input_size, [loss], and "
                        "[[blocks]] entries of torch.nn modules and type = \"energy\" blocks whose [blocks.circuit] "
                        "is a block spec (see circuits/digits_ffebm.toml)")
    spec = _check_keys("model", spec, MODEL_KEYS)
    blocks = spec.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        raise SpecError("blocks: a model spec needs [[blocks]] entries (digital modules and energy blocks)")
    loss = _check_keys("loss", spec.get("loss", {}), LOSS_KEYS)
    if loss.get("kind", "cross_entropy") not in LOSSES:
        raise SpecError(f"loss.kind: {loss.get('kind')!r}; valid losses are {', '.join(LOSSES)}")
    if loss.get("nudge", "current") not in ("current", "resistive"):
        raise SpecError(f"loss.nudge: {loss.get('nudge')!r}; valid values are current, resistive")
    if loss.get("nudge") == "resistive" and loss.get("kind") != "mse":
        raise SpecError("loss.nudge: the resistive nudge is the MSE cost; set loss.kind = \"mse\" or nudge = \"current\"")
    _check_model_memory(blocks, base_dir)
    backend_obj = get_backend(backend) if isinstance(backend, str) else backend
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for k, entry in enumerate(blocks):
        where = f"blocks[{k}]"
        if not isinstance(entry, dict) or "type" not in entry:
            raise SpecError(f"{where}: needs a type ('energy' or a torch.nn module name)")
        if entry["type"] != "energy":
            layers.append(_torch_module(where, entry).to(torch.float64))
            continue
        entry = _check_keys(where, entry, ENERGY_KEYS)
        if "circuit" in entry:
            circuit = block_from_dict(entry["circuit"], base_dir, default_name=f"{default_name}_e{k}")
        elif "spec" in entry:
            circuit = load_block(base_dir / entry["spec"])
        else:
            raise SpecError(f"{where}: an energy block needs a [blocks.circuit] table or spec = \"block.toml\"")
        if "dac" in entry:
            layers.append(_converter(f"{where}.dac", entry["dac"], "dac"))
        g_min, g_max = _conductance_range(where, entry)
        spec_beta = _number(f"{where}.beta", entry.get("beta", DEFAULT_BETA_V), "volts, > 0")
        check_beta(spec_beta, circuit, f"{where}.beta", hint=f"the default is {DEFAULT_BETA_V!r} V")
        layers.append(EnergyBlock(
            circuit, backend_obj, gradient,
            beta_v=spec_beta if beta_v is None else beta_v,
            centered=bool(entry.get("centered", True)) if centered is None else centered,
            g_min_s=g_min, g_max_s=g_max,
            output_gain=_number(f"{where}.output_gain", entry.get("output_gain", 1.0), "units per volt")))
        layers[-1].spec_key = where          # messages name the block as the spec does
        if "adc" in entry:
            layers.append(_converter(f"{where}.adc", entry["adc"], "adc"))
    input_size = spec.get("input_size")
    model = FFEBM(layers, loss, spec.get("name", default_name), input_size)
    if input_size is not None:
        try:
            with torch.no_grad():
                _shape_probe(model, input_size)
        except SpecError:
            raise
        except (RuntimeError, ValueError) as e:
            raise SpecError(f"blocks: sizes do not chain from input_size={input_size}: {' '.join(str(e).split())[:200]}") from None
    return model


def _conductance_range(where: str, entry: dict) -> tuple[float, float | None]:
    """``g_min``/``g_max`` of an energy block entry: 0 <= g_min < g_max (siemens)."""
    g_min = _number(f"{where}.g_min", entry.get("g_min", 0.0), "siemens, >= 0")
    if g_min < 0:
        raise SpecError(f"{where}.g_min: {plain(g_min)} is negative; siemens, 0 <= g_min < g_max")
    g_max = entry.get("g_max")
    if g_max is None:
        return g_min, None
    g_max = _number(f"{where}.g_max", g_max, "siemens, > g_min")
    if g_max <= g_min:
        raise SpecError(f"{where}.g_min: {plain(g_min)} is not below {where}.g_max = {plain(g_max)}; the "
                        "projection range [g_min, g_max] in siemens needs 0 <= g_min < g_max")
    return g_min, g_max


def _check_model_memory(blocks: list, base_dir: Path) -> None:
    """Size every block before building any: digital modules on torch's meta device, energy blocks
    by their layer sizes. Entries too malformed to size are left to the build's own messages."""
    from .validate import CONDUCTANCE_COPIES, FLOAT, check_memory, conductance_count
    parts = []
    for k, entry in enumerate(blocks):
        if not isinstance(entry, dict) or "type" not in entry:
            continue
        where = f"blocks[{k}]"
        if entry["type"] != "energy":
            try:
                module = _torch_module(where, entry, device="meta")
            except SpecError:
                continue                 # the real build reports it (or the module cannot be sized on meta)
            n = sum(t.numel() for t in list(module.parameters()) + list(module.buffers()))
            # built in float32, then converted to float64: both alive for a moment
            parts.append((f"{where}.args", entry.get("args"), f"{where} ({entry['type']})", 12.0 * n))
            continue
        if isinstance(entry.get("circuit"), dict):
            circuit, key = entry["circuit"], f"{where}.circuit.layers"
        elif isinstance(entry.get("spec"), str):
            try:
                circuit, key = read_toml(base_dir / entry["spec"]), f"{where}.spec ({entry['spec']}): layers"
            except SpecError:
                continue
        else:
            continue
        sizes = circuit.get("layers") if isinstance(circuit, dict) else None
        if not (isinstance(sizes, list) and len(sizes) >= 2 and all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes)):
            continue
        parts.append((key, sizes, f"{where} (energy)",
                      float(conductance_count(sizes, "bias" in circuit)) * FLOAT * CONDUCTANCE_COPIES))
    if parts:
        key, value, _, _ = max(parts, key=lambda p: p[3])
        check_memory([(label, size) for _, _, label, size in parts], key, value,
                     "use smaller blocks (the model's parameters alone do not fit)")


def _shape_probe(model: FFEBM, input_size: int) -> None:
    """Check the chain's sizes with the digital blocks and energy blocks' input/output sizes only."""
    h = torch.zeros(2, input_size, dtype=torch.float64)
    for m in model.layers:
        if isinstance(m, EnergyBlock):
            if h.shape[1] != m.template.n_inputs:
                raise SpecError(f"energy block '{m.template.name}': receives {h.shape[1]} features, "
                                f"its circuit has {m.template.n_inputs} inputs")
            h = torch.zeros(2, m.template.n_outputs, dtype=torch.float64)
        else:
            h = m(h)


def is_model_spec(spec: dict) -> bool:
    return "blocks" in spec


def load_model_checkpoint(spec: str | Path, checkpoint: str | Path, **build) -> FFEBM:
    """A model built from its spec with the parameters of a training checkpoint
    (checked by :func:`ffebm_sim.validate.apply_checkpoint`, as every command's are)."""
    from .validate import apply_checkpoint
    model = build_model(spec, **build)
    apply_checkpoint(model, checkpoint, str(spec))
    return model


def resolve_block(spec: str | Path, block: int | None = None, checkpoint: str | Path | None = None):
    """The circuit a command works on: a block spec, or energy block ``block`` (1-based)
    of a model spec, with trained conductances when a checkpoint is given."""
    parsed = read_toml(spec)
    if not is_model_spec(parsed):
        if block is not None or checkpoint is not None:
            raise SpecError(f"--block/--checkpoint: {spec} is a block spec; they apply to model specs")
        return load_block(spec)
    model = build_model(parsed, base_dir=Path(spec).parent)
    if checkpoint:
        from .validate import apply_checkpoint
        apply_checkpoint(model, checkpoint, str(spec))
    blocks = model.energy_blocks
    if block is None or not 1 <= block <= len(blocks):
        raise SpecError(f"--block: {spec} is a model spec with {len(blocks)} energy blocks; "
                        f"choose one with --block 1..{len(blocks)}")
    return blocks[block - 1].circuit
