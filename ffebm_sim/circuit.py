"""An energy block as a frozen data object.

Hardware view (layers 0..m, layer 0 the input, layer m the output):

* each input feature ``u_i`` drives two voltage sources ``V(+i) = +a*u_i`` and
  ``V(-i) = -a*u_i`` (input gain ``a`` in volts per unit), so that positive
  conductances act as signed weights;
* layer ``k-1`` is fully connected to layer ``k`` by resistors of conductance
  ``G_k[i, j] >= 0`` (siemens). ``G_1`` has ``2*n_0`` rows: rows ``0..n_0-1``
  are the ``+`` sources, rows ``n_0..2*n_0-1`` the ``-`` sources;
* optional bias conductances tie node ``j`` of layer ``k`` to a positive rail
  (``+bias_voltage_v``) and a negative rail (``-bias_voltage_v``);
* hidden nodes carry a nonlinearity (see :class:`Nonlinearity`); the output
  layer is linear unless ``output`` says otherwise;
* each output node can be nudged: a current source (``nudge="current"``) or a
  conductance to a target voltage (``nudge="resistive"``, MSE cost);
* optional **amplifiers** between consecutive free layers (``amplifier_gains``,
  one gain ``A_k`` per boundary after layer ``k = 1..m-1``; 1.0 = a plain wire):
  node ``j`` of layer ``k`` drives crossbar ``k+1`` through the two-port of
  :mod:`ffebm_sim.amplifier` (forward VCVS ``v(a<k>_<j>) = A_k * v(n<k>_<j>)``,
  backward CCCS drawing ``i_out / A_k`` out of ``n<k>_<j>``); see docs/amplifier.md.

Optional non-idealities (defaults: none): ``wire_resistance_ohm`` lays every
layer out as a crossbar with resistive lines, ``mismatch`` (a seeded
:class:`Mismatch`) gives every resistor and diode its own parameters,
``temperature_c`` sets the circuit temperature (see docs/nonideal.md).

The "free" nodes, whose voltages a solver finds, are layers 1..m in order;
``free_node_names`` gives the SPICE node names in that order.

Nothing here mutates: arrays are stored read-only, and functions of a circuit
(``ffebm_sim.netlist``, ``ffebm_sim.backends``) build what they need from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from .devices import NOMINAL_TEMPERATURE_C, DiodeModel, PwlTable, saturation_current_at, thermal_voltage_v
from .errors import SpecError, plain

NONLINEARITY_KINDS = ("double", "single", "ideal", "pwl")
NUDGE_MODES = ("current", "resistive")

#: The steep junction that stands in for an ideal diode in an emitted deck.
#: Forward drop at 1 mA: N*Vt*ln(1e-3/IS) = 0.47 mV; reverse leak 1e-12 A.
STEEP_DIODE = DiodeModel(saturation_current_a=1e-12, emission_coefficient=0.001)


def _finite(name: str, value, allowed: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise SpecError(f"{name}: expected a number, got {value!r}; {allowed}") from None
    if not math.isfinite(value):
        raise SpecError(f"{name}: {value} is not finite; {allowed}")
    return value


def _positive(name: str, value, allowed: str = "must be a finite number > 0") -> float:
    value = _finite(name, value, allowed)
    if value <= 0:
        raise SpecError(f"{name}: {value!r} is not > 0; {allowed}")
    return value


@dataclass(frozen=True)
class Nonlinearity:
    """The element(s) at every node of one layer.

    * ``double``: diode node -> rail ``+v_off_v`` and diode rail ``-v_off_v`` -> node,
      a soft clamp of the node voltage to about ``[-v_off, +v_off]`` widened by
      the diode's forward drop.
    * ``single``: the first ``ceil(n/2)`` nodes of the layer clamp from above
      only, the rest from below only.
    * ``ideal``: the ideal-diode limit, a hard clip to ``[-v_off, +v_off]`` in the
      reference solver; emitted decks use the steep ``diode`` (default
      :data:`STEEP_DIODE`) and say so.
    * ``pwl``: an element from node to ground with the measured I-V ``table``.
    """

    kind: str = "double"
    v_off_v: float = 0.0
    diode: DiodeModel | None = None
    table: PwlTable | None = None

    def __post_init__(self):
        if self.kind not in NONLINEARITY_KINDS:
            raise SpecError(f"nonlinearity: unknown kind {self.kind!r}; valid kinds are {', '.join(NONLINEARITY_KINDS)}")
        object.__setattr__(self, "v_off_v", _finite("v_off", self.v_off_v, "the clamp offset in volts"))
        if self.kind in ("double", "ideal") and self.v_off_v < 0:
            # the upper rail would sit below the lower one: both junctions conduct rail to rail
            raise SpecError(f"v_off: {self.v_off_v!r} < 0 crosses the clamp rails of a '{self.kind}' clamp; volts, >= 0")
        if self.kind == "pwl":
            if self.table is None:
                raise SpecError("nonlinearity: kind 'pwl' needs a table of voltages and currents")
            _check_table(self.table)
        if self.diode is not None:
            _check_diode(self.diode)

    @property
    def emitted_diode(self) -> DiodeModel:
        """The junction written into a deck (and solved by the reference for non-ideal kinds)."""
        if self.diode is not None:
            return self.diode
        return STEEP_DIODE if self.kind == "ideal" else DiodeModel()

    def clamps_up(self, n: int) -> np.ndarray:
        """Boolean mask of nodes with a diode to the upper rail."""
        if self.kind in ("double", "ideal"):
            return np.ones(n, bool)
        if self.kind == "single":
            return np.arange(n) < (n + 1) // 2
        return np.zeros(n, bool)

    def clamps_down(self, n: int) -> np.ndarray:
        """Boolean mask of nodes with a diode from the lower rail."""
        if self.kind in ("double", "ideal"):
            return np.ones(n, bool)
        if self.kind == "single":
            return np.arange(n) >= (n + 1) // 2
        return np.zeros(n, bool)

    def clamp_rail_v(self, upward: bool) -> float:
        """The rail an upward (``+v_off``) or downward (``-v_off``) clamp diode ties to (V)."""
        return self.v_off_v if upward else -self.v_off_v


def clamp_diode_voltage(node_v, rail_v: float, upward: bool):
    """Voltage across a clamp diode, anode minus cathode (V), numpy or torch.

    The orientation of the clamps, written once (the deck's ``clamp_*`` subcircuits
    in ``circuits/ffebm.lib`` are the same): an **upward** clamp is a diode from the
    node (anode) to the rail at ``+v_off`` (cathode) and conducts when the node rises
    above the rail; a **downward** clamp is a diode from the rail at ``-v_off`` to the
    node and conducts when the node falls below it.
    """
    return node_v - rail_v if upward else rail_v - node_v


def clamp_node_current(diode_current_a, upward: bool):
    """The current (A) a clamp diode carrying ``diode_current_a`` (anode to cathode) draws
    out of its node: an upward clamp's anode is the node, a downward clamp's cathode is."""
    return diode_current_a if upward else -diode_current_a


def _check_diode(d: DiodeModel) -> None:
    _positive("diode.is", d.saturation_current_a, "saturation current IS in amperes, > 0")
    _positive("diode.n", d.emission_coefficient, "emission coefficient N, > 0")
    g = _finite("diode.gmin", d.gmin_s, "junction GMIN in siemens, >= 0")
    if g < 0:
        raise SpecError(f"diode.gmin: {g!r} is negative; junction GMIN in siemens, >= 0")


def _check_table(t: PwlTable) -> None:
    v, i = t.voltages_v, t.currents_a
    if len(v) != len(i) or len(v) < 2:
        raise SpecError(f"pwl table: needs >= 2 points with as many currents as voltages, got {len(v)} voltages and {len(i)} currents")
    for name, seq in (("voltages", v), ("currents", i)):
        for x in seq:
            _finite(f"pwl table {name}", x, "finite numbers")
    if any(b <= a for a, b in zip(v, v[1:])):
        raise SpecError("pwl table voltages: must strictly increase")
    if any(b < a for a, b in zip(i, i[1:])):
        raise SpecError("pwl table currents: must not decrease (a passive monotone element keeps the equilibrium unique)")


#: Smallest non-zero conductance a deck can carry (1/G must be a finite resistance), S.
MIN_CONDUCTANCE_S = 1e-30


def _readonly(name: str, array, shape: tuple[int, ...]) -> np.ndarray:
    try:
        a = np.array(array, dtype=np.float64)
    except (TypeError, ValueError):
        raise SpecError(f"{name}: not an array of numbers; conductances in siemens, >= 0") from None
    if a.shape != shape:
        raise SpecError(f"{name}: shape {a.shape} does not match the layer sizes, expected {shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        idx = tuple(int(k) for k in np.argwhere(bad)[0])
        raise SpecError(f"{name}: {plain(a[idx])} at {list(idx)} is not finite; conductances in siemens, >= 0")
    tiny = (a > 0) & (a < MIN_CONDUCTANCE_S)
    if tiny.any():
        idx = tuple(int(k) for k in np.argwhere(tiny)[0])
        raise SpecError(f"{name}: {plain(a[idx])} at {list(idx)} is below {MIN_CONDUCTANCE_S:g} S (its resistance overflows); "
                        "conductances in siemens, 0 (open) or >= 1e-30")
    if (a < 0).any():
        idx = tuple(int(k) for k in np.argwhere(a < 0)[0])
        raise SpecError(f"{name}: negative value {plain(a[idx])} at {list(idx)}; conductances in siemens, >= 0")
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class Mismatch:
    """Seeded device-to-device variation, resolved into per-element factors by :class:`BlockCircuit`.

    Every factor is log-normal, ``exp(sigma * z)`` with ``z`` a standard normal
    draw, so it stays positive and its median is 1:

    * ``conductance_sigma``: each resistor's conductance (layers and bias) is
      ``G_actual = G * exp(conductance_sigma * z)``; ``G`` is the programmed
      (trained) value, ``G_actual`` what the hardware conducts;
    * ``is_sigma``: each diode's saturation current, ``IS * exp(is_sigma * z)``;
    * ``n_sigma``: each diode's emission coefficient, ``N * exp(n_sigma * z)``.

    The draws depend only on ``seed`` and the layer sizes (independent streams
    per quantity and layer), not on the conductance values: the same chip keeps
    the same mismatch pattern while it is trained.
    """

    conductance_sigma: float = 0.0
    is_sigma: float = 0.0
    n_sigma: float = 0.0
    seed: int = 0

    def __post_init__(self):
        for name in ("conductance_sigma", "is_sigma", "n_sigma"):
            v = _finite(f"mismatch.{name}", getattr(self, name), "a log-normal sigma, >= 0")
            if v < 0:
                raise SpecError(f"mismatch.{name}: {v!r} is negative; a log-normal sigma, >= 0")
            object.__setattr__(self, name, v)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise SpecError(f"mismatch.seed: {self.seed!r}; a non-negative integer")

    def factors(self, what: int, layer: int, shape: tuple[int, ...], sigma: float) -> np.ndarray:
        """Factors of one quantity (``what``: 0 conductance, 1 bias+, 2 bias-, 3 IS, 4 N) of one layer."""
        if sigma == 0:
            out = np.ones(shape)
        else:
            z = np.random.default_rng([int(self.seed), what, layer]).standard_normal(shape)
            out = np.exp(sigma * z)
        out.setflags(write=False)
        return out


@dataclass(frozen=True, eq=False)
class BlockCircuit:
    """One analog energy block (see the module docstring for the hardware).

    Attributes:
        layer_sizes: ``(n_0, n_1, ..., n_m)``; ``n_0`` input features (each
            driving two sources), ``n_m`` outputs. At least one hidden layer
            is not required: ``(n_0, n_m)`` is a single resistive layer.
        conductances: ``G_1 .. G_m`` in siemens; ``G_1`` is ``(2*n_0, n_1)``,
            ``G_k`` is ``(n_{k-1}, n_k)``.
        hidden: one :class:`Nonlinearity` per hidden layer (layers 1..m-1).
        output: the output layer's nonlinearity, or ``None`` for linear.
        input_gain_v: volts per unit input (``a``).
        bias_pos, bias_neg: per layer 1..m, conductances (S) from each node to
            the ``+bias_voltage_v`` / ``-bias_voltage_v`` rail; ``None`` = no bias.
        gmin_s: ngspice's GMIN, used for every junction (siemens).
        nudge: ``"current"`` or ``"resistive"``.
        name: a label used in decks and reports.
        wire_resistance_ohm: resistance (ohm) of each line segment when the
            block is laid out as crossbars (0: ideal wires, no crossbar nodes).
            Layer ``k`` is one crossbar: a row line per driving node (for
            ``k = 1`` the input sources, in ``G_1`` row order, then the ``+``
            and ``-`` bias rails when there is a bias) entering at the left
            edge, a column line per layer-``k`` node leaving at the bottom
            edge; row ``i`` meets column ``j`` at cross-point ``(i, j)``, where
            the device ``G_k[i, j]`` joins row node ``r<k>_<i>_<j>`` to column
            node ``c<k>_<i>_<j>``. Each row has ``n_cols`` segments (driver ->
            cross-point 0 -> ... -> cross-point n_cols-1), each column
            ``n_rows`` segments (cross-point 0 -> ... -> n_rows-1 -> the node).
        temperature_c: circuit temperature (ngspice ``temp``); TNOM stays 27 C.
            Junctions follow ngspice's IS(T) and N*Vt(T); resistors (no TC) do not change.
        mismatch: a seeded :class:`Mismatch`; its per-element factors are
            resolved at construction (``conductance_factors``, ``bias_factors``,
            ``diode_factors``).
        amplifier_gains: ``None`` (no amplifier) or one voltage gain (V/V) per
            boundary between free layers ``k`` and ``k+1``, ``k = 1..m-1``; a gain
            of exactly 1.0 is a plain wire (no amplifier written). Not with wire
            resistance.
    """

    layer_sizes: tuple[int, ...]
    conductances: tuple[np.ndarray, ...]
    hidden: tuple[Nonlinearity, ...] = ()
    output: Nonlinearity | None = None
    input_gain_v: float = 1.0
    bias_voltage_v: float = 1.0
    bias_pos: tuple[np.ndarray, ...] | None = None
    bias_neg: tuple[np.ndarray, ...] | None = None
    gmin_s: float = 1e-12
    nudge: str = "current"
    name: str = "block"
    wire_resistance_ohm: float = 0.0
    temperature_c: float = NOMINAL_TEMPERATURE_C
    mismatch: Mismatch | None = None
    amplifier_gains: tuple[float, ...] | None = None

    def __post_init__(self):
        sizes = self.layer_sizes
        if not isinstance(sizes, (tuple, list)) or len(sizes) < 2:
            raise SpecError(f"layers: {sizes!r} needs at least an input and an output size, e.g. [64, 32, 10]")
        for n in sizes:
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 or n > 100_000:
                raise SpecError(f"layers: size {n!r} is not an integer in 1..100000")
        sizes = tuple(int(n) for n in sizes)
        object.__setattr__(self, "layer_sizes", sizes)
        if len(self.conductances) != len(sizes) - 1:
            raise SpecError(f"conductances: {len(self.conductances)} matrices given, the layers need {len(sizes) - 1}")
        shapes = [(2 * sizes[0], sizes[1])] + [(sizes[k - 1], sizes[k]) for k in range(2, len(sizes))]
        object.__setattr__(self, "conductances", tuple(
            _readonly(f"conductances[{k}]", g, s) for k, (g, s) in enumerate(zip(self.conductances, shapes))))
        hidden = tuple(self.hidden)
        if len(hidden) == 1 and len(sizes) > 3:
            hidden = hidden * (len(sizes) - 2)   # one nonlinearity for every hidden layer
        if len(hidden) != len(sizes) - 2:
            raise SpecError(f"nonlinearity: {len(hidden)} given for {len(sizes) - 2} hidden layers")
        for h in hidden:
            if not isinstance(h, Nonlinearity):
                raise SpecError(f"nonlinearity: expected a Nonlinearity, got {type(h).__name__}")
        object.__setattr__(self, "hidden", hidden)
        if self.output is not None and not isinstance(self.output, Nonlinearity):
            raise SpecError(f"output: expected a Nonlinearity or None (linear), got {type(self.output).__name__}")
        gain = _finite("input_gain", self.input_gain_v, "volts per unit input, a finite non-zero number")
        if gain == 0:
            raise SpecError("input_gain: 0 disconnects the inputs; volts per unit input, a finite non-zero number")
        object.__setattr__(self, "input_gain_v", gain)
        object.__setattr__(self, "bias_voltage_v", _finite("bias.voltage", self.bias_voltage_v, "bias rail in volts"))
        gmin = _finite("gmin", self.gmin_s, "GMIN in siemens, >= 0")
        if gmin < 0:
            raise SpecError(f"gmin: {gmin!r} is negative; GMIN in siemens, >= 0")
        object.__setattr__(self, "gmin_s", gmin)
        if self.nudge not in NUDGE_MODES:
            raise SpecError(f"nudge: unknown mode {self.nudge!r}; valid modes are {', '.join(NUDGE_MODES)}")
        if (self.bias_pos is None) != (self.bias_neg is None):
            raise SpecError("bias: give both positive and negative rail conductances, or neither")
        if self.bias_pos is not None:
            for attr in ("bias_pos", "bias_neg"):
                arrays = getattr(self, attr)
                if len(arrays) != len(sizes) - 1:
                    raise SpecError(f"{attr}: {len(arrays)} vectors given, expected one per layer 1..{len(sizes) - 1}")
                object.__setattr__(self, attr, tuple(
                    _readonly(f"{attr}[{k}]", b, (sizes[k + 1],)) for k, b in enumerate(arrays)))
        wire = _finite("wire_resistance", self.wire_resistance_ohm, "ohm per crossbar line segment, >= 0")
        if wire < 0:
            raise SpecError(f"wire_resistance: {wire!r} is negative; ohm per crossbar line segment, >= 0 (0: ideal wires)")
        object.__setattr__(self, "wire_resistance_ohm", wire)
        temp = _finite("temperature", self.temperature_c, "degrees Celsius, -200 to 400")
        if not -200.0 <= temp <= 400.0:
            # outside this range SPICE junction models (and silicon) are not meaningful
            raise SpecError(f"temperature: {temp!r} C is outside -200..400 C; degrees Celsius, -200 to 400")
        object.__setattr__(self, "temperature_c", temp)
        if temp != NOMINAL_TEMPERATURE_C and self.has_ideal:
            raise SpecError("temperature: an 'ideal' layer's steep stand-in junction (N = 0.001) has no meaningful "
                            "IS(T) (its temperature factor over/underflows); keep temperature = 27 or use kind double/single")
        if self.mismatch is not None and not isinstance(self.mismatch, Mismatch):
            raise SpecError(f"mismatch: expected a Mismatch or None, got {type(self.mismatch).__name__}")
        object.__setattr__(self, "amplifier_gains", _check_gains(self.amplifier_gains, len(sizes) - 1, wire))

    # ---- derived structure -------------------------------------------------

    @property
    def n_inputs(self) -> int:
        return self.layer_sizes[0]

    @property
    def n_outputs(self) -> int:
        return self.layer_sizes[-1]

    @property
    def n_free(self) -> int:
        """Number of free nodes (layers 1..m)."""
        return sum(self.layer_sizes[1:])

    @property
    def depth(self) -> int:
        """Number of resistive layers m."""
        return len(self.layer_sizes) - 1

    def layer_nonlinearity(self, k: int) -> Nonlinearity | None:
        """Nonlinearity of layer k (1..m), ``None`` when linear."""
        return self.output if k == self.depth else self.hidden[k - 1]

    def layer_slice(self, k: int) -> slice:
        """Columns of layer k (1..m) in the free-node vector."""
        start = sum(self.layer_sizes[1:k])
        return slice(start, start + self.layer_sizes[k])

    @property
    def has_bias(self) -> bool:
        return self.bias_pos is not None

    @property
    def has_ideal(self) -> bool:
        return any(nl is not None and nl.kind == "ideal" for nl in (*self.hidden, self.output))

    # ---- amplifiers (see ffebm_sim.amplifier) -------------------------------

    @property
    def has_amplifiers(self) -> bool:
        return self.amplifier_gains is not None

    def amplifier_gain(self, k: int) -> float:
        """Voltage gain (V/V) of the amplifiers after layer k (1..m-1); 1.0 where there is none."""
        if self.amplifier_gains is None or not 1 <= k < self.depth:
            return 1.0
        return self.amplifier_gains[k - 1]

    def amplified_layers(self) -> list[int]:
        """The layers k whose nodes drive crossbar k+1 through an amplifier (gain != 1)."""
        return [k for k in range(1, self.depth) if self.amplifier_gain(k) != 1.0]

    def drive_gain(self, k: int) -> float:
        """The gain between the driving layer of crossbar k (1..m) and its rows: the
        crossbar sees ``drive_gain(k) * v`` (1.0 for k = 1, the input sources)."""
        return self.amplifier_gain(k - 1) if k >= 2 else 1.0

    def domain_weights(self) -> np.ndarray:
        """``w_k`` (layers 1..m): the weight of layer k's domain in the energy
        ``E_w = sum_d w_d E_d``, ``w_k = prod over the amplifiers upstream of layer k of 1/A**2``
        (1 for the layers before the first amplifier). Scaling the KCL rows of layer k
        by ``w_k`` makes the amplified block's Jacobian symmetric (docs/amplifier.md)."""
        w = np.ones(self.depth)
        for k in range(2, self.depth + 1):
            w[k - 1] = w[k - 2] / self.drive_gain(k) ** 2
        return w

    def node_weights(self) -> np.ndarray:
        """:meth:`domain_weights` per free node, ``(n_free,)``."""
        return np.repeat(self.domain_weights(), self.layer_sizes[1:])

    # ---- non-idealities ------------------------------------------------------

    @property
    def has_wires(self) -> bool:
        """Crossbar layout with resistive lines (``wire_resistance_ohm > 0``)."""
        return self.wire_resistance_ohm > 0

    @property
    def has_diode_mismatch(self) -> bool:
        return self.mismatch is not None and (self.mismatch.is_sigma > 0 or self.mismatch.n_sigma > 0)

    @property
    def is_ideal_hardware(self) -> bool:
        """No wire resistance, no mismatch, nominal temperature: the decks and solvers of before issue 6."""
        return (not self.has_wires and self.temperature_c == NOMINAL_TEMPERATURE_C
                and (self.mismatch is None or (self.mismatch.conductance_sigma == 0 and not self.has_diode_mismatch)))

    def conductance_factors(self, k: int) -> np.ndarray:
        """Mismatch factors of ``G_k`` (1..m), the shape of ``conductances[k-1]`` (ones without mismatch)."""
        shape = self.conductances[k - 1].shape
        if self.mismatch is None:
            return np.ones(shape)
        return self.mismatch.factors(0, k, shape, self.mismatch.conductance_sigma)

    def bias_factors(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Mismatch factors of layer k's bias conductances to the + and - rails."""
        n = (self.layer_sizes[k],)
        if self.mismatch is None:
            return np.ones(n), np.ones(n)
        sigma = self.mismatch.conductance_sigma
        return self.mismatch.factors(1, k, n, sigma), self.mismatch.factors(2, k, n, sigma)

    def actual_conductances(self) -> tuple[np.ndarray, ...]:
        """What the hardware conducts: ``G_k * factor`` (S); ``conductances`` are the programmed values."""
        return tuple(np.asarray(g) * self.conductance_factors(k) for k, g in enumerate(self.conductances, start=1))

    def actual_bias(self) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]] | None:
        if not self.has_bias:
            return None
        f = [self.bias_factors(k) for k in range(1, self.depth + 1)]
        return (tuple(np.asarray(b) * fk[0] for b, fk in zip(self.bias_pos, f)),
                tuple(np.asarray(b) * fk[1] for b, fk in zip(self.bias_neg, f)))

    def diode_parameters(self, k: int, nl: "Nonlinearity | None" = None) -> dict[str, np.ndarray]:
        """Per-node junction parameters of layer k (1..m): nominal ``is``/``n`` (what a deck's
        ``.model`` card says, mismatch included) and ``is_t``/``vte`` at the circuit temperature,
        each ``(n_k, 2)`` with column 0 the diode to the upper rail, column 1 from the lower rail."""
        nl = nl or self.layer_nonlinearity(k)
        d = nl.emitted_diode
        shape = (self.layer_sizes[k], 2)
        is_ = np.full(shape, d.saturation_current_a)
        n_ = np.full(shape, d.emission_coefficient)
        if self.mismatch is not None:
            is_ = is_ * self.mismatch.factors(3, k, shape, self.mismatch.is_sigma)
            n_ = n_ * self.mismatch.factors(4, k, shape, self.mismatch.n_sigma)
        is_t = saturation_current_at(is_, n_, self.temperature_c)
        return {"is": is_, "n": n_, "is_t": np.asarray(is_t, dtype=np.float64) * np.ones(shape),
                "vte": n_ * thermal_voltage_v(self.temperature_c)}

    def floating_nodes(self) -> list[str]:
        """Free nodes that nothing conducts to: no resistor, no bias, no junction, no sloped table.

        Their voltage is undefined (a singular circuit matrix); solvers refuse them.
        """
        total = np.zeros(self.n_free)
        g1 = self.conductances[0]
        total[self.layer_slice(1)] += g1.sum(0)
        for k in range(2, self.depth + 1):
            g = self.conductances[k - 1]
            total[self.layer_slice(k - 1)] += g.sum(1)
            total[self.layer_slice(k)] += g.sum(0)
        if self.has_bias:
            for k in range(1, self.depth + 1):
                total[self.layer_slice(k)] += self.bias_pos[k - 1] + self.bias_neg[k - 1]
        for k in range(1, self.depth + 1):
            nl = self.layer_nonlinearity(k)
            if nl is None:
                continue
            if nl.kind == "pwl":
                anchored = any(b > a for a, b in zip(nl.table.currents_a, nl.table.currents_a[1:]))
                total[self.layer_slice(k)] += float(anchored)
            else:
                n = self.layer_sizes[k]
                total[self.layer_slice(k)] += (nl.clamps_up(n) | nl.clamps_down(n)).astype(float)
        names = free_node_names(self)
        return [names[i] for i in np.flatnonzero(total <= 0)]

    def with_conductances(self, conductances: Sequence, bias_pos=None, bias_neg=None) -> "BlockCircuit":
        """A copy with new conductances (and bias conductances, when given)."""
        return replace(self, conductances=tuple(conductances),
                       bias_pos=self.bias_pos if bias_pos is None else tuple(bias_pos),
                       bias_neg=self.bias_neg if bias_neg is None else tuple(bias_neg))

    def as_emitted(self) -> "BlockCircuit":
        """The circuit an emitted deck describes: ``ideal`` becomes its steep diode pair."""
        def emitted(nl):
            if nl is None or nl.kind != "ideal":
                return nl
            return Nonlinearity("double", nl.v_off_v, nl.emitted_diode)
        return replace(self, hidden=tuple(emitted(h) for h in self.hidden), output=emitted(self.output))


