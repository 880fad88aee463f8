"""Deck formats: what differs between simulators once the circuit is written.

The circuit body (R, D, V, I, E, F cards, ``.model``, ``.subckt``) is written
once by :func:`ffebm_sim.netlist.emit_deck`; a :class:`Dialect` supplies only
the cards that simulators spell differently:

* the **options** (tolerances, junction GMIN, TNOM) and the **temperature**;
* the **analysis and print** cards (what runs and what is printed);
* the **PWL element** card inside the ``pwl_element`` subcircuit (the ``pwl``
  nonlinearity: current from the node to ground as a piecewise-linear function
  of its voltage, extended linearly beyond the table, :class:`~ffebm_sim.devices.PwlTable`);
* the **include** card of a subcircuit testbench.

Formats (``DIALECTS``):

``ngspice``
    Today's deck, byte for byte: ``.options temp= tnom=``, the ngspice ``B``
    source ``I = pwl(v(node), ...)`` (linear beyond the ends, measured), and a
    ``.control`` block (``op``, ``print all`` with 17 digits).
``spice3``
    Plain Berkeley SPICE3: ``.options reltol vntol abstol gmin tnom``, the
    ``.temp`` card, ``.print op`` then ``.op`` (gnucap runs commands in order, so
    the print comes first; SPICE3 does not care). The PWL element is a SPICE3
    ``B`` source built from ``uramp`` (SPICE3 user's guide, B source functions:
    ``u``, ``uramp``):
    ``i(v) = y_0 + s_0 (v - x_0) + sum_k (s_k - s_{k-1}) uramp(v - x_k)``, which
    *is* the project's law everywhere, ends included (no table, nothing held).
``gnucap``
    The ``spice3`` deck with one change, because gnucap has no ``B`` element (it
    drops one silently): the PWL element is gnucap's own VCCS with a ``pwl``
    transfer function, ``G_iv node 0 node 0 pwl(x1,y1 x2,y2 ...)``. The gnucap
    manual (ch. 4.10, "PWL: Piecewise linear function") says that for elements
    other than fixed sources "the last segment is extended linearly": the same
    law. For blocks without ``pwl`` layers the gnucap and spice3 decks are the
    same text apart from the header line naming the format.
``xyce``
    Xyce: ``.OPTIONS DEVICE GMIN= TNOM= TEMP=`` and ``.OPTIONS NONLIN RELTOL=
    ABSTOL= RHSTOL=`` (Xyce Reference Guide, ``.OPTIONS``: device-package and
    nonlinear-solver options); ``.OP`` with ``.PRINT DC`` (Xyce Reference Guide,
    ``.OP``: "Nodal voltages are always available on a .PRINT line", and the
    print-type table, where an operating point is a DC analysis); the PWL
    element ``B_iv node 0 I={TABLE(V(node), x1, y1, ...)}`` (Xyce Reference
    Guide, B device and the "interpolating tabular data" functions:
    ``TABLE(x,y,z,*)``, piecewise-linear interpolation); ``.INCLUDE "file"``.
``ltspice``
    LTspice: SPICE option names (``.options gmin reltol abstol vntol tnom``),
    ``.temp``, ``.op`` with ``.save`` of the printed quantities, and the PWL
    element ``B_iv node 0 I=table(V(node), x1, y1, ...)`` (LTspice help, B
    sources: "table(x,a,b,c,d,...): interpolate a value for x based on a look up
    table given as a set of pairs of points"; see also the LTwiki page "B
    sources (complete reference)").

TABLE forms (Xyce ``TABLE``, LTspice ``table``) **hold their end values** where
the project's law extrapolates linearly, so those decks write the table with
one extra point on each end segment's line, :data:`HOLD_EXTENSION_V` beyond the
ends (:func:`extended_table`): the same law for every node voltage within
``[x_0 - 1 kV, x_n + 1 kV]``, far beyond any voltage these blocks reach.

Neither Xyce nor LTspice is installed here: their forms are checked against the
manuals and by syntax tests only (tests/test_formats.py). Read for Xyce: the
Reference Guide sources ``B_Device.tex`` (``I={...}``, ``Table``),
``Expression_Arithmetic_Functions.tex`` (``TABLE``, ``URAMP``), ``OP_Command.tex``,
``PRINT_Command.tex`` and ``Print_Types.tex`` (``.PRINT DC ... PRECISION=``); the
``.OPTIONS DEVICE``/``NONLIN`` option names follow the guide's option tables, whose
text was not at hand here: check them against your Xyce version.
"""

from __future__ import annotations

from dataclasses import dataclass

from .devices import PwlTable
from .errors import SpecError

