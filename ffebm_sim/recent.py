"""Values built from a frozen object, remembered for the last few objects, keyed by identity.

A :class:`~ffebm_sim.circuit.BlockCircuit` is frozen and holds arrays, so it is neither
hashable nor cheap to compare: a solver that sees one circuit several times in a row
(EP solves it three times, then differentiates it) asks "is this the very object I
built for?" and keeps a handful of recent answers.
"""

from __future__ import annotations

import threading
from typing import Callable, Hashable, TypeVar

T = TypeVar("T")


class RecentByIdentity:
    """Up to ``size`` values, each for one object (by identity) and a hashable ``key``; the
    newest first, the oldest dropped. Holding the object keeps it alive, so an identity is
    never reused while its entry exists."""

    def __init__(self, size: int):
        self.size = size
        self._items: list[tuple[object, Hashable, object]] = []
        self._lock = threading.Lock()

    def get(self, obj: object, key: Hashable, build: Callable[[], T]) -> T:
        """The value for ``(obj, key)``, built with ``build()`` (outside the lock) when absent."""
        with self._lock:
            for o, k, value in self._items:
                if o is obj and k == key:
                    return value
        value = build()
        with self._lock:
            self._items.insert(0, (obj, key, value))
            del self._items[self.size:]
        return value

    def __getstate__(self):
        return {"size": self.size}             # a pickled cache arrives empty (values stay local)

    def __setstate__(self, state):
        self.__init__(state["size"])

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
