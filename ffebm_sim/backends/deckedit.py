"""Deck text rewritten for a job: the resident transient deck, the DC-sweep deck of a chunk, and
``.nodeset`` warm starts.

**The resident deck** (method ``tran``). Each source that changes from sample
to sample becomes an independent ``PWL`` source (its card keeps its name and
nodes, so its vectors keep their names); the deck is loaded once and a chunk's
values go in as one binary rawfile (:func:`pwl_rawfile`, read by ngspice's
``load``) and one short ``alter @NAME[pwl] = ffebm<k>`` per source, naming a
vector of that file: sample ``k`` is the value at ``t = k``, a PWL corner, where
ngspice's PWL returns the value itself, not an interpolation. (One ``alter
@NAME[pwl] = [ 0 x_0 1 x_1 ... ]`` per source with the values as text cost 2-4x
more: ngspice's command parser reads every number; docs/speed.md.)
``.options noinit`` keeps ngspice from printing the initial transient solution
(every node, through the shared library's output callback) on each transient.

Where the C callback of :mod:`.extsrc` can be built, the resident deck's
changing sources are ``EXTERNAL`` instead (``resident_deck(..., external=True)``):
ngspice asks the host for their values at every load, and a job's values go in
with no command at all.

**The sweep deck.** A chunk of ``n`` samples becomes one DC sweep: each source
that changes across the chunk becomes a behavioural source
``pwl(v(ffebm_sweep), 0, x_0, 1, x_1, ...)`` of a sweep voltage
(:data:`SWEEP_SOURCE`) stepped through the integers ``0..n-1``, so sweep point
``k`` *is* sample ``k``; sources constant across the chunk keep a DC card with
that value. A swept voltage source's branch current is then read from its
behavioural stand-in (:func:`swept_vector_name`).

**Warm starts.** :func:`with_nodeset` adds ``.nodeset`` cards (initial Newton
guesses, released once converged): a start next to a known answer that does not
change the answer.

Pure text and bytes (and numpy for the values): nothing here talks to ngspice.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from .session import digest

SWEEP_SOURCE = "vffebm_sweep"
SWEEP_NODE = "ffebm_sweep"


def resident_deck(deck: str, deck_digest: str, sources: tuple[str, ...],
                  external: bool = False) -> tuple[str, str]:
    """``deck`` with every card of ``sources`` as an independent source of the same name and
    nodes: ``PWL(0 0)`` (value 0 until altered), or with ``external`` an ``EXTERNAL`` source
    whose values the host's callback serves (:mod:`.extsrc`); and ``.options noinit``;
    (text, its digest)."""
    key = ("resident", deck_digest, sources, external)
    if key not in _TEMPLATES:
        fixed, cards = sweep_template(deck, deck_digest, sources)
        body = [fixed, ".options noinit"]
        kind = "external" if external else "PWL(0 0)"
        body += [f"{name} {plus} {minus} {kind}" for _, (name, plus, minus) in sorted(cards.items())]
        text = "\n".join(body + [".end", ""])
        if len(_TEMPLATES) > 8:
            _TEMPLATES.clear()
        _TEMPLATES[key] = (text, digest(text))
    return _TEMPLATES[key]


def pwl_rawfile(columns: np.ndarray) -> bytes:
    """A binary ngspice rawfile (ngspice's own ``load`` format) of one plot holding, for column
    ``k`` of ``columns`` (``(n, m)`` float64), the vector ``ffebm<k>`` = ``[0, x_0, 1, x_1, ...]``:
    the PWL corner list of sample ``k``'s source, sample ``j`` at ``t = j``. Binary doubles in
    this machine's byte order, so ngspice gets the float64 values bit for bit (no text parsing)."""
    n, m = columns.shape
    data = np.empty((2 * n, m), dtype=np.float64)
    data[0::2] = np.arange(n, dtype=np.float64)[:, None]
    data[1::2] = columns
    return _raw_header(n, m) + np.ascontiguousarray(data).tobytes()


@functools.lru_cache(maxsize=16)
def _raw_header(n: int, m: int) -> bytes:
    lines = ["Title: ffebm pwl values", "Date: -", "Plotname: ffebm pwl values", "Flags: real",
             f"No. Variables: {m}", f"No. Points: {2 * n}", "Variables:"]
    lines += [f"\t{k}\t{pwl_vector(k)}\tvoltage" for k in range(m)]
    return ("\n".join(lines) + "\nBinary:\n").encode("ascii")


def pwl_vector(k: int) -> str:
    """Name of column ``k``'s vector in :func:`pwl_rawfile`'s plot."""
    return f"ffebm{k}"


class SweepTemplate(NamedTuple):
    """A deck split into its fixed text (every card but the swept sources' and ``.end``) and the
    swept sources' cards: ``cards[k] = (name, node+, node-)`` of ``sources[k]``."""

    fixed: str
    cards: dict[int, tuple[str, str, str]]


_TEMPLATES: dict[tuple, object] = {}


def sweep_template(deck: str, deck_digest: str, sources: tuple[str, ...]) -> SweepTemplate:
    """``deck`` split once into its fixed text and the cards of ``sources`` (cached by digest)."""
    key = (deck_digest, sources)
    if key not in _TEMPLATES:
        index = {name: k for k, name in enumerate(sources)}
        fixed, cards = [], {}
        for line in deck.splitlines():
            words = line.split()
            if not words or words[0].lower() == ".end":
                continue
            k = index.get(words[0].lower())
            if k is None:
                fixed.append(line)
            else:
                cards[k] = (words[0], words[1], words[2])
        if len(_TEMPLATES) > 8:
            _TEMPLATES.clear()
        _TEMPLATES[key] = SweepTemplate("\n".join(fixed), cards)
    return _TEMPLATES[key]


def sweep_deck(deck: str, sources: tuple[str, ...], values: np.ndarray, deck_digest: str | None = None) -> str:
    """``deck`` with every source of ``sources`` that changes across ``values`` rows as a
    behavioural ``pwl`` of the sweep voltage (sample ``k`` at ``v(ffebm_sweep) = k``);
    sources constant across the chunk keep a DC card with that value."""
    n = values.shape[0]
    fixed, cards = sweep_template(deck, deck_digest or digest(deck), tuple(sources))
    out = [fixed]
    card = _pwl_card(n)
    changing = (values != values[0]).any(0)
    for k, (name, plus, minus) in sorted(cards.items()):
        col = values[:, k].tolist()
        if not changing[k]:
            out.append(f"{name} {plus} {minus} DC {col[0]!r}")
            continue
        kind = "V" if name[0] in "vV" else "I"
        out.append(card.format(name, plus, minus, kind, *map(repr, col)))
    out += [f"{SWEEP_SOURCE.upper()} {SWEEP_NODE} 0 DC 0", ".end", ""]
    return "\n".join(out)


@functools.lru_cache(maxsize=8)
def _pwl_card(n: int) -> str:
    """The text of a behavioural source ``pwl`` over ``n`` samples, with ``str.format`` fields
    for name, nodes, kind (V/I) and the ``n`` values. Points 0..n-1 and a repeat of the last
    value at n, so every sample sits at the start of a segment and ngspice's pwl returns the
    value itself, not an interpolation."""
    points = [f"{i}, {{{4 + i}}}" for i in range(n)] + [f"{n}, {{{4 + n - 1}}}"]
    rows = [", ".join(points[i:i + 4]) for i in range(0, len(points), 4)]
    return "BSW_{0} {1} {2} {3} = pwl(v(" + SWEEP_NODE + "),\n+ " + ",\n+ ".join(rows) + ")"


def swept_vector_name(name: str, sources: set[str]) -> str:
    """A branch vector of a swept voltage source is read from its behavioural stand-in."""
    if name.endswith("#branch") and name[:-7] in sources:
        return f"bsw_{name}"
    return name


def with_nodeset(deck: str, nodes: list[str], volts: np.ndarray) -> str:
    """``deck`` with ``.nodeset`` cards (initial Newton guesses, released once
    converged) putting ``nodes`` at ``volts``: a warm start that does not change the answer."""
    cards = [f"v({name})={float(v)!r}" for name, v in zip(nodes, volts)]
    rows = [" ".join(cards[i:i + 4]) for i in range(0, len(cards), 4)]
    body = deck.rstrip().splitlines()
    if body and body[-1].strip().lower() == ".end":
        body.pop()
    return "\n".join(body + [".nodeset " + "\n+ ".join(rows), ".end", ""])
