"""Solvers of an energy block behind one contract (see :mod:`.base`).

Strings map to backends only here, at the config/CLI edge.
"""

from __future__ import annotations

from ..errors import SpecError
from .base import Backend, Equilibrium, Nudge
from .reference import ReferenceBackend

BACKENDS = ("reference", "ngspice")


def get_backend(name: str, **options) -> Backend:
    """A backend by name; an unknown name says which are valid."""
    if name == "reference":
        return ReferenceBackend(**options)
    if name == "ngspice":
        from .ngspice import NgspiceBackend
        return NgspiceBackend(**options)
    raise SpecError(f"backend: unknown backend {name!r}; valid backends are {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "Equilibrium", "Nudge", "ReferenceBackend", "get_backend"]
