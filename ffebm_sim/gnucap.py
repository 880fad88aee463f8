"""gnucap, a second and independent simulator, run on the ``gnucap`` deck format.

``run_gnucap(deck)`` writes the deck (and any files it includes) into a
temporary directory, runs ``gnucap -b <precision file> -b <deck>`` there as a
subprocess with a timeout, and returns what the deck's ``.print op`` printed,
``{"v(n1_0)": volts, "i(vxp0)": amperes, ...}`` (keys lower case). The deck
runs unchanged: the precision (``.options numdgt=17``; gnucap prints 5
significant digits otherwise) is set by a first batch file. The temporary
directory is removed whatever happens.

Failures are one line: :class:`GnucapUnavailable` when the program is missing
(``make setup`` installs it), :class:`GnucapFailed` when gnucap exits
non-zero, times out, prints a parse diagnostic (``^ ? ...``; gnucap carries on
after one, so it is an error here), reports ``did not converge`` (it then
prints its last iterate anyway; seen on a nudged ``block_deep`` sample, whose
amplified junctions gnucap's Newton iteration does not settle while ngspice's
does) or prints no operating point. A deck with a
``B`` element is refused before it runs: gnucap has no B source and drops one
silently (use the ``gnucap`` format, whose PWL element is gnucap's own).

Model differences from ngspice (measured, docs/formats.md; tests/test_gnucap.py):

* thermal voltage ``k*T/q`` 28.25 ppm lower: gnucap's constants are
  ``k = 1.3806226e-23 J/K``, ``q = 1.6021918e-19 C`` (CODATA 1973; the measured
  forward drop of a junction matches their ratio to 1e-16), ngspice's CODATA 2014
  (:mod:`ffebm_sim.devices`), so a forward junction drop is 28.25 ppm smaller;
  :func:`gnucap_view` is the circuit with that one difference folded in;
* reverse junction branch: the exponential ``IS*(exp(v/(N*Vt)) - 1)`` all the
  way, not SPICE3's cubic ``-IS*(1 + (3*N*Vt/(e*v))**3)`` below ``-3*N*Vt``;
* ``IS(T)`` away from TNOM differs by a few 1e-4 relative (60 C).

They bound the agreement with ngspice: :func:`agreement_tolerance_v`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from dataclasses import replace

from .devices import BOLTZMANN_J_PER_K, ELECTRON_CHARGE_C, NOMINAL_TEMPERATURE_C
from .errors import SpecError

#: The program, and how to get it.
PROGRAM = "gnucap"
INSTALL_HINT = "install it with `apt-get install gnucap` (make setup does)"

#: First batch file: 17 significant digits in gnucap's printout.
PRECISION_FILE = "* ffebm-sim: print precision\n.options numdgt=17\n"

#: gnucap's number suffixes (its printout uses them, 'M' being mega).
_SUFFIX = {"": 1.0, "a": 1e-18, "f": 1e-15, "p": 1e-12, "n": 1e-9, "u": 1e-6, "m": 1e-3,
           "K": 1e3, "k": 1e3, "M": 1e6, "Meg": 1e6, "G": 1e9, "T": 1e12}
_NUMBER = re.compile(r"^([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)([A-Za-z]*)$")

#: Agreement (V) gnucap reaches with ngspice on the project's decks at TNOM, and elsewhere
#: (IS(T) differs): the tolerances of issue 15, checked in tests/test_gnucap.py.
TOLERANCE_AT_TNOM_V = 1e-5
TOLERANCE_OFF_TNOM_V = 1e-3


#: gnucap's k/q over ngspice's: its thermal voltage at any temperature, relative.
GNUCAP_BOLTZMANN_J_PER_K, GNUCAP_ELECTRON_CHARGE_C = 1.3806226e-23, 1.6021918e-19
THERMAL_VOLTAGE_RATIO = (GNUCAP_BOLTZMANN_J_PER_K / GNUCAP_ELECTRON_CHARGE_C) / (BOLTZMANN_J_PER_K / ELECTRON_CHARGE_C)


def gnucap_view(circuit):
    """``circuit`` with every junction's N scaled by :data:`THERMAL_VOLTAGE_RATIO`, so the
    reference's ``N*Vt`` is gnucap's: the thermal-voltage difference folded in, exactly at
    TNOM (away from it ``IS(T)``'s factor ``(T/Tnom)**(XTI/N)`` moves by ~1e-5 relative,
    far below gnucap's own IS(T) difference). Diagnostic only: it tells how much of a
    gnucap-ngspice difference the constants explain."""
    def scaled(nl):
        if nl is None or nl.kind == "pwl":
            return nl
        d = nl.emitted_diode
        return replace(nl, diode=replace(d, emission_coefficient=d.emission_coefficient * THERMAL_VOLTAGE_RATIO))
    emitted = circuit.as_emitted()
    return replace(emitted, hidden=tuple(scaled(h) for h in emitted.hidden), output=scaled(emitted.output))


class GnucapUnavailable(SpecError):
    """The gnucap program is not on PATH."""


class GnucapFailed(RuntimeError):
    """gnucap ran but did not produce an operating point for the deck (one-line message)."""


def agreement_tolerance_v(temperature_c: float) -> float:
    """The node-voltage agreement with ngspice that gnucap's models allow, volts."""
    return TOLERANCE_AT_TNOM_V if temperature_c == NOMINAL_TEMPERATURE_C else TOLERANCE_OFF_TNOM_V


def gnucap_path() -> str | None:
    return shutil.which(PROGRAM)


def parse_number(text: str) -> float:
    """A number as gnucap prints it: ``732.51730646006762u``, ``27.``, ``-0.5``, ``1.2K``."""
    m = _NUMBER.match(text)
    if not m or m.group(2) not in _SUFFIX:
        raise GnucapFailed(f"gnucap printed {text!r} where a number was expected")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def parse_op_print(stdout: str) -> dict[str, float]:
    """The last ``.print op`` table in gnucap's output: header ``#  v(a) ...``, one row of values.
    The first column (the temperature of the op point, ``27.``) is returned as ``"temperature"``."""
    lines = stdout.splitlines()
    heads = [k for k, line in enumerate(lines) if line.startswith("#")]
    if not heads or heads[-1] + 1 >= len(lines):
        raise GnucapFailed("gnucap printed no operating point (is there a .print op before the .op?)")
    names = lines[heads[-1]].lstrip("#").split()
    values = lines[heads[-1] + 1].split()
    if not names:
        raise GnucapFailed("gnucap printed no operating point: the deck has no .print op probes")
    if len(values) != len(names) + 1:
        raise GnucapFailed(f"gnucap printed {len(values)} values for {len(names)} probes and the temperature")
    out = {"temperature": parse_number(values[0])}
    out.update({n.lower(): parse_number(v) for n, v in zip(names, values[1:])})
    return out


def _check_no_b_element(deck: str) -> None:
    for line in deck.splitlines():
        if line[:1] in ("B", "b"):
            raise GnucapFailed(f"gnucap has no B element and would drop it silently: {line.split()[0]}; "
                               "write the deck with --format gnucap")


def run_gnucap(deck: str, files: dict[str, str] | None = None, timeout_s: float = 300.0) -> dict[str, float]:
    """Run ``deck`` (text) in ``gnucap -b``; ``files``: other files it includes, by name. See the module docstring."""
    exe = gnucap_path()
    if exe is None:
        raise GnucapUnavailable(f"{PROGRAM}: the program is not installed; {INSTALL_HINT}")
    _check_no_b_element(deck)
    for text in (files or {}).values():
        _check_no_b_element(text)
    with tempfile.TemporaryDirectory(prefix="ffebm-gnucap-") as tmp:
        where = Path(tmp)
        (where / "precision.ckt").write_text(PRECISION_FILE)
        (where / "deck.cir").write_text(deck)
        for name, text in (files or {}).items():
            (where / name).write_text(text)
        try:
            run = subprocess.run([exe, "-b", "precision.ckt", "-b", "deck.cir"], cwd=where, capture_output=True,
                                 text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise GnucapFailed(f"gnucap did not finish within {timeout_s:g} s") from None
    if run.returncode != 0:
        last = (run.stderr.strip() or run.stdout.strip() or "no output").splitlines()[-1]
        raise GnucapFailed(f"gnucap exited with status {run.returncode}: {last}")
    lines = run.stdout.splitlines()
    for k, line in enumerate(lines):
        if line.strip() == "did not converge":
            raise GnucapFailed("gnucap: did not converge (it prints its last Newton iterate, which is not an "
                               "operating point)")
        if "^ ?" in line:
            bad = lines[k - 1].strip() if k else ""
            raise GnucapFailed(f"gnucap could not read a line of the deck ({line.split('?', 1)[1].strip()}): {bad}")
    return parse_op_print(run.stdout)
