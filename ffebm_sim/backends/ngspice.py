"""ngspice (libngspice, through PySpice's shared-library interface) as a backend.

This module is the only place that touches PySpice. The deck text from
:mod:`ffebm_sim.netlist` is the contract: it is loaded once per circuit (per
set of conductances and nudge structure) and every sample only changes
sources with ``alter`` before an ``op``:

* physical deck: ``vxp<i>``/``vxm<i>`` get ``+-a*u_i``;
* reduced deck: ``in1_<j>`` get the Norton currents ``sum_i G1[i,j]*V_i``;
* ``inudge<j>`` get the nudge currents, ``vy<j>`` the resistive-nudge targets.

After reading the vectors the plot is destroyed (every ``op`` otherwise adds
a plot to ngspice's memory) and ``remcirc`` removes a circuit before another
is loaded. Every command stays far below ngspice's 1024-character limit.

Failures are a status, never a crash: ngspice's messages ("singular matrix",
"no convergence", "aborted", "timestep too small") and a missing or empty
vector mark the sample failed; an empty vector is never dereferenced.

One libngspice per process, used from one thread at a time (a lock guards it).
"""

from __future__ import annotations

import ctypes.util
import hashlib
import logging
import os
import threading

import numpy as np
import torch

from ..circuit import BlockCircuit, free_node_names, source_names
from ..netlist import emit_deck, norton_source_name, nudge_source_name, target_source_name
from .base import Backend, Equilibrium, Nudge, check_batch, delivered_from_branch_current, source_voltages

FAILURE_MARKERS = ("singular matrix", "no convergence", "aborted", "timestep too small", "gmin stepping failed",
                   "source stepping failed", "error")
MAX_COMMAND_CHARS = 1000


class NgspiceUnavailable(RuntimeError):
    """libngspice cannot be loaded; the message says how to install it."""


class NgspiceDeckError(RuntimeError):
    """ngspice refused to parse a deck (a bug in the emitter, or a hand-edited deck)."""


def _library_path() -> str:
    if os.environ.get("NGSPICE_LIBRARY_PATH"):
        return os.environ["NGSPICE_LIBRARY_PATH"]
    found = ctypes.util.find_library("ngspice")
    if not found:
        raise NgspiceUnavailable("libngspice not found; install it with 'apt-get install ngspice libngspice0' "
                                 "(make test / make demo do) or set NGSPICE_LIBRARY_PATH")
    return found


class NgspiceSession:
    """One libngspice instance: load a deck, alter sources, run ``op``, read vectors."""

    def __init__(self):
        os.environ.setdefault("NGSPICE_LIBRARY_PATH", _library_path())
        # PySpice logs every ngspice message (and a version warning) at WARNING/ERROR;
        # we read them ourselves and turn them into a status.
        logging.getLogger("PySpice").setLevel(logging.CRITICAL)
        from PySpice.Spice.NgSpice.Shared import FFI, NgSpiceShared, ffi  # noqa: the one PySpice import
        self._ffi, self._null = ffi, FFI.NULL
        self._ng = NgSpiceShared.new_instance()
        self._lib = self._ng._ngspice_shared
        self.loaded_hash: str | None = None
        self.values: dict[str, float] = {}
        self.lock = threading.Lock()
        self.commands = 0
        self.solves = 0

    def command(self, text: str) -> str:
        """Run one ngspice command; returns what it printed (stdout and stderr)."""
        if len(text) >= MAX_COMMAND_CHARS:
            raise ValueError(f"ngspice command of {len(text)} characters; ngspice misparses >= 1024")
        self.commands += 1
        self._ng.clear_output()
        if self.commands % 5000 == 0:
            self._lib.ngSpice_Command(self._null)      # frees ngspice's command history
        self._lib.ngSpice_Command(text.encode("ascii"))
        return "\n".join(self._ng._stdout + self._ng._stderr)

    def load(self, deck: str) -> None:
        """Load ``deck`` unless it is the one already loaded."""
        digest = hashlib.sha256(deck.encode()).hexdigest()
        if digest == self.loaded_hash:
            return
        if self.loaded_hash is not None:
            self.command("destroy all")
            self.command("remcirc")
        self.loaded_hash = None
        self.values = {}
        self._ng.clear_output()
        lines = [line for line in deck.splitlines() if line.strip()] + [""]
        keep = [self._ffi.new("char[]", line.encode("utf-8")) for line in lines] + [self._null]
        self._lib.ngSpice_Circ(self._ffi.new("char *[]", keep))
        messages = "\n".join(self._ng._stdout + self._ng._stderr).lower()
        if "error" in messages:
            raise NgspiceDeckError("ngspice rejected the deck: " + " | ".join(
                " ".join(m.split()) for m in self._ng._stdout + self._ng._stderr if "rror" in m)[:500])
        self.loaded_hash = digest

    def set_dc(self, element: str, value: float) -> None:
        """``alter`` an independent source's DC value, skipping unchanged ones."""
        value = float(value)
        if self.values.get(element) != value:
            self.command(f"alter {element} dc = {value!r}")
            self.values[element] = value

    def op(self) -> str:
        """Run an operating point; returns '' on success or the failure text."""
        self.solves += 1
        printed = self.command("op")
        lower = printed.lower()
        bad = [m for m in FAILURE_MARKERS if m in lower]
        return "" if not bad else f"ngspice op failed ({bad[0]}): " + " ".join(printed.split())[:300]

    def read(self, names: list[str]) -> np.ndarray | None:
        """Values of real vectors in the current plot, or None if any is missing or empty."""
        out = np.empty(len(names))
        for k, name in enumerate(names):
            info = self._lib.ngGet_Vec_Info(name.encode("ascii"))
            if info == self._null or info.v_length < 1 or info.v_realdata == self._null:
                return None
            out[k] = info.v_realdata[0]
        return out

    def destroy_plots(self) -> None:
        self.command("destroy all")