#: The amplifier gains a block accepts (V/V). Outside, the domain weights
#: ``prod 1/A**2`` of a few stages leave float64's comfortable range, and no
#: resistive stage needs more than a thousandfold gain.
AMPLIFIER_GAIN_RANGE = (1e-3, 1e3)


def _check_gains(gains, depth: int, wire_ohm: float) -> tuple[float, ...] | None:
    """The validated ``amplifier_gains`` (``None`` when absent or every gain is 1.0)."""
    if gains is None:
        return None
    lo, hi = AMPLIFIER_GAIN_RANGE
    allowed = (f"one voltage gain (V/V) per boundary between free layers (after layers 1..{depth - 1}), "
               f"each in {lo:g}..{hi:g}, 1.0 = a plain wire")
    if isinstance(gains, (str, bytes)) or not hasattr(gains, "__len__"):
        raise SpecError(f"amplifier_gain: {gains!r} is not a list of gains; {allowed}")
    if len(gains) != depth - 1:
        raise SpecError(f"amplifier_gain: {len(gains)} gains for {depth - 1} layer boundaries; {allowed}")
    out = []
    for k, g in enumerate(gains, start=1):
        if isinstance(g, bool):
            raise SpecError(f"amplifier_gain[{k - 1}] (after layer {k}): expected a number, got {g!r}; {allowed}")
        g = _finite(f"amplifier_gain[{k - 1}] (after layer {k})", g, allowed)
        if not lo <= g <= hi:
            raise SpecError(f"amplifier_gain[{k - 1}] (after layer {k}): {g!r} is outside {lo:g}..{hi:g}; {allowed}")
        out.append(g)
    if all(g == 1.0 for g in out):
        return None
    if wire_ohm > 0:
        raise SpecError("amplifier_gain: amplifiers are not modelled with wire_resistance > 0 (the crossbar "
                        "reduction has no amplifier stage); use one of the two")
    return tuple(out)