#: Tolerances every deck carries (ngspice/SPICE3 names): decks agree with the
#: reference to ~1e-12 V in ngspice.
RELTOL, VNTOL_V, ABSTOL_A = 1e-9, 1e-12, 1e-15
#: The same three as deck text (SPICE3 names), as every ngspice deck has carried them.
SPICE_TOLERANCES = "reltol=1e-9 vntol=1e-12 abstol=1e-15"

#: How far beyond a table's ends the extension points of hold-at-ends TABLE forms lie, volts.
HOLD_EXTENSION_V = 1e3

#: Items per continuation line of long .print / .save / port lists.
ITEMS_PER_LINE = 8


def num(x: float) -> str:
    """A float as SPICE text, round-trip exact (17 significant digits)."""
    return repr(float(x))


def continued(head: str, items: list[str], per_line: int = ITEMS_PER_LINE) -> list[str]:
    """``head item item ...`` spread over ``+`` continuation lines, ``per_line`` items each."""
    rows = [items[i:i + per_line] for i in range(0, len(items), per_line)] or [[]]
    return [f"{head} {' '.join(rows[0])}".rstrip()] + ["+ " + " ".join(r) for r in rows[1:]]


def extended_table(table: PwlTable, span_v: float = HOLD_EXTENSION_V) -> PwlTable:
    """The same law with one more point on each end segment's line, ``span_v`` beyond the ends.

    A TABLE form that holds its end values then agrees with the linearly
    extrapolating law (:func:`ffebm_sim.devices.pwl_current_and_conductance`)
    for every voltage in ``[x_0 - span_v, x_n + span_v]``.
    """
    xs, ys = table.voltages_v, table.currents_a
    s_lo = (ys[1] - ys[0]) / (xs[1] - xs[0])
    s_hi = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return PwlTable((xs[0] - span_v,) + tuple(xs) + (xs[-1] + span_v,),
                    (ys[0] - s_lo * span_v,) + tuple(ys) + (ys[-1] + s_hi * span_v,))


def ramp_terms(table: PwlTable) -> tuple[float, float, float, list[tuple[float, float]]]:
    """The table as ``(y_0, s_0, x_0, [(d_k, x_k), ...])`` with
    ``i(v) = y_0 + s_0 (v - x_0) + sum_k d_k * max(v - x_k, 0)``, ``d_k = s_k - s_{k-1}``
    at every interior breakpoint ``x_k`` (the slope change there, S)."""
    xs, ys = table.voltages_v, table.currents_a
    slopes = [(ys[k + 1] - ys[k]) / (xs[k + 1] - xs[k]) for k in range(len(xs) - 1)]
    return ys[0], slopes[0], xs[0], [(slopes[k] - slopes[k - 1], xs[k]) for k in range(1, len(slopes))]


def _shifted(v: str, x: float) -> str:
    """``v - x`` as expression text without a double sign."""
    if x == 0:
        return v
    return f"({v} - {num(x)})" if x > 0 else f"({v} + {num(-x)})"


def _extension_comment() -> str:
    return (f"* the TABLE holds its end values: one more point on each end segment's line, {num(HOLD_EXTENSION_V)} V "
            "beyond the ends, keeps the linear extrapolation")


def _points(table: PwlTable) -> list[str]:
    return [f"{num(v)}, {num(i)}" for v, i in zip(table.voltages_v, table.currents_a)]


@dataclass(frozen=True)
class Dialect:
    """One simulator's spelling of the cards around the circuit body (see the module docstring)."""

    name: str
    summary: str

    def option_cards(self, gmin_s: float, temperature: str) -> list[str]:
        """Tolerances, junction GMIN, TNOM = 27 C and the circuit temperature (``temperature`` as text)."""
        return [f".options {SPICE_TOLERANCES} gmin={num(gmin_s)} tnom=27", f".temp {temperature}"]

    def analysis_cards(self, voltages: list[str], currents: list[str]) -> list[str]:
        """Run the operating point and print node ``voltages`` and the currents of V sources ``currents``."""
        probes = [f"v({n})" for n in voltages] + [f"i({s})" for s in currents]
        return continued(".print op", probes) + [".op"]

    def pwl_element(self, table: PwlTable) -> list[str]:
        """The card(s) of the element ``node -> 0`` with current ``i(v(node))`` inside ``pwl_element``."""
        y0, s0, x0, terms = ramp_terms(table)
        v = "v(node)"
        lines = [f"B_iv node 0 I = {num(y0)} + {num(s0)}*{_shifted(v, x0)}"]
        lines += [f"+ {'+' if d >= 0 else '-'} {num(abs(d))}*uramp({_shifted(v, x)[1:-1] if x else v})"
                  for d, x in terms]
        return lines

    def include_card(self, file_name: str) -> str:
        return f".include {file_name}"

    @property
    def header(self) -> list[str]:
        return [f"* format: {self.name} ({self.summary})"]