_SESSION: NgspiceSession | None = None


def session() -> NgspiceSession:
    """This process's libngspice (created on first use)."""
    global _SESSION
    if _SESSION is None:
        _SESSION = NgspiceSession()
    return _SESSION


class NgspiceBackend(Backend):
    """Solve with ngspice's ``.op``, one sample after another in this process.

    Args:
        reduced: use the Norton-reduced deck (source currents are then computed
            from the node voltages and ``G_1``, exactly as the reference does).
    """

    name = "ngspice"

    def __init__(self, reduced: bool = False):
        self.reduced = reduced

    def deck_for(self, circuit: BlockCircuit, nudge: Nudge | None) -> str:
        g = nudge.conductance_s if nudge is not None else 0.0
        return emit_deck(circuit, reduced=self.reduced, control=False, nudge_conductance_s=g,
                         nudge_target_v=np.zeros(circuit.n_outputs) if g != 0 else None)

    def solve(self, circuit: BlockCircuit, inputs, nudge: Nudge | None = None) -> Equilibrium:
        u = check_batch(circuit, inputs, nudge)
        emitted = circuit.as_emitted()
        s = session()
        B, n0 = u.shape[0], circuit.n_inputs
        v_src = source_voltages(circuit, u).numpy()
        g1 = np.asarray(circuit.conductances[0])
        nodes = free_node_names(circuit)
        sources = source_names(n0)
        branches = [f"{name}#branch" for name in sources]
        volts = np.full((B, circuit.n_free), np.nan)
        currents = np.full((B, 2 * n0), np.nan)
        messages = []
        floating = circuit.floating_nodes()
        if floating:
            message = (f"ngspice: node {floating[0]} floats (no conductance connects it; "
                       f"{len(floating)} such nodes); give it a non-zero conductance")
            return Equilibrium(torch.from_numpy(volts), torch.from_numpy(currents),
                               torch.zeros(B, dtype=torch.bool), (message,) * B, 0)
        with s.lock:
            try:
                s.load(self.deck_for(emitted, nudge))
            except NgspiceDeckError as e:
                return Equilibrium(torch.from_numpy(volts), torch.from_numpy(currents),
                                   torch.zeros(B, dtype=torch.bool), (str(e),) * B, 0)
            for b in range(B):
                if self.reduced:
                    norton = v_src[b] @ g1
                    for j in range(circuit.layer_sizes[1]):
                        s.set_dc(norton_source_name(j), norton[j])
                else:
                    for name, v in zip(sources, v_src[b]):
                        s.set_dc(name, v)
                if nudge is not None and nudge.currents_a is not None:
                    for j, i in enumerate(nudge.currents_a[b].tolist()):
                        s.set_dc(nudge_source_name(j), i)
                else:
                    for j in range(circuit.n_outputs):
                        s.set_dc(nudge_source_name(j), 0.0)
                if nudge is not None and nudge.conductance_s != 0:
                    for j, y in enumerate(nudge.target_v[b].tolist()):
                        s.set_dc(target_source_name(j), y)
                failure = s.op()
                values = None if failure else s.read(nodes + ([] if self.reduced else branches))
                s.destroy_plots()
                if values is None:
                    messages.append(failure or "ngspice op produced no vectors (analysis failed silently); "
                                               "inspect the deck with 'ffebm netlist' and 'ngspice -b'")
                    continue
                messages.append("")
                volts[b] = values[:len(nodes)]
                if not self.reduced:
                    currents[b] = delivered_from_branch_current(torch.from_numpy(values[len(nodes):])).numpy()
                else:
                    layer1 = volts[b, circuit.layer_slice(1)]
                    currents[b] = v_src[b] * g1.sum(1) - g1 @ layer1
        converged = torch.tensor([m == "" for m in messages])
        return Equilibrium(torch.from_numpy(volts), torch.from_numpy(currents), converged, tuple(messages), B)