# ---- the rails, written once --------------------------------------------------

def bias_rails_v(circuit: BlockCircuit) -> tuple[float, float]:
    """The two bias rails' potentials (V): ``(+V_b, -V_b)``, the positive rail first (the
    order of :attr:`BlockCircuit.bias_pos` / :attr:`BlockCircuit.bias_neg`). Every solver,
    deck and energy takes the rails from here."""
    return circuit.bias_voltage_v, -circuit.bias_voltage_v


def rail_potentials(circuit: BlockCircuit) -> dict[str, float]:
    """Every rail of the deck by node name, at its potential (V, to ground).

    Per layer k with clamp diodes (``double``, ``single``, ``ideal``): ``vhi<k>`` at
    ``+v_off`` and ``vlo<k>`` at ``-v_off`` (:meth:`Nonlinearity.clamp_rail_v`); with a bias,
    ``vbp`` at ``+V_b`` and ``vbm`` at ``-V_b``. In deck order. The deck's rail cards, the
    element layer, ``ffebm analyze``'s SPICE loop and the naive baseline take the rails
    from here.
    """
    rails: dict[str, float] = {}
    for k in range(1, circuit.depth + 1):
        nl = circuit.layer_nonlinearity(k)
        if nl is not None and nl.kind != "pwl":
            rails[f"vhi{k}"], rails[f"vlo{k}"] = nl.clamp_rail_v(True), nl.clamp_rail_v(False)
    if circuit.has_bias:
        rails["vbp"], rails["vbm"] = bias_rails_v(circuit)
    return rails