@dataclass(frozen=True)
class Ngspice(Dialect):
    """Today's ngspice deck (the golden decks hold it byte for byte)."""

    def option_cards(self, gmin_s, temperature):
        return [f".options {SPICE_TOLERANCES} gmin={num(gmin_s)}", f".options temp={temperature} tnom=27"]

    def analysis_cards(self, voltages, currents):
        # In batch mode (ngspice -b) leave with status 0 once printed; interactively, stay.
        return [".control", "set numdgt=17", "op", "print all", "if $?batchmode", "  quit 0", "end", ".endc"]

    def pwl_element(self, table):
        points = _points(table)
        # Four points per continuation line ('+'), so long tables stay readable.
        rows = [", ".join(points[i:i + 4]) for i in range(0, len(points), 4)]
        return ["B_iv node 0 I = pwl(v(node),", *("+ " + r + ("," if k < len(rows) - 1 else ")")
                                                 for k, r in enumerate(rows))]

    @property
    def header(self):
        return []


@dataclass(frozen=True)
class Gnucap(Dialect):
    """spice3 with gnucap's own PWL element (gnucap has no B source)."""

    def pwl_element(self, table):
        pairs = [f"{num(v)},{num(i)}" for v, i in zip(table.voltages_v, table.currents_a)]
        rows = [" ".join(pairs[i:i + 4]) for i in range(0, len(pairs), 4)]
        return [f"G_iv node 0 node 0 pwl({rows[0]}" + (")" if len(rows) == 1 else "")] + \
            ["+ " + r + (")" if k == len(rows) - 2 else "") for k, r in enumerate(rows[1:])]


@dataclass(frozen=True)
class Xyce(Dialect):
    def option_cards(self, gmin_s, temperature):
        # Xyce's Newton tolerances: RELTOL relative, ABSTOL on the update (V, SPICE's vntol),
        # RHSTOL on the residual (A, SPICE's abstol).
        return [f".OPTIONS DEVICE GMIN={num(gmin_s)} TNOM=27 TEMP={temperature}",
                ".OPTIONS NONLIN RELTOL=1e-9 ABSTOL=1e-12 RHSTOL=1e-15"]

    def analysis_cards(self, voltages, currents):
        probes = [f"V({n})" for n in voltages] + [f"I({s})" for s in currents]
        return [".OP"] + continued(".PRINT DC PRECISION=16", probes)

    def pwl_element(self, table):
        points = _points(extended_table(table))
        rows = [", ".join(points[i:i + 4]) for i in range(0, len(points), 4)]
        return [_extension_comment(), "B_iv node 0 I={TABLE(V(node),", *("+ " + r + ("," if k < len(rows) - 1 else ")}")
                                                   for k, r in enumerate(rows))]

    def include_card(self, file_name):
        return f'.INCLUDE "{file_name}"'


@dataclass(frozen=True)
class Ltspice(Dialect):
    def analysis_cards(self, voltages, currents):
        probes = [f"V({n})" for n in voltages] + [f"I({s})" for s in currents]
        return continued(".save", probes) + [".op"]

    def pwl_element(self, table):
        points = _points(extended_table(table))
        rows = [", ".join(points[i:i + 4]) for i in range(0, len(points), 4)]
        return [_extension_comment(), "B_iv node 0 I=table(V(node),", *("+ " + r + ("," if k < len(rows) - 1 else ")")
                                                  for k, r in enumerate(rows))]


DIALECTS: dict[str, Dialect] = {d.name: d for d in (
    Ngspice("ngspice", "ngspice -b; .control block"),
    Dialect("spice3", "plain SPICE3: .op, .print, .temp, no .control"),
    Gnucap("gnucap", "the spice3 deck with gnucap's own PWL element; gnucap -b"),
    Xyce("xyce", "Xyce: .OPTIONS DEVICE/NONLIN, .OP, .PRINT DC, TABLE() PWL"),
    Ltspice("ltspice", "LTspice: .op, .save, table() PWL"),
)}

#: What ``ffebm netlist --format`` accepts.
FORMATS = tuple(DIALECTS)


def get_dialect(name: "str | Dialect") -> Dialect:
    """The dialect called ``name`` (a :class:`Dialect` passes through); an unknown name lists the valid ones."""
    if isinstance(name, Dialect):
        return name
    try:
        return DIALECTS[name]
    except KeyError:
        raise SpecError(f"format {name!r}: not one of {', '.join(FORMATS)}") from None