# ---- the input sources, written once -----------------------------------------

def source_voltages(circuit: BlockCircuit, inputs):
    """Source voltages ``[+a*u, -a*u]`` (V) along the last axis, in ``G_1`` row order.

    ``inputs``: ``(..., n_0)`` unitless features, a numpy array or a torch tensor (the
    result is of the same kind). ``-a*u`` is written as the exact negation of ``a*u``.
    """
    a = circuit.input_gain_v
    if not hasattr(inputs, "requires_grad"):
        plus = a * inputs
        return np.concatenate([plus, -plus], axis=-1)
    import torch          # only for tensors: this module stays free of torch
    if inputs.requires_grad:
        plus = a * inputs
        return torch.cat([plus, -plus], dim=-1)
    n = inputs.shape[-1]          # into one array (a batch of 784-pixel inputs is megabytes)
    out = torch.empty(*inputs.shape[:-1], 2 * n, dtype=torch.result_type(inputs, a), device=inputs.device)
    torch.mul(inputs, a, out=out[..., :n])
    torch.neg(out[..., :n], out=out[..., n:])
    return out


def output_conductance_s(circuit: BlockCircuit) -> float:
    """Mean total conductance at an output node (S), bias conductances included: the
    scale that turns volts into nudge currents (a current ``g_out * dV`` moves an
    output node by about ``dV``)."""
    g = np.asarray(circuit.conductances[-1]).sum(0).mean()
    if circuit.has_bias:
        g += float(np.mean(circuit.bias_pos[-1] + circuit.bias_neg[-1]))
    return float(max(g, 1e-30))


# ---- SPICE names, written once ---------------------------------------------

def node_name(k: int, j: int) -> str:
    """SPICE node of node j in layer k (1..m)."""
    return f"n{k}_{j}"


def source_node_names(n_inputs: int) -> list[str]:
    """Input source nodes in G_1 row order: + sources, then - sources."""
    return [f"xp{i}" for i in range(n_inputs)] + [f"xm{i}" for i in range(n_inputs)]


def source_names(n_inputs: int) -> list[str]:
    """Input voltage sources in G_1 row order."""
    return [f"vxp{i}" for i in range(n_inputs)] + [f"vxm{i}" for i in range(n_inputs)]


def row_node_name(k: int, i: int, j: int) -> str:
    """Crossbar of layer k: the row line of driver i at cross-point j."""
    return f"r{k}_{i}_{j}"


def column_node_name(k: int, i: int, j: int) -> str:
    """Crossbar of layer k: the column line of node j at cross-point (row) i."""
    return f"c{k}_{i}_{j}"


def amplifier_node_name(k: int, j: int) -> str:
    """The amplifier after node j of layer k: its output node, which drives crossbar k+1."""
    return f"a{k}_{j}"


def amplifier_source_node_name(k: int, j: int) -> str:
    """The amplifier's VCVS terminal, joined to its output node by the zero-volt current sense."""
    return f"ae{k}_{j}"


def amplifier_sense_name(k: int, j: int) -> str:
    """The zero-volt source through which the amplifier's output current ``i_out`` flows
    (from the VCVS into crossbar k+1); its SPICE branch current is ``i_out``."""
    return f"va{k}_{j}"


def amplifier_output_node_names(circuit: BlockCircuit) -> list[str]:
    """Every amplifier output node, layer by layer (the layers of :meth:`BlockCircuit.amplified_layers`)."""
    return [amplifier_node_name(k, j) for k in circuit.amplified_layers() for j in range(circuit.layer_sizes[k])]


def free_node_names(circuit: BlockCircuit) -> list[str]:
    return [node_name(k, j) for k in range(1, circuit.depth + 1) for j in range(circuit.layer_sizes[k])]
